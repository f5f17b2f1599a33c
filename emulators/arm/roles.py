"""Role definitions as ARM serves them (the built-in ones are in emulators/builtin_roles.py)."""

from __future__ import annotations

from typing import Any

from emulators.builtin_roles import BUILTIN_ROLES, KV  # noqa: F401 - re-exported for the ARM emulator


def role_definition_id(subscription_id: str | None, guid: str) -> str:
    prefix = f"/subscriptions/{subscription_id}" if subscription_id else ""
    return f"{prefix}/providers/Microsoft.Authorization/roleDefinitions/{guid}"


def role_definition_json(guid: str, definition: dict[str, Any], scope: str, *, custom: bool = False) -> dict[str, Any]:
    subscription = scope.split("/")[2] if scope.lower().startswith("/subscriptions/") else None
    return {
        "id": role_definition_id(subscription, guid),
        "name": guid,
        "type": "Microsoft.Authorization/roleDefinitions",
        "properties": {
            "roleName": definition["roleName"],
            "description": definition.get("description", ""),
            "type": "CustomRole" if custom else "BuiltInRole",
            "assignableScopes": definition.get("assignableScopes", ["/"]),
            "permissions": [
                {
                    "actions": list(definition.get("actions", [])),
                    "notActions": list(definition.get("notActions", [])),
                    "dataActions": list(definition.get("dataActions", [])),
                    "notDataActions": list(definition.get("notDataActions", [])),
                }
            ],
        },
    }

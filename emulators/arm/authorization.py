"""Microsoft.Authorization: built-in and custom role definitions, role assignments at any scope.

ARM RBAC itself is not enforced; the assignments are fed to the vaults' RBAC checks (``sync``). An
assignment applies at and below its scope; a management-group scope applies to every subscription (and
group) under that group, as ``management_group_covers`` (the Microsoft.Management provider) says."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from emulators.clock import SandboxClock
from emulators.keyvault import KeyVaultEmulator
from emulators.keyvault.state import RoleAssignment

from . import errors, roles
from .model import compact
from .routing import SEG, Request, Route
from .storage import iso

AUTHZ = r"(.*?)/providers/microsoft\.authorization"


@dataclass
class RoleAssignmentRecord:
    name: str
    scope: str
    role_definition_id: str
    principal_id: str
    principal_type: str
    created: str
    description: str | None = None

    def to_json(self) -> dict[str, Any]:
        return compact(
            {
                "id": f"{self.scope}/providers/Microsoft.Authorization/roleAssignments/{self.name}",
                "name": self.name,
                "type": "Microsoft.Authorization/roleAssignments",
                "properties": {
                    "roleDefinitionId": self.role_definition_id,
                    "principalId": self.principal_id,
                    "principalType": self.principal_type,
                    "scope": self.scope,
                    "description": self.description,
                    "createdOn": self.created,
                    "updatedOn": self.created,
                },
            }
        )


def within(scope: str, resource: str) -> bool:
    """``resource`` is ``scope`` or below it (the root scope contains everything)."""
    scope, resource = scope.rstrip("/").lower(), resource.rstrip("/").lower()
    return scope in ("", "/") or resource == scope or resource.startswith(scope + "/")


def _guid_of(role_definition_id: str) -> str:
    return role_definition_id.rstrip("/").rsplit("/", 1)[-1].lower()


class Authorization:
    def __init__(self, keyvault: KeyVaultEmulator, clock: SandboxClock) -> None:
        self.keyvault = keyvault
        self.clock = clock
        self.role_assignments: dict[str, RoleAssignmentRecord] = {}  # name (guid) -> assignment
        self.custom_roles: dict[str, dict[str, Any]] = {}
        self._arm_assignment_names: set[str] = set()  # every assignment ARM ever fed to the vaults
        # (management-group scope, resource) -> is the resource under that group; set by the router.
        self.management_group_covers: Callable[[str, str], bool] = lambda scope, resource: False

    def covers(self, scope: str, resource: str) -> bool:
        """An assignment at ``scope`` applies to ``resource`` (at or below it, management groups included)."""
        return within(scope, resource) or self.management_group_covers(scope, resource)

    def routes(self) -> list[Route]:
        return [
            (("GET", "PUT", "DELETE"), rf"{AUTHZ}/roleassignments/{SEG}", self._role_assignment),
            (("GET",), rf"{AUTHZ}/roleassignments", self._list_role_assignments),
            (("GET", "PUT"), rf"{AUTHZ}/roledefinitions/{SEG}", self._role_definition),
            (("GET",), rf"{AUTHZ}/roledefinitions", self._list_role_definitions),
        ]

    def sync(self) -> None:
        """Feed ARM role assignments to each vault (those at or above the vault, or on its keys)."""
        for state in list(self.keyvault.vaults.values()):
            relevant = [
                RoleAssignment(r.principal_id, r.role_definition_id, self._scope_for_vault(r.scope, state.resource_id),
                               id=r.name)
                for r in self.role_assignments.values()
                if self.covers(r.scope, state.resource_id) or within(state.resource_id, r.scope)
            ]
            with state.lock:
                own = [a for a in state.role_assignments if a.id not in self._arm_assignment_names]
                state.role_assignments = own + relevant
                for guid, definition in self.custom_roles.items():
                    state.role_definitions.setdefault(guid, definition)

    def _scope_for_vault(self, scope: str, vault_id: str) -> str:
        """The scope as the vault's data plane can match it: the vault only knows resource-id prefixes, so a
        management-group assignment that covers the vault is handed over at the vault's subscription."""
        if within(scope, vault_id) or within(vault_id, scope):
            return scope
        return "/" + "/".join(vault_id.strip("/").split("/")[:2])

    def _role(self, guid: str) -> tuple[dict[str, Any], bool] | None:
        if guid in roles.BUILTIN_ROLES:
            return roles.BUILTIN_ROLES[guid], False
        if guid in self.custom_roles:
            return self.custom_roles[guid], True
        return None

    def _role_definition(self, req: Request, scope: str, guid: str) -> tuple[int, Any]:
        guid = guid.lower()
        if req.method == "PUT":
            props = (req.body or {}).get("properties") or {}
            permissions = (props.get("permissions") or [{}])[0]
            if not props.get("roleName"):
                raise errors.ArmError(
                    400, "RoleDefinitionNameNullOrEmpty", "The role definition name cannot be null or empty."
                )
            definition = {
                "roleName": props["roleName"],
                "description": props.get("description", ""),
                "assignableScopes": list(props.get("assignableScopes") or [scope or "/"]),
                "actions": list(permissions.get("actions") or []),
                "notActions": list(permissions.get("notActions") or []),
                "dataActions": list(permissions.get("dataActions") or []),
                "notDataActions": list(permissions.get("notDataActions") or []),
            }
            self.custom_roles[guid] = definition
            for state in list(self.keyvault.vaults.values()):
                with state.lock:
                    state.role_definitions[guid] = definition
            return 201, roles.role_definition_json(guid, definition, scope, custom=True)
        found = self._role(guid)
        if found is None:
            raise errors.ArmError(
                404, "RoleDefinitionDoesNotExist", f"The specified role definition with ID '{guid}' does not exist."
            )
        return 200, roles.role_definition_json(guid, found[0], scope, custom=found[1])

    def _list_role_definitions(self, req: Request, scope: str) -> tuple[int, Any]:
        match = re.search(r"roleName eq '([^']+)'", req.query.get("$filter", ""), flags=re.IGNORECASE)
        wanted = match.group(1).lower() if match else None
        out = []
        for guid, definition in [*roles.BUILTIN_ROLES.items(), *self.custom_roles.items()]:
            if wanted and definition["roleName"].lower() != wanted:
                continue
            out.append(roles.role_definition_json(guid, definition, scope, custom=guid in self.custom_roles))
        return 200, {"value": out}

    def _role_assignment(self, req: Request, scope: str, name: str) -> tuple[int, Any]:
        record = self.role_assignments.get(name.lower())
        if req.method == "PUT":
            props = (req.body or {}).get("properties") or {}
            role_id, principal = props.get("roleDefinitionId"), props.get("principalId")
            if not role_id or not principal:
                raise errors.ArmError(
                    400, "InvalidRoleAssignmentRequest", "roleDefinitionId and principalId are required."
                )
            if self._role(_guid_of(str(role_id))) is None:
                raise errors.ArmError(
                    400,
                    "RoleDefinitionDoesNotExist",
                    f"The specified role definition with ID '{_guid_of(role_id)}' does not exist.",
                )
            for other in self.role_assignments.values():
                same = (other.scope.lower(), _guid_of(other.role_definition_id), other.principal_id.lower())
                if other.name != name.lower() and same == (scope.lower(), _guid_of(role_id), str(principal).lower()):
                    # Verified: ARM answers 409 RoleAssignmentExists for a duplicate assignment.
                    raise errors.ArmError(409, "RoleAssignmentExists", "The role assignment already exists.")
            record = RoleAssignmentRecord(
                name=name.lower(),
                scope=scope,
                role_definition_id=str(role_id),
                principal_id=str(principal),
                principal_type=str(props.get("principalType") or "ServicePrincipal"),
                created=iso(self.clock.now()) or "",
                description=props.get("description"),
            )
            self.role_assignments[name.lower()] = record
            self._arm_assignment_names.add(record.name)
            self.sync()
            return 201, record.to_json()
        if record is None or record.scope.lower() != scope.lower():
            if req.method == "DELETE":
                return 204, None
            raise errors.ArmError(404, "RoleAssignmentNotFound", f"The role assignment '{name}' is not found.")
        if req.method == "DELETE":
            del self.role_assignments[name.lower()]
            self.sync()
        return 200, record.to_json()

    def _list_role_assignments(self, req: Request, scope: str) -> tuple[int, Any]:
        filter_text = req.query.get("$filter", "")
        principal = re.search(r"principalId eq '([^']+)'", filter_text, flags=re.IGNORECASE)
        at_scope = "atscope()" in filter_text.lower()
        out = []
        for record in self.role_assignments.values():
            if principal and record.principal_id.lower() != principal.group(1).lower():
                continue
            above = self.covers(record.scope, scope)
            below = self.covers(scope, record.scope)
            if above or (below and not at_scope):
                out.append(record.to_json())
        return 200, {"value": out}

"""Authorization of data-plane operations: access policies, RBAC role assignments, the firewall."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from emulators.builtin_roles import BUILTIN_ROLES

if TYPE_CHECKING:
    from .credential import Principal
    from .state import VaultState

KV = "Microsoft.KeyVault/vaults"

# operationName -> (access policy key permission, RBAC data action)
OPERATIONS: dict[str, tuple[str, str]] = {
    "KeyGet": ("get", f"{KV}/keys/read"),
    "KeyList": ("list", f"{KV}/keys/read"),
    "KeyListVersions": ("list", f"{KV}/keys/read"),
    "KeyCreate": ("create", f"{KV}/keys/create/action"),
    "KeyImport": ("import", f"{KV}/keys/import/action"),
    "KeyUpdate": ("update", f"{KV}/keys/update/action"),
    "KeyDelete": ("delete", f"{KV}/keys/delete"),
    "KeyBackup": ("backup", f"{KV}/keys/backup/action"),
    "KeyRestore": ("restore", f"{KV}/keys/restore/action"),
    "KeyRotate": ("rotate", f"{KV}/keys/rotate/action"),
    "KeyGetRotationPolicy": ("getrotationpolicy", f"{KV}/keyrotationpolicies/read"),
    "KeyUpdateRotationPolicy": ("setrotationpolicy", f"{KV}/keyrotationpolicies/write"),
    "KeyEncrypt": ("encrypt", f"{KV}/keys/encrypt/action"),
    "KeyDecrypt": ("decrypt", f"{KV}/keys/decrypt/action"),
    "KeyWrap": ("wrapKey", f"{KV}/keys/wrap/action"),
    "KeyUnwrap": ("unwrapKey", f"{KV}/keys/unwrap/action"),
    "KeySign": ("sign", f"{KV}/keys/sign/action"),
    "KeyVerify": ("verify", f"{KV}/keys/verify/action"),
    "KeyGetDeleted": ("get", f"{KV}/deletedKeys/read"),
    "KeyListDeleted": ("list", f"{KV}/deletedKeys/read"),
    "KeyRecover": ("recover", f"{KV}/deletedKeys/recover/action"),
    "KeyPurge": ("purge", f"{KV}/deletedKeys/delete"),
    "GetRandomBytes": ("", f"{KV}/rng/action"),
}



@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    access_policy_match: bool = False
    action: str = ""
    permission: str = ""


def role_definition(state: VaultState, role: str) -> dict[str, Any] | None:
    guid = role.rstrip("/").rsplit("/", 1)[-1].lower()
    if guid in state.role_definitions:
        return state.role_definitions[guid]
    if guid in BUILTIN_ROLES:
        return BUILTIN_ROLES[guid]
    for definition in list(BUILTIN_ROLES.values()) + list(state.role_definitions.values()):
        if str(definition.get("roleName", "")).lower() == role.lower():
            return definition
    return None


def _matches(patterns: list[str], action: str) -> bool:
    return any(fnmatch.fnmatchcase(action.lower(), str(p).lower()) for p in patterns)


def _in_scope(scope: str, resource: str) -> bool:
    scope = scope.rstrip("/").lower()
    resource = resource.lower()
    return scope in ("", "/") or resource == scope or resource.startswith(scope + "/")


def authorize(state: VaultState, principal: Principal, operation: str, key_name: str | None) -> Decision:
    permission, action = OPERATIONS.get(operation, ("", ""))
    with state.lock:
        if state.rbac:
            resource = state.resource_id + (f"/keys/{key_name}" if key_name else "")
            for assignment in state.role_assignments:
                if assignment.principal_id.lower() != principal.oid.lower():
                    continue
                if not _in_scope(assignment.scope, resource):
                    continue
                definition = role_definition(state, assignment.role_definition_id)
                if definition is None:
                    continue
                if _matches(definition.get("dataActions", []), action) and not _matches(
                    definition.get("notDataActions", []), action
                ):
                    return Decision(True, False, action, permission)
            return Decision(False, False, action, permission)
        for policy in state.access_policies:
            if policy.object_id.lower() != principal.oid.lower():
                continue
            if policy.tenant_id.lower() != principal.tid.lower():
                continue
            if policy.application_id and (principal.appid or "").lower() != policy.application_id.lower():
                continue
            if permission and policy.allows(permission):
                return Decision(True, True, action, permission)
        return Decision(False, False, action, permission)


def caller_description(principal: Principal) -> str:
    return f"appid={principal.appid or '-'};oid={principal.oid};iss=https://sts.windows.net/{principal.tid}/"

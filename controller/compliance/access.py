"""Can an identity get, wrapKey and unwrapKey a key? Evaluated from a gathered vault (pure).

Access-policy vaults: the identity's entries (objectId, case-insensitive; a compound entry with an
applicationId grants the identity only through that application, so it does not count) together
must carry get, wrapKey and unwrapKey; ``all`` grants everything. Permission names compare
case-insensitively ("UnwrapKey" == "unwrapKey").

RBAC vaults: every assignment of the identity whose scope covers the key (the key, the vault, its
resource group, subscription, a management group above the subscription, or the root) counts, with
built-in and custom roles alike. A permission block allows a data action when one of its
``dataActions`` matches (``*`` is a wildcard: ``Microsoft.KeyVault/vaults/keys/*``, ``*``) and none
of its ``notDataActions`` does; each needed action must be allowed by one block (that is how Azure
unions roles). Scopes match segment by segment, case-insensitively: ``/resourceGroups/rg`` covers a
vault in ``rg``, not one in ``rg2``. What cannot be decided (an ABAC condition, a role definition
that was not read, a management-group assignment when the subscription's ancestry is unknown) makes
the verdict UNKNOWN only when the decidable grants do not already suffice.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from controller.compliance.estate import (
    RoleAssignment,
    RoleDefinition,
    RolePermission,
    Subscription,
    Vault,
    arm_name,
    arm_segments,
    same_name,
)
from controller.model import IdentityAccess

#: Access-policy key permissions Azure Storage needs.
NEEDED_KEY_PERMISSIONS: tuple[str, ...] = ("get", "wrapKey", "unwrapKey")
#: RBAC data actions Azure Storage needs.
NEEDED_DATA_ACTIONS: tuple[str, ...] = (
    "Microsoft.KeyVault/vaults/keys/read",
    "Microsoft.KeyVault/vaults/keys/wrap/action",
    "Microsoft.KeyVault/vaults/keys/unwrap/action",
)
#: The built-in role made for this (its permissions are fixed by Azure, so it needs no read).
CRYPTO_SERVICE_ENCRYPTION_USER = RoleDefinition(
    id="/providers/Microsoft.Authorization/roleDefinitions/e147488a-f6f5-4113-8e2d-b22465e65bf6",
    role_name="Key Vault Crypto Service Encryption User",
    permissions=(RolePermission(data_actions=NEEDED_DATA_ACTIONS),),
    role_type="BuiltInRole",
)
BUILT_IN_ROLES: tuple[RoleDefinition, ...] = (CRYPTO_SERVICE_ENCRYPTION_USER,)

_MANAGEMENT_GROUP_SCOPE = ("providers", "microsoft.management", "managementgroups")


@dataclass(frozen=True, slots=True)
class AccessResult:
    """The verdict with its evidence: which grants were found, which needed permissions are missing,
    and what could not be evaluated (the reason of an UNKNOWN)."""

    access: IdentityAccess
    model: str  # "access-policy" or "rbac"
    granted_by: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    unevaluated: tuple[str, ...] = ()
    grants: tuple[RoleAssignment, ...] = ()  # RBAC: the assignments behind ``granted_by``


def action_matches(pattern: str, action: str) -> bool:
    """An Azure action pattern (``*`` matches anything, case-insensitively) against an action."""
    regex = ".*".join(re.escape(part) for part in pattern.strip().split("*"))
    return re.fullmatch(regex, action.strip(), re.IGNORECASE) is not None


def allows(permission: RolePermission, action: str) -> bool:
    return any(action_matches(pattern, action) for pattern in permission.data_actions) and not any(
        action_matches(pattern, action) for pattern in permission.not_data_actions
    )


def is_management_group_scope(scope: str) -> bool:
    """``/providers/Microsoft.Management/managementGroups/<group>`` (any case)."""
    segments = arm_segments(scope)
    return segments[:3] == _MANAGEMENT_GROUP_SCOPE and len(segments) == 4


def scope_covers(scope: str, resource_id: str, management_groups: tuple[str, ...] | None) -> bool | None:
    """Does an assignment at ``scope`` apply to ``resource_id``? None when it cannot be told (a
    management-group scope and the subscription's ancestry unknown)."""
    scope_segments = arm_segments(scope)
    if is_management_group_scope(scope):
        if management_groups is None:
            return None
        return any(same_name(scope_segments[3], group) for group in management_groups)
    resource_segments = arm_segments(resource_id)
    return resource_segments[: len(scope_segments)] == scope_segments


def key_access(
    vault: Vault,
    key_name: str,
    principal_id: str,
    *,
    role_definitions: Mapping[str, RoleDefinition],
    subscription: Subscription | None,
) -> AccessResult:
    """Whether ``principal_id`` can use ``key_name`` in ``vault``. ``role_definitions`` maps the
    lower-case GUID of each role definition read to it. An RBAC vault whose role assignments were not
    read is UNKNOWN."""
    if not vault.enable_rbac_authorization:
        return _policy_access(vault, principal_id)
    if vault.role_assignments is None:
        return AccessResult(IdentityAccess.UNKNOWN, "rbac", unevaluated=("role assignments were not read",))
    ancestry = subscription.management_groups if subscription is not None else None
    key_scope = f"{vault.id}/keys/{key_name}"  # scope_covers compares segments: a doubled "/" is harmless
    granted: set[str] = set()
    granted_by: list[str] = []
    grants: list[RoleAssignment] = []
    unevaluated: list[str] = []
    for assignment in vault.role_assignments:
        if not same_name(assignment.principal_id, principal_id):
            continue
        covers = scope_covers(assignment.scope, key_scope, ancestry)
        if covers is False:
            continue
        if covers is None:
            unevaluated.append(f"management-group assignment at {assignment.scope}: the subscription's "
                               "management-group ancestry is unknown")
            continue
        if assignment.condition:
            unevaluated.append(f"conditional assignment at {assignment.scope} (ABAC conditions are not evaluated)")
            continue
        role = _role(assignment, role_definitions)
        if role is None:
            unevaluated.append(f"role definition {assignment.role_definition_id} was not read")
            continue
        allowed = {action for action in NEEDED_DATA_ACTIONS if any(allows(block, action) for block in role.permissions)}
        if allowed:
            granted_by.append(f"{role.role_name} at {assignment.scope}")
            grants.append(assignment)
            granted |= allowed
    missing = tuple(action for action in NEEDED_DATA_ACTIONS if action not in granted)
    if not missing:
        return AccessResult(IdentityAccess.GRANTED, "rbac", granted_by=tuple(granted_by), grants=tuple(grants))
    access = IdentityAccess.UNKNOWN if unevaluated else IdentityAccess.DENIED
    return AccessResult(access, "rbac", granted_by=tuple(granted_by), missing=missing,
                        unevaluated=tuple(unevaluated), grants=tuple(grants))


def _role(assignment: RoleAssignment, role_definitions: Mapping[str, RoleDefinition]) -> RoleDefinition | None:
    guid = arm_name(assignment.role_definition_id).lower()
    found = role_definitions.get(guid)
    if found is not None:
        return found
    return next((role for role in BUILT_IN_ROLES if role.guid == guid), None)


def _policy_access(vault: Vault, principal_id: str) -> AccessResult:
    permissions = {
        permission.strip().lower()
        for policy in vault.access_policies
        if same_name(policy.object_id, principal_id) and not policy.application_id
        for permission in policy.keys
    }
    if "all" in permissions:
        return AccessResult(IdentityAccess.GRANTED, "access-policy", granted_by=("access policy: all",))
    missing = tuple(permission for permission in NEEDED_KEY_PERMISSIONS if permission.lower() not in permissions)
    if missing:
        return AccessResult(IdentityAccess.DENIED, "access-policy", missing=missing)
    return AccessResult(IdentityAccess.GRANTED, "access-policy",
                        granted_by=("access policy: " + ", ".join(NEEDED_KEY_PERMISSIONS),))

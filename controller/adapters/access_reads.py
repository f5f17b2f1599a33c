"""What decides key access, read through ARM into estate values: one reader for the sweep and the reconciler.

The estate gatherer (the compliance sweep) and KeyAccess (the reconciler's CMK-006 check) both read a
vault's properties (access policies, the RBAC flag), the role assignments that apply to it, the role
definitions those assignments name, and, when an assignment sits at a management group, the
subscriptions' management-group ancestry; both then decide with the pure evaluator
(controller.compliance.access). The reads and the SDK-model conversions live here, once:

    vault_from_sdk           azure-mgmt-keyvault ``Vault`` (``vaults.get`` or a listing) -> estate ``Vault``
    list_assignments         ``role_assignments.list_for_scope(vault id)`` (no ``atScope()``: the
                             assignments at, above and below the vault, management groups included)
    get_role_definition      ``role_definitions.get_by_id``
    read_ancestry            azure-mgmt-managementgroups ``entities.list`` (getEntities): each visible
                             subscription's ``parentNameChain``, nearest group first

Errors are translated (controller.errors): callers decide whether a failure is a read failure (the sweep)
or an UNKNOWN verdict (the reconciler).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from azure.mgmt.authorization import AuthorizationManagementClient
from azure.mgmt.managementgroups import ManagementGroupsMgmtClient

from controller.adapters.azure_errors import translated
from controller.adapters.credentials import ArmConnection
from controller.adapters.storage_control import sdk_text
from controller.compliance.estate import (
    AccessPolicy,
    DiagnosticSetting,
    NetworkAcls,
    RoleAssignment,
    RoleDefinition,
    RolePermission,
    Vault,
    VaultKey,
)
from controller.model import DeletedKeyInfo


def vault_from_sdk(
    item: Any,
    *,
    role_assignments: tuple[RoleAssignment, ...] | None,
    keys: tuple[VaultKey, ...] | None = None,
    deleted_keys: tuple[DeletedKeyInfo, ...] | None = None,
    diagnostic_settings: tuple[DiagnosticSetting, ...] | None = None,
) -> Vault:
    """The estate's vault from an SDK ``Vault``, with what was read besides (None: not read)."""
    props = item.properties
    acls = props.network_acls
    return Vault(
        id=item.id,
        name=item.name,
        location=item.location or "",
        vault_uri=props.vault_uri or "",
        tenant_id=props.tenant_id,
        enable_soft_delete=props.enable_soft_delete is not False,
        soft_delete_retention_in_days=props.soft_delete_retention_in_days,
        enable_purge_protection=bool(props.enable_purge_protection),
        enable_rbac_authorization=bool(props.enable_rbac_authorization),
        network_acls=None if acls is None else NetworkAcls(default_action=sdk_text(acls.default_action) or "Allow",
                                                           bypass=sdk_text(acls.bypass) or "None"),
        access_policies=tuple(_access_policy(entry) for entry in props.access_policies or ()),
        keys=keys,
        deleted_keys=deleted_keys,
        diagnostic_settings=diagnostic_settings,
        role_assignments=role_assignments,
    )


def _access_policy(entry: Any) -> AccessPolicy:
    permissions = entry.permissions
    return AccessPolicy(
        object_id=entry.object_id,
        tenant_id=entry.tenant_id,
        application_id=entry.application_id,
        keys=tuple(sdk_text(permission) for permission in (permissions.keys_property if permissions else None) or ()),
    )


def list_assignments(authz: AuthorizationManagementClient, vault_id: str) -> tuple[RoleAssignment, ...]:
    """Every role assignment that applies at, above or below the vault (one paged listing)."""
    with translated(f"list role assignments of {vault_id}"):
        return tuple(
            RoleAssignment(scope=entry.scope, principal_id=entry.principal_id,
                           role_definition_id=entry.role_definition_id, condition=entry.condition)
            for entry in authz.role_assignments.list_for_scope(vault_id)
            if entry.scope and entry.principal_id and entry.role_definition_id
        )


def get_role_definition(authz: AuthorizationManagementClient, role_definition_id: str) -> RoleDefinition:
    with translated(f"get role definition {role_definition_id}"):
        found = authz.role_definitions.get_by_id(role_definition_id)
    return RoleDefinition(
        id=found.id or role_definition_id,
        role_name=found.role_name or "",
        role_type=sdk_text(found.role_type) or "CustomRole",
        permissions=tuple(RolePermission(data_actions=tuple(p.data_actions or ()),
                                         not_data_actions=tuple(p.not_data_actions or ()))
                          for p in found.permissions or ()),
    )


def read_ancestry(arm: ArmConnection, subscriptions: Sequence[str]) -> dict[str, tuple[str, ...] | None]:
    """Each subscription's management groups, nearest first up to the tenant root group (one paged
    getEntities listing); None for a subscription the listing does not show."""
    chains: dict[str, tuple[str, ...]] = {}
    with translated("list the management-group hierarchy (getEntities)"), ManagementGroupsMgmtClient(
            arm.credential, **arm.client_options()) as client:
        for entity in client.entities.list():
            properties = entity.properties
            if (entity.type or "").lower() == "/subscriptions" and entity.name and properties is not None:
                chains[entity.name.lower()] = tuple(reversed(properties.parent_name_chain or ()))
    return {subscription: chains.get(subscription.lower()) for subscription in subscriptions}

"""Can a consumer's encryption identity get, wrapKey and unwrapKey its key? (RULES.md CMK-006)

Access-policy vaults (azure-mgmt-keyvault ``vaults.get`` -> ``accessPolicies``): the identity's
entries (objectId, case-insensitive; compound entries with an applicationId do not grant the
identity alone) together must carry get, wrapKey and unwrapKey (``all`` grants everything).

RBAC vaults (azure-mgmt-authorization): role assignments of the identity at the key, the vault, its
resource group or subscription (or above), whose role definitions' permissions carry
``Microsoft.KeyVault/vaults/keys/read``, ``.../keys/wrap/action`` and ``.../keys/unwrap/action`` in
``dataActions`` (wildcards allowed) and not in ``notDataActions``. Each needed action must come from
one permission block of one role (that is how Azure unions roles). Assignments with an ABAC
condition are not evaluated: if only they could grant, the verdict is UNKNOWN. Deny assignments are
not read.

Cost per run: one ``vaults.get`` per vault, one role-assignment listing per RBAC vault (at the vault
scope, which returns the assignments above, at and below it; key-scoped ones are matched per key) and
one ``get_by_id`` per distinct role definition, whatever the number of consumers. The vault's ARM id
comes from ``vault_ids`` (Inventory.list_vaults: Resource Graph, or the vault listings), read once.
Anything unreadable yields IdentityAccess.UNKNOWN with the reason, never a silent grant or denial.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from azure.mgmt.authorization import AuthorizationManagementClient
from azure.mgmt.keyvault import KeyVaultManagementClient

from controller.adapters.azure_errors import translated
from controller.adapters.credentials import ArmConnection
from controller.adapters.storage_control import sdk_text
from controller.errors import ControllerError
from controller.model import (
    AccessVerdict,
    Consumer,
    EncryptionIdentity,
    IdentityAccess,
    KeyRef,
    ObservedConsumer,
    VaultOrigin,
    VaultResourceId,
)

#: Access-policy key permissions Azure Storage needs.
POLICY_PERMISSIONS: tuple[str, ...] = ("get", "wrapkey", "unwrapkey")
#: RBAC data actions Azure Storage needs (those of Key Vault Crypto Service Encryption User).
DATA_ACTIONS: tuple[str, ...] = (
    "Microsoft.KeyVault/vaults/keys/read",
    "Microsoft.KeyVault/vaults/keys/wrap/action",
    "Microsoft.KeyVault/vaults/keys/unwrap/action",
)


@dataclass(frozen=True, slots=True)
class _Assignment:
    principal_id: str
    scope: str  # lower case, no trailing slash
    role_definition_id: str
    conditional: bool


@dataclass(frozen=True, slots=True)
class _Permission:
    data_actions: tuple[str, ...]
    not_data_actions: tuple[str, ...]

    def allows(self, action: str) -> bool:
        return any(_matches(pattern, action) for pattern in self.data_actions) and not any(
            _matches(pattern, action) for pattern in self.not_data_actions
        )


@dataclass(frozen=True, slots=True)
class _VaultAccess:
    """What was read about one vault: its permission model and the grants relevant to storage."""

    rbac: bool
    policies: tuple[tuple[str, frozenset[str]], ...] = ()  # (objectId lower, key permissions lower)
    assignments: tuple[_Assignment, ...] = ()
    unreadable: str = ""  # why the vault could not be evaluated


def _matches(pattern: str, action: str) -> bool:
    return fnmatch.fnmatchcase(action.lower(), pattern.lower())


class KeyAccess:
    """Evaluates consumers' key access, reading each vault's grants once per instance (one run)."""

    def __init__(
        self, arm: ArmConnection, vault_ids: Callable[[], Mapping[VaultOrigin, VaultResourceId]]
    ) -> None:
        self._arm = arm
        self._vault_ids_source = vault_ids
        self._vault_ids: Mapping[VaultOrigin, VaultResourceId] | None = None
        self._vault_ids_error = ""
        self._vaults: dict[str, _VaultAccess] = {}
        self._roles: dict[str, tuple[_Permission, ...] | str] = {}  # id lower -> permissions, or why unreadable
        self._keyvault_clients: dict[str, KeyVaultManagementClient] = {}
        self._authz_clients: dict[str, AuthorizationManagementClient] = {}

    def close(self) -> None:
        for client in self._keyvault_clients.values():
            client.close()
        for authz in self._authz_clients.values():
            authz.close()  # type: ignore[no-untyped-call]  # the multi-API client's close is untyped

    def __enter__(self) -> KeyAccess:
        return self

    def __exit__(self, *args: object) -> None:
        self.close()

    # ---- public -------------------------------------------------------------------------------------
    def with_access(self, observed: ObservedConsumer) -> Consumer:
        """The consumer with ``identity_access`` set from the evaluation."""
        verdict = self.evaluate(observed.consumer.key, observed.identity)
        return replace(observed.consumer, identity_access=verdict.access)

    def evaluate(self, key: KeyRef, identity: EncryptionIdentity) -> AccessVerdict:
        if identity.principal_id is None:
            return AccessVerdict(IdentityAccess.DENIED, identity.problem or "the encryption identity does not resolve")
        if key.vault.is_managed_hsm:
            return AccessVerdict(IdentityAccess.UNKNOWN, "Managed HSM local RBAC is not evaluated")
        vault_id = self._vault_id(key.vault)
        if vault_id is None:
            reason = self._vault_ids_error or "not found among the inventoried subscriptions' vaults"
            return AccessVerdict(IdentityAccess.UNKNOWN, f"vault {key.vault.url}: {reason}")
        vault = self._vault_access(vault_id)
        if vault.unreadable:
            return AccessVerdict(IdentityAccess.UNKNOWN, vault.unreadable)
        principal = identity.principal_id.lower()
        if not vault.rbac:
            return _policy_verdict(vault, principal, vault_id)
        return self._rbac_verdict(vault, principal, f"{vault_id.id}/keys/{key.name}".lower())

    # ---- reading ------------------------------------------------------------------------------------
    def _vault_id(self, origin: VaultOrigin) -> VaultResourceId | None:
        if self._vault_ids is None:
            try:
                self._vault_ids = dict(self._vault_ids_source())
            except ControllerError as err:
                self._vault_ids = {}
                self._vault_ids_error = f"the vaults could not be listed ({err})"
        return self._vault_ids.get(origin)

    def _keyvault(self, subscription: str) -> KeyVaultManagementClient:
        client = self._keyvault_clients.get(subscription)
        if client is None:
            client = KeyVaultManagementClient(self._arm.credential, subscription, **self._arm.client_options())
            self._keyvault_clients[subscription] = client
        return client

    def _authz(self, subscription: str) -> AuthorizationManagementClient:
        client = self._authz_clients.get(subscription)
        if client is None:
            client = AuthorizationManagementClient(self._arm.credential, subscription, **self._arm.client_options())
            self._authz_clients[subscription] = client
        return client

    def _vault_access(self, vault_id: VaultResourceId) -> _VaultAccess:
        cached = self._vaults.get(vault_id.id.lower())
        if cached is None:
            try:
                cached = self._read_vault(vault_id)
            except ControllerError as err:
                cached = _VaultAccess(rbac=False, unreadable=f"could not read {vault_id.id}: {err}")
            self._vaults[vault_id.id.lower()] = cached
        return cached

    def _read_vault(self, vault_id: VaultResourceId) -> _VaultAccess:
        with translated(f"get vault {vault_id.name}"):
            vault = self._keyvault(vault_id.subscription_id).vaults.get(vault_id.resource_group, vault_id.name)
        properties = vault.properties
        if properties.enable_rbac_authorization:
            return _VaultAccess(rbac=True, assignments=tuple(self._assignments(vault_id)))
        policies = tuple(
            (entry.object_id.lower(), frozenset(sdk_text(p).lower() for p in (entry.permissions.keys_property or ())))
            for entry in properties.access_policies or ()
            if entry.object_id and not entry.application_id  # a compound entry needs that application too
        )
        return _VaultAccess(rbac=False, policies=policies)

    def _assignments(self, vault_id: VaultResourceId) -> Iterable[_Assignment]:
        with translated(f"list role assignments of vault {vault_id.name}"):
            listed = list(self._authz(vault_id.subscription_id).role_assignments.list_for_scope(vault_id.id))
        for assignment in listed:
            if assignment.principal_id and assignment.scope and assignment.role_definition_id:
                yield _Assignment(
                    principal_id=assignment.principal_id.lower(),
                    scope=assignment.scope.rstrip("/").lower(),
                    role_definition_id=assignment.role_definition_id,
                    conditional=bool(assignment.condition),
                )

    def _role(self, role_definition_id: str, subscription: str) -> tuple[_Permission, ...] | str:
        key = role_definition_id.lower()
        cached = self._roles.get(key)
        if cached is None:
            try:
                with translated(f"get role definition {role_definition_id}"):
                    definition = self._authz(subscription).role_definitions.get_by_id(role_definition_id)
                cached = tuple(
                    _Permission(tuple(block.data_actions or ()), tuple(block.not_data_actions or ()))
                    for block in definition.permissions or ()
                )
            except ControllerError as err:
                cached = f"role definition {role_definition_id} is unreadable: {err}"
            self._roles[key] = cached
        return cached

    # ---- deciding -----------------------------------------------------------------------------------
    def _rbac_verdict(self, vault: _VaultAccess, principal: str, key_scope: str) -> AccessVerdict:
        vault_scope = key_scope.rsplit("/keys/", 1)[0]
        subscription = vault_scope.split("/")[2]
        granted: set[str] = set()
        evidence: list[str] = []
        unevaluated: list[str] = []
        for assignment in vault.assignments:
            applies = assignment.scope == key_scope or _within(assignment.scope, vault_scope)
            if assignment.principal_id != principal or not applies:
                continue
            if assignment.conditional:
                unevaluated.append(f"conditional assignment at {assignment.scope}")
                continue
            role = self._role(assignment.role_definition_id, subscription)
            if isinstance(role, str):
                unevaluated.append(role)
                continue
            allowed = {action for action in DATA_ACTIONS if any(block.allows(action) for block in role)}
            if allowed:
                evidence.append(f"{assignment.role_definition_id.rsplit('/', 1)[-1]} at {assignment.scope}")
            granted |= allowed
        missing = [action for action in DATA_ACTIONS if action not in granted]
        if not missing:
            return AccessVerdict(IdentityAccess.GRANTED, "RBAC: " + "; ".join(evidence))
        if unevaluated:
            return AccessVerdict(IdentityAccess.UNKNOWN, "RBAC: not evaluated: " + "; ".join(unevaluated))
        return AccessVerdict(IdentityAccess.DENIED, f"RBAC: principal {principal} lacks {', '.join(missing)}")


def _within(scope: str, resource: str) -> bool:
    """True when a role assignment at ``scope`` applies to ``resource`` (at or above it)."""
    return scope in ("", "/") or resource == scope or resource.startswith(scope + "/")


def _policy_verdict(vault: _VaultAccess, principal: str, vault_id: VaultResourceId) -> AccessVerdict:
    permissions: set[str] = set()
    for object_id, granted in vault.policies:
        if object_id == principal:
            permissions |= granted
    if "all" in permissions:
        return AccessVerdict(IdentityAccess.GRANTED, f"access policy of {vault_id.name}: all")
    missing = [permission for permission in POLICY_PERMISSIONS if permission not in permissions]
    if missing:
        return AccessVerdict(
            IdentityAccess.DENIED,
            f"access policy of {vault_id.name}: principal {principal} lacks {', '.join(missing)}",
        )
    return AccessVerdict(IdentityAccess.GRANTED, f"access policy of {vault_id.name}: get, wrapKey, unwrapKey")

"""Can a consumer's encryption identity get, wrapKey and unwrapKey its key? (RULES.md CMK-006, for the reconciler)

What is read goes through the one reader the compliance sweep uses too (adapters/access_reads.py): the
vault (``vaults.get``), on an RBAC vault the role assignments that apply to it (``list_for_scope`` at the
vault: at, above and below it, management groups included), the role definitions those of the identity
name, and, when one of them sits at a management group, the subscriptions' management-group ancestry
(getEntities). The decision is the pure evaluator's (controller.compliance.access.key_access): access
policies (``all`` grants everything, compound entries do not count, names compare case-insensitively),
RBAC data actions with wildcards minus notDataActions, one permission block per needed action, scopes
from the key up to the tenant root group. ABAC conditions, unreadable role definitions and an unknown
ancestry make the verdict UNKNOWN unless what could be decided already grants. Deny assignments are not
read.

Cost per run: one ``vaults.get`` per vault, one role-assignment listing per RBAC vault, one ``get_by_id``
per distinct role definition and at most one getEntities, whatever the number of consumers. The vault's
ARM id comes from ``vault_ids`` (Inventory.list_vaults: Resource Graph, or the vault listings), read once.
Anything unreadable yields IdentityAccess.UNKNOWN with the reason, never a silent grant or denial.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from azure.mgmt.authorization import AuthorizationManagementClient
from azure.mgmt.keyvault import KeyVaultManagementClient

from controller.adapters.access_reads import get_role_definition, list_assignments, read_ancestry, vault_from_sdk
from controller.adapters.azure_errors import translated
from controller.adapters.credentials import ArmConnection
from controller.compliance.access import AccessResult, is_management_group_scope, key_access
from controller.compliance.estate import RoleAssignment, RoleDefinition, Subscription, Vault, arm_name, same_name
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


@dataclass(frozen=True, slots=True)
class _VaultRead:
    """One vault as read for access decisions, or why it could not be read."""

    vault: Vault | None
    unreadable: str = ""


class KeyAccess:
    """Evaluates consumers' key access, reading each vault's grants once per instance (one run)."""

    def __init__(
        self, arm: ArmConnection, vault_ids: Callable[[], Mapping[VaultOrigin, VaultResourceId]]
    ) -> None:
        self._arm = arm
        self._vault_ids_source = vault_ids
        self._vault_ids: Mapping[VaultOrigin, VaultResourceId] | None = None
        self._vault_ids_error = ""
        self._vaults: dict[str, _VaultRead] = {}
        self._roles: dict[str, RoleDefinition | str] = {}  # id lower -> definition, or why unreadable
        self._ancestry: dict[str, tuple[str, ...] | None] = {}  # subscription lower -> groups (None: unknown)
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
        read = self._vault_read(vault_id)
        if read.vault is None:
            return AccessVerdict(IdentityAccess.UNKNOWN, read.unreadable)
        vault, principal = read.vault, identity.principal_id
        own = [assignment for assignment in read.vault.role_assignments or ()
               if same_name(assignment.principal_id, principal)]
        definitions, unreadable = self._definitions(own, vault_id.subscription_id)
        subscription = Subscription(
            subscription_id=vault_id.subscription_id,
            management_groups=self._groups_of(vault_id.subscription_id)
            if any(is_management_group_scope(assignment.scope) for assignment in own) else None,
        )
        result = key_access(vault, key.name, principal, role_definitions=definitions, subscription=subscription)
        return _verdict(result, vault, principal.lower(), unreadable)

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

    def _vault_read(self, vault_id: VaultResourceId) -> _VaultRead:
        cached = self._vaults.get(vault_id.id.lower())
        if cached is None:
            try:
                with translated(f"get vault {vault_id.name}"):
                    item = self._keyvault(vault_id.subscription_id).vaults.get(vault_id.resource_group, vault_id.name)
                assignments = (list_assignments(self._authz(vault_id.subscription_id), vault_id.id)
                               if item.properties.enable_rbac_authorization else None)
                cached = _VaultRead(vault_from_sdk(item, role_assignments=assignments))
            except ControllerError as err:
                cached = _VaultRead(None, unreadable=f"could not read {vault_id.id}: {err}")
            self._vaults[vault_id.id.lower()] = cached
        return cached

    def _definitions(
        self, assignments: list[RoleAssignment], subscription: str
    ) -> tuple[dict[str, RoleDefinition], list[str]]:
        """The role definitions the assignments name (each read once per run), by lower-case GUID, and
        why those that could not be read could not."""
        definitions: dict[str, RoleDefinition] = {}
        unreadable: list[str] = []
        for assignment in assignments:
            key = assignment.role_definition_id.lower()
            if key not in self._roles:
                try:
                    self._roles[key] = get_role_definition(self._authz(subscription), assignment.role_definition_id)
                except ControllerError as err:
                    self._roles[key] = f"role definition {assignment.role_definition_id} is unreadable: {err}"
            found = self._roles[key]
            if isinstance(found, str):
                unreadable.append(found)
            else:
                definitions[arm_name(assignment.role_definition_id).lower()] = found
        return definitions, unreadable

    def _groups_of(self, subscription: str) -> tuple[str, ...] | None:
        """The subscription's management groups (one getEntities per run); None when unreadable."""
        if subscription.lower() not in self._ancestry:
            try:
                self._ancestry.update({sub.lower(): groups for sub, groups in
                                       read_ancestry(self._arm, [subscription]).items()})
            except ControllerError:
                self._ancestry[subscription.lower()] = None  # the evaluator says what it could not decide
        return self._ancestry[subscription.lower()]


def _verdict(result: AccessResult, vault: Vault, principal: str, unreadable: list[str]) -> AccessVerdict:
    """The evaluator's result as the reconciler's verdict, with its evidence."""
    if result.model == "access-policy":
        if result.access is IdentityAccess.GRANTED:
            return AccessVerdict(IdentityAccess.GRANTED, f"{vault.name}: " + "; ".join(result.granted_by))
        return AccessVerdict(result.access, f"access policy of {vault.name}: principal {principal} lacks "
                                            + ", ".join(result.missing))
    if result.access is IdentityAccess.GRANTED:
        return AccessVerdict(IdentityAccess.GRANTED, "RBAC: " + "; ".join(
            f"{arm_name(grant.role_definition_id)}: {granted}"  # "<role GUID>: <role name> at <scope>"
            for grant, granted in zip(result.grants, result.granted_by, strict=True)))
    if result.access is IdentityAccess.UNKNOWN:
        return AccessVerdict(IdentityAccess.UNKNOWN, "RBAC: not evaluated: " + "; ".join(
            [*result.unevaluated, *unreadable]))
    return AccessVerdict(IdentityAccess.DENIED, f"RBAC: principal {principal} lacks {', '.join(result.missing)}")

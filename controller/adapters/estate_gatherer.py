"""The estate gatherer: one ``Estate`` per compliance sweep, read through ARM and the Key Vault data plane.

What is read, and through what (the management SDKs unless said otherwise):
    per subscription    the subscription (tenant), storage accounts, vaults, deleted vaults and
                        user-assigned identities: one paged listing each
    per account         its encryption scopes (one paged listing). Not from Resource Graph: that Azure
                        indexes ``storageaccounts/encryptionscopes`` in its ``resources`` table is not
                        documented, and an unindexed type would answer "no scopes" rather than fail,
                        so a CMK-001/002 gap would go unseen; ARM's listing is the documented source
    per vault           keys (``Microsoft.KeyVault/vaults/keys``: type, size, current attributes and the
                        rotation policy) and each key's versions, through ARM, so that a vault firewall
                        does not blind the sweep; its diagnostic settings; the role assignments that
                        apply to it (inherited ones included: ``list_for_scope`` without ``atScope()``);
                        its soft-deleted keys from the data plane (the only place they are listed)
    per role definition the definition, once, however many assignments name it
    per sweep           the subscriptions' management-group ancestry (azure-mgmt-managementgroups
                        ``entities.list``: getEntities, each subscription's ``parentNameChain``), only
                        when a role assignment at a management-group scope was read
    per registered container  the census of the key versions wrapping its blobs (controller.blob_census)

Cost: O(subscriptions + accounts + vaults + keys + role definitions + containers + pages) requests, never
O(accounts x keys); every vault and key is read once however many accounts use it. Reads run on a small
thread pool. A read that fails is recorded as a ``ReadFailure`` (what, why, the HTTP status) and the sweep
goes on: the rules turn it into a CMK-000 finding.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

from azure.core.credentials import TokenCredential
from azure.core.exceptions import AzureError, HttpResponseError
from azure.core.rest import HttpRequest
from azure.mgmt.authorization import AuthorizationManagementClient
from azure.mgmt.keyvault import KeyVaultManagementClient
from azure.mgmt.monitor import MonitorManagementClient
from azure.mgmt.msi import ManagedServiceIdentityClient
from azure.mgmt.storage import StorageManagementClient

from controller.adapters.access_reads import get_role_definition, list_assignments, read_ancestry, vault_from_sdk
from controller.adapters.azure_errors import translated
from controller.adapters.credentials import ArmConnection
from controller.adapters.key_vault import KeyVaultKeys
from controller.adapters.storage_control import sdk_text
from controller.blob_census import wrapping_versions
from controller.compliance.access import is_management_group_scope
from controller.compliance.drift import (
    DriftFocus,
    FocusedEstate,
    ListedVault,
    coverage_of,
    scope_vaults,
    select,
)
from controller.compliance.estate import (
    AccountEncryption,
    AttachedIdentity,
    ContainerCensus,
    DeletedVault,
    DiagnosticSetting,
    EncryptionScope,
    Estate,
    KeyVaultProperties,
    LogSetting,
    ManagedIdentity,
    ReadAspect,
    ReadFailure,
    RoleDefinition,
    StorageAccount,
    Subscription,
    UserAssignedIdentity,
    Vault,
    VaultKey,
    arm_name,
    arm_resource_group,
)
from controller.compliance.resolve import account_key_uri
from controller.errors import ControllerError, InvalidKeyId
from controller.model import (
    DeletedKeyInfo,
    KeyRef,
    KeyRotationPolicyInfo,
    KeyVersionInfo,
    RotationLifetimeAction,
    parse_key_id,
    parse_vault_origin,
)
from controller.ports import BlobStore
from controller.settings import RewrapTarget
from controller.thread_pools import interruptible_pool
from controller.vault_policy import VaultPolicy

T = TypeVar("T")

#: Small on purpose: ARM throttles reads per principal and subscription, and a sweep is not latency-bound;
#: 8 rather than 4 because most of a worker's time is waiting for ARM (bench/sweep_bench.py).
DEFAULT_WORKERS = 8
#: The subscriptions API version the tenant id is read with (GET /subscriptions/{id}).
_SUBSCRIPTIONS_API = "2022-12-01"

#: Account tag naming its client-side-encrypted containers (the same tag the re-wrap fan-out reads).
REWRAP_CONTAINERS_TAG = "cmk-rewrap-containers"

#: What a failed management-group read names (CMK-000): the tenant-level listing of the hierarchy.
_GET_ENTITIES = "/providers/Microsoft.Management/getEntities"



class _Failures:
    """The read failures of one sweep, appended from the pool's threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.items: list[ReadFailure] = []

    def add(self, resource: str, aspect: ReadAspect, err: Exception) -> None:
        status = _status_of(err)
        reason = _reason_of(err)
        with self._lock:
            self.items.append(ReadFailure(resource=resource, aspect=aspect, reason=reason, status_code=status))

    def read(self, resource: str, aspect: ReadAspect, call: Callable[[], T]) -> T | None:
        """``call()``; None (and a recorded failure) when Azure refused or could not be reached."""
        try:
            return call()
        except (AzureError, ControllerError) as err:
            self.add(resource, aspect, err)
            return None


def _status_of(err: Exception) -> int | None:
    for candidate in (err, err.__cause__):
        status = getattr(candidate, "status_code", None)
        if isinstance(status, int):
            return status
    return None


def _reason_of(err: Exception) -> str:
    if isinstance(err, HttpResponseError):
        code = getattr(err, "error_code", None) or (err.error.code if err.error is not None else None)
        return f"HTTP {err.status_code} {code or err.reason or ''}".strip()
    if isinstance(err, ControllerError):
        return str(err)
    return type(err).__name__  # connection failures: the class says which (no URL with a token in it)


class EstateGatherer:
    """Reads one ``Estate`` of the given subscriptions (``gather``), as the controller's identity sees it."""

    def __init__(
        self,
        arm: ArmConnection,
        *,
        key_vault_credential: TokenCredential,
        policy: VaultPolicy,
        custom_origins: Sequence[str] = (),
        registered_containers: Sequence[RewrapTarget] = (),
        blob_stores: Callable[[str], BlobStore] | None = None,
        workers: int = DEFAULT_WORKERS,
        key_vault_verify: str | bool = True,
        verify_challenge_resource: bool = True,
    ) -> None:
        self._arm = arm
        self._kv_credential = key_vault_credential
        self._kv_verify = key_vault_verify
        self._kv_verify_challenge = verify_challenge_resource  # off only for loopback test vaults (key_vault.py)
        self._policy = policy
        self._custom_origins = tuple(custom_origins)
        self._registered = tuple(registered_containers)
        self._blob_stores = blob_stores
        self._workers = workers
        self._clients: dict[tuple[type, str], Any] = {}
        self._clients_lock = threading.Lock()

    def gather(self, subscriptions: Sequence[str], now: datetime) -> Estate:
        """The estate of ``subscriptions`` (empty: every subscription the identity can list). Raises a
        ControllerError only when there is nothing to sweep: the subscriptions cannot be listed."""
        failures = _Failures()
        if not subscriptions:
            subscriptions = self._subscriptions()
        with interruptible_pool(self._workers, "estate") as pool:
            # Subscriptions one after the other (there are few); their accounts and vaults on the pool.
            per_subscription = [_SubscriptionReader(self, sub, failures, pool).read() for sub in subscriptions]
        accounts = tuple(account for part in per_subscription for account in part.accounts)
        vaults = tuple(vault for part in per_subscription for vault in part.vaults)
        deleted = [part.deleted_vaults for part in per_subscription]
        definitions: dict[str, RoleDefinition] = {}
        for part in per_subscription:
            definitions.update(part.role_definitions)
        swept = tuple(part.subscription for part in per_subscription)
        if any(is_management_group_scope(assignment.scope)
               for vault in vaults for assignment in vault.role_assignments or ()):
            swept = self._with_ancestry(swept, failures)
        census = self._census(accounts, failures)
        return Estate(
            gathered_at=now,
            storage_accounts=accounts,
            vaults=vaults,
            deleted_vaults=None if any(part is None for part in deleted)
            else tuple(vault for part in deleted if part is not None for vault in part),
            audit=None,  # the audit analysis's, added by the use case (service.run_compliance_sweep)
            user_assigned_identities=tuple(uai for part in per_subscription for uai in part.identities),
            role_definitions=tuple(definitions[key] for key in sorted(definitions)),
            subscriptions=swept,
            container_census=census,
            read_failures=tuple(failures.items),
            custom_origins=self._custom_origins,
        )

    def gather_focus(self, subscriptions: Sequence[str], focus: DriftFocus, now: datetime) -> FocusedEstate:
        """The part of the estate a few resource events touched (compliance.drift): every subscription's
        accounts, vaults, deleted vaults and identities listed (one paged listing each), then only the
        selected vaults and accounts read in full, the way ``gather`` reads them."""
        failures = _Failures()
        if not subscriptions:
            subscriptions = self._subscriptions()
        with interruptible_pool(self._workers, "drift") as pool:
            readers = [_SubscriptionReader(self, sub, failures, pool) for sub in subscriptions]
            listings = [wait() for wait in [reader.listings() for reader in readers]]
            accounts = [account for listing in listings for account in listing.accounts]
            vault_items = [item for listing in listings for item in listing.vault_items]
            listed = [ListedVault(id=item.id, vault_uri=item.properties.vault_uri or "") for item in vault_items]
            selection = select(focus, [summary for _, summary in accounts], listed)
            account_reads = [pool.submit(listing.reader._account, item) for listing in listings
                             for item, summary in listing.accounts if summary.id.lower() in selection.accounts]
            vault_reads = {item.id.lower(): pool.submit(listing.reader._vault, item) for listing in listings
                           for item in listing.vault_items if item.id.lower() in selection.vaults}
            read_accounts = [future.result() for future in account_reads]
            # The vaults the touched accounts' encryption scopes use are known once their scopes are read.
            used_by_scopes = scope_vaults(read_accounts, listed) - vault_reads.keys()
            for listing in listings:
                for item in listing.vault_items:
                    if item.id.lower() in used_by_scopes:
                        vault_reads[item.id.lower()] = pool.submit(listing.reader._vault, item)
            read_vaults = [future.result() for future in vault_reads.values()]
        deleted = [listing.deleted_vaults for listing in listings]
        definitions: dict[str, RoleDefinition] = {}
        for reader in readers:
            definitions.update(reader.definitions())
        estate = Estate(
            gathered_at=now,
            storage_accounts=tuple(read_accounts),
            vaults=tuple(read_vaults),
            deleted_vaults=None if any(part is None for part in deleted)
            else tuple(vault for part in deleted if part is not None for vault in part),
            audit=None,  # drift never evaluates CMK-017 (compliance.drift.SWEEP_ONLY_RULES)
            user_assigned_identities=tuple(uai for listing in listings for uai in listing.identities),
            role_definitions=tuple(definitions[key] for key in sorted(definitions)),
            subscriptions=tuple(Subscription(subscription_id=sub) for sub in subscriptions),
            read_failures=tuple(failures.items),
            custom_origins=self._custom_origins,
        )
        return FocusedEstate(estate, coverage_of(estate, selection, listed))

    def _subscriptions(self) -> list[str]:
        # Any management client sends a tenant-level request; none of them models GET /subscriptions (that
        # is azure-mgmt-resource's, not a dependency), and the subscription id it is built with is unused.
        with translated("list the subscriptions the identity can read"), StorageManagementClient(
                self._arm.credential, "unused", **self._arm.client_options()) as client:
            listed: list[dict[str, Any]] = []
            request = HttpRequest("GET", "/subscriptions", params={"api-version": _SUBSCRIPTIONS_API})
            while True:
                response = client.send_request(request)
                response.raise_for_status()
                page = response.json()
                listed.extend(page.get("value") or [])
                if not page.get("nextLink"):
                    break
                request = HttpRequest("GET", str(page["nextLink"]))
        return sorted({str(item["subscriptionId"]).lower() for item in listed if item.get("subscriptionId")})

    def _with_ancestry(self, subscriptions: tuple[Subscription, ...],
                       failures: _Failures) -> tuple[Subscription, ...]:
        """The subscriptions with their management groups, nearest first up to the tenant root group, from
        one paged getEntities listing; unchanged (ancestry unknown) when it cannot be read."""
        chains = failures.read(_GET_ENTITIES, ReadAspect.MANAGEMENT_GROUPS, partial(
            read_ancestry, self._arm, [subscription.subscription_id for subscription in subscriptions])) or {}
        return tuple(replace(subscription, management_groups=chains.get(subscription.subscription_id))
                     for subscription in subscriptions)

    # --- shared helpers used by the per-subscription reader ------------------------------------------

    def mgmt(self, client: type[T], subscription: str) -> T:
        """One management client per type and subscription for the gatherer's life: every sweep and
        focused gather reuses its connections (a resource event is handled in seconds, not handshakes)."""
        with self._clients_lock:
            key = (client, subscription.lower())
            if key not in self._clients:
                self._clients[key] = client(self._arm.credential, subscription,  # type: ignore[call-arg]
                                            **self._arm.client_options())
            found: T = self._clients[key]
            return found

    def deleted_keys(self, vault_uri: str) -> tuple[DeletedKeyInfo, ...]:
        origin = parse_vault_origin(vault_uri, custom_origins=self._custom_origins)
        with KeyVaultKeys(origin, self._kv_credential, connection_verify=self._kv_verify,
                          retry_total=self._arm.retry_total,
                          verify_challenge_resource=self._kv_verify_challenge) as keys:
            return keys.list_deleted_keys()

    def key_ref(self, uri: str) -> KeyRef:
        return parse_key_id(uri, custom_origins=self._custom_origins)

    def _census(self, accounts: Iterable[StorageAccount], failures: _Failures) -> tuple[ContainerCensus, ...]:
        """Blobs per wrapping version in each registered container of an account that uses a vault key."""
        if self._blob_stores is None:
            return ()
        stores = self._blob_stores
        results = []
        for account in accounts:
            uri = account_key_uri(account) if account.encryption.uses_key_vault else None
            containers = sorted({target.container for target in self._registered
                                 if target.account.lower() == account.name.lower()}
                                | set(_tagged_containers(account)))
            if uri is None or not containers:
                continue
            try:
                key = self.key_ref(uri).versionless
            except InvalidKeyId:
                continue  # CMK-000 names the unparsable key URI of the account itself
            for container in containers:
                name = f"{account.name}/{container}"
                counted = failures.read(name, ReadAspect.BLOB_CENSUS,
                                        partial(self._count, stores, account.name, container, key))
                results.append(ContainerCensus(
                    account=account.name, container=container, key_uri=key.uri,
                    blobs_per_version=None if counted is None else {v.lower(): n for v, n in counted.items()}))
        return tuple(results)


    def _count(self, stores: Callable[[str], BlobStore], account: str, container: str, key: KeyRef) -> Counter[str]:
        """Blobs per version of ``key`` in one container (reaching the account's blob service may fail too)."""
        return wrapping_versions(stores(account), [container], key, policy=self._policy)


def _account_summary(item: Any) -> StorageAccount:
    """An account as its listing shows it (encryption and identity), its scopes not read."""
    return StorageAccount(
        id=item.id, name=item.name, location=item.location or "",
        sku=item.sku.name if item.sku is not None else "", kind=item.kind or "StorageV2",
        tags=dict(item.tags or {}), identity=_managed_identity(item.identity),
        encryption=_encryption(item.encryption), encryption_scopes=None,
    )


def _tagged_containers(account: StorageAccount) -> list[str]:
    tagged = account.tag(REWRAP_CONTAINERS_TAG) or ""
    return [container.strip() for container in tagged.split(";") if container.strip()]


@dataclass
class _Listings:
    """A subscription's listings for a focused gather: accounts (the SDK item and its estate value,
    scopes not read), vault items, deleted vaults and identities."""

    reader: _SubscriptionReader
    accounts: list[tuple[Any, StorageAccount]]
    vault_items: list[Any]
    deleted_vaults: tuple[DeletedVault, ...] | None
    identities: list[UserAssignedIdentity]


@dataclass
class _SubscriptionPart:
    subscription: Subscription
    accounts: list[StorageAccount]
    vaults: list[Vault]
    deleted_vaults: tuple[DeletedVault, ...] | None
    identities: list[UserAssignedIdentity]
    role_definitions: dict[str, RoleDefinition]


class _SubscriptionReader:
    """Everything of one subscription; per-account and per-vault reads go to the shared pool."""

    def __init__(self, gatherer: EstateGatherer, subscription: str, failures: _Failures,
                 pool: ThreadPoolExecutor) -> None:
        self.g = gatherer
        self.sub = subscription
        self.failures = failures
        self.pool = pool
        self.storage = gatherer.mgmt(StorageManagementClient, subscription)
        self.keyvault = gatherer.mgmt(KeyVaultManagementClient, subscription)
        self.authz = gatherer.mgmt(AuthorizationManagementClient, subscription)
        self.monitor = gatherer.mgmt(MonitorManagementClient, subscription)
        self.msi = gatherer.mgmt(ManagedServiceIdentityClient, subscription)
        self._definition_lock = threading.Lock()
        self._definitions: dict[str, RoleDefinition | None] = {}

    def read(self) -> _SubscriptionPart:
        scope = f"/subscriptions/{self.sub}"
        read = self.failures.read
        tenant = self._tenant()
        # Each account and vault is handed to the pool as its page arrives (the listings are streamed).
        accounts = read(scope, ReadAspect.STORAGE_ACCOUNTS, lambda: [
            self.pool.submit(self._account, item) for item in self.storage.storage_accounts.list()])
        vaults = read(scope, ReadAspect.VAULTS, lambda: [
            self.pool.submit(self._vault, item) for item in self.keyvault.vaults.list_by_subscription()])
        deleted = read(scope, ReadAspect.DELETED_VAULTS, lambda: tuple(
            _deleted_vault(item) for item in self.keyvault.vaults.list_deleted()))
        identities = read(scope, ReadAspect.USER_ASSIGNED_IDENTITIES, lambda: [
            _identity(item) for item in self.msi.user_assigned_identities.list_by_subscription()]) or []
        read_accounts = [future.result() for future in accounts or ()]
        read_vaults = [future.result() for future in vaults or ()]  # they read the role definitions
        definitions = self.definitions()
        return _SubscriptionPart(Subscription(subscription_id=self.sub, tenant_id=tenant), read_accounts,
                                 read_vaults, deleted, identities, definitions)

    def listings(self) -> Callable[[], _Listings]:
        """Start the listings of a focused gather (EstateGatherer.gather_focus) on the pool, all four at
        once; the returned call waits for them. Called from the gathering thread, never from the pool."""
        scope = f"/subscriptions/{self.sub}"
        read = self.failures.read
        accounts = self.pool.submit(read, scope, ReadAspect.STORAGE_ACCOUNTS, lambda: [
            (item, _account_summary(item)) for item in self.storage.storage_accounts.list()])
        vaults = self.pool.submit(read, scope, ReadAspect.VAULTS,
                                  lambda: list(self.keyvault.vaults.list_by_subscription()))
        deleted = self.pool.submit(read, scope, ReadAspect.DELETED_VAULTS, lambda: tuple(
            _deleted_vault(item) for item in self.keyvault.vaults.list_deleted()))
        identities = self.pool.submit(read, scope, ReadAspect.USER_ASSIGNED_IDENTITIES, lambda: [
            _identity(item) for item in self.msi.user_assigned_identities.list_by_subscription()])
        return lambda: _Listings(self, accounts.result() or [], vaults.result() or [], deleted.result(),
                                 identities.result() or [])

    def definitions(self) -> dict[str, RoleDefinition]:
        with self._definition_lock:
            return {guid: found for guid, found in self._definitions.items() if found is not None}

    def _tenant(self) -> str | None:
        """The subscription's tenant; None (unknown) when it cannot be read: it only feeds CMK-020's
        cross-tenant advice, which then does not count this subscription's tenant."""
        request = HttpRequest("GET", f"/subscriptions/{self.sub}", params={"api-version": _SUBSCRIPTIONS_API})
        try:
            response = self.storage.send_request(request)
            response.raise_for_status()
            tenant = response.json().get("tenantId")
        except (AzureError, ValueError):
            return None
        return str(tenant) if tenant else None

    # --- storage --------------------------------------------------------------------------------------

    def _account(self, item: Any) -> StorageAccount:
        group = arm_resource_group(item.id)
        scopes = self.failures.read(item.id, ReadAspect.ENCRYPTION_SCOPES, lambda: tuple(
            _scope(scope) for scope in self.storage.encryption_scopes.list(group, item.name)))
        return replace(_account_summary(item), encryption_scopes=scopes)

    # --- vaults ---------------------------------------------------------------------------------------

    def _vault(self, item: Any) -> Vault:
        props = item.properties
        group = arm_resource_group(item.id)
        read = self.failures.read
        keys = read(item.id, ReadAspect.KEYS, lambda: self._keys(group, item.name, props.vault_uri))
        diagnostics = read(item.id, ReadAspect.DIAGNOSTIC_SETTINGS, lambda: tuple(
            _diagnostic(setting) for setting in self.monitor.diagnostic_settings.list(item.id)))
        assignments = read(item.id, ReadAspect.ROLE_ASSIGNMENTS, partial(list_assignments, self.authz, item.id))
        for assignment in assignments or ():
            self._definition(assignment.role_definition_id)
        deleted = read(item.id, ReadAspect.DELETED_KEYS, lambda: self.g.deleted_keys(props.vault_uri))
        return vault_from_sdk(item, role_assignments=assignments, keys=keys, deleted_keys=deleted,
                              diagnostic_settings=diagnostics)

    def _keys(self, group: str, vault: str, vault_uri: str) -> tuple[VaultKey, ...]:
        """Every key of the vault through ARM, each with its versions (one paged listing per key)."""
        keys = []
        for key in self.keyvault.keys.list(group, vault):
            props = key.properties
            name = str(key.name)
            versions = self.failures.read(f"{vault_uri.rstrip('/')}/keys/{name}", ReadAspect.KEY_VERSIONS,
                                          partial(self._versions, group, vault, name))
            uri = props.key_uri or f"{vault_uri.rstrip('/')}/keys/{name}"
            keys.append(VaultKey(
                name=name,
                kty=sdk_text(props.kty),
                key_size=props.key_size,
                versions=versions,
                rotation_policy=_rotation_policy(self.g.key_ref(uri).versionless, props.rotation_policy),
                current_version=_version_name(props.key_uri_with_version) if props.key_uri_with_version else None,
            ))
        return tuple(keys)

    def _versions(self, group: str, vault: str, key: str) -> tuple[KeyVersionInfo, ...]:
        return tuple(_version(entry) for entry in self.keyvault.keys.list_versions(group, vault, key))

    def _definition(self, role_definition_id: str) -> None:
        """Read a role definition once per subscription, whichever vault's assignment names it first."""
        guid = arm_name(role_definition_id).lower()
        with self._definition_lock:
            if guid in self._definitions:
                return
            self._definitions[guid] = None
        found = self.failures.read(role_definition_id, ReadAspect.ROLE_DEFINITION,
                                   partial(get_role_definition, self.authz, role_definition_id))
        if found is not None:
            with self._definition_lock:
                self._definitions[guid] = found


# --- SDK model -> estate value ----------------------------------------------------------------------------


def _aware(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment if moment.utcoffset() is not None else moment.replace(tzinfo=UTC)


def _epoch(seconds: int | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


def _managed_identity(identity: Any) -> ManagedIdentity:
    if identity is None:
        return ManagedIdentity()
    attached: Mapping[str, Any] = identity.user_assigned_identities or {}
    return ManagedIdentity(
        type=sdk_text(identity.type) or "None",
        principal_id=identity.principal_id,
        tenant_id=identity.tenant_id,
        user_assigned=tuple(AttachedIdentity(resource_id=rid, principal_id=entry.principal_id,
                                             client_id=entry.client_id) for rid, entry in attached.items()),
    )


def _encryption(encryption: Any) -> AccountEncryption:
    if encryption is None:
        return AccountEncryption()
    kv = encryption.key_vault_properties
    services = encryption.services
    return AccountEncryption(
        key_source=sdk_text(encryption.key_source) or "Microsoft.Storage",
        key_vault_properties=None if kv is None else KeyVaultProperties(
            key_name=kv.key_name,
            key_version=kv.key_version,
            key_vault_uri=kv.key_vault_uri,
            current_versioned_key_identifier=kv.current_versioned_key_identifier,
            last_key_rotation_timestamp=_aware(kv.last_key_rotation_timestamp),
        ),
        user_assigned_identity=(encryption.encryption_identity.encryption_user_assigned_identity
                                if encryption.encryption_identity is not None else None),
        queue_key_type=_key_type(services.queue if services is not None else None),
        table_key_type=_key_type(services.table if services is not None else None),
    )


def _key_type(service: Any) -> str | None:
    return None if service is None or service.key_type is None else sdk_text(service.key_type)


def _scope(scope: Any) -> EncryptionScope:
    kv = scope.key_vault_properties
    return EncryptionScope(
        id=scope.id,
        name=scope.name,
        source=sdk_text(scope.source) or "Microsoft.Storage",
        state=sdk_text(scope.state) or "Enabled",
        key_uri=kv.key_uri if kv is not None else None,
        current_versioned_key_identifier=kv.current_versioned_key_identifier if kv is not None else None,
        last_key_rotation_timestamp=_aware(kv.last_key_rotation_timestamp) if kv is not None else None,
    )


def _deleted_vault(item: Any) -> DeletedVault:
    props = item.properties
    return DeletedVault(
        name=item.name,
        vault_id=props.vault_id if props is not None else "",
        location=(props.location if props is not None else None) or "",
        deletion_date=_aware(props.deletion_date) if props is not None else None,
        scheduled_purge_date=_aware(props.scheduled_purge_date) if props is not None else None,
    )


def _identity(item: Any) -> UserAssignedIdentity:
    return UserAssignedIdentity(id=item.id, principal_id=item.principal_id, client_id=item.client_id,
                                tenant_id=item.tenant_id)


def _diagnostic(setting: Any) -> DiagnosticSetting:
    return DiagnosticSetting(
        name=setting.name,
        logs=tuple(LogSetting(enabled=bool(log.enabled), category=log.category, category_group=log.category_group)
                   for log in setting.logs or ()),
        workspace_id=setting.workspace_id,
        storage_account_id=setting.storage_account_id,
        event_hub_authorization_rule_id=setting.event_hub_authorization_rule_id,
        marketplace_partner_id=setting.marketplace_partner_id,
    )


def _version_name(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1].lower()


def _version(entry: Any) -> KeyVersionInfo:
    props = entry.properties
    attributes = props.attributes
    uri = props.key_uri_with_version or entry.id
    created = _epoch(attributes.created if attributes is not None else None)
    if created is None:
        raise InvalidKeyId(f"ARM listed version {uri} without a creation time")
    return KeyVersionInfo(
        version=_version_name(uri),
        enabled=bool(attributes.enabled),
        created=created,
        not_before=_epoch(attributes.not_before),
        expires=_epoch(attributes.expires),
    )


def _rotation_policy(key: KeyRef, policy: Any) -> KeyRotationPolicyInfo:
    """ARM omits ``rotationPolicy`` when the key has none: that reads as a policy without actions."""
    if policy is None:
        return KeyRotationPolicyInfo(key=key, lifetime_actions=())
    attributes = policy.attributes
    return KeyRotationPolicyInfo(
        key=key,
        lifetime_actions=tuple(
            RotationLifetimeAction(
                action=sdk_text(action.action.type if action.action is not None else None),
                time_after_create=action.trigger.time_after_create if action.trigger is not None else None,
                time_before_expiry=action.trigger.time_before_expiry if action.trigger is not None else None,
            )
            for action in policy.lifetime_actions or ()
        ),
        expires_after=attributes.expiry_time if attributes is not None else None,
        created_on=_epoch(attributes.created) if attributes is not None else None,
        updated_on=_epoch(attributes.updated) if attributes is not None else None,
    )

"""Storage accounts and encryption scopes as CMK consumers (azure-mgmt-storage StorageManagementClient).

A consumer of a key is a storage account whose ``encryption.keySource`` is Microsoft.Keyvault with
``keyvaultproperties.keyvaulturi`` (compared as a normalised origin) and ``keyname`` (compared
case-insensitively) naming the key, or an encryption scope of source Microsoft.KeyVault whose
``keyVaultProperties.keyUri`` names it. Versionless (``keyversion`` empty, a versionless keyUri)
means automatic version updates are on.

Writes change only the encryption block: for an account the PATCH body is
``properties.encryption{keySource, keyvaultproperties, identity}`` with the key source, vault URI,
key name and encryption identity as read (never the top-level identity block, which would attach or
detach identities); for a scope ``properties{source, keyVaultProperties.keyUri}``. Turning automatic
updates on sends ``keyversion: ""`` explicitly: ARM treats an omitted keyversion as "unchanged" in a
PATCH. Before writing, the consumer is re-read and compared with the caller's view; when someone else
changed its key meanwhile the write is refused with Conflict (their configuration wins).

The state a write is checked against is ARM's own (never Resource Graph's, which lags writes by
minutes): what ``current_states`` just read for the consumers about to be written (a subscription's
paged listing when it has at least ``LIST_FROM`` of them), or the answer of this adapter's previous
write to the consumer (a storage update returns the account, so a pin is verified, and then
restored, without a read). Such a state is used once, and only within ``FRESH_FOR``; otherwise the
write reads the consumer first.

Cost: listing a subscription's consumers is one paged storage-accounts listing plus one scope
listing per candidate account (O(accounts)), except for an account whose listing found no Key Vault
scope within ``NO_KEY_VAULT_SCOPES_FOR`` (a burst of key events lists each account once); refreshing
N consumers before writing them is one paged listing per subscription (scopes: one read each); a write
is one PATCH, plus one read when no fresh state stands in for it (scopes: one more read of the account
for its identity and tags).
"""

from __future__ import annotations

import enum
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from azure.core.rest import HttpRequest
from azure.mgmt.storage import StorageManagementClient
from azure.mgmt.storage import models as storage_models
from azure.mgmt.storage.models import (
    Encryption,
    EncryptionIdentity,
    EncryptionScope,
    EncryptionScopeKeyVaultProperties,
    EncryptionScopeProperties,
    Identity,
    KeyVaultProperties,
    StorageAccount,
    StorageAccountPropertiesUpdateParameters,
    StorageAccountUpdateParameters,
)

from controller.adapters.azure_errors import translated
from controller.adapters.credentials import ArmConnection
from controller.errors import Conflict, InvalidKeyId, InvalidResourceId, NotFound
from controller.model import (
    Consumer,
    ConsumerKind,
    IdentityKind,
    KeyRef,
    ObservedConsumer,
    VaultOrigin,
    normalise_origin,
)
from controller.model import (
    EncryptionIdentity as ObservedIdentity,
)
from controller.thread_pools import interruptible_pool
from controller.vault_policy import VaultPolicy

KEY_SOURCE_KEYVAULT = "microsoft.keyvault"
#: Consumers of one subscription refreshed with its paged listing rather than one read each.
LIST_FROM = 5
#: The storage accounts listing read without the SDK's models (current_states): a stable
#: Microsoft.Storage version with the encryption block's shape the models read.
ACCOUNTS_API_VERSION = "2025-01-01"
#: Encryption-scope listings in flight at once while looking for a key's consumers.
SCOPE_LISTINGS = 16
#: Seconds a state read from ARM (a refresh, a write's answer) stands in for the read before a write.
#: The reconciler refreshes its consumers in chunks right before writing them (ExecutionLimits.refresh_every:
#: at ARM's 10 writes per second a chunk takes well under this) and plans a forced adoption's restore from
#: the pin's answer at once; a state older than this (a chunk held up by throttling) is read again. ARM has
#: no conditional storage account update, so someone else's change after the read is overwritten: this
#: bounds that window (the reconciler's write claims keep the controller's other instances off).
FRESH_FOR = 120.0
#: Seconds an account's scope listing that found no Key Vault scope answers for it when looking for a key's
#: consumers (every key event looks through every candidate account). Only where to look: an account with a
#: Key Vault scope is listed every time, and whatever is written is read from ARM first. A Key Vault scope
#: created meanwhile is found this much later, well within Resource Graph's own lag for the accounts
#: themselves (minutes), and the sweep finds it regardless.
NO_KEY_VAULT_SCOPES_FOR = 30.0

_STORAGE_ID = re.compile(
    r"/subscriptions/(?P<sub>[0-9a-f-]{36})/resourcegroups/(?P<rg>[-\w.()]{1,90})"
    r"/providers/microsoft\.storage/storageaccounts/(?P<account>[a-z0-9]{3,24})"
    r"(?:/encryptionscopes/(?P<scope>[a-z0-9-]{3,63}))?",
    re.IGNORECASE | re.ASCII,
)


class ScopeSearch(enum.StrEnum):
    """Which accounts' encryption scopes are listed when looking for a key's consumers.

    CMK_ACCOUNTS (default): accounts whose own encryption uses a Key Vault key. Encryption scopes are
    not in Resource Graph, so each candidate costs one listing; an account on Microsoft-managed keys
    with a Key Vault scope is found only with ALL_ACCOUNTS (one listing per account in scope).
    """

    CMK_ACCOUNTS = "cmk_accounts"
    ALL_ACCOUNTS = "all_accounts"


@dataclass(frozen=True, slots=True)
class StorageResourceId:
    subscription_id: str
    resource_group: str
    account: str
    scope: str | None = None

    @property
    def account_id(self) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.Storage/storageAccounts/{self.account}"
        )


def parse_storage_resource_id(resource_id: str) -> StorageResourceId:
    match = _STORAGE_ID.fullmatch(resource_id.strip().rstrip("/"))
    if match is None:
        raise InvalidResourceId(f"{resource_id!r} is not a storage account or encryption scope id")
    return StorageResourceId(match["sub"].lower(), match["rg"], match["account"].lower(), match["scope"])


def sdk_text(value: object) -> str:
    """An SDK enum member's wire value, or the string itself (str() of a member is its qualified name)."""
    if value is None:
        return ""
    return str(value.value) if isinstance(value, enum.Enum) else str(value)


# ---- reading consumers (shared with the Resource Graph inventory) ---------------------------------------


# The SDK's models deserialize a field on every read of it (a nested model is built anew each time): the
# readers below read each field once, which halves what a consumer costs to build (every key event builds
# every candidate account's, and every write two).


def account_key(account: StorageAccount, policy: VaultPolicy) -> KeyRef | None:
    """The Key Vault key an account is configured with (versioned if pinned), or None."""
    return _configured_key(account.encryption, policy)


def _configured_key(encryption: Encryption | None, policy: VaultPolicy) -> KeyRef | None:
    if encryption is None or sdk_text(encryption.key_source).lower() != KEY_SOURCE_KEYVAULT:
        return None
    properties = encryption.key_vault_properties
    if properties is None:
        return None
    vault_uri, name, version = properties.key_vault_uri, properties.key_name, properties.key_version
    if not vault_uri or not name:
        return None
    try:
        key = KeyRef(_vault_of(vault_uri, policy), name)
        return key.with_version(version) if version else key
    except InvalidKeyId:
        return None  # an unconfigured custom origin or a malformed value: not a key the controller manages


def scope_key(scope: EncryptionScope, policy: VaultPolicy) -> KeyRef | None:
    if sdk_text(scope.source).lower() != KEY_SOURCE_KEYVAULT or scope.key_vault_properties is None:
        return None
    key_uri = scope.key_vault_properties.key_uri
    if not key_uri:
        return None
    try:
        return policy.parse_key_id(key_uri)
    except InvalidKeyId:
        return None


def encryption_identity(account: StorageAccount) -> ObservedIdentity:
    """The identity the account (and its scopes) uses to reach the vault, resolved to a principal id."""
    return _encryption_identity(account.identity, account.encryption)


def _encryption_identity(identity: Identity | None, encryption: Encryption | None) -> ObservedIdentity:
    kinds = {part.strip().lower() for part in sdk_text(identity.type if identity else "").split(",")}
    configured = encryption.encryption_identity if encryption else None
    user_assigned = configured.encryption_user_assigned_identity if configured else None
    if user_assigned:
        attached = (identity.user_assigned_identities if identity else None) or {}
        for resource_id, value in attached.items():
            if resource_id.lower() == user_assigned.lower() and value is not None and value.principal_id:
                return ObservedIdentity(IdentityKind.USER_ASSIGNED, value.principal_id.lower(), user_assigned)
        return ObservedIdentity(
            IdentityKind.USER_ASSIGNED,
            None,
            user_assigned,
            problem=f"encryption.identity.userAssignedIdentity {user_assigned} is not attached to the account",
        )
    if "systemassigned" in kinds and identity is not None and identity.principal_id:
        return ObservedIdentity(IdentityKind.SYSTEM_ASSIGNED, identity.principal_id.lower())
    return ObservedIdentity(
        IdentityKind.SYSTEM_ASSIGNED,
        None,
        problem="no encryption.identity.userAssignedIdentity and the system-assigned identity is off",
    )


def _current(identifier: str | None, policy: VaultPolicy) -> KeyRef | None:
    if not identifier:
        return None
    try:
        return policy.parse_key_id(identifier)
    except InvalidKeyId:
        return None


def _tags(tags: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((tags or {}).items()))


_models_ready = threading.Event()
_models_lock = threading.Lock()


def prepare_models() -> None:
    """Use every model class of azure-mgmt-storage once, on one thread, before any is used concurrently.

    The SDK maps a model class's fields on its first use and does so unsafely across threads: the
    reconciler's writers and the scope listings, starting at once in a fresh process, failed with
    "dictionary changed size during iteration" (a rotation's first invocation lost its event). Once per
    process; about a second."""
    if _models_ready.is_set():
        return
    with _models_lock:
        if not _models_ready.is_set():
            for model in vars(storage_models).values():
                if isinstance(model, type) and getattr(model, "_is_model", False):
                    model()
            _models_ready.set()


def account_consumer(account: StorageAccount, policy: VaultPolicy) -> ObservedConsumer | None:
    """The account as a consumer of its Key Vault key, or None when it does not use one."""
    encryption = account.encryption
    key = _configured_key(encryption, policy)
    resource_id, name = account.id, account.name
    if key is None or encryption is None or not resource_id or not name:
        return None
    properties = encryption.key_vault_properties
    consumer = Consumer(
        kind=ConsumerKind.ACCOUNT,
        resource_id=resource_id,
        account_name=name,
        key=key,
        current_key=_current(properties.current_versioned_key_identifier if properties else None, policy),
        last_key_rotation=properties.last_key_rotation_timestamp if properties else None,
        tags=_tags(account.tags),
    )
    return ObservedConsumer(consumer, _encryption_identity(account.identity, encryption), account.location or "")


def scope_consumer(
    account: StorageAccount, scope: EncryptionScope, policy: VaultPolicy
) -> ObservedConsumer | None:
    """An encryption scope as a consumer (it uses its account's identity and carries its tags)."""
    key = scope_key(scope, policy)
    if key is None or not account.name or not scope.name:
        return None
    properties = scope.key_vault_properties
    resource_id = scope.id or f"{account.id}/encryptionScopes/{scope.name}"
    consumer = Consumer(
        kind=ConsumerKind.SCOPE,
        resource_id=resource_id,
        account_name=account.name,
        scope_name=scope.name,
        key=key,
        current_key=_current(properties.current_versioned_key_identifier if properties else None, policy),
        last_key_rotation=properties.last_key_rotation_timestamp if properties else None,
        tags=_tags(account.tags),
    )
    return ObservedConsumer(consumer, encryption_identity(account), account.location or "")


def uses_key_vault(account: StorageAccount) -> bool:
    return account.encryption is not None and sdk_text(account.encryption.key_source).lower() == KEY_SOURCE_KEYVAULT


def _vault_of(vault_uri: str, policy: VaultPolicy) -> VaultOrigin:
    parts = urlsplit(vault_uri.strip())
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise InvalidKeyId(f"keyvaulturi {vault_uri!r} is not a vault origin")
    return policy.parse_vault_origin(normalise_origin(f"{parts.scheme}://{parts.netloc}"))


# ---- the adapter --------------------------------------------------------------------------------------


class StorageControl:
    """Storage accounts and encryption scopes across subscriptions, as the controller's identity sees them.

    ``policy`` reads the key URIs the accounts and scopes name (the sandbox's vault origins among them).
    """

    def __init__(self, arm: ArmConnection, *, policy: VaultPolicy) -> None:
        self._arm = arm
        self._policy = policy
        self._clients: dict[str, StorageManagementClient] = {}
        # resource id (lower case) -> (monotonic time read, the account or scope as ARM answered)
        self._fresh: dict[str, tuple[float, StorageAccount | EncryptionScope]] = {}
        # account id (lower case) -> when the listing that found no Key Vault scope on it was sent (monotonic)
        self._no_key_vault_scopes: dict[str, float] = {}
        # account id (lower case) -> the scope listing being read for a consumer search (one at a time per account)
        self._scope_searches: dict[str, Future[list[EncryptionScope]]] = {}
        self._lock = threading.Lock()  # the reconciler writes consumers from several threads

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    def __enter__(self) -> StorageControl:
        return self

    def __exit__(self, *args: object) -> None:
        self.close()

    def _client(self, subscription_id: str) -> StorageManagementClient:
        prepare_models()
        key = subscription_id.lower()
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = StorageManagementClient(self._arm.credential, key, **self._arm.client_options())
                self._clients[key] = client
        return client

    def _remember(self, resource_id: str, state: StorageAccount | EncryptionScope) -> None:
        with self._lock:
            self._fresh[resource_id.lower()] = (time.monotonic(), state)

    def _recent(self, resource_id: str) -> StorageAccount | EncryptionScope | None:
        """A state read from ARM within FRESH_FOR, used once (the next write of it reads again)."""
        with self._lock:
            held = self._fresh.pop(resource_id.lower(), None)
        if held is None or time.monotonic() - held[0] > FRESH_FOR:
            return None
        return held[1]

    # ---- reads --------------------------------------------------------------------------------------
    def list_accounts(self, subscription_id: str) -> list[StorageAccount]:
        """Every storage account of the subscription (one paged listing)."""
        with translated(f"list storage accounts of subscription {subscription_id}"):
            return list(self._client(subscription_id).storage_accounts.list())

    def list_scopes(self, account: StorageAccount) -> list[EncryptionScope]:
        """The account's encryption scopes (one paged listing)."""
        ids = parse_storage_resource_id(account.id or "")
        with translated(f"list encryption scopes of {ids.account}"):
            return list(self._client(ids.subscription_id).encryption_scopes.list(ids.resource_group, ids.account))

    def list_consumers(
        self, key: KeyRef, *, subscription_id: str, scopes: ScopeSearch = ScopeSearch.CMK_ACCOUNTS
    ) -> tuple[ObservedConsumer, ...]:
        """Every account and encryption scope of the subscription configured with ``key`` (any version)."""
        return tuple(self.consumers_among(key, self.list_accounts(subscription_id), scopes=scopes))

    def consumers_among(
        self, key: KeyRef, accounts: Iterable[StorageAccount], *, scopes: ScopeSearch = ScopeSearch.CMK_ACCOUNTS
    ) -> Iterator[ObservedConsumer]:
        """The consumers of ``key`` among ``accounts``: the accounts themselves and their scopes."""
        return self.consumers_matching(key.same_key, accounts, scopes=scopes)

    def consumers_matching(
        self,
        wanted: Callable[[KeyRef], bool],
        accounts: Iterable[StorageAccount],
        *,
        scopes: ScopeSearch = ScopeSearch.CMK_ACCOUNTS,
    ) -> Iterator[ObservedConsumer]:
        """Accounts and encryption scopes among ``accounts`` whose configured key satisfies ``wanted``.

        Encryption scopes are listed per account (Resource Graph has none): SCOPE_LISTINGS at a time,
        paced like every ARM read (adapters/arm_pacing.py)."""
        candidates = list(accounts)
        searched = [account for account in candidates
                    if (scopes is ScopeSearch.ALL_ACCOUNTS or uses_key_vault(account))
                    and not self._known_without_key_vault_scopes(account)]
        listings: dict[int, list[EncryptionScope]] = {}
        if searched:
            workers = min(SCOPE_LISTINGS, len(searched))
            with interruptible_pool(workers, "scopes") as pool:
                listings = dict(zip((id(account) for account in searched), pool.map(self._searched_scopes, searched),
                                    strict=True))
        for account in candidates:
            key = account_key(account, self._policy)  # the key first: the whole consumer only for a match
            observed = account_consumer(account, self._policy) if key is not None and wanted(key) else None
            if observed is not None:
                yield observed
            for scope in listings.get(id(account), ()):
                scoped = scope_consumer(account, scope, self._policy)
                if scoped is not None and wanted(scoped.consumer.key):
                    yield scoped

    def _known_without_key_vault_scopes(self, account: StorageAccount) -> bool:
        """A listing sent within NO_KEY_VAULT_SCOPES_FOR found no Key Vault scope on the account."""
        with self._lock:
            listed = self._no_key_vault_scopes.get((account.id or "").lower())
        return listed is not None and time.monotonic() - listed < NO_KEY_VAULT_SCOPES_FOR

    def _searched_scopes(self, account: StorageAccount) -> list[EncryptionScope]:
        """The account's scopes for a consumer search: none when a listing sent within NO_KEY_VAULT_SCOPES_FOR
        found no Key Vault scope on it; else a listing, shared with the searches that want it meanwhile
        (concurrent key events)."""
        account_id = (account.id or "").lower()
        with self._lock:
            listed = self._no_key_vault_scopes.get(account_id)
            if listed is not None and time.monotonic() - listed < NO_KEY_VAULT_SCOPES_FOR:
                return []
            pending = self._scope_searches.get(account_id)
            if pending is None:
                pending = self._scope_searches[account_id] = Future()
                owner = True
            else:
                owner = False
        if not owner:
            return pending.result()
        sent = time.monotonic()
        try:
            scopes = self.list_scopes(account)
        except BaseException as err:  # each waiting search fails as this one does; the next lists again
            with self._lock:
                del self._scope_searches[account_id]
            pending.set_exception(err)
            raise
        with self._lock:
            del self._scope_searches[account_id]
            if any(sdk_text(scope.source).lower() == KEY_SOURCE_KEYVAULT for scope in scopes):
                self._no_key_vault_scopes.pop(account_id, None)
            else:
                self._no_key_vault_scopes[account_id] = sent
        pending.set_result(scopes)
        return scopes

    def get_account(self, resource_id: str) -> StorageAccount:
        ids = parse_storage_resource_id(resource_id)
        with translated(f"get storage account {ids.account}"):
            return self._client(ids.subscription_id).storage_accounts.get_properties(ids.resource_group, ids.account)

    def _get_scope(self, ids: StorageResourceId) -> EncryptionScope:
        with translated(f"get encryption scope {ids.account}/{ids.scope}"):
            return self._client(ids.subscription_id).encryption_scopes.get(
                ids.resource_group, ids.account, ids.scope or ""
            )

    def get_consumer(self, resource_id: str) -> ObservedConsumer | None:
        """Re-read an account or encryption scope; None when it no longer uses a Key Vault key.

        Raises NotFound when the account or scope is gone.
        """
        ids = parse_storage_resource_id(resource_id)
        account = self.get_account(ids.account_id)
        if ids.scope is None:
            return account_consumer(account, self._policy)
        return scope_consumer(account, self._get_scope(ids), self._policy)

    def current_states(self, resource_ids: Sequence[str]) -> list[ObservedConsumer | None]:
        """The accounts and scopes as ARM holds them now, in order (None: gone, or not on a Key Vault
        key); remembered as the state the next write of each is checked against (module docstring)."""
        parsed = [parse_storage_resource_id(resource_id) for resource_id in resource_ids]
        per_subscription = Counter(ids.subscription_id for ids in parsed)
        listed = {subscription for subscription, count in per_subscription.items() if count >= LIST_FROM}
        accounts: dict[str, StorageAccount | None] = {}
        for subscription in sorted(listed):
            accounts.update(self._listed_accounts(subscription, {ids.account_id.lower() for ids in parsed
                                                                 if ids.subscription_id == subscription}))
        states: list[ObservedConsumer | None] = []
        for ids in parsed:
            account_id = ids.account_id.lower()
            if account_id not in accounts:
                accounts[account_id] = None if ids.subscription_id in listed else self._account_or_none(ids)
            account = accounts[account_id]
            if account is None:
                states.append(None)
                continue
            if ids.scope is None:
                self._remember(ids.account_id, account)
                states.append(account_consumer(account, self._policy))
                continue
            try:
                scope = self._get_scope(ids)
            except NotFound:
                states.append(None)
                continue
            self._remember(ids.account_id, account)
            self._remember(f"{ids.account_id}/encryptionScopes/{ids.scope}", scope)
            states.append(scope_consumer(account, scope, self._policy))
        return states

    def _listed_accounts(self, subscription_id: str, wanted: set[str]) -> dict[str, StorageAccount]:
        """The ``wanted`` accounts (lower-case ids) of the subscription's paged listing. Only those become
        SDK models: building one takes about a millisecond, and the listing holds every account of the
        subscription (ten thousand, once per chunk of consumers written, at the scale of a large estate)."""
        found: dict[str, StorageAccount] = {}
        url: str | None = (f"/subscriptions/{subscription_id}/providers/Microsoft.Storage/storageAccounts"
                           f"?api-version={ACCOUNTS_API_VERSION}")
        client = self._client(subscription_id)
        while url:
            with translated(f"list storage accounts of subscription {subscription_id}"):
                response = client.send_request(HttpRequest("GET", url))
                response.raise_for_status()
                page = response.json()
            for item in page.get("value", []):
                account_id = str(item.get("id") or "").lower()
                if account_id in wanted:
                    found[account_id] = StorageAccount(item)
            url = page.get("nextLink")
        return found

    def _account_or_none(self, ids: StorageResourceId) -> StorageAccount | None:
        try:
            return self.get_account(ids.account_id)
        except NotFound:
            return None

    # ---- writes -------------------------------------------------------------------------------------
    def set_key(self, consumer: Consumer, key: KeyRef) -> Consumer:
        """ports.ConsumerControl: pin ``key``'s version, or (versionless ``key``) turn automatic updates on."""
        if not key.same_key(consumer.key):
            raise InvalidKeyId(f"{consumer.resource_id} uses {consumer.key.versionless.uri}, not {key.versionless.uri}")
        return self._set_key(consumer, key).consumer

    def pin_key_version(self, consumer: Consumer, version: str) -> ObservedConsumer:
        """Configure the consumer with ``version`` of its key (automatic updates off)."""
        return self._set_key(consumer, consumer.key.with_version(version))

    def set_versionless(self, consumer: Consumer) -> ObservedConsumer:
        """Configure the consumer with its versionless key (automatic version updates on)."""
        return self._set_key(consumer, consumer.key.versionless)

    def _set_key(self, consumer: Consumer, target: KeyRef) -> ObservedConsumer:
        ids = parse_storage_resource_id(consumer.resource_id)
        recent_account = self._recent(ids.account_id)
        account = recent_account if isinstance(recent_account, StorageAccount) else self.get_account(ids.account_id)
        if ids.scope is None:
            return self._set_account_key(ids, account, consumer, target)
        scope_id = f"{ids.account_id}/encryptionScopes/{ids.scope}"
        recent_scope = self._recent(scope_id)
        scope = recent_scope if isinstance(recent_scope, EncryptionScope) else self._get_scope(ids)
        fresh = scope_consumer(account, scope, self._policy)
        _check_unchanged(consumer, scope_key(scope, self._policy), fresh.consumer if fresh else None)
        if scope_key(scope, self._policy) == target:
            observed = scope_consumer(account, scope, self._policy)
        else:
            patch = EncryptionScope(
                encryption_scope_properties=EncryptionScopeProperties(
                    source="Microsoft.KeyVault",
                    key_vault_properties=EncryptionScopeKeyVaultProperties(key_uri=target.uri),
                )
            )
            with translated(f"update encryption scope {ids.account}/{ids.scope}"):
                updated = self._client(ids.subscription_id).encryption_scopes.patch(
                    ids.resource_group, ids.account, ids.scope, patch
                )
            self._remember(scope_id, updated)
            self._remember(ids.account_id, account)
            observed = scope_consumer(account, updated, self._policy)
        return _written(observed, consumer)

    def _set_account_key(
        self, ids: StorageResourceId, account: StorageAccount, consumer: Consumer, target: KeyRef
    ) -> ObservedConsumer:
        current = account_key(account, self._policy)
        fresh = account_consumer(account, self._policy)
        _check_unchanged(consumer, current, fresh.consumer if fresh else None)
        if current == target:
            return _written(account_consumer(account, self._policy), consumer)
        encryption = account.encryption
        properties = encryption.key_vault_properties if encryption else None
        if encryption is None or properties is None:  # _check_unchanged saw a Key Vault key
            raise Conflict(f"{consumer.resource_id} no longer uses a Key Vault key")
        configured = encryption.encryption_identity
        patch = StorageAccountUpdateParameters(
            properties=StorageAccountPropertiesUpdateParameters(
                encryption=Encryption(
                    key_source=encryption.key_source,
                    key_vault_properties=KeyVaultProperties(
                        key_name=properties.key_name,
                        # "" turns automatic updates on; an omitted keyversion would leave the pin in place.
                        key_version=target.version or "",
                        key_vault_uri=properties.key_vault_uri,
                    ),
                    encryption_identity=_identity_as_read(configured),
                )
            )
        )
        with translated(f"update encryption of storage account {ids.account}"):
            updated = self._client(ids.subscription_id).storage_accounts.update(ids.resource_group, ids.account, patch)
        self._remember(ids.account_id, updated)  # the answer is the account: the next step needs no read
        return _written(account_consumer(updated, self._policy), consumer)


def _identity_as_read(configured: EncryptionIdentity | None) -> EncryptionIdentity | None:
    if configured is None:
        return None
    fields: dict[str, Any] = {}
    if configured.encryption_user_assigned_identity is not None:
        fields["encryption_user_assigned_identity"] = configured.encryption_user_assigned_identity
    if configured.encryption_federated_identity_client_id is not None:
        fields["encryption_federated_identity_client_id"] = configured.encryption_federated_identity_client_id
    return EncryptionIdentity(**fields)


def _check_unchanged(consumer: Consumer, configured: KeyRef | None, fresh: Consumer | None) -> None:
    """Conflict unless the consumer is still as the plan read it: the key it is configured with and the
    version it uses (a versionless consumer another instance already moved looks the same configured)."""
    if configured is None or not configured.same_key(consumer.key) or configured.version != consumer.key.version:
        now = configured.uri if configured else "no Key Vault key"
        raise Conflict(f"{consumer.resource_id} changed since it was read: it is configured with {now}")
    in_use = fresh.current_key if fresh is not None else None
    if consumer.current_key is not None and in_use is not None and in_use.version != consumer.current_key.version:
        raise Conflict(f"{consumer.resource_id} changed since it was read: it uses {in_use.uri}")


def _written(observed: ObservedConsumer | None, consumer: Consumer) -> ObservedConsumer:
    if observed is None:
        raise Conflict(f"{consumer.resource_id} no longer uses a Key Vault key after the update")
    # The planner's view of access is not re-evaluated by a key change within the same key.
    return replace(observed, consumer=replace(observed.consumer, identity_access=consumer.identity_access))


if TYPE_CHECKING:  # mypy proves the adapter satisfies its port
    from controller.ports import ConsumerControl

    def _implements_port(adapter: StorageControl) -> ConsumerControl:
        return adapter

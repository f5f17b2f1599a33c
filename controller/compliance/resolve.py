"""Lookups over one estate, built once per sweep: consumers of keys, vaults by origin, key status (pure).

A consumer is a storage account whose ``keySource`` is Key Vault, or an encryption scope whose source
is Key Vault. Its key URI is parsed once with ``controller.model.parse_key_id`` (so upper-case hosts,
a trailing slash, versioned and versionless URIs all compare as Key Vault does); a URI that does not
parse is kept with the reason, for CMK-000.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from controller.compliance.estate import (
    DeletedVault,
    EncryptionScope,
    Estate,
    ReadAspect,
    ReadFailure,
    RoleDefinition,
    StorageAccount,
    Vault,
    VaultKey,
    arm_name,
    same_name,
)
from controller.errors import InvalidKeyId
from controller.model import (
    ConsumerKind,
    DeletedKeyInfo,
    KeyRef,
    KeyVersionInfo,
    normalise_origin,
    parse_key_id,
    version_order,
)


@dataclass(frozen=True, slots=True)
class ParsedKey:
    """A key URI as configured, parsed (``ref``) or not (``error`` says why)."""

    configured: str
    ref: KeyRef | None
    error: str = ""


def parse_configured_key(uri: str, custom_origins: tuple[str, ...]) -> ParsedKey:
    try:
        return ParsedKey(uri, parse_key_id(uri, custom_origins=custom_origins))
    except InvalidKeyId as err:
        return ParsedKey(uri, None, str(err))


@dataclass(frozen=True, slots=True)
class ConsumerView:
    """An account or encryption scope configured with a Key Vault key, as the rules see it.

    ``current`` is ``currentVersionedKeyIdentifier`` parsed (None when Azure reports none).
    """

    kind: ConsumerKind
    resource_id: str
    account: StorageAccount
    scope: EncryptionScope | None
    key: ParsedKey
    current: ParsedKey | None
    last_key_rotation: datetime | None

    @property
    def name(self) -> str:
        if self.scope is not None:
            return f"{self.account.name}/{self.scope.name}"
        return self.account.name

    @property
    def pinned_version(self) -> str | None:
        return self.key.ref.version if self.key.ref is not None else None

    @property
    def current_version(self) -> str | None:
        """The version Azure reports in use, when it is a version of the configured key."""
        if self.key.ref is None or self.current is None or self.current.ref is None:
            return None
        if not self.current.ref.same_key(self.key.ref):
            return None
        return self.current.ref.version

    @property
    def version_in_use(self) -> str | None:
        """The version this consumer encrypts with: Azure's report, else the pinned version."""
        return self.current_version or self.pinned_version


def account_key_uri(account: StorageAccount) -> str | None:
    """The account's configured key URI built from keyvaulturi, keyname and keyversion."""
    properties = account.encryption.key_vault_properties
    if properties is None or not properties.key_vault_uri or not properties.key_name:
        return None
    uri = f"{properties.key_vault_uri.strip().rstrip('/')}/keys/{properties.key_name.strip()}"
    version = (properties.key_version or "").strip()
    return f"{uri}/{version}" if version else uri


def _account_consumer(account: StorageAccount, custom_origins: tuple[str, ...]) -> ConsumerView:
    properties = account.encryption.key_vault_properties
    uri = account_key_uri(account)
    key = (parse_configured_key(uri, custom_origins) if uri is not None
           else ParsedKey("", None, "encryption.keyvaultproperties names no key vault URI and key name"))
    current_id = properties.current_versioned_key_identifier if properties else None
    return ConsumerView(
        kind=ConsumerKind.ACCOUNT,
        resource_id=account.id,
        account=account,
        scope=None,
        key=key,
        current=parse_configured_key(current_id, custom_origins) if current_id else None,
        last_key_rotation=properties.last_key_rotation_timestamp if properties else None,
    )


def _scope_consumer(account: StorageAccount, scope: EncryptionScope, custom_origins: tuple[str, ...]) -> ConsumerView:
    key = (parse_configured_key(scope.key_uri, custom_origins) if scope.key_uri
           else ParsedKey("", None, "keyVaultProperties.keyUri is not set"))
    current_id = scope.current_versioned_key_identifier
    return ConsumerView(
        kind=ConsumerKind.SCOPE,
        resource_id=scope.id,
        account=account,
        scope=scope,
        key=key,
        current=parse_configured_key(current_id, custom_origins) if current_id else None,
        last_key_rotation=scope.last_key_rotation_timestamp,
    )


class KeyStatus(enum.StrEnum):
    FOUND = "found"
    KEY_SOFT_DELETED = "key-soft-deleted"
    KEY_MISSING = "key-missing"
    VAULT_SOFT_DELETED = "vault-soft-deleted"
    VAULT_MISSING = "vault-missing"
    NOT_EVALUABLE = "not-evaluable"


@dataclass(frozen=True, slots=True)
class KeyLookup:
    """Where a key stands in the estate. ``reason`` and ``failure`` explain NOT_EVALUABLE."""

    key: KeyRef
    status: KeyStatus
    vault: Vault | None = None
    vault_key: VaultKey | None = None
    deleted_key: DeletedKeyInfo | None = None
    deleted_vault: DeletedVault | None = None
    reason: str = ""
    failure: ReadFailure | None = None
    aspect: ReadAspect | None = None  # what was not read

    @property
    def located(self) -> tuple[Vault, VaultKey] | None:
        """The vault and the key, when the key was found."""
        if self.vault is None or self.vault_key is None:
            return None
        return self.vault, self.vault_key


@dataclass(frozen=True, slots=True)
class KeyUse:
    """A key (versionless) and the consumers configured with it, in estate order."""

    key: KeyRef
    consumers: tuple[ConsumerView, ...]

    @property
    def uri(self) -> str:
        return self.key.uri


@dataclass(frozen=True, slots=True)
class EstateIndex:
    """The estate's lookups, built once by ``index``."""

    estate: Estate
    vaults_by_origin: Mapping[str, Vault]
    consumers: tuple[ConsumerView, ...]  # accounts and scopes configured with a Key Vault key, by id
    key_uses: tuple[KeyUse, ...]  # every key a consumer is configured with, sorted by URI
    role_definitions: Mapping[str, RoleDefinition]  # lower-case GUID -> definition

    def lookup(self, key: KeyRef) -> KeyLookup:
        """Find a key: in a vault of the estate, soft-deleted, missing, or not evaluable (and why)."""
        estate = self.estate
        key = key.versionless
        if key.vault.is_managed_hsm:
            return KeyLookup(key, KeyStatus.NOT_EVALUABLE, reason="Managed HSM keys are not gathered")
        vault = self.vaults_by_origin.get(key.vault.url)
        if vault is None:
            return self._vault_not_found(key)
        if vault.keys is None:
            failure = estate.failure(vault.id, ReadAspect.KEYS)
            return KeyLookup(key, KeyStatus.NOT_EVALUABLE, vault=vault, aspect=ReadAspect.KEYS,
                             reason=f"the keys of vault {vault.name} were not read", failure=failure)
        found = vault.key(key.name)
        if found is not None:
            return KeyLookup(key, KeyStatus.FOUND, vault=vault, vault_key=found)
        if vault.deleted_keys is None:
            failure = estate.failure(vault.id, ReadAspect.DELETED_KEYS)
            return KeyLookup(key, KeyStatus.NOT_EVALUABLE, vault=vault, aspect=ReadAspect.DELETED_KEYS,
                             reason=f"key {key.name} is not listed and the deleted keys of vault {vault.name} "
                             "were not read", failure=failure)
        deleted = next((entry for entry in vault.deleted_keys if entry.key.same_key(key)), None)
        if deleted is not None:
            return KeyLookup(key, KeyStatus.KEY_SOFT_DELETED, vault=vault, deleted_key=deleted)
        return KeyLookup(key, KeyStatus.KEY_MISSING, vault=vault)

    def _vault_not_found(self, key: KeyRef) -> KeyLookup:
        estate = self.estate
        if estate.deleted_vaults is None:
            failure = next(iter(estate.failures_of(ReadAspect.DELETED_VAULTS)), None)
            return KeyLookup(key, KeyStatus.NOT_EVALUABLE, failure=failure, aspect=ReadAspect.DELETED_VAULTS,
                             reason=f"vault {key.vault.url} is not in the estate and the deleted vaults were not read")
        vault_name = key.vault.name
        deleted = next((entry for entry in estate.deleted_vaults
                        if vault_name is not None and same_name(entry.name, vault_name)), None)
        if deleted is not None:
            return KeyLookup(key, KeyStatus.VAULT_SOFT_DELETED, deleted_vault=deleted)
        listing_failure = next(iter(estate.failures_of(ReadAspect.VAULTS)), None) or next(
            (failure for failure in estate.failures_of(ReadAspect.VAULT)
             if vault_name is not None and same_name(arm_name(failure.resource), vault_name)), None)
        if listing_failure is not None:
            return KeyLookup(key, KeyStatus.NOT_EVALUABLE, failure=listing_failure, aspect=ReadAspect.VAULTS,
                             reason=f"vault {key.vault.url} is not in the estate and a vault listing failed")
        return KeyLookup(key, KeyStatus.VAULT_MISSING)

    def key_use(self, key: KeyRef) -> KeyUse | None:
        return next((use for use in self.key_uses if use.key.same_key(key)), None)


def index(estate: Estate) -> EstateIndex:
    vaults: dict[str, Vault] = {}
    for vault in estate.vaults:
        try:
            vaults[normalise_origin(vault.vault_uri)] = vault
        except InvalidKeyId:
            continue  # a vault whose vaultUri does not parse cannot be named by any key URI either
    consumers: list[ConsumerView] = []
    for account in estate.storage_accounts:
        if account.encryption.uses_key_vault:
            consumers.append(_account_consumer(account, estate.custom_origins))
        for scope in account.encryption_scopes or ():
            if scope.uses_key_vault:
                consumers.append(_scope_consumer(account, scope, estate.custom_origins))
    # Sorted, so that evidence lists and the spelling chosen for a key do not depend on listing order.
    consumers.sort(key=lambda consumer: (consumer.resource_id.lower(), consumer.resource_id))
    uses: dict[str, list[ConsumerView]] = {}
    refs: dict[str, KeyRef] = {}
    for consumer in consumers:
        if consumer.key.ref is not None:
            ref = consumer.key.ref.versionless
            identity = ref.uri.lower()
            refs[identity] = min(refs.get(identity, ref), ref, key=lambda spelled: spelled.uri)
            uses.setdefault(identity, []).append(consumer)
    key_uses = tuple(KeyUse(refs[identity], tuple(uses[identity])) for identity in sorted(uses))
    definitions = {role.guid: role for role in estate.role_definitions}
    return EstateIndex(estate, vaults, tuple(consumers), key_uses, definitions)


def latest_usable(key: VaultKey, now: datetime) -> KeyVersionInfo | None:
    """The newest listed version of ``key`` that is enabled and valid now: the one consumers should use.
    Newest by creation, the key's current version first on a tie (as KeyState.order).

    A newer version that is not yet valid cannot be adopted, so it is not "the latest" for compliance.
    """
    usable = [info for info in key.versions or () if info.usable_at(now)]
    return max(usable, key=key_order(key)) if usable else None


def key_order(key: VaultKey) -> Callable[[KeyVersionInfo], tuple[datetime, bool, str]]:
    """How ``key``'s versions order (model.version_order, with the current version ARM reports)."""
    return version_order(key.current_version)


def find_version(versions: tuple[KeyVersionInfo, ...], version: str) -> KeyVersionInfo | None:
    return next((info for info in versions if same_name(info.version, version)), None)

"""Key Vault keys (azure-keyvault-keys KeyClient) for one vault origin: versions, rotation, deleted keys.

The client's URL is the vault's origin (controller.model.VaultOrigin), never built from a vault name.
Challenge-resource verification (the client checks that the vault's 401 challenge names a resource the
vault's host is a subdomain of) is the SDK's default, on: the product never turns it off (the local sandbox
serves its vaults at https://<name>.vault.azure.net/ through its proxy). ``verify_challenge_resource=False``
exists for tests that reach an emulated vault at its loopback origin (https://127.0.0.1:<port>), which no
challenge resource can match.

TLS trust comes from the environment: azure-core's requests transport honours REQUESTS_CA_BUNDLE
(requests' trust_env) but not SSL_CERT_FILE, so a private CA is given with REQUESTS_CA_BUNDLE or the
``connection_verify`` argument.

Cost: ``get_key_state`` is one paged KeyListVersions listing (one request per 25 versions); the other
methods are one request each. Errors go through azure_errors.translated: 429/5xx/timeouts ->
TransientError (with retry_after), 403 -> Forbidden, 404 -> NotFound; except that ``get_key_state``
reports a vault it cannot read (403, connection failures, 5xx after the SDK's retries) as a KeyState
with ``reachable`` False, which the planner records without changing anything (ports.KeyVaultReader).
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import TYPE_CHECKING

from azure.core.credentials import TokenCredential
from azure.keyvault.keys import KeyClient, KeyProperties, KeyRotationPolicyAction

from controller.adapters.azure_errors import translated
from controller.errors import Forbidden, InvalidKeyId, PermanentError, TransientError
from controller.model import (
    DeletedKeyInfo,
    KeyRef,
    KeyRotationPolicyInfo,
    KeyState,
    KeyVersionInfo,
    RotationLifetimeAction,
    VaultOrigin,
)

#: Key Vault's largest page of a listing: fewer requests per key.
_MAX_PAGE_SIZE = 25


class KeyVaultKeys:
    """The keys of one vault, as the controller's identity sees them."""

    def __init__(
        self,
        vault: VaultOrigin,
        credential: TokenCredential,
        *,
        connection_verify: str | bool = True,
        retry_total: int = 3,
        verify_challenge_resource: bool = True,
    ) -> None:
        self.vault = vault
        self._client = KeyClient(
            vault.url,
            credential,
            verify_challenge_resource=verify_challenge_resource,
            connection_verify=connection_verify,
            retry_total=retry_total,
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> KeyVaultKeys:
        return self

    def __exit__(self, *args: object) -> None:
        self.close()

    def _check(self, key: KeyRef) -> None:
        if key.vault != self.vault:
            raise InvalidKeyId(f"{key.uri} is not a key of {self.vault.url}")

    def get_key_state(self, key: KeyRef) -> KeyState:
        """Every version of ``key`` (versionless or not) with its attributes, from one paged listing.

        A vault that cannot be read gives ``reachable`` False with the reason; throttling raises
        TransientError (with retry_after) and a missing key NotFound.
        """
        self._check(key)
        try:
            with translated(f"list versions of {key.versionless.uri}"):
                listed = list(self._client.list_properties_of_key_versions(key.name, max_page_size=_MAX_PAGE_SIZE))
        except (Forbidden, TransientError) as err:
            if _throttled(err):
                raise  # a busy vault is readable: retry after the delay it asked for
            # Firewall or permission (403), DNS / connection failures, 5xx after the SDK's retries: the
            # planner records the vault as unreachable and changes nothing.
            return KeyState(key=key.versionless, versions=(), reachable=False, unreachable_detail=str(err))
        versions = tuple(_version_info(properties) for properties in listed)
        return KeyState(key=key.versionless, versions=versions, current_version=self._current_on_a_tie(key, versions))

    def _current_on_a_tie(self, key: KeyRef, versions: tuple[KeyVersionInfo, ...]) -> str | None:
        """The vault's current version when the newest enabled versions share their creation second (only
        the vault can order them); None otherwise (the listing orders them: no extra call)."""
        enabled = sorted((info.created for info in versions if info.enabled), reverse=True)
        if len(enabled) < 2 or enabled[0] != enabled[1]:
            return None
        with translated(f"get {key.versionless.uri}"):
            return str(self._client.get_key(key.name).properties.version or "") or None

    def rotate_key(self, key: KeyRef) -> KeyVersionInfo:
        """Create a new version (Key Vault's rotate: same type, size and rotation policy's expiry)."""
        self._check(key)
        with translated(f"rotate {key.versionless.uri}"):
            rotated = self._client.rotate_key(key.name)
        return _version_info(rotated.properties)

    def get_rotation_policy(self, key: KeyRef) -> KeyRotationPolicyInfo:
        self._check(key)
        with translated(f"get rotation policy of {key.versionless.uri}"):
            policy = self._client.get_key_rotation_policy(key.name)
        actions = tuple(
            RotationLifetimeAction(
                action=_action_name(action.action),
                time_after_create=action.time_after_create,
                time_before_expiry=action.time_before_expiry,
            )
            for action in policy.lifetime_actions or ()
        )
        return KeyRotationPolicyInfo(
            key=key.versionless,
            lifetime_actions=actions,
            expires_after=policy.expires_in,
            created_on=policy.created_on,
            updated_on=policy.updated_on,
        )

    def list_deleted_keys(self) -> tuple[DeletedKeyInfo, ...]:
        """Every soft-deleted key of the vault (one paged listing); Key Vault emits no event for these."""
        with translated(f"list deleted keys of {self.vault.url}"):
            deleted = list(self._client.list_deleted_keys(max_page_size=_MAX_PAGE_SIZE))
        return tuple(
            DeletedKeyInfo(KeyRef(self.vault, item.name), item.deleted_date, item.scheduled_purge_date)
            for item in deleted
            if item.name
        )

    def get_deleted_key(self, name: str) -> DeletedKeyInfo:
        """The soft-deleted key ``name``; NotFound when it is not deleted (or already purged)."""
        key = KeyRef(self.vault, name)
        with translated(f"get deleted key {key.uri}"):
            deleted = self._client.get_deleted_key(name)
        return DeletedKeyInfo(
            KeyRef(self.vault, deleted.name or name), deleted.deleted_date, deleted.scheduled_purge_date
        )


class KeyVaults:
    """One KeyVaultKeys per vault origin, built on first use: the reconciler's ``keys(origin)`` factory."""

    def __init__(
        self, credential: TokenCredential, *, connection_verify: str | bool = True, retry_total: int = 3,
        verify_challenge_resource: bool = True,
    ) -> None:
        self._credential = credential
        self._connection_verify = connection_verify
        self._retry_total = retry_total
        self._verify_challenge_resource = verify_challenge_resource
        self._vaults: dict[VaultOrigin, KeyVaultKeys] = {}

    def __call__(self, vault: VaultOrigin) -> KeyVaultKeys:
        keys = self._vaults.get(vault)
        if keys is None:
            keys = KeyVaultKeys(
                vault, self._credential, connection_verify=self._connection_verify, retry_total=self._retry_total,
                verify_challenge_resource=self._verify_challenge_resource,
            )
            self._vaults[vault] = keys
        return keys

    def close(self) -> None:
        for keys in self._vaults.values():
            keys.close()
        self._vaults.clear()


def _version_info(properties: KeyProperties) -> KeyVersionInfo:
    if not properties.version or properties.created_on is None:
        raise PermanentError(f"Key Vault listed {properties.id} without a version or creation time")
    return KeyVersionInfo(
        version=properties.version.lower(),
        enabled=bool(properties.enabled),
        created=_aware(properties.created_on),
        not_before=_aware(properties.not_before) if properties.not_before else None,
        expires=_aware(properties.expires_on) if properties.expires_on else None,
    )


def _throttled(err: Exception) -> bool:
    return getattr(err.__cause__, "status_code", None) == 429


def _action_name(action: KeyRotationPolicyAction | str) -> str:
    # The SDK hands back its generated str enum: str() of a member is "KeyRotationPolicyAction.rotate",
    # its value is Key Vault's word ("Rotate").
    return str(action.value) if isinstance(action, enum.Enum) else str(action)


def _aware(moment: datetime) -> datetime:
    # The SDK deserialises Key Vault's epoch seconds as aware UTC datetimes; guard the contract anyway.
    if moment.utcoffset() is None:
        raise PermanentError(f"Key Vault returned a naive timestamp {moment.isoformat()}")
    return moment


if TYPE_CHECKING:  # mypy proves the adapter satisfies its port
    from controller.ports import KeyVaultReader

    def _implements_port(adapter: KeyVaultKeys) -> KeyVaultReader:
        return adapter

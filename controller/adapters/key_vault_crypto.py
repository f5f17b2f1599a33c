"""Key Vault crypto for client-side encryption: remote unwrap, local wrap with a version's public key.

* ``VaultKeyUnwrapper`` (the KeyUnwrapper port) unwraps with the exact version an envelope's KeyId
  names, through CryptographyClient: one unwrapKey call per blob. The version's public key is fetched
  once (KeyClient.get_key) and handed to its CryptographyClient, so the client never fetches it
  again on its own (it would on every call after a failed, e.g. throttled, attempt).
* ``fetch_public_wrapper`` reads the target version's public JWK once and returns the core's
  RsaPublicKeyWrapper: wrapping then costs no Key Vault call at all.
* ``VaultKeyEncryptionKey`` is the key-encryption-key object azure-storage-blob takes
  (wrap_key / unwrap_key / get_kid / get_key_wrap_algorithm) over the same two halves: rewrite mode
  and the tests use it with the unmodified library.

Every key id is checked against the allowed vault origins before a request (and a token) goes to it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from azure.core.credentials import TokenCredential
from azure.keyvault.keys import KeyClient, KeyVaultKey
from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm

from controller.adapters.azure_errors import translated
from controller.errors import Forbidden, InvalidKeyId
from controller.model import KeyRef
from controller.rewrap.wrapping import RSA_OAEP_256, RsaPublicKeyWrapper
from controller.vault_policy import VaultPolicy


class VaultClients:
    """Builds Key Vault clients for allowed vault origins only, sharing one credential and options."""

    def __init__(
        self,
        credential: TokenCredential,
        *,
        policy: VaultPolicy,
        **client_kwargs: Any,
    ) -> None:
        self._credential = credential
        self._policy = policy
        # Per-blob crypto calls: the re-wrap walker retries them with its own shared back-off (SDK retries
        # would hide throttling from it). Key reads (one per version, outside the walker, e.g. the target's
        # public key before a work item starts) keep the SDK's retries, which wait out Retry-After.
        self._client_kwargs: dict[str, Any] = {"retry_total": 0, **client_kwargs}
        self._key_client_kwargs: dict[str, Any] = dict(client_kwargs)
        self._key_clients: dict[str, KeyClient] = {}
        self._lock = threading.Lock()

    def key_ref(self, key_id: str) -> KeyRef:
        """Parse ``key_id`` and refuse any vault that is not allowed."""
        return self._policy.allowed_key(key_id)

    def key_client(self, key: KeyRef) -> KeyClient:
        with self._lock:
            client = self._key_clients.get(key.vault.url)
            if client is None:
                client = KeyClient(key.vault.url, self._credential, **self._key_client_kwargs)
                self._key_clients[key.vault.url] = client
            return client

    def crypto_client(self, key: KeyVaultKey | str) -> CryptographyClient:
        return CryptographyClient(key, self._credential, **self._client_kwargs)

    def get_key(self, key: KeyRef) -> KeyVaultKey:
        with translated(f"get key {key}"):
            return self.key_client(key).get_key(key.name, key.version)


def fetch_public_wrapper(clients: VaultClients, key_id: str) -> RsaPublicKeyWrapper:
    """The target version's public key as the core's local wrapper (one Key Vault call).

    ``key_id`` may be versionless: the key's current version is then the target.
    """
    key = clients.get_key(clients.key_ref(key_id))
    # JsonWebKey sets its fields dynamically (untyped): read them defensively.
    n: object = getattr(key.key, "n", None)
    e: object = getattr(key.key, "e", None)
    if key.id is None or not isinstance(n, bytes) or not isinstance(e, bytes):
        raise InvalidKeyId(f"key {key_id} is not an RSA key")
    return RsaPublicKeyWrapper.from_jwk(key.id, n=n, e=e)


class VaultKeyUnwrapper:
    """The KeyUnwrapper port: unwrapKey with the version named by the envelope's KeyId."""

    def __init__(self, clients: VaultClients) -> None:
        self._clients = clients
        self._crypto: dict[str, CryptographyClient] = {}
        self._fetching: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def unwrap(self, key_id: str, algorithm: str, wrapped: bytes) -> bytes:
        client = self._crypto_for(key_id)
        with translated(f"unwrap with {key_id}"):
            return client.unwrap_key(KeyWrapAlgorithm(algorithm), wrapped).key

    def _crypto_for(self, key_id: str) -> CryptographyClient:
        with self._lock:
            client = self._crypto.get(key_id)
            if client is not None:
                return client
            fetching = self._fetching.setdefault(key_id, threading.Lock())
        # One fetch per version even when every worker meets it at once; the others wait for it.
        with fetching:
            with self._lock:
                client = self._crypto.get(key_id)
            if client is not None:
                return client
            client = self._build(key_id)
            with self._lock:
                self._crypto[key_id] = client
            return client

    def _build(self, key_id: str) -> CryptographyClient:
        key = self._clients.key_ref(key_id)
        if not key.is_versioned:
            raise InvalidKeyId(f"envelope key {key_id} names no version")
        try:
            material = self._clients.get_key(key)
        except Forbidden:
            # No keys/get permission (or the version is disabled): let the client go remote for
            # everything; it stops trying to get the key after its own first 403.
            return self._clients.crypto_client(key.uri)
        # Built from the key (not its id) so the client holds the public half and goes to the vault
        # only for unwrapKey.
        return self._clients.crypto_client(material)


class VaultKeyEncryptionKey:
    """The key-encryption-key interface of azure-storage-blob over one Key Vault key version.

    ``wrap_key`` is local (the version's public key, when given); ``unwrap_key`` is one unwrapKey call
    to that version. Use ``resolver`` as the library's ``key_resolver_function`` to read blobs wrapped
    by any allowed version.
    """

    def __init__(
        self,
        key_id: str,
        unwrapper: VaultKeyUnwrapper,
        *,
        wrapper: RsaPublicKeyWrapper | None = None,
        algorithm: str = RSA_OAEP_256,
    ) -> None:
        if wrapper is not None and wrapper.key_id != key_id:
            raise ValueError("the wrapper belongs to another key version")
        self._key_id = key_id
        self._unwrapper = unwrapper
        self._wrapper = wrapper
        self._algorithm = algorithm

    def wrap_key(self, key: bytes) -> bytes:
        if self._wrapper is None:
            raise TypeError(f"KEK {self._key_id} was built for unwrapping only")
        return self._wrapper.wrap(self._algorithm, key)

    def unwrap_key(self, key: bytes, algorithm: str) -> bytes:
        return self._unwrapper.unwrap(self._key_id, algorithm, key)

    def get_kid(self) -> str:
        return self._key_id

    def get_key_wrap_algorithm(self) -> str:
        return self._algorithm


def key_resolver(unwrapper: VaultKeyUnwrapper) -> Callable[[str], VaultKeyEncryptionKey]:
    """A ``key_resolver_function`` for azure-storage-blob: the KEK of the version an envelope names."""

    def resolve(key_id: str) -> VaultKeyEncryptionKey:
        return VaultKeyEncryptionKey(key_id, unwrapper)

    return resolve

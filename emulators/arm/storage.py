"""Emulated Azure Storage behaviour behind the ARM resources: CMK validation, key adoption, root-key unwrap.

Each storage account (and each Key Vault-backed encryption scope) has a random 256-bit root key, wrapped
by the customer-managed key. The storage service calls the emulated vault's data plane as Azure Storage
does, authenticating as the account's managed identity with a trusted-service token (Azure Storage is a
trusted service for the vault firewall's AzureServices bypass). The vault runs in this process, so its
requests go straight to the vault's request pipeline (``VaultServer.call``: the same authentication,
firewall, authorization, faults, throttling, counters and audit records as over HTTPS) rather than
through an SDK client, TLS and the egress proxy, which cost about 20 ms of this process's CPU per
validation:

* enabling CMK or changing the key: get the key, require RSA, wrap the root key in the vault, unwrap it
  again; any failure becomes the ARM error Azure returns and the change is refused;
* key polling (``key_poll_interval``, one sandbox day by default, like Azure's daily check): a
  versionless binding gets the key's latest version and, when it changed, re-wraps the root key with it
  and records currentVersionedKeyIdentifier / lastKeyRotationTimestamp; pinned bindings never move;
* root-key check (``unwrap_interval``, one sandbox hour by default): unwrap the wrapped root key in the
  vault. Failure (access revoked, key disabled or deleted, firewall) makes the binding inaccessible and
  the account's blob endpoint answers 403 until a later check succeeds.

Every one of these calls is a real data-plane request, so the vault's audit log shows the KeyGet /
KeyWrap / KeyUnwrap records (and failures) Azure would show for the storage account's identity.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from emulators.keyvault.credential import DEFAULT_CALLER_IP, SandboxCredential
from emulators.keyvault.crypto import b64u_decode, b64u_encode
from emulators.keyvault.errors import KeyVaultError
from emulators.keyvault.server import VaultUnreachable

from . import errors

if TYPE_CHECKING:
    from emulators.clock import SandboxClock
    from emulators.keyvault import KeyVaultEmulator, VaultState

log = logging.getLogger(__name__)

WRAP_ALGORITHM = "RSA-OAEP-256"
RSA_TYPES = ("RSA", "RSA-HSM")
VAULT_SCOPE = "https://vault.azure.net/.default"
#: The Key Vault REST API version of the storage service's requests: azure-keyvault-keys 4.11's default, which
#: its audit records carried while it called through that SDK.
VAULT_API_VERSION = "2025-07-01"
#: The audit records' clientInfo (the User-Agent) of the storage service's requests.
CLIENT_INFO = "Microsoft.Storage (sandbox storage service)"

# Blob data-plane errors while the key is unusable. Verified codes and messages (Microsoft's Blob error-code
# table, as quoted by projects that handle them, e.g. microsoft/dicom-server and the FHIR server). Operators'
# runbooks report KeyVaultEncryptionKeyNotFound for a deleted or disabled key, missing RBAC/access policy and a
# vault firewall that blocks the account, which is how the sandbox uses it.
KEY_NOT_FOUND = ("KeyVaultEncryptionKeyNotFound", "The key vault key is not found to unwrap the encryption key.")
VAULT_NOT_FOUND = ("KeyVaultVaultNotFound", "The key vault is not found for encryption.")
# Code verified (same table); the wording is our rendering of the table's description.
TOKEN_NOT_ACQUIRED = (
    "KeyVaultAccessTokenCannotBeAcquired",
    "The Key Vault access token cannot be acquired from Microsoft Entra ID using the identity of this resource.",
)


def iso(dt: datetime | None) -> str | None:
    """ARM's timestamp format (seven fractional digits, UTC, Z)."""
    if dt is None:
        return None
    # isoformat, not strftime: half the cost, and an account listing formats a dozen timestamps per account.
    return dt.astimezone(UTC).isoformat(timespec="microseconds").removesuffix("+00:00") + "0Z"


@dataclass(frozen=True, slots=True)
class Principal:
    """A managed identity as the storage service uses it."""

    principal_id: str
    client_id: str | None
    tenant_id: str
    description: str  # for error messages: "system-assigned identity of ..." / a UAI resource id


@dataclass
class KeyBinding:
    """One CMK binding: an account's encryption or one encryption scope's."""

    vault_uri: str  # normalised: https://host:port/
    key_name: str
    key_version: str  # "" = versionless (automatic version updates)
    root_key: bytes = field(default_factory=lambda: os.urandom(32))
    current_kid: str = ""
    wrapped: bytes = b""
    last_rotation: datetime | None = None
    expiration: datetime | None = None
    next_poll: datetime | None = None
    next_unwrap: datetime | None = None
    accessible: bool = True
    error: tuple[str, str] | None = None  # (blob error code, message) while inaccessible

    @property
    def versionless(self) -> bool:
        return not self.key_version

    @property
    def key_uri(self) -> str:
        base = self.vault_uri.rstrip("/") + f"/keys/{self.key_name}"
        return base + (f"/{self.key_version}" if self.key_version else "")


def split_key_uri(key_uri: str) -> tuple[str, str, str]:
    """'https://v:1/keys/name[/version]' -> (vault_uri 'https://v:1/', name, version or '')."""
    parts = urlsplit(key_uri)
    segments = [s for s in parts.path.split("/") if s]
    if parts.scheme != "https" or len(segments) not in (2, 3) or segments[0].lower() != "keys":
        raise errors.invalid_request_parameters("keyVaultProperties.keyUri")
    return f"https://{parts.netloc}/", segments[1], segments[2] if len(segments) == 3 else ""


def normalise_vault_uri(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.scheme != "https" or not parts.netloc:
        raise errors.invalid_request_parameters("encryption.keyvaultproperties.keyvaulturi")
    return f"https://{parts.netloc.lower()}/"


class _TransientFailure(Exception):
    """Throttled, failing or unreachable vault: Azure Storage retries and keeps its current state."""


class _KeyAccessFailed(Exception):
    def __init__(self, blob_error: tuple[str, str], arm_error: errors.ArmError) -> None:
        super().__init__(blob_error[1])
        self.blob_error = blob_error
        self.arm_error = arm_error


@dataclass(frozen=True, slots=True)
class _VaultKey:
    """What the storage service reads from a key bundle."""

    kid: str  # the versioned key id, on the origin the vault was called at
    key_type: str
    expires_on: datetime | None


class StorageKeyService:
    """The storage service's side of CMK; thread-safe. ``lock`` serialises the key cycle's changes of existing
    bindings; validating a new binding (``bind``) calls the vault without holding any lock."""

    def __init__(
        self,
        keyvault: KeyVaultEmulator,
        clock: SandboxClock,
        *,
        key_poll_interval: timedelta = timedelta(days=1),
        unwrap_interval: timedelta = timedelta(hours=1),
        caller_ip: str = DEFAULT_CALLER_IP,
    ) -> None:
        self.keyvault = keyvault
        self.clock = clock
        self.key_poll_interval = key_poll_interval
        self.unwrap_interval = unwrap_interval
        self.caller_ip = caller_ip
        self.lock = threading.RLock()
        self._cycle_lock = threading.Lock()  # one cycle at a time (timer and tests); taken before ARM's lock
        # The ARM emulator registers a callable listing (binding, principal resolver) for every CMK binding.
        self.bindings: Callable[[], Iterator[tuple[KeyBinding, Callable[[], Principal | None]]]] = lambda: iter(())

    # ---- vault lookups ------------------------------------------------------------------------------
    def vault_for(self, vault_uri: str) -> VaultState | None:
        wanted = vault_uri.rstrip("/").lower()
        for state in list(self.keyvault.vaults.values()):
            if state.origin and state.origin.lower() == wanted:
                return state
        return None

    def credential(self, principal: Principal) -> SandboxCredential:
        return SandboxCredential(
            principal.principal_id,
            appid=principal.client_id,
            tenant_id=principal.tenant_id,
            ip=self.caller_ip,
            trusted_service=True,
            name="Microsoft.Storage",
        )

    # ---- the calls to the vault ---------------------------------------------------------------------
    def _request(
        self, binding: KeyBinding, principal: Principal, method: str, path: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """One data-plane request to the binding's vault, failures translated the way Azure Storage reports them."""
        vault = self.vault_for(binding.vault_uri)
        try:
            server = self.keyvault.server(vault.name) if vault is not None else None
        except KeyError:  # deleted since
            server = None
        if server is None:
            raise _KeyAccessFailed(VAULT_NOT_FOUND, errors.keyvault_vault_not_found(binding.vault_uri))
        token = self.credential(principal).get_token(VAULT_SCOPE).token
        try:
            answer = server.call(
                method, path, authorization=f"Bearer {token}", host=urlsplit(binding.vault_uri).netloc,
                api_version=VAULT_API_VERSION, caller_ip=self.caller_ip, client_info=CLIENT_INFO, body=body,
            )
        except KeyVaultError as exc:
            if exc.status == 429 or exc.status >= 500:
                raise _TransientFailure(exc.message) from exc
            if exc.status == 404:
                failed = _KeyAccessFailed(
                    KEY_NOT_FOUND, errors.keyvault_key_not_found(binding.key_name, binding.vault_uri)
                )
            elif exc.status == 401:
                failed = _KeyAccessFailed(TOKEN_NOT_ACQUIRED, errors.keyvault_authentication_failure())
            else:  # 403: permission, disabled/expired key, firewall
                failed = _KeyAccessFailed(KEY_NOT_FOUND, errors.keyvault_authentication_failure())
            raise failed from exc
        except VaultUnreachable as exc:
            raise _TransientFailure(str(exc)) from exc
        return answer or {}

    def _get_key(self, binding: KeyBinding, principal: Principal, version: str) -> _VaultKey:
        bundle = self._request(binding, principal, "GET", f"/keys/{binding.key_name}/{version}")
        key, attributes = bundle.get("key") or {}, bundle.get("attributes") or {}
        expires = attributes.get("exp")
        return _VaultKey(
            kid=str(key.get("kid", "")),
            key_type=str(key.get("kty", "")),
            expires_on=datetime.fromtimestamp(expires, UTC) if expires is not None else None,
        )

    def _crypto(self, binding: KeyBinding, principal: Principal, kid: str, operation: str, value: bytes) -> bytes:
        _vault, name, version = split_key_uri(kid)
        body = {"alg": WRAP_ALGORITHM, "value": b64u_encode(value)}
        answer = self._request(binding, principal, "POST", f"/keys/{name}/{version}/{operation}", body)
        return b64u_decode(str(answer.get("value", "")))

    def _wrap(self, binding: KeyBinding, principal: Principal, kid: str) -> bytes:
        return self._crypto(binding, principal, kid, "wrapkey", binding.root_key)

    def _unwrap(self, binding: KeyBinding, principal: Principal, kid: str, wrapped: bytes) -> bytes:
        return self._crypto(binding, principal, kid, "unwrapkey", wrapped)

    # ---- what ARM calls -----------------------------------------------------------------------------
    def bind(
        self,
        binding: KeyBinding,
        principal: Principal | None,
        *,
        keyname_path: str,
        previous: KeyBinding | None = None,
    ) -> KeyBinding:
        """Validate a new or changed CMK configuration as Azure does; raises ArmError when Azure would refuse.

        On success the binding holds the wrapped root key, the versioned key id and the timestamps
        (lastKeyRotationTimestamp moves only when the versioned key differs from ``previous``'s).
        """
        if principal is None:
            # Unverified: Azure refuses CMK when the encryption identity does not resolve.
            raise errors.invalid_request_parameters("encryption.identity")
        vault = self.vault_for(binding.vault_uri)
        if vault is None:
            raise errors.keyvault_vault_not_found(binding.vault_uri)
        with vault.lock:
            recoverable = vault.enable_soft_delete and vault.purge_protection
        if not recoverable:
            raise errors.keyvault_policy_error()
        # The candidate is this request's own (not yet any account's): no lock is held while the vault is
        # called, so changes of other accounts validate at the same time, as they do in Azure.
        try:
            key = self._get_key(binding, principal, binding.key_version)
            if key.key_type not in RSA_TYPES:
                raise errors.invalid_request_parameters(keyname_path)
            wrapped = self._wrap(binding, principal, key.kid)
            if self._unwrap(binding, principal, key.kid, wrapped) != binding.root_key:
                raise errors.keyvault_authentication_failure()
        except _KeyAccessFailed as failed:
            raise failed.arm_error from failed
        except _TransientFailure as failed:
            # Unverified: what ARM answers when the vault throttles or fails during validation.
            raise errors.ArmError(
                503, "ServiceUnavailable", "The key vault could not be reached; retry the request."
            ) from failed
        now = self.clock.now()
        unchanged = previous is not None and previous.current_kid == key.kid
        binding.current_kid = key.kid
        binding.wrapped = wrapped
        binding.last_rotation = previous.last_rotation if unchanged and previous else now
        binding.expiration = key.expires_on
        binding.next_poll = now + self.key_poll_interval
        binding.next_unwrap = now + self.unwrap_interval
        binding.accessible = True
        binding.error = None
        return binding

    def refresh_binding(self, binding: KeyBinding, principal: Principal | None, *, poll: bool, unwrap: bool) -> None:
        """One storage-service cycle for one binding: adopt a new version (poll) and/or unwrap the root key."""
        with self.lock:
            now = self.clock.now()
            try:
                self._cycle(binding, principal, now, poll=poll, unwrap=unwrap)
            except _TransientFailure:
                log.info("CMK %s: vault unavailable, keeping the current state and retrying", binding.key_uri)
                binding.next_unwrap = now
                if poll:
                    binding.next_poll = now
                return
            except _KeyAccessFailed as failed:
                if binding.accessible:
                    log.info("CMK %s became inaccessible: %s", binding.key_uri, failed.blob_error[0])
                binding.accessible = False
                binding.error = failed.blob_error
                return
            binding.accessible = True
            binding.error = None

    def _cycle(
        self, binding: KeyBinding, principal: Principal | None, now: datetime, *, poll: bool, unwrap: bool
    ) -> None:
        if principal is None:
            raise _KeyAccessFailed(TOKEN_NOT_ACQUIRED, errors.invalid_request_parameters("encryption.identity"))
        if poll:
            binding.next_poll = now + self.key_poll_interval
            if binding.versionless:
                self._adopt_latest(binding, principal, now)
        if unwrap or poll:
            binding.next_unwrap = now + self.unwrap_interval
            if self._unwrap(binding, principal, binding.current_kid, binding.wrapped) != binding.root_key:
                raise _KeyAccessFailed(KEY_NOT_FOUND, errors.keyvault_authentication_failure())

    def _adopt_latest(self, binding: KeyBinding, principal: Principal, now: datetime) -> None:
        key = self._get_key(binding, principal, "")
        if key.kid == binding.current_kid:
            binding.expiration = key.expires_on
            return
        wrapped = self._wrap(binding, principal, key.kid)
        binding.current_kid = key.kid
        binding.wrapped = wrapped
        binding.last_rotation = now
        binding.expiration = key.expires_on
        log.info("CMK binding adopted %s", key.kid)

    # ---- the storage service's timer ----------------------------------------------------------------
    def run_cycle(self, *, force_poll: bool = False, force_unwrap: bool = False) -> int:
        """Run the due key polls and root-key checks (or all of them when forced); returns bindings touched."""
        touched = 0
        with self._cycle_lock:
            now = self.clock.now()
            for binding, resolve_principal in list(self.bindings()):
                poll = force_poll or (binding.next_poll is not None and now >= binding.next_poll)
                unwrap = force_unwrap or (binding.next_unwrap is not None and now >= binding.next_unwrap)
                if poll or unwrap:
                    self.refresh_binding(binding, resolve_principal(), poll=poll, unwrap=unwrap)
                    touched += 1
        return touched


def new_account_key() -> str:
    return base64.b64encode(os.urandom(64)).decode("ascii")


def new_guid() -> str:
    return str(uuid.uuid4())

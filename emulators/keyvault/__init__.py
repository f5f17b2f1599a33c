"""Emulated Azure Key Vault data plane (keys) for the local sandbox: HTTPS, one origin per vault.

Run vaults in-process with ``KeyVaultEmulator(clock, bus, ca)`` (``add_vault(...) -> VaultState`` with
``.uri`` and ``.resource_id``), or ``python -m emulators.keyvault config.json``. The unmodified
azure-keyvault-keys clients work against it with ``verify_challenge_resource=False`` and
``connection_verify=<ca.pem>``, authenticating with ``SandboxCredential`` (a TokenCredential whose token
names the principal's object id, tenant, caller IP and trusted-service flag).

What it publishes on the ``SandboxBus``:

Events (``bus.publish_event(VaultEvent)``; topic = the vault's ARM resource id, subject = the object name,
data = {Id, VaultName, ObjectType, ObjectName, Version, NBF, EXP} with NBF/EXP epoch seconds or None):
  * ``Microsoft.KeyVault.KeyNewVersionCreated`` for every new key version: create, import, rotate and
    rotation-policy-driven rotation. Id is the versioned key URI on the vault's own origin.
  * ``Microsoft.KeyVault.KeyNearExpiry`` once per version, at ``timeBeforeExpiry`` before its ``exp``
    (the rotation policy's Notify action; Key Vault's default is P30D when no policy is set).
  * ``Microsoft.KeyVault.KeyExpired`` once per version, when the key's current version expires.
  * ``Microsoft.KeyVault.VaultAccessPolicyChanged`` when access policies change (admin API or the
    ``VaultState`` access-policy methods); data.Id = vault URI, ObjectType "Vault", ObjectName = vault.
  Time-driven events are evaluated on each request, on a periodic tick (1 s) and right after the clock
  is advanced through ``KeyVaultEmulator.advance_clock`` or the admin API.

Audit records (``bus.publish_audit(dict)``), Azure's AuditEvent resource-log shape, one for EVERY
data-plane request, success or failure: time, resourceId (upper-case ARM id), operationName (KeyCreate,
KeyImport, KeyGet, KeyList, KeyListVersions, KeyUpdate, KeyDelete, KeyGetDeleted, KeyListDeleted,
KeyRecover, KeyPurge, KeyRotate, KeyGetRotationPolicy, KeyUpdateRotationPolicy, KeyEncrypt, KeyDecrypt,
KeyWrap, KeyUnwrap, KeySign, KeyVerify, GetRandomBytes; "Authentication" for 401 challenges), operationVersion
(api-version), category "AuditEvent", resultType (Success, Unauthorized, Forbidden, NotFound, BadRequest,
Conflict, TooManyRequests ...), resultSignature (.NET HttpStatusCode names: OK, Unauthorized, Forbidden,
NotFound, BadRequest, Conflict, TooManyRequests ...), resultDescription (the error message), durationMs,
callerIpAddress (the token's ip), correlationId (x-ms-client-request-id), identity.claim {oid, appid, tid,
http://schemas.microsoft.com/identity/claims/objectidentifier, .../tenantid}, properties {id (key id),
requestUri, httpStatusCode, clientInfo (User-Agent), isRbacAuthorized, isAccessPolicyMatch, trustedService,
tlsVersion}. System records (identity None): KeyNewVersionCreatedEventGridNotification,
KeyNearExpiryEventGridNotification, KeyExpiredEventGridNotification,
VaultAccessPolicyChangedEventGridNotification, and KeyRotate for policy-driven rotations.

Admin API: see ``emulators.keyvault.admin``.
"""

from .ca import SandboxCA
from .credential import AsyncSandboxCredential, Principal, SandboxCredential, decode_token, encode_token
from .emulator import KeyVaultEmulator
from .state import AccessPolicy, NetworkAcls, RoleAssignment, VaultState

__all__ = [
    "AccessPolicy",
    "AsyncSandboxCredential",
    "KeyVaultEmulator",
    "NetworkAcls",
    "Principal",
    "RoleAssignment",
    "SandboxCA",
    "SandboxCredential",
    "VaultState",
    "decode_token",
    "encode_token",
]

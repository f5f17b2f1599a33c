"""What the emulated vault publishes: Key Vault system events and AuditEvent resource-log records."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from emulators.bus import AuditRecord, VaultEvent

if TYPE_CHECKING:
    from .credential import Principal
    from .state import KeyVersion, VaultState

KEY_NEW_VERSION = "Microsoft.KeyVault.KeyNewVersionCreated"
KEY_NEAR_EXPIRY = "Microsoft.KeyVault.KeyNearExpiry"
KEY_EXPIRED = "Microsoft.KeyVault.KeyExpired"
ACCESS_POLICY_CHANGED = "Microsoft.KeyVault.VaultAccessPolicyChanged"

NOTIFICATION_OPERATION = {
    KEY_NEW_VERSION: "KeyNewVersionCreatedEventGridNotification",
    KEY_NEAR_EXPIRY: "KeyNearExpiryEventGridNotification",
    KEY_EXPIRED: "KeyExpiredEventGridNotification",
    ACCESS_POLICY_CHANGED: "VaultAccessPolicyChangedEventGridNotification",
}

RESULT_TYPES = {
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    400: "BadRequest",
    409: "Conflict",
    429: "TooManyRequests",
}


def key_event(state: VaultState, event_type: str, name: str, kv: KeyVersion, when: datetime) -> VaultEvent:
    return VaultEvent(
        event_id=str(uuid.uuid4()),
        event_type=event_type,
        topic=state.resource_id,
        subject=name,
        event_time=when,
        data={
            "Id": state.key_id(name, kv.version, canonical=True),  # Event Grid names the vault's own host
            "VaultName": state.name,
            "ObjectType": "Key",
            "ObjectName": name,
            "Version": kv.version,
            "NBF": kv.nbf,
            "EXP": kv.exp,
        },
    )


def vault_event(state: VaultState, event_type: str, when: datetime) -> VaultEvent:
    return VaultEvent(
        event_id=str(uuid.uuid4()),
        event_type=event_type,
        topic=state.resource_id,
        subject=state.name,
        event_time=when,
        data={
            "Id": state.canonical_origin + "/",
            "VaultName": state.name,
            "ObjectType": "Vault",
            "ObjectName": state.name,
            "Version": "",
            "NBF": None,
            "EXP": None,
        },
    )


def result_signature(status: int) -> str:
    """Key Vault writes the status as .NET's HttpStatusCode name: OK, Forbidden, NotFound, TooManyRequests."""
    if status == 0:
        return "ConnectionReset"
    try:
        return HTTPStatus(status).phrase.replace(" ", "").replace("-", "")
    except ValueError:
        return str(status)


def result_type(status: int) -> str:
    if status == 0:
        return "Failed"
    if status < 400:
        return "Success"
    return RESULT_TYPES.get(status, result_signature(status))


def identity_claim(principal: Principal | None) -> dict[str, Any] | None:
    if principal is None:
        return None
    claim: dict[str, Any] = {
        "oid": principal.oid,
        "http://schemas.microsoft.com/identity/claims/objectidentifier": principal.oid,
        "tid": principal.tid,
        "http://schemas.microsoft.com/identity/claims/tenantid": principal.tid,
    }
    if principal.appid:
        claim["appid"] = principal.appid
    if principal.name:
        claim["name"] = principal.name
    return {"claim": claim}


def audit_record(
    state: VaultState,
    *,
    operation: str,
    api_version: str,
    status: int,
    description: str = "",
    duration_ms: int = 0,
    caller_ip: str = "",
    correlation_id: str | None = None,
    principal: Principal | None = None,
    object_id: str | None = None,
    request_uri: str = "",
    client_info: str = "",
    access_policy_match: bool = False,
    trusted_service: bool = False,
    when: datetime | None = None,
    tls_version: str | None = None,
) -> AuditRecord:
    when = when or state.clock.now()
    properties: dict[str, Any] = {
        "id": object_id or state.uri,
        "requestUri": request_uri,
        "httpStatusCode": status,
        "clientInfo": client_info,
        "isRbacAuthorized": state.rbac,
        "isAccessPolicyMatch": access_policy_match,
        "trustedService": "AzureServices" if trusted_service else None,
    }
    if tls_version:
        properties["tlsVersion"] = tls_version
    return {
        "time": when.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "resourceId": state.audit_resource_id,
        "operationName": operation,
        "operationVersion": api_version,
        "category": "AuditEvent",
        "resultType": result_type(status),
        "resultSignature": result_signature(status),
        "resultDescription": description,
        "durationMs": duration_ms,
        "callerIpAddress": caller_ip,
        "correlationId": correlation_id or str(uuid.uuid4()),
        "identity": identity_claim(principal),
        "properties": properties,
        "location": state.location,
    }


def notification_audit(state: VaultState, event: VaultEvent) -> AuditRecord:
    return audit_record(
        state,
        operation=NOTIFICATION_OPERATION[event.event_type],
        api_version="",
        status=200,
        object_id=str(event.data["Id"]),
        when=event.event_time,
        trusted_service=True,
    )

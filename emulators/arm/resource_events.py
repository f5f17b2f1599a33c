"""Azure Resource Manager resource events, as ARM publishes them to a subscription's Event Grid system topic
(``Microsoft.Resources.Subscriptions``): ``ResourceWriteSuccess`` for a successful PUT or PATCH,
``ResourceDeleteSuccess`` for a DELETE that deleted something, ``ResourceActionSuccess`` for a POST action.

Shape (Azure's documentation, "Azure Resource Manager as an Event Grid source"): topic
``/subscriptions/{id}``, subject the resource id, ``dataVersion`` 2, and data with ``authorization``
(scope, action, evidence), ``claims`` (the caller's token claims), ``correlationId``, ``httpRequest``
(clientRequestId, clientIpAddress, method, url), ``resourceProvider``, ``resourceUri``,
``operationName`` (``<namespace>/<type>[/<child type>]/write|delete`` or ``.../<action>/action``),
``status`` (Succeeded), ``subscriptionId`` and ``tenantId``. For an action the subject and resourceUri
are the resource the action ran on, not the action's path.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from emulators.bus import VaultEvent
from emulators.keyvault.credential import Principal

WRITE_SUCCESS = "Microsoft.Resources.ResourceWriteSuccess"
DELETE_SUCCESS = "Microsoft.Resources.ResourceDeleteSuccess"
ACTION_SUCCESS = "Microsoft.Resources.ResourceActionSuccess"
EVENT_TYPES = (WRITE_SUCCESS, DELETE_SUCCESS, ACTION_SUCCESS)

# The claim names Azure puts in ``data.claims`` for the caller's object and tenant ids.
_OBJECT_ID_CLAIM = "http://schemas.microsoft.com/identity/claims/objectidentifier"
_TENANT_ID_CLAIM = "http://schemas.microsoft.com/identity/claims/tenantid"


def _operation(path: str, method: str) -> tuple[str, str, str, str] | None:
    """(event type, operationName, resource id, provider namespace) of a mutating request path; None when
    it names no resource."""
    segments = [segment for segment in path.strip("/").split("/") if segment]
    lowered = [segment.lower() for segment in segments]
    if len(segments) < 2 or lowered[0] != "subscriptions" or "providers" not in lowered:
        return None
    at = len(lowered) - 1 - lowered[::-1].index("providers")
    rest = segments[at + 1 :]
    if len(rest) < 2:
        return None
    namespace, pairs = rest[0], rest[1:]
    action = pairs.pop() if method == "POST" and len(pairs) % 2 == 1 else None
    if len(pairs) < 2 or len(pairs) % 2:
        return None
    types = "/".join([namespace, *pairs[0::2]])
    resource_id = "/" + "/".join([*segments[: at + 1], namespace, *pairs])
    if action is not None:
        return ACTION_SUCCESS, f"{types}/{action}/action", resource_id, namespace
    if method == "DELETE":
        return DELETE_SUCCESS, f"{types}/delete", resource_id, namespace
    if method in ("PUT", "PATCH"):
        return WRITE_SUCCESS, f"{types}/write", resource_id, namespace
    return None


def resource_event(
    *, method: str, path: str, url: str, caller: Principal | None, tenant_id: str, now: datetime
) -> VaultEvent | None:
    """The event ARM publishes for a successful mutating request; None for one it publishes nothing for."""
    found = _operation(path, method.upper())
    if found is None:
        return None
    event_type, operation, resource_id, namespace = found
    subscription = resource_id.strip("/").split("/")[1]
    correlation = str(uuid.uuid4())
    claims: dict[str, Any] = {}
    if caller is not None:
        claims = {_OBJECT_ID_CLAIM: caller.oid, _TENANT_ID_CLAIM: caller.tid}
        if caller.appid:
            claims["appid"] = caller.appid
        if caller.name:
            claims["name"] = caller.name
    data = {
        "authorization": {"scope": resource_id, "action": operation, "evidence": {"role": "Owner"}},
        "claims": claims,
        "correlationId": correlation,
        "httpRequest": {
            "clientRequestId": str(uuid.uuid4()),
            "clientIpAddress": caller.ip if caller is not None and caller.ip else "127.0.0.1",
            "method": method.upper(),
            "url": url,
        },
        "resourceProvider": namespace,
        "resourceUri": resource_id,
        "operationName": operation,
        "status": "Succeeded",
        "subscriptionId": subscription,
        "tenantId": tenant_id,
    }
    return VaultEvent(
        event_id=str(uuid.uuid4()),
        event_type=event_type,
        topic=f"/subscriptions/{subscription}",
        subject=resource_id,
        event_time=now,
        data=data,
        data_version="2",
    )

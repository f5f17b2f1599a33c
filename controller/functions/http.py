"""HTTP triggers: health, an Event Grid delivery endpoint, and the latest compliance report.

``report`` (function key) serves the last stored compliance report rendered as ``?format=json|md|sarif|
html`` (json by default; the HTML with its Content-Security-Policy), 404 before the first sweep.

``events`` accepts what Event Grid POSTs to a webhook (Event Grid schema or CloudEvents 1.0), answers
the SubscriptionValidation handshake and the CloudEvents OPTIONS abuse-protection handshake, and hands
the events to the same handler as on_key_event. It serves replays of dead-lettered events and hosts
without the Event Grid extension. Status codes follow Event Grid's delivery semantics: 200 when
everything was handled, 400 when some events were rejected (Event Grid dead-letters at once instead
of retrying what cannot succeed; valid events of that delivery were handled and dedupe on replay),
413 for oversized deliveries, 503 with Retry-After for transient failures (Event Grid retries).
"""

from __future__ import annotations

import json
import logging

import azure.functions as func

from controller import bootstrap, service
from controller.compliance.formats import ReportFormat, render
from controller.compliance.formats.html import CONTENT_SECURITY_POLICY
from controller.errors import InvalidEvent, InvalidInput, InvalidReport, TransientError
from controller.events import parse_delivery
from controller.logs import log_record

blueprint = func.Blueprint()  # type: ignore[no-untyped-call]  # azure.functions leaves __init__ unannotated
log = logging.getLogger("controller.functions.http")

_JSON = "application/json"


def _json_response(body: object, status: int, headers: dict[str, str] | None = None) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body), status_code=status, mimetype=_JSON, headers=headers)


@blueprint.function_name("health")
@blueprint.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    """Liveness plus a settings check; says nothing about which vaults are managed."""
    deps = bootstrap.dependencies()
    return _json_response({"status": "ok", "vaults": len(deps.settings.vaults)}, 200)


@blueprint.function_name("events")
@blueprint.route(route="events", methods=["POST", "OPTIONS"], auth_level=func.AuthLevel.FUNCTION)
def events(req: func.HttpRequest) -> func.HttpResponse:
    if req.method == "OPTIONS":
        return _abuse_protection_handshake(req)
    deps = bootstrap.dependencies()
    try:
        result = parse_delivery(req.get_body(), policy=deps.settings.vault_policy)
    except InvalidEvent as err:
        status = 413 if err.reason == "too_large" else 400
        log_record(log, logging.WARNING, "delivery rejected", {"reason": err.reason, "detail": err.detail})
        return _json_response({"error": {"code": err.reason, "message": err.detail}}, status)
    if result.validation is not None:
        log_record(log, logging.INFO, "subscription validation answered", {"event_id": result.validation.event_id})
        return _json_response({"validationResponse": result.validation.validation_code}, 200)
    try:
        report = service.handle_intake(result, deps)
    except TransientError as err:
        retry_after = str(int(err.retry_after)) if err.retry_after else "30"
        log_record(log, logging.WARNING, "delivery failed transiently", {"error": str(err)})
        return _json_response({"error": {"code": "transient", "message": str(err)}}, 503, {"Retry-After": retry_after})
    return _json_response(report.as_json(), 400 if report.rejected else 200)


@blueprint.function_name("report")
@blueprint.route(route="report", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def report(req: func.HttpRequest) -> func.HttpResponse:
    try:
        report_format = ReportFormat.parse(req.params.get("format"))
    except InvalidInput as err:
        return _json_response({"error": {"code": "bad_format", "message": str(err)}}, 400)
    deps = bootstrap.dependencies()
    try:
        latest = service.latest_report(deps)
    except InvalidReport as err:
        log_record(log, logging.ERROR, "the stored compliance report cannot be read", {"error": str(err)})
        return _json_response({"error": {"code": "invalid_report", "message": str(err)}}, 500)
    if latest is None:
        return _json_response({"error": {"code": "no_report", "message": "no compliance report yet: the first "
                                         "sweep stores one (CMK_SWEEP_SCHEDULE), or run cmkctl sweep"}}, 404)
    headers = {"Content-Security-Policy": CONTENT_SECURITY_POLICY} if report_format is ReportFormat.HTML else None
    return func.HttpResponse(render(latest, report_format), status_code=200, headers=headers,
                             mimetype=report_format.media_type.split(";")[0], charset="utf-8")


def _abuse_protection_handshake(req: func.HttpRequest) -> func.HttpResponse:
    """CloudEvents webhook validation: echo the requesting origin as allowed."""
    origin = req.headers.get("WebHook-Request-Origin", "").strip()
    if not origin or len(origin) > 255:
        return _json_response({"error": {"code": "missing_origin", "message": "WebHook-Request-Origin required"}}, 400)
    return func.HttpResponse(status_code=200, headers={"WebHook-Allowed-Origin": origin, "WebHook-Allowed-Rate": "*"})

"""Event Grid trigger: one Key Vault event per invocation (the host splits deliveries and answers
the subscription handshake on /runtime/webhooks/eventgrid)."""

from __future__ import annotations

import logging

import azure.functions as func

from controller import bootstrap, service
from controller.errors import InvalidEvent
from controller.events import IntakeResult, parse_functions_event
from controller.logs import log_record

blueprint = func.Blueprint()  # type: ignore[no-untyped-call]  # azure.functions leaves __init__ unannotated
log = logging.getLogger("controller.functions.key_events")


@blueprint.function_name("on_key_event")
@blueprint.event_grid_trigger(arg_name="event")
def on_key_event(event: func.EventGridEvent) -> None:
    """Handle one event. A rejected event is logged and acknowledged (redelivery cannot fix it);
    a TransientError propagates so that Event Grid retries on its schedule."""
    deps = bootstrap.dependencies()
    try:
        key_event = parse_functions_event(event, policy=deps.settings.vault_policy)
    except InvalidEvent as err:
        service.handle_intake(IntakeResult(events=[], ignored=0, rejected=[err], validation=None), deps)
        return
    if key_event is None:
        log_record(log, logging.INFO, "event ignored (not a key event)",
                   {"event_id": event.id, "event_type": str(event.event_type)[:200]})
        return
    service.handle_key_event(key_event, deps)

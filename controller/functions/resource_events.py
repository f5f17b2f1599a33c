"""Event Grid trigger: one Azure Resource Manager resource event per invocation, from the Azure
subscription's system topic (Microsoft.Resources.Subscriptions): drift caught in seconds."""

from __future__ import annotations

import logging

import azure.functions as func

from controller import bootstrap, service
from controller.errors import InvalidEvent
from controller.logs import log_record
from controller.resource_events import IgnoredEvent, parse_functions_resource_event

blueprint = func.Blueprint()  # type: ignore[no-untyped-call]  # azure.functions leaves __init__ unannotated
log = logging.getLogger("controller.functions.resource_events")


@blueprint.function_name("on_resource_event")
@blueprint.event_grid_trigger(arg_name="event")
def on_resource_event(event: func.EventGridEvent) -> None:
    """Re-evaluate what the event touched. A rejected or ignored event is logged and acknowledged
    (redelivery cannot change it); a failure to read Azure propagates so that Event Grid retries."""
    deps = bootstrap.dependencies()
    try:
        parsed = parse_functions_resource_event(event, subscriptions=deps.settings.subscriptions)
    except InvalidEvent as err:
        log_record(log, logging.WARNING, "resource event rejected",
                   {"reason": err.reason, "detail": err.detail, "event_id": err.event_id})
        return
    if isinstance(parsed, IgnoredEvent):
        log_record(log, logging.INFO, "resource event ignored",
                   {"event_id": parsed.event_id, "event_type": parsed.event_type, "why": parsed.why})
        return
    service.handle_resource_events([parsed], deps)

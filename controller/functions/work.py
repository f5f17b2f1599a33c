"""Queue trigger: one work item per invocation.

A malformed or unknown item, or one that failed permanently, is moved to the poison queue at once
with the reason (retrying cannot fix it, and nothing is dropped); a TransientError propagates so the
host redelivers the message (after maxDequeueCount attempts the host moves it to <queue>-poison).
Either way a scale-out page item that is given up is recorded as failed in its job, so the job ends;
so is one whose worker dies on every delivery (see service.run_rewrap_page).
"""

from __future__ import annotations

import json
import logging

import azure.functions as func

from controller import bootstrap, service
from controller.errors import PermanentError, TransientError
from controller.logs import log_record

blueprint = func.Blueprint()  # type: ignore[no-untyped-call]  # azure.functions leaves __init__ unannotated
log = logging.getLogger("controller.functions.work")
#: host.json extensions.queues.maxDequeueCount.
MAX_DEQUEUE_COUNT = service.MAX_DELIVERIES


@blueprint.function_name("process_work")
@blueprint.queue_trigger(arg_name="message", queue_name="%CMK_WORK_QUEUE%", connection="AzureWebJobsStorage")
@blueprint.queue_output(arg_name="poison", queue_name="%CMK_WORK_QUEUE%-poison", connection="AzureWebJobsStorage")
def process_work(message: func.QueueMessage, poison: func.Out[str]) -> None:
    deps = bootstrap.dependencies()
    body = message.get_body().decode("utf-8", errors="replace")
    last_delivery = (message.dequeue_count or 0) >= MAX_DEQUEUE_COUNT
    try:
        report = service.process_work(body, deps, last_delivery=last_delivery)
    except TransientError as err:
        if last_delivery:
            # The host moves the message to <queue>-poison after this attempt, without running our code.
            service.report_poisoned_work(message.id or "", message.dequeue_count or 0,
                                         f"still failing after {MAX_DEQUEUE_COUNT} attempts: {err}", deps,
                                         body=body)
        raise
    except PermanentError as err:
        poison.set(json.dumps({"reason": str(err), "message_id": message.id, "body": body}))
        service.report_poisoned_work(message.id or "", message.dequeue_count or 0, str(err), deps, body=body)
        return
    log_record(log, logging.INFO, "work item processed", {"message_id": message.id, **report.as_json()})

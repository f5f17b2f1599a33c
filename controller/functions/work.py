"""Queue trigger: one work item per invocation.

A malformed or unknown item, or one that failed permanently, is moved to the poison queue at once
with the reason (retrying cannot fix it, and nothing is dropped); a TransientError propagates so the
host redelivers the message (after maxDequeueCount attempts the host moves it to <queue>-poison).
"""

from __future__ import annotations

import json
import logging

import azure.functions as func

from controller import bootstrap, service
from controller.errors import PermanentError
from controller.logs import log_record

blueprint = func.Blueprint()  # type: ignore[no-untyped-call]  # azure.functions leaves __init__ unannotated
log = logging.getLogger("controller.functions.work")


@blueprint.function_name("process_work")
@blueprint.queue_trigger(arg_name="message", queue_name="%CMK_WORK_QUEUE%", connection="AzureWebJobsStorage")
@blueprint.queue_output(arg_name="poison", queue_name="%CMK_WORK_QUEUE%-poison", connection="AzureWebJobsStorage")
def process_work(message: func.QueueMessage, poison: func.Out[str]) -> None:
    deps = bootstrap.dependencies()
    body = message.get_body().decode("utf-8", errors="replace")
    try:
        report = service.process_work(body, deps)
    except PermanentError as err:
        log_record(log, logging.ERROR, "work item moved to poison queue",
                   {"message_id": message.id, "dequeue_count": message.dequeue_count, "reason": str(err)})
        poison.set(json.dumps({"reason": str(err), "message_id": message.id, "body": body}))
        return
    log_record(log, logging.INFO, "work item processed", {"message_id": message.id, **report.as_json()})

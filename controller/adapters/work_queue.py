"""WorkQueue on an Azure Storage queue, in the encoding the Functions queue trigger expects.

The Functions host base64-decodes queue messages by default (host.json ``messageEncoding``), so
messages are sent with TextBase64EncodePolicy. A delay becomes the message's initial visibility
timeout (Azure allows up to 7 days).
"""

from __future__ import annotations

import contextlib
import json
from datetime import timedelta

from azure.core.exceptions import ResourceNotFoundError
from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

from controller.adapters.azure_errors import translated
from controller.adapters.created_once import CreatedOnce
from controller.errors import InvalidInput
from controller.ports import QueuedWork

#: Azure Storage queue messages are at most 64 KiB; base64 makes 48 KiB of text the usable size.
MAX_MESSAGE_TEXT = 48 * 1024
MAX_DELAY = timedelta(days=7)


def work_queue_client(connection_string: str, queue_name: str) -> QueueClient:
    return QueueClient.from_connection_string(
        connection_string,
        queue_name,
        message_encode_policy=TextBase64EncodePolicy(),
        message_decode_policy=TextBase64DecodePolicy(),
    )


class StorageWorkQueue:
    def __init__(self, queue: QueueClient) -> None:
        self._queue = queue
        self._ensure_queue = CreatedOnce(queue.create_queue, f"queue {queue.queue_name}")


    def enqueue(self, message: dict[str, object], *, delay: timedelta | None = None) -> QueuedWork:
        text = json.dumps(message, separators=(",", ":"), sort_keys=True)
        if len(text.encode("utf-8")) > MAX_MESSAGE_TEXT:
            raise InvalidInput(f"work item is larger than {MAX_MESSAGE_TEXT} bytes")
        visibility = None
        if delay is not None and delay > timedelta(0):
            visibility = int(min(delay, MAX_DELAY).total_seconds())
        self._ensure_queue()
        with translated(f"enqueue work on {self._queue.queue_name}"):
            sent = self._queue.send_message(text, visibility_timeout=visibility)
        return QueuedWork(message_id=str(sent.id), receipt=str(sent.pop_receipt))

    def withdraw(self, work: QueuedWork) -> None:
        # A delivered item has a new pop receipt: the delete is refused (404) and the item runs.
        with translated(f"withdraw work from {self._queue.queue_name}"), contextlib.suppress(ResourceNotFoundError):
            self._queue.delete_message(work.message_id, work.receipt)

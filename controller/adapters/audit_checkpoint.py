"""AuditCheckpoint on Azure Table storage (the ledger table): the audit timer's one checkpoint row.

PartitionKey ``audit-scan``, RowKey ``checkpoint``: the ``AuditWatch`` document as JSON, split over
properties of at most 30,000 characters (a string property holds 32 K). Writes are conditional on the
ETag of the row this instance loaded (or on its absence), so of two instances that scanned the same
window only one moves the checkpoint; the other gets Conflict and leaves the alerts to the winner.
A row this version cannot read is logged and replaced (the next scan starts from the audit window).
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from azure.core import MatchConditions
from azure.data.tables import TableClient, UpdateMode

from controller.adapters.azure_errors import translated
from controller.adapters.created_once import CreatedOnce
from controller.audit_watch import AuditWatch
from controller.errors import NotFound, PermanentError
from controller.logs import log_record

log = logging.getLogger("controller.adapters.audit_checkpoint")

PARTITION, ROW = "audit-scan", "checkpoint"
_CHUNK_CHARS = 30_000
_MAX_CHUNKS = 30  # ~900 K characters: below the 1 MiB entity limit


class TableAuditCheckpoint:
    def __init__(self, table: TableClient) -> None:
        self._table = table
        self._ensure_table = CreatedOnce(table.create_table, f"table {table.table_name}")
        self._etag: str | None = None
        self._lock = threading.Lock()

    def load(self) -> AuditWatch:
        self._ensure_table()
        try:
            with translated("read the audit checkpoint"):
                entity = self._table.get_entity(PARTITION, ROW)
        except NotFound:
            with self._lock:
                self._etag = None
            return AuditWatch()
        with self._lock:
            self._etag = str(entity.metadata["etag"])
        try:
            text = "".join(str(entity[f"Document{index}"]) for index in range(int(entity["Chunks"])))
            document = json.loads(text)
            return AuditWatch.from_json(document if isinstance(document, dict) else {})
        except (KeyError, TypeError, ValueError) as err:
            log_record(log, logging.WARNING, "unreadable audit checkpoint replaced by an empty one",
                       {"error": type(err).__name__})
            return AuditWatch()

    def save(self, watch: AuditWatch) -> None:
        self._ensure_table()
        text = json.dumps(watch.as_json(), sort_keys=True, separators=(",", ":"))
        chunks = [text[i : i + _CHUNK_CHARS] for i in range(0, len(text), _CHUNK_CHARS)] or [""]
        if len(chunks) > _MAX_CHUNKS:
            raise PermanentError(f"the audit checkpoint is {len(text)} characters: more than a table row holds")
        entity: dict[str, Any] = {"PartitionKey": PARTITION, "RowKey": ROW, "Chunks": len(chunks)}
        entity.update({f"Document{index}": chunk for index, chunk in enumerate(chunks)})
        with self._lock:
            etag = self._etag
        with translated("save the audit checkpoint"):
            if etag is None:
                metadata = self._table.create_entity(entity)  # Conflict when another instance created it first
            else:
                metadata = self._table.update_entity(entity, mode=UpdateMode.REPLACE, etag=etag,
                                                     match_condition=MatchConditions.IfNotModified)
        with self._lock:
            self._etag = str(metadata["etag"])

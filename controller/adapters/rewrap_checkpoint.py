"""RewrapCheckpoint on Azure Table storage (the ledger table), with ETag-conditional writes.

One entity per job (PartitionKey ``rewrap-<2 hex>``, RowKey = sha256 of the job id): the listing
marker, the counts the functions report as progress, and the per-blob problems (chunked over several
properties: a string property holds at most 32 K characters). Writes are conditional on the ETag this
instance last saw, so two workers that both believe they own a job cannot both advance it: the
loser's save raises Conflict and it stops (its blobs are idempotently re-wrapped by the winner anyway).

A stored entity that does not validate is treated as no progress (the job starts over, which is
safe: re-wrapping is idempotent) but its ETag is kept so the next save replaces it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

from controller.adapters.azure_errors import translated
from controller.adapters.created_once import CreatedOnce
from controller.logs import log_record
from controller.ports import BlobProblem, RewrapProgress

log = logging.getLogger("controller.adapters.rewrap_checkpoint")

_PARTITION_PREFIX = "rewrap-"
_CHUNK_CHARS = 30_000
_MAX_CHUNKS = 16  # ~480 K characters of problems; the rest are counted in ProblemsDropped


def _keys(job_id: str) -> tuple[str, str]:
    digest = hashlib.sha256(job_id.encode("utf-8")).hexdigest()
    return _PARTITION_PREFIX + digest[:2], digest


class TableRewrapCheckpoint:
    def __init__(self, table: TableClient) -> None:
        self._table = table
        self._ensure_table = CreatedOnce(table.create_table, f"table {table.table_name}")
        self._etags: dict[str, str] = {}
        self._lock = threading.Lock()

    def load(self, job_id: str) -> RewrapProgress | None:
        self._ensure_table()
        partition, row = _keys(job_id)
        with translated(f"read checkpoint of {job_id}"):
            try:
                entity = self._table.get_entity(partition, row)
            except ResourceNotFoundError:
                entity = None
        with self._lock:
            if entity is None:
                self._etags.pop(job_id, None)
                return None
            self._etags[job_id] = str(entity.metadata["etag"])
        try:
            return _progress_of(entity, job_id)
        except (KeyError, TypeError, ValueError) as err:
            log_record(log, logging.WARNING, "invalid re-wrap checkpoint ignored",
                       {"job_id": job_id, "error": type(err).__name__})
            return None

    def save(self, job_id: str, progress: RewrapProgress) -> None:
        self._ensure_table()
        entity = _entity_of(job_id, progress)
        with self._lock:
            etag = self._etags.get(job_id)
        with translated(f"save checkpoint of {job_id}"):
            if etag is None:
                # Conflict (ResourceExistsError) when another worker created it first.
                metadata = self._table.create_entity(entity)
            else:
                metadata = self._table.update_entity(
                    entity, mode=UpdateMode.REPLACE, etag=etag, match_condition=MatchConditions.IfNotModified
                )
        with self._lock:
            self._etags[job_id] = str(metadata["etag"])


def _entity_of(job_id: str, progress: RewrapProgress) -> dict[str, Any]:
    problems = [[problem.name, problem.reason, problem.detail] for problem in progress.problems]
    dropped = progress.problems_dropped
    chunks: list[str] = []
    while problems:
        text = json.dumps(problems, separators=(",", ":"))
        if len(text) <= _CHUNK_CHARS * _MAX_CHUNKS:
            chunks = [text[i : i + _CHUNK_CHARS] for i in range(0, len(text), _CHUNK_CHARS)]
            break
        keep = max(0, len(problems) * 3 // 4)
        dropped += len(problems) - keep
        problems = problems[:keep]
    partition, row = _keys(job_id)
    entity: dict[str, Any] = {
        "PartitionKey": partition,
        "RowKey": row,
        "JobId": job_id[:1024],
        "Marker": progress.marker or "",
        "Complete": progress.complete,
        "Pages": progress.pages,
        "Counts": json.dumps(dict(progress.counts), sort_keys=True),
        "UnwrapCalls": progress.unwrap_calls,
        "Writes": progress.writes,
        "Conflicts": progress.conflicts,
        "Throttled": progress.throttled,
        "ProblemChunks": len(chunks),
        "ProblemsDropped": dropped,
    }
    for index, chunk in enumerate(chunks):
        entity[f"Problems{index}"] = chunk
    return entity


def _int(entity: Any, name: str) -> int:
    value = entity[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(name)
    return value


def _progress_of(entity: Any, job_id: str) -> RewrapProgress:
    if entity.get("JobId") != job_id[:1024]:
        raise ValueError("JobId")
    counts = json.loads(entity["Counts"])
    if not isinstance(counts, dict) or not all(isinstance(v, int) and v >= 0 for v in counts.values()):
        raise ValueError("Counts")
    chunks = _int(entity, "ProblemChunks")
    problems_json = "".join(str(entity[f"Problems{index}"]) for index in range(chunks)) or "[]"
    problems = tuple(BlobProblem(name=str(n), reason=str(r), detail=str(d)) for n, r, d in json.loads(problems_json))
    complete = entity["Complete"]
    if not isinstance(complete, bool):
        raise TypeError("Complete")
    return RewrapProgress(
        marker=str(entity["Marker"]) or None,
        complete=complete,
        pages=_int(entity, "Pages"),
        counts={str(k): int(v) for k, v in counts.items()},
        unwrap_calls=_int(entity, "UnwrapCalls"),
        writes=_int(entity, "Writes"),
        conflicts=_int(entity, "Conflicts"),
        throttled=_int(entity, "Throttled"),
        problems=problems,
        problems_dropped=_int(entity, "ProblemsDropped"),
    )

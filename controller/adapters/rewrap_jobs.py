"""RewrapJobLedger on Azure Table storage (the ledger table): scale-out jobs, ETag-safe.

One partition per job (``rewrapjob-<sha256 of the job id>``), so that a page and the job's totals
change in one entity-group transaction:

* ``listing``: the lister's marker and pages enqueued; written only by the lister, conditional on
  the ETag it last read (a second lister of the same job loses with Conflict);
* ``totals``: pages done and failed, takeovers, the blobs' outcome counts and calls summed over the
  recorded pages, and whether the job is finished;
* ``page-<number>``: one per page: its state, the claiming worker and its lease, and once recorded
  its counts and problems.

Recording a page is one transaction: the page entity (conditional on the ETag of this worker's
claim) and the totals (conditional on the ETag just read). A worker whose lease ran out and whose
page was taken over loses on the page's ETag (Conflict: its result is dropped, the new holder's
counts); a concurrent recorder of another page makes the totals' ETag stale, and the transaction is
simply tried again. So each page is counted exactly once, whatever crashes in between.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from collections.abc import Mapping
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

from controller.adapters.azure_errors import translated
from controller.adapters.created_once import CreatedOnce
from controller.errors import Conflict
from controller.ports import BlobProblem, Clock
from controller.rewrap.pages import (
    ClaimOutcome,
    JobListing,
    JobProgress,
    PageClaim,
    PageResult,
    PageState,
)

_PARTITION_PREFIX = "rewrapjob-"
_LISTING = "listing"
_TOTALS = "totals"
#: A string property holds at most 32 K characters: a page keeps the problems that fit.
_PROBLEM_CHARS = 30_000
#: Totals transactions lost to other recorders before giving up (the queue then redelivers the page).
_MAX_TOTALS_RACES = 50


def _partition(job_id: str) -> str:
    return _PARTITION_PREFIX + hashlib.sha256(job_id.encode("utf-8")).hexdigest()


def _page_row(number: int) -> str:
    return f"page-{number:010d}"


class TableRewrapJobLedger:
    def __init__(self, table: TableClient, *, clock: Clock) -> None:
        self._table = table
        self._clock = clock
        self._ensure_table = CreatedOnce(table.create_table, f"table {table.table_name}")
        self._listing_etags: dict[str, str] = {}
        self._claims: dict[tuple[str, int, str], tuple[str, int]] = {}
        self._lock = threading.Lock()

    # --- the listing (the lister only) -----------------------------------------------------------

    def listing(self, job_id: str) -> JobListing:
        self._ensure_table()
        return self._listing(job_id, self._get(job_id, _TOTALS, "read the totals"))

    def _listing(self, job_id: str, totals: Any) -> JobListing:
        entity = self._get(job_id, _LISTING, "read the listing")
        with self._lock:
            if entity is None:
                self._listing_etags.pop(job_id, None)
            else:
                self._listing_etags[job_id] = str(entity.metadata["etag"])
        finished = bool(totals is not None and totals.get("Finished") is True)
        if entity is None:
            return JobListing(finished=finished)
        return JobListing(
            marker=str(entity["Marker"]) or None,
            pages_listed=int(entity["PagesListed"]),
            complete=entity["Complete"] is True,
            finished=finished,
        )

    def save_listing(self, job_id: str, listing: JobListing) -> None:
        self._ensure_table()
        entity = {
            "PartitionKey": _partition(job_id),
            "RowKey": _LISTING,
            "JobId": job_id[:1024],
            "Marker": listing.marker or "",
            "PagesListed": listing.pages_listed,
            "Complete": listing.complete,
        }
        with self._lock:
            etag = self._listing_etags.get(job_id)
        with translated(f"save the listing of {job_id}"):
            if etag is None:
                metadata = self._table.create_entity(entity)  # Conflict: another lister started it
            else:
                metadata = self._table.update_entity(
                    entity, mode=UpdateMode.REPLACE, etag=etag, match_condition=MatchConditions.IfNotModified
                )
        with self._lock:
            self._listing_etags[job_id] = str(metadata["etag"])

    # --- pages -------------------------------------------------------------------------------------

    def claim_page(self, job_id: str, number: int, *, worker: str, lease_seconds: float) -> PageClaim:
        self._ensure_table()
        now = self._clock.now().timestamp()
        entity: dict[str, Any] = {
            "PartitionKey": _partition(job_id),
            "RowKey": _page_row(number),
            "State": PageState.WORKING.value,
            "Worker": worker,
            "LeaseUntil": now + lease_seconds,
            "Claims": 1,
        }
        existing = self._get(job_id, _page_row(number), f"read page {number}")
        if existing is not None:
            if existing["State"] != PageState.WORKING.value:
                return PageClaim(ClaimOutcome.FINISHED)
            lease_left = float(existing["LeaseUntil"]) - now
            if lease_left > 0:
                return PageClaim(ClaimOutcome.HELD, retry_in=lease_left)
            entity["Claims"] = int(existing["Claims"]) + 1
            entity["Releases"] = int(existing.get("Releases", 0))
        try:
            with translated(f"claim page {number} of {job_id}"):
                if existing is None:
                    metadata = self._table.create_entity(entity)
                else:
                    metadata = self._table.update_entity(entity, mode=UpdateMode.REPLACE,
                                                         etag=existing.metadata["etag"],
                                                         match_condition=MatchConditions.IfNotModified)
        except Conflict:
            # Another delivery of the item claimed (or took over) the page since the read: its lease has just begun.
            return PageClaim(ClaimOutcome.HELD, retry_in=lease_seconds)
        # A claim after a released lease is a retry, not a takeover of a crashed worker's page.
        takeovers = int(entity["Claims"]) - 1 - int(entity.get("Releases", 0))
        with self._lock:
            self._claims[(job_id, number, worker)] = (str(metadata["etag"]), takeovers)
        return PageClaim(ClaimOutcome.CLAIMED, takeovers=takeovers)

    def renew_page(self, job_id: str, number: int, *, worker: str, lease_seconds: float) -> bool:
        self._ensure_table()
        with self._lock:
            claim = self._claims.get((job_id, number, worker))
        if claim is None:
            return False
        existing = self._get(job_id, _page_row(number), f"read page {number}")
        if existing is None or str(existing.metadata["etag"]) != claim[0]:
            return False  # taken over (its lease had run out) or recorded meanwhile
        renewed = {**existing, "LeaseUntil": self._clock.now().timestamp() + lease_seconds}
        try:
            with translated(f"renew the lease of page {number} of {job_id}"):
                metadata = self._table.update_entity(renewed, mode=UpdateMode.REPLACE, etag=claim[0],
                                                     match_condition=MatchConditions.IfNotModified)
        except Conflict:
            return False
        with self._lock:
            if (job_id, number, worker) in self._claims:  # the claim's ETag moves with each renewal
                self._claims[(job_id, number, worker)] = (str(metadata["etag"]), claim[1])
        return True

    def release_page(self, job_id: str, number: int, *, worker: str, retry_in: float) -> None:
        self._ensure_table()
        with self._lock:
            claim = self._claims.pop((job_id, number, worker), None)
        if claim is None:
            return
        existing = self._get(job_id, _page_row(number), f"read page {number}")
        if existing is None or str(existing.metadata["etag"]) != claim[0]:
            return  # taken over meanwhile: the new holder's lease is not this worker's to end
        released = {**existing, "LeaseUntil": self._clock.now().timestamp() + retry_in,
                    "Releases": int(existing.get("Releases", 0)) + 1}
        with translated(f"release page {number} of {job_id}"):
            try:
                self._table.update_entity(released, mode=UpdateMode.REPLACE, etag=claim[0],
                                          match_condition=MatchConditions.IfNotModified)
            except Conflict:
                return  # taken over between the read and the write: likewise

    def record_page(self, job_id: str, number: int, *, worker: str, result: PageResult) -> None:
        self._ensure_table()
        with self._lock:
            claim = self._claims.pop((job_id, number, worker), None)
        if claim is None:
            raise Conflict(f"page {number} of {job_id} is not claimed by this worker")
        claim_etag, takeovers = claim
        page = _page_entity(job_id, number, worker, result)
        if not self._record(job_id, number, page, claim_etag, result, takeovers=takeovers):
            raise Conflict(f"page {number} of {job_id} was taken over by another worker")

    def fail_page(self, job_id: str, number: int, *, result: PageResult) -> bool:
        self._ensure_table()
        page = _page_entity(job_id, number, "", result)
        for _ in range(_MAX_TOTALS_RACES):
            existing = self._get(job_id, _page_row(number), f"read page {number}")
            if existing is not None and existing["State"] != PageState.WORKING.value:
                return False
            etag = None if existing is None else str(existing.metadata["etag"])
            if self._record(job_id, number, page, etag, result, takeovers=0):
                return True
            # a worker claimed or recorded the page meanwhile: look at it again
        raise Conflict(f"page {number} of {job_id}: the page kept changing")

    def _record(self, job_id: str, number: int, page: dict[str, Any], page_etag: str | None, result: PageResult,
                *, takeovers: int) -> bool:
        """The page and the job's totals in one transaction; False when the page is no longer at
        ``page_etag`` (None: when it exists). A lost race on the totals is simply tried again."""
        for _ in range(_MAX_TOTALS_RACES):
            totals = self._get(job_id, _TOTALS, "read the totals")
            new_totals = _add_page(job_id, totals, result, takeovers=takeovers,
                                   problems=int(page["ProblemCount"]), problems_dropped=int(page["ProblemsDropped"]))
            page_op: tuple[Any, ...] = ("create", page) if page_etag is None else (
                "update", page, {"mode": UpdateMode.REPLACE, "etag": page_etag,
                                 "match_condition": MatchConditions.IfNotModified})
            if totals is None:
                totals_op: tuple[Any, ...] = ("create", new_totals)
            else:
                totals_op = ("update", new_totals, {"mode": UpdateMode.REPLACE, "etag": totals.metadata["etag"],
                                                    "match_condition": MatchConditions.IfNotModified})
            try:
                with translated(f"record page {number} of {job_id}"):
                    self._table.submit_transaction([page_op, totals_op])
            except Conflict:
                current = self._get(job_id, _page_row(number), f"read page {number}")
                if page_etag is None or current is None or str(current.metadata["etag"]) != page_etag:
                    return False
                continue  # another page's recorder moved the totals first: add to theirs
            return True
        raise Conflict(f"page {number} of {job_id}: the totals kept changing")

    # --- the job -------------------------------------------------------------------------------------

    def progress(self, job_id: str) -> JobProgress:
        self._ensure_table()
        totals = self._get(job_id, _TOTALS, "read the totals")
        listing = self._listing(job_id, totals)
        if totals is None:
            return JobProgress(job_id=job_id, listing=listing)
        problems: list[BlobProblem] = []
        # Pages are looked through only when one of them kept problems (the totals count them).
        if int(totals.get("ProblemsKept", 1)) > 0:
            query = f"PartitionKey eq '{_partition(job_id)}' and ProblemCount gt 0"
            with translated(f"read the problems of {job_id}"):
                for page in self._table.query_entities(query, select=["Problems"]):
                    problems.extend(BlobProblem(name=str(n), reason=str(r), detail=str(d))
                                    for n, r, d in json.loads(str(page["Problems"])))
        problems.sort(key=lambda problem: problem.name)
        return JobProgress(
            job_id=job_id,
            listing=listing,
            pages_done=int(totals["PagesDone"]),
            pages_failed=int(totals["PagesFailed"]),
            takeovers=int(totals["Takeovers"]),
            counts=_counts(totals["Counts"]),
            unwrap_calls=int(totals["UnwrapCalls"]),
            writes=int(totals["Writes"]),
            conflicts=int(totals["Conflicts"]),
            throttled=int(totals["Throttled"]),
            problems=tuple(problems),
            problems_dropped=int(totals["ProblemsDropped"]),
        )

    def finish(self, job_id: str) -> bool:
        self._ensure_table()
        while True:
            totals = self._get(job_id, _TOTALS, "read the totals")
            if totals is not None and totals.get("Finished") is True:
                return False
            try:
                with translated(f"finish {job_id}"):
                    if totals is None:  # a listing without a page (an empty container)
                        self._table.create_entity({**_add_page(job_id, None, PageResult(PageState.DONE),
                                                               takeovers=0, problems=0, problems_dropped=0),
                                                   "PagesDone": 0, "Finished": True})
                    else:
                        self._table.update_entity({**totals, "Finished": True}, mode=UpdateMode.REPLACE,
                                                  etag=totals.metadata["etag"],
                                                  match_condition=MatchConditions.IfNotModified)
            except Conflict:
                continue  # a page was recorded meanwhile (or another finisher won: then False next time)
            return True

    def _get(self, job_id: str, row: str, what: str) -> Any:
        with translated(f"{what} of {job_id}"):
            try:
                return self._table.get_entity(_partition(job_id), row)
            except ResourceNotFoundError:
                return None


def _counts(text: object) -> dict[str, int]:
    counts = json.loads(str(text))
    if not isinstance(counts, dict) or not all(isinstance(v, int) and v >= 0 for v in counts.values()):
        raise ValueError("Counts")
    return {str(k): v for k, v in counts.items()}


def _page_entity(job_id: str, number: int, worker: str, result: PageResult) -> dict[str, Any]:
    problems = [[problem.name, problem.reason, problem.detail] for problem in result.problems]
    dropped = result.problems_dropped
    text = json.dumps(problems, separators=(",", ":"))
    while len(text) > _PROBLEM_CHARS:
        keep = len(problems) * 3 // 4
        dropped += len(problems) - keep
        problems = problems[:keep]
        text = json.dumps(problems, separators=(",", ":"))
    return {
        "PartitionKey": _partition(job_id),
        "RowKey": _page_row(number),
        "State": result.state.value,
        "Worker": worker,
        "LeaseUntil": 0.0,
        "Counts": json.dumps(dict(result.counts), sort_keys=True),
        "UnwrapCalls": result.unwrap_calls,
        "Failure": result.failure[:256],
        "ProblemCount": len(problems),
        "ProblemsDropped": dropped,
        "Problems": text,
    }


def _add_page(
    job_id: str, totals: Mapping[str, Any] | None, result: PageResult, *, takeovers: int, problems: int,
    problems_dropped: int,
) -> dict[str, Any]:
    current: Mapping[str, Any] = totals if totals is not None else {}
    counts = Counter(_counts(current.get("Counts", "{}")))
    counts.update(result.counts)
    return {
        "PartitionKey": _partition(job_id),
        "RowKey": _TOTALS,
        "JobId": job_id[:1024],
        "PagesDone": int(current.get("PagesDone", 0)) + (result.state is PageState.DONE),
        "PagesFailed": int(current.get("PagesFailed", 0)) + (result.state is PageState.FAILED),
        "Takeovers": int(current.get("Takeovers", 0)) + takeovers,
        "Counts": json.dumps(dict(counts), sort_keys=True),
        "UnwrapCalls": int(current.get("UnwrapCalls", 0)) + result.unwrap_calls,
        "Writes": int(current.get("Writes", 0)) + result.writes,
        "Conflicts": int(current.get("Conflicts", 0)) + result.conflicts,
        "Throttled": int(current.get("Throttled", 0)) + result.throttled,
        "ProblemsKept": int(current.get("ProblemsKept", 0)) + problems,
        "ProblemsDropped": int(current.get("ProblemsDropped", 0)) + problems_dropped,
        "Finished": False,
    }

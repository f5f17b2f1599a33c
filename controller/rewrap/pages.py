"""Many workers on one container: page work items, their lease, and the job's progress across workers.

A scale-out job (a ``rewrap`` work item with ``scale_out`` set) is split by a *lister*: it walks the
container's listing within its time budget and turns every listing page into page work items on the
work queue -- blob names and the ETags they were listed with, plus the listing marker the page starts
at, never a content key or an envelope. Any number of ``process_work`` invocations then run pages in
parallel (``rewrap_page`` items); each page is one ledger entity, claimed under a lease before it is
worked and written once when it is done, both ETag-conditional:

* a page that is done is never worked again (a redelivered item is dropped as a duplicate);
* a page whose worker crashed is taken up again once its lease has run out (the queue redelivers
  the item; a delivery that finds a live lease is put back with a delay until it ends);
* blobs the crashed worker already re-wrapped are on the target version when the page is worked
  again: they cost no Key Vault call and are counted as already current, so the job's counts still
  add up to the listing.

The job's progress (pages listed by the lister, pages done and failed, the blobs' outcomes summed
over pages) is read from the ledger; whoever records the last page of a job whose listing is
complete (a worker, or the lister when the workers were faster) finishes the job, ETag-conditionally
and so exactly once, with the one report.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from controller.errors import InvalidInput, NotFound
from controller.ports import BlobItem, BlobPage, BlobProblem, BlobStore, RewrapProgress
from controller.rewrap.outcomes import Outcome, ProblemReason
from controller.rewrap.work import RewrapWorkItem, parse_work_item
from controller.vault_policy import VaultPolicy

PAGE_WORK_KIND = "rewrap_page"
#: A page item's JSON stays under this many bytes (a queue message holds 48 KiB of text).
MAX_PAGE_ITEM_BYTES = 40 * 1024
MAX_BLOB_NAME_CHARS = 1024
_MAX_ETAG_CHARS = 128


@dataclass(frozen=True, slots=True)
class ListedBlob:
    """A blob as the lister saw it: its name and ETag. Nothing else travels in a page item."""

    name: str
    etag: str


@dataclass(frozen=True, slots=True)
class RewrapPageItem:
    """One page of a scale-out job: the blobs a worker re-wraps (or rewrites) as one unit."""

    #: The job's lister item (account, container, prefix, key, mode, concurrency).
    job: RewrapWorkItem
    #: The page's number in the job: listing order, 0 first.
    number: int
    #: Where the listing page holding these blobs starts (None: the listing's start), so a worker
    #: reads their current metadata with one List Blobs call instead of one call per blob.
    marker: str | None
    blobs: tuple[ListedBlob, ...]

    def to_message(self) -> dict[str, object]:
        return {
            "kind": PAGE_WORK_KIND,
            "job": self.job.as_json(),
            "page": self.number,
            "marker": self.marker,
            "blobs": [[blob.name, blob.etag] for blob in self.blobs],
        }


def job_id_of(item: RewrapWorkItem) -> str:
    """The scale-out job's id (the ledger's key): mode, account, container, prefix and target version."""
    return f"scale|{item.mode.value}|{item.account}|{item.container}|{item.prefix or ''}|{item.key_id}"


def page_items(
    job: RewrapWorkItem, *, first_number: int, marker: str | None, blobs: Sequence[ListedBlob]
) -> list[RewrapPageItem]:
    """The page items of one listing page: as many blobs per item as fit a queue message."""
    items: list[RewrapPageItem] = []
    chunk: list[ListedBlob] = []
    size = _message_bytes(job, first_number, marker, [])
    for blob in blobs:
        blob_bytes = len(json.dumps([blob.name, blob.etag])) + 1
        if chunk and size + blob_bytes > MAX_PAGE_ITEM_BYTES:
            items.append(RewrapPageItem(job, first_number + len(items), marker, tuple(chunk)))
            chunk, size = [], _message_bytes(job, first_number + len(items), marker, [])
        chunk.append(blob)
        size += blob_bytes
    if chunk:
        items.append(RewrapPageItem(job, first_number + len(items), marker, tuple(chunk)))
    return items


def _message_bytes(job: RewrapWorkItem, number: int, marker: str | None, blobs: list[ListedBlob]) -> int:
    return len(json.dumps(RewrapPageItem(job, number, marker, tuple(blobs)).to_message()))


_PAGE_FIELDS = frozenset({"kind", "job", "page", "marker", "blobs"})


def parse_page_item(message: Mapping[str, object], *, policy: VaultPolicy) -> RewrapPageItem:
    """Validate a ``rewrap_page`` work item. Raises InvalidInput naming the offending field."""
    unknown = sorted(set(message) - _PAGE_FIELDS)
    if unknown:
        raise InvalidInput(f"rewrap page item has unknown field {unknown[0][:64]!r}")
    job_message = message.get("job")
    if not isinstance(job_message, dict):
        raise InvalidInput("rewrap page item: 'job' must be an object")
    job = parse_work_item(job_message, policy=policy)
    if not job.scale_out or job.dry_run:
        raise InvalidInput("rewrap page item: 'job' must be a scale-out job that is not a dry run")
    number = message.get("page")
    if isinstance(number, bool) or not isinstance(number, int) or number < 0:
        raise InvalidInput("rewrap page item: 'page' must be a non-negative integer")
    marker = message.get("marker")
    if marker is not None and (not isinstance(marker, str) or not marker):
        raise InvalidInput("rewrap page item: 'marker' must be a non-empty string or null")
    raw_blobs = message.get("blobs")
    if not isinstance(raw_blobs, list) or not raw_blobs:
        raise InvalidInput("rewrap page item: 'blobs' must be a non-empty list")
    blobs: list[ListedBlob] = []
    for entry in raw_blobs:
        if (
            not isinstance(entry, list)
            or len(entry) != 2
            or not all(isinstance(part, str) and part for part in entry)
            or len(entry[0]) > MAX_BLOB_NAME_CHARS
            or len(entry[1]) > _MAX_ETAG_CHARS
        ):
            raise InvalidInput("rewrap page item: each of 'blobs' must be [name, etag]")
        blobs.append(ListedBlob(name=entry[0], etag=entry[1]))
    if len({blob.name for blob in blobs}) != len(blobs):
        raise InvalidInput("rewrap page item: a blob is named twice")
    return RewrapPageItem(job=job, number=number, marker=marker, blobs=tuple(blobs))


class PageState(enum.StrEnum):
    WORKING = "working"
    DONE = "done"
    #: The page as a whole could not be worked (e.g. the container or the key refused for good).
    FAILED = "failed"


class ClaimOutcome(enum.StrEnum):
    CLAIMED = "claimed"
    #: The page is done or failed already: a redelivered item, nothing to do.
    FINISHED = "finished"
    #: Another worker holds a live lease on it: come back when the lease ends.
    HELD = "held"


@dataclass(frozen=True, slots=True)
class PageClaim:
    outcome: ClaimOutcome
    #: HELD: seconds until the holder's lease ends.
    retry_in: float = 0.0
    #: CLAIMED: how many workers claimed the page before this one (0: the first).
    takeovers: int = 0


@dataclass(frozen=True, slots=True)
class PageResult:
    """What one page came to, as its worker records it."""

    state: PageState
    counts: Mapping[str, int] = field(default_factory=dict)
    unwrap_calls: int = 0
    writes: int = 0
    conflicts: int = 0
    throttled: int = 0
    problems: tuple[BlobProblem, ...] = ()
    problems_dropped: int = 0
    #: FAILED: why (an error's class and message; never key material).
    failure: str = ""


def failed_page_result(page: RewrapPageItem, why: str) -> PageResult:
    """A page given up as a whole: each of its blobs counted failed, by name, with ``why`` (an error's
    class and message; never key material), so that the job's counts still add up to the listing."""
    detail = why[:256]
    return PageResult(
        state=PageState.FAILED,
        counts={Outcome.FAILED.value: len(page.blobs)},
        problems=tuple(BlobProblem(name=blob.name, reason=ProblemReason.PAGE_FAILED.value, detail=detail)
                       for blob in page.blobs),
        failure=detail,
    )


@dataclass(frozen=True, slots=True)
class JobListing:
    """The lister's own progress: where the listing continues, and how many pages it enqueued."""

    marker: str | None = None
    pages_listed: int = 0
    complete: bool = False
    #: The job is finished and its report was made (set once, by whoever recorded the last page).
    finished: bool = False


@dataclass(frozen=True, slots=True)
class JobProgress:
    """A scale-out job across its workers: the listing, the pages and the blobs' outcomes so far."""

    job_id: str
    listing: JobListing
    pages_working: int = 0
    pages_done: int = 0
    pages_failed: int = 0
    #: Times a page was claimed again after its worker's lease ran out.
    takeovers: int = 0
    counts: Mapping[str, int] = field(default_factory=dict)
    unwrap_calls: int = 0
    writes: int = 0
    conflicts: int = 0
    throttled: int = 0
    problems: tuple[BlobProblem, ...] = ()
    problems_dropped: int = 0

    @property
    def blobs(self) -> int:
        return sum(self.counts.values())

    @property
    def all_pages_recorded(self) -> bool:
        return self.listing.complete and self.pages_done + self.pages_failed >= self.listing.pages_listed

    def as_json(self) -> dict[str, object]:
        return {
            "job_id": self.job_id,
            "listing_complete": self.listing.complete,
            "finished": self.listing.finished,
            "pages_listed": self.listing.pages_listed,
            "pages_working": self.pages_working,
            "pages_done": self.pages_done,
            "pages_failed": self.pages_failed,
            "takeovers": self.takeovers,
            "blobs": self.blobs,
            "counts": dict(sorted(self.counts.items())),
            "unwrap_calls": self.unwrap_calls,
            "unwrap_calls_per_blob": round(self.unwrap_calls / self.blobs, 4) if self.blobs else 0.0,
            "writes": self.writes,
            "conflicts": self.conflicts,
            "throttled": self.throttled,
            "problems": [
                {"name": problem.name, "reason": problem.reason, "detail": problem.detail}
                for problem in self.problems
            ],
            "problems_dropped": self.problems_dropped,
        }


class PageStore:
    """The BlobStore a worker runs one page over: its listing is exactly the page's blobs, as they are now.

    The blobs' current ETags and metadata come from one List Blobs call at the page's marker (the
    listing page the lister saw them on); a blob no longer there (renamed around, listing shifted by
    new blobs) is read on its own, and one that is gone is counted as vanished. Everything else is
    the account's store.
    """

    def __init__(self, store: BlobStore, page: RewrapPageItem) -> None:
        self._store = store
        self._page = page
        self.vanished: list[str] = []

    def list_blobs(self, container: str, *, prefix: str | None, marker: str | None) -> BlobPage:
        listed = self._store.list_blobs(container, prefix=prefix, marker=self._page.marker)
        current = {item.name: item for item in listed.items}
        items: list[BlobItem] = []
        vanished: list[str] = []
        for blob in self._page.blobs:
            item = current.get(blob.name)
            if item is None:
                try:
                    item = self._store.get_properties(container, blob.name)
                except NotFound:
                    vanished.append(blob.name)
                    continue
            items.append(item)
        self.vanished = vanished
        return BlobPage(items=tuple(items), next_marker=None)

    def get_properties(self, container: str, name: str) -> BlobItem:
        return self._store.get_properties(container, name)

    def set_metadata(self, container: str, name: str, metadata: Mapping[str, str], *, if_match: str) -> str:
        return self._store.set_metadata(container, name, metadata, if_match=if_match)


class PageProgressIsRecordedOnce:
    """The walker's checkpoint for one page: there is nothing to resume inside a page (a page that
    was not recorded is worked again from its start), and the page's result is recorded once, by
    RewrapJobLedger.record_page, from the walker's report."""

    def load(self, job_id: str) -> RewrapProgress | None:
        return None

    def save(self, job_id: str, progress: RewrapProgress) -> None:
        """Nothing to keep: see the class."""

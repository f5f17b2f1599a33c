"""The walk over a container that both re-wrap and rewrite share: pages, bounded concurrency,
checkpoints, one back-off for every worker, and the merge of the blobs' outcomes into the progress.

For each page of the listing the walker hands every blob to the strategy (controller/rewrap/
strategies.py) on a bounded thread pool, merges what each blob came to into the job's progress and
saves it before the next page is listed, so a killed run resumes at the first unfinished page (a
resumed run redoes at most that page, which both strategies do idempotently). When a strategy's
conditional write loses an ETag race (Conflict), the walker reads the blob again and lets the
strategy decide afresh, so a concurrent writer's change is never overwritten. A blob that loses
every race of its round (``max_conflict_retries`` re-reads) is not given up at once: it comes back at
the end of its page, read afresh, for another round (``conflict_rounds``), by when an application that
writes it in bursts has usually moved on. One blob never aborts the run: whatever it comes to is
recorded with a stable reason.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

from controller.errors import Conflict, ConnectionLost, NotFound, PermanentError, TransientError, Unreachable
from controller.logs import log_record
from controller.model import KeyRef
from controller.ports import BlobItem, BlobPage, BlobStore, RewrapCheckpoint, RewrapObserver, RewrapProgress
from controller.rewrap.outcomes import BlobResult, CallTally, Outcome, ProblemReason, RewrapReport
from controller.rewrap.work import RewrapMode
from controller.rewrap.wrapping import WRAP_ALGORITHMS
from controller.thread_pools import interruptible_pool

log = logging.getLogger("controller.rewrap")

_T = TypeVar("_T")
_I = TypeVar("_I")


@dataclass(frozen=True, slots=True)
class RewrapOptions:
    max_workers: int = 8
    dry_run: bool = False
    #: Re-wrap only. None keeps each blob's wrap algorithm (readers' KEKs may hard-code it); RSA1_5
    #: becomes RSA-OAEP-256 either way.
    wrap_algorithm: str | None = None
    max_conflict_retries: int = 5
    #: Rounds of attempts a blob gets when it loses every ETag race of one: the first when its page is
    #: worked, each further one at the end of the page with a fresh read.
    conflict_rounds: int = 2
    max_transient_attempts: int = 8
    initial_backoff: float = 1.0
    max_backoff: float = 32.0
    #: Per-blob problems kept in the report and checkpoint; the rest are only counted.
    max_problems: int = 1000

    def __post_init__(self) -> None:
        if self.max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        if self.max_conflict_retries < 0 or self.max_transient_attempts < 1 or self.conflict_rounds < 1:
            raise ValueError("retry budgets must be non-negative, with at least one attempt")
        if self.wrap_algorithm is not None and self.wrap_algorithm not in WRAP_ALGORITHMS:
            raise ValueError(f"wrap_algorithm must be one of {', '.join(WRAP_ALGORITHMS)}")


#: The first pause before a call whose connection dropped is tried again (doubling, capped at the maximum back-off).
LOST_CONNECTION_PAUSE = 0.2


class RetriesExhausted(Exception):
    """Transient failures outlasted the budget (a strategy records it as a THROTTLED problem)."""


class Calls:
    """Runs store and vault calls for every worker, retrying TransientError after one shared back-off:
    when the service throttles one call, every worker pauses until the delay it asked for
    (``retry_after``) has passed, or, without one, an exponential delay that grows with consecutive
    throttles and resets on the first success."""

    def __init__(
        self,
        *,
        max_attempts: int,
        initial: float,
        maximum: float,
        sleep: Callable[[float], None],
        monotonic: Callable[[], float],
    ) -> None:
        self._max_attempts = max_attempts
        self._initial = initial
        self._maximum = maximum
        self._sleep = sleep
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._resume_at = 0.0
        self._streak = 0

    def call(self, operation: Callable[[], _T], tally: CallTally) -> _T:
        """Run ``operation``; raises RetriesExhausted when it stays throttled past the budget."""
        attempts = 0
        while True:
            self._wait()
            try:
                value = operation()
            except ConnectionLost:
                # A connection dropped mid-request (a busy vault or store resets some): it comes and goes, so
                # this call is retried like a throttled one, after its own short pause (not every worker's).
                # Three quick tries were too few where a blob's rewrite is ten requests: under 2-3% resets
                # per request one blob in a hundred ran out, failing its whole work item, until poisoned.
                attempts += 1
                if attempts >= self._max_attempts:
                    raise
                self._sleep(min(self._maximum, LOST_CONNECTION_PAUSE * 2 ** (attempts - 1)))
                continue
            except Unreachable:
                # Not throttling and not passing: refused, DNS, TLS. Two quick retries, then say what is wrong.
                attempts += 1
                if attempts >= min(3, self._max_attempts):
                    raise
                continue
            except TransientError as err:
                attempts += 1
                tally.throttled += 1
                if attempts >= self._max_attempts:
                    raise RetriesExhausted from err
                self._throttled(err.retry_after)
                continue
            with self._lock:
                self._streak = 0
            return value

    def _wait(self) -> None:
        while True:
            with self._lock:
                delay = self._resume_at - self._monotonic()
            if delay <= 0:
                return
            self._sleep(delay)

    def _throttled(self, retry_after: float | None) -> None:
        with self._lock:
            self._streak += 1
            if retry_after is not None and retry_after >= 0:
                delay = retry_after
            else:
                delay = min(self._maximum, self._initial * 2 ** (self._streak - 1))
            self._resume_at = max(self._resume_at, self._monotonic() + delay)


class BlobStrategy(Protocol):
    """What is done to one blob: re-wrap its content key, or rewrite it under a new one."""

    @property
    def mode(self) -> RewrapMode:
        ...

    @property
    def target(self) -> KeyRef:
        """The versioned key the blobs end up wrapped by."""
        ...

    def includes(self, item: BlobItem) -> bool:
        """False for blobs the run must not look at (rewrite's own staging copies)."""
        ...

    def attempt(self, container: str, current: BlobItem, result: BlobResult, calls: Calls) -> None:
        """Decide on the blob as ``current`` shows it and act, setting ``result``'s outcome (and problem).

        Raises Conflict when a conditional write found the blob changed: nothing was replaced, and the
        walker reads the blob again and calls ``attempt`` afresh with the same ``result``.
        """
        ...


class ContainerWalker:
    """Runs a strategy over every blob of a container (under a prefix), resuming a checkpointed run."""

    def __init__(
        self,
        *,
        store: BlobStore,
        checkpoint: RewrapCheckpoint,
        strategy: BlobStrategy,
        options: RewrapOptions | None = None,
        observer: RewrapObserver | None = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._checkpoint = checkpoint
        self._strategy = strategy
        self._options = options or RewrapOptions()
        self._observer = observer
        self._calls = Calls(
            max_attempts=self._options.max_transient_attempts,
            initial=self._options.initial_backoff,
            maximum=self._options.max_backoff,
            sleep=sleep,
            monotonic=monotonic,
        )

    def job_id(self, container: str, prefix: str | None = None) -> str:
        return f"{self._strategy.mode.value}|{container}|{prefix or ''}|{self._strategy.target.uri}"

    def run(self, container: str, *, prefix: str | None = None) -> RewrapReport:
        """Process every blob of ``container`` (under ``prefix``), resuming a checkpointed run.

        Raises TransientError when listing stays throttled past the retry budget (progress up to the
        last completed page is saved, so a retry resumes there); whatever the store raises while
        listing (BudgetExhausted, a kill) propagates between pages. A dry run neither unwraps, writes,
        nor touches the checkpoint.
        """
        options = self._options
        job_id = self.job_id(container, prefix)
        progress = RewrapProgress()
        if not options.dry_run:
            saved = self._checkpoint.load(job_id)
            # A completed job starts over: blobs may have been written with the old version since.
            if saved is not None and not saved.complete:
                progress = saved
        planned: list[str] = []
        marker = progress.marker
        with (
            interruptible_pool(options.max_workers, "rewrap") as executor,
            interruptible_pool(1, "rewrap-list") as lister,
        ):
            # The next page is listed while this one is worked on: a listing with metadata takes long
            # enough (seconds for 5,000 blobs) that waiting for it would leave every worker idle.
            next_page = lister.submit(self._list, container, prefix, marker)
            while True:
                page, listing_tally = next_page.result()
                if page.next_marker is not None:
                    next_page = lister.submit(self._list, container, prefix, page.next_marker)
                items = [item for item in page.items if self._strategy.includes(item)]
                results = _run_all(executor, functools.partial(self._blob, container), items)
                for _ in range(options.conflict_rounds - 1):
                    hot = [result for result in results if _lost_every_race(result)]
                    if not hot:
                        break
                    _run_all(executor, functools.partial(self._again, container), hot)
                for result in results:
                    self._report(result)
                progress = _merge(progress, results, marker=page.next_marker, limit=options.max_problems)
                progress = replace(progress, throttled=progress.throttled + listing_tally.throttled)
                if options.dry_run:
                    planned.extend(
                        result.name for result in results if result.outcome in (Outcome.REWRAPPED, Outcome.REWRITTEN)
                    )
                    del planned[options.max_problems :]
                marker = page.next_marker
                if marker is None:
                    progress = replace(progress, complete=True)
                if not options.dry_run:
                    self._checkpoint.save(job_id, progress)
                if self._observer is not None:
                    self._observer.page_done(len(page.items), progress)
                if marker is None:
                    break
        report = RewrapReport(
            mode=self._strategy.mode,
            job_id=job_id,
            container=container,
            prefix=prefix,
            target_key_id=self._strategy.target.uri,
            dry_run=options.dry_run,
            progress=progress,
            planned=tuple(planned),
        )
        summary = {key: value for key, value in report.as_json().items() if key not in ("problems", "planned")}
        log_record(log, logging.INFO, f"{_NOUN[report.mode]} finished", summary)
        return report

    def _list(self, container: str, prefix: str | None, marker: str | None) -> tuple[BlobPage, CallTally]:
        """One page of the listing, retried when throttled. Whatever else the store raises (a spent
        budget, a kill) comes out of the walker between pages, after the page before is saved."""
        listing = functools.partial(self._store.list_blobs, container, prefix=prefix, marker=marker)
        tally = CallTally()
        try:
            return self._calls.call(listing, tally), tally
        except RetriesExhausted as err:
            raise TransientError(f"listing {container} stayed throttled; resume from the checkpoint") from err

    def _blob(self, container: str, item: BlobItem) -> BlobResult:
        result = BlobResult(name=item.name, listed=item)
        self._settle(container, item, result)
        return result

    def _again(self, container: str, result: BlobResult) -> BlobResult:
        """A blob that lost every ETag race of its round, once more at the end of its page: read afresh,
        with a new round of attempts. An application that writes a blob in bursts has usually moved on
        by then, and a rewrite may find the blob superseded by the application's own upload."""
        result.outcome, result.problem = Outcome.FAILED, None
        current = self._reread(container, result)
        if current is not None:
            self._settle(container, current, result)
        return result

    def _reread(self, container: str, result: BlobResult) -> BlobItem | None:
        """The blob as it is now, or None with ``result`` set to why it cannot be read."""
        read = functools.partial(self._store.get_properties, container, result.name)
        try:
            return self._calls.call(read, result)
        except NotFound:
            result.outcome = Outcome.VANISHED
        except PermanentError as err:
            result.fail(ProblemReason.READ_FAILED, type(err).__name__)
        except RetriesExhausted:
            result.fail(ProblemReason.THROTTLED, "read")
        return None

    def _settle(self, container: str, current: BlobItem, result: BlobResult) -> None:
        """One round: attempt the blob, reading it again after every lost ETag race, at most
        ``max_conflict_retries`` times."""
        try:
            for _ in range(self._options.max_conflict_retries + 1):
                try:
                    self._strategy.attempt(container, current, result, self._calls)
                except Conflict:
                    result.conflicts += 1
                    reread = self._reread(container, result)
                    if reread is None:
                        return
                    current = reread
                    continue
                return
            result.fail(ProblemReason.CONFLICTS_EXHAUSTED)
        finally:
            result.unwrapped = None  # the content key is not kept a moment longer than the round needs it

    def _report(self, result: BlobResult) -> None:
        if result.problem is not None:
            log_record(
                log,
                logging.WARNING,
                f"blob not {_PARTICIPLE[self._strategy.mode]}",
                {"blob": result.name, "outcome": result.outcome.value, "reason": result.problem.reason,
                 "detail": result.problem.detail},
            )


_NOUN = {RewrapMode.REWRAP: "re-wrap", RewrapMode.REWRITE: "rewrite"}
_PARTICIPLE = {RewrapMode.REWRAP: "re-wrapped", RewrapMode.REWRITE: "rewritten"}


def _lost_every_race(result: BlobResult) -> bool:
    return result.problem is not None and result.problem.reason == ProblemReason.CONFLICTS_EXHAUSTED.value


def _run_all(
    executor: ThreadPoolExecutor, task: Callable[[_I], BlobResult], items: Iterable[_I]
) -> list[BlobResult]:
    """Run ``task`` over one page; if anything escapes (a kill, a bug), cancel what has not started."""
    futures: list[Future[BlobResult]] = [executor.submit(task, item) for item in items]
    try:
        return [future.result() for future in futures]
    except BaseException:
        for future in futures:
            future.cancel()
        raise


def _merge(progress: RewrapProgress, results: list[BlobResult], *, marker: str | None, limit: int) -> RewrapProgress:
    counts = Counter(progress.counts)
    counts.update(result.outcome.value for result in results)
    problems = list(progress.problems)
    dropped = progress.problems_dropped
    for result in results:
        if result.problem is None:
            continue
        if len(problems) < limit:
            problems.append(result.problem)
        else:
            dropped += 1
    return RewrapProgress(
        marker=marker,
        complete=False,
        pages=progress.pages + 1,
        counts=dict(counts),
        unwrap_calls=progress.unwrap_calls + sum(result.unwrap_calls for result in results),
        writes=progress.writes + sum(result.writes for result in results),
        conflicts=progress.conflicts + sum(result.conflicts for result in results),
        throttled=progress.throttled + sum(result.throttled for result in results),
        problems=tuple(problems),
        problems_dropped=dropped,
    )

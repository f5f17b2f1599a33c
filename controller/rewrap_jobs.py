"""Re-wrap jobs as queue work: the work-item model, splitting a job, and the per-item time budget.

A job (re-wrap or rewrite every blob of some containers, optionally under some prefixes, onto one key
version) is split into one work item per (account, container, prefix). A worker runs one item within
a time budget: the engine checkpoints after every page, so when the budget is spent the worker stops
before the next page and enqueues the item's continuation; the next worker resumes at the
checkpointed listing marker. Continuations therefore carry no marker of their own (the checkpoint is
the single source of truth, guarded by ETags); they carry a sequence number, so a redelivered
continuation of a job that has since completed is recognised and dropped instead of starting over.

Prefixes of one job must not overlap (none may start with another): overlapping items would list the
same blobs twice. Pure: no I/O, no azure imports.
"""

from __future__ import annotations

import enum
import functools
import itertools
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Protocol, TypeVar

from controller.envelope import find_envelope, parse_envelope
from controller.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    InvalidKeyId,
    MalformedEnvelope,
    NotFound,
    PermanentError,
    TransientError,
)
from controller.model import KeyRef, parse_key_id
from controller.ports import (
    BlobItem,
    BlobPage,
    BlobProblem,
    BlobStore,
    Clock,
    KeyUnwrapper,
    KeyWrapper,
    RewrapCheckpoint,
    RewrapProgress,
)

_T = TypeVar("_T")

WORK_KIND = "rewrap"
MAX_CONCURRENCY = 64
MAX_PREFIX_CHARS = 1024
_STORAGE_ACCOUNT = re.compile(r"[a-z0-9]{3,24}")
_CONTAINER = re.compile(r"(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]|\$root")


class RewrapMode(enum.StrEnum):
    #: Replace only the wrapped content key (metadata); the data never moves.
    REWRAP = "rewrap"
    #: Re-encrypt the data with a fresh content key (suspected content-key compromise).
    REWRITE = "rewrite"


@dataclass(frozen=True, slots=True)
class RewrapWorkItem:
    """One unit of fan-out work: one container (and prefix) of one account, onto one key version."""

    account: str
    container: str
    prefix: str | None
    key_id: str
    mode: RewrapMode = RewrapMode.REWRAP
    concurrency: int = 8
    dry_run: bool = False
    #: 0 for the first slice of the item, n for its n-th continuation.
    sequence: int = 0

    def continuation(self) -> RewrapWorkItem:
        return RewrapWorkItem(
            account=self.account,
            container=self.container,
            prefix=self.prefix,
            key_id=self.key_id,
            mode=self.mode,
            concurrency=self.concurrency,
            dry_run=self.dry_run,
            sequence=self.sequence + 1,
        )

    def to_message(self) -> dict[str, object]:
        return {
            "kind": WORK_KIND,
            "account": self.account,
            "container": self.container,
            "prefix": self.prefix,
            "key_id": self.key_id,
            "mode": self.mode.value,
            "concurrency": self.concurrency,
            "dry_run": self.dry_run,
            "sequence": self.sequence,
        }

    def as_json(self) -> dict[str, object]:
        return {name: value for name, value in self.to_message().items() if name != "kind"}


def parse_work_item(message: Mapping[str, object], *, vaults: Sequence[str]) -> RewrapWorkItem:
    """Validate a ``rewrap`` work item; the target key must be a versioned key of an allowed vault.

    Raises InvalidInput naming the offending field.
    """
    known = {"kind", "account", "container", "prefix", "key_id", "mode", "concurrency", "dry_run", "sequence"}
    unknown = sorted(set(message) - known)
    if unknown:
        raise InvalidInput(f"rewrap work item has unknown field {unknown[0][:64]!r}")
    account = _string(message, "account")
    if not _STORAGE_ACCOUNT.fullmatch(account):
        raise InvalidInput("rewrap work item: 'account' is not a storage account name")
    container = _string(message, "container")
    if not _CONTAINER.fullmatch(container):
        raise InvalidInput("rewrap work item: 'container' is not a container name")
    prefix = message.get("prefix")
    if prefix is not None and (not isinstance(prefix, str) or not prefix or len(prefix) > MAX_PREFIX_CHARS):
        raise InvalidInput("rewrap work item: 'prefix' must be a non-empty string or null")
    key = target_key(_string(message, "key_id"), vaults=vaults)
    if not key.is_versioned:
        raise InvalidInput("rewrap work item: 'key_id' must name a key version")
    mode_name = message.get("mode", RewrapMode.REWRAP.value)
    if mode_name not in tuple(RewrapMode):
        raise InvalidInput("rewrap work item: 'mode' must be rewrap or rewrite")
    mode = RewrapMode(str(mode_name))
    concurrency = message.get("concurrency", 8)
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or not 1 <= concurrency <= MAX_CONCURRENCY:
        raise InvalidInput(f"rewrap work item: 'concurrency' must be 1-{MAX_CONCURRENCY}")
    dry_run = message.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise InvalidInput("rewrap work item: 'dry_run' must be a boolean")
    sequence = message.get("sequence", 0)
    if isinstance(sequence, bool) or not isinstance(sequence, int) or sequence < 0:
        raise InvalidInput("rewrap work item: 'sequence' must be a non-negative integer")
    return RewrapWorkItem(
        account=account,
        container=container,
        prefix=prefix,
        key_id=key.uri,
        mode=mode,
        concurrency=concurrency,
        dry_run=dry_run,
        sequence=sequence,
    )


def target_key(key_id: str, *, vaults: Sequence[str]) -> KeyRef:
    """Parse a key id whose vault must be one of ``vaults`` (the CMK_VAULTS allowlist)."""
    try:
        key = parse_key_id(key_id, custom_origins=vaults)
    except InvalidKeyId as err:
        raise InvalidInput(f"key {key_id[:256]!r}: {err}") from err
    if key.vault.url not in vaults:
        raise InvalidInput(f"vault {key.vault.url} is not in CMK_VAULTS")
    return key


def _string(message: Mapping[str, object], name: str) -> str:
    value = message.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"rewrap work item: {name!r} must be a non-empty string")
    return value


def split_job(
    *,
    targets: Iterable[tuple[str, str]],
    key_id: str,
    prefixes: Sequence[str] = (),
    mode: RewrapMode = RewrapMode.REWRAP,
    concurrency: int = 8,
    dry_run: bool = False,
) -> list[RewrapWorkItem]:
    """One work item per (account, container) and prefix (or one per container without prefixes).

    Raises InvalidInput when a prefix overlaps another: those items would list the same blobs.
    """
    ordered = sorted(set(prefixes))
    for first, second in itertools.pairwise(ordered):
        if second.startswith(first):
            raise InvalidInput(f"prefixes {first!r} and {second!r} overlap")
    if any(not prefix for prefix in ordered):
        raise InvalidInput("an empty prefix overlaps every other")
    items: list[RewrapWorkItem] = []
    seen: set[tuple[str, str]] = set()
    for account, container in targets:
        if (account, container) in seen:
            continue
        seen.add((account, container))
        item_prefixes: list[str | None] = list(ordered) or [None]
        for prefix in item_prefixes:
            items.append(
                RewrapWorkItem(
                    account=account,
                    container=container,
                    prefix=prefix,
                    key_id=key_id,
                    mode=mode,
                    concurrency=concurrency,
                    dry_run=dry_run,
                )
            )
    return items


# --- time budget --------------------------------------------------------------------------------------


class BudgetExhausted(Exception):
    """The item's time budget is spent; the run stopped between two pages (progress is checkpointed)."""


class TimeBudget:
    """A deadline on the injected clock."""

    def __init__(self, clock: Clock, seconds: float) -> None:
        if seconds <= 0:
            raise ValueError("a time budget must be positive")
        self._clock = clock
        self._deadline: datetime = clock.now() + timedelta(seconds=seconds)

    def expired(self) -> bool:
        return self._clock.now() >= self._deadline


class BudgetedBlobStore:
    """A BlobStore that refuses to start another page once the budget is spent.

    The first page is always listed, so every slice makes progress. The engine saves its checkpoint
    after each completed page, before it asks for the next one: stopping here loses nothing.
    """

    def __init__(self, store: BlobStore, budget: TimeBudget) -> None:
        self._store = store
        self._budget = budget
        self.pages = 0

    def list_blobs(self, container: str, *, prefix: str | None, marker: str | None) -> BlobPage:
        if self.pages and self._budget.expired():
            raise BudgetExhausted
        page = self._store.list_blobs(container, prefix=prefix, marker=marker)
        self.pages += 1
        return page

    def get_properties(self, container: str, name: str) -> BlobItem:
        return self._store.get_properties(container, name)

    def set_metadata(self, container: str, name: str, metadata: Mapping[str, str], *, if_match: str) -> str:
        return self._store.set_metadata(container, name, metadata, if_match=if_match)


# --- what a worker needs per item ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RewrapPorts:
    """The ports one work item runs over (one storage account, one target key version)."""

    store: BlobStore
    unwrapper: KeyUnwrapper
    wrapper: KeyWrapper
    checkpoint: RewrapCheckpoint
    #: Rewrite mode only (None where the backend cannot rewrite).
    rewriter: BlobRewriter | None = None


class RewrapBackend(Protocol):
    """Opens the ports for a work item: adapters in production, fakes in unit tests."""

    def open(self, item: RewrapWorkItem) -> RewrapPorts:
        """Raises PermanentError when the account or key cannot be reached for good, TransientError
        when it may work later."""
        ...


# --- rewrite mode -------------------------------------------------------------------------------------
#
# Rewrite replaces a blob's content key, not just its wrapping: for a suspected content-key compromise
# (or to re-encrypt data server-side after CMK or an encryption scope was enabled). Per blob the
# BlobRewriter (an adapter: azure-storage-blob does the encryption) decrypts the blob as read at its
# listed ETag, writes a freshly encrypted copy (new content key, wrapped by the target version) to a
# staging blob, verifies that copy by downloading and decrypting it with the target key and comparing
# digests, and only then swaps it in with a server-side copy conditional on the listed ETag; then it
# deletes the staging blob. The blob is never missing (the swap is one Copy Blob onto the existing
# name) and never replaced by data that was not verified; a concurrent writer makes the swap fail
# (412 -> Conflict) and the blob is read again and decided afresh, so that writer's update stands.
#
# Readers: azure-storage-blob reads an encrypted blob with two requests (Get Blob Properties for the
# envelope, then Get Blob) and does not pin the ETag between them unless the caller passes one. A read
# that straddles ANY overwrite of the blob -- the swap here, or an application's own upload -- fails
# once with "Decryption failed" and succeeds when retried. Re-wrap has no such window (the content
# key does not change, only its wrapping). Readers that cannot retry should pass etag/match_condition.
#
# Costs per blob: two Key Vault unwraps (read, verify), the blob read twice and written twice (staging,
# copy), one delete. Resuming a killed run redoes the page it was killed in (harmless, not free).
# Blobs without a client-side envelope are not rewritten (not_encrypted): moving plain blobs into an
# encryption scope is a server-side copy this runner does not do yet.

#: Staging blobs live under this prefix in the same container; runs never treat them as data.
STAGING_PREFIX = ".cmk-rewrite/"


class BlobRewriter(Protocol):
    def rewrite(self, container: str, item: BlobItem) -> None:
        """Re-encrypt ``item`` under a new content key wrapped by the target version, verified, swapped in
        only if the blob still has ``item.etag``.

        Raises Conflict (the blob changed: nothing was replaced), NotFound (it is gone), Forbidden
        (the key refuses), TransientError, or PermanentError (e.g. the copy failed verification).
        """
        ...


@dataclass(frozen=True, slots=True)
class RewriteOptions:
    max_workers: int = 4
    dry_run: bool = False
    max_conflict_retries: int = 5
    max_transient_attempts: int = 8
    initial_backoff: float = 1.0
    max_backoff: float = 32.0
    max_problems: int = 1000
    custom_origins: tuple[str, ...] = ()


class RewriteRunner:
    """Rewrites every blob of a container wrapped by any version of the target key (pure driver).

    Pages are processed with bounded concurrency and checkpointed after each page like re-wrap; a
    resumed run redoes at most the page it was killed in (a rewrite of a rewritten blob is safe).
    """

    def __init__(
        self,
        *,
        store: BlobStore,
        rewriter: BlobRewriter,
        checkpoint: RewrapCheckpoint,
        target_key_id: str,
        options: RewriteOptions | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._store = store
        self._rewriter = rewriter
        self._checkpoint = checkpoint
        self._options = options or RewriteOptions()
        self._target = parse_key_id(target_key_id, custom_origins=self._options.custom_origins)
        if not self._target.is_versioned:
            raise InvalidKeyId(f"rewrite target {target_key_id} must name a key version")
        self._sleep = sleep

    def job_id(self, container: str, prefix: str | None = None) -> str:
        return f"rewrite|{container}|{prefix or ''}|{self._target.uri}"

    def rewrite_container(self, container: str, *, prefix: str | None = None) -> RewrapProgress:
        options = self._options
        job_id = self.job_id(container, prefix)
        progress = RewrapProgress()
        if not options.dry_run:
            saved = self._checkpoint.load(job_id)
            if saved is not None and not saved.complete:
                progress = saved
        marker = progress.marker
        with ThreadPoolExecutor(max_workers=options.max_workers, thread_name_prefix="rewrite") as executor:
            while True:
                listing = functools.partial(self._store.list_blobs, container, prefix=prefix, marker=marker)
                page = self._retrying(listing)
                items = [item for item in page.items if not item.name.startswith(STAGING_PREFIX)]
                outcomes = list(executor.map(lambda item: self._rewrite_blob(container, item), items))
                progress = _merge_outcomes(progress, outcomes, page.next_marker, options.max_problems)
                marker = page.next_marker
                if marker is None:
                    progress = replace(progress, complete=True)
                if not options.dry_run:
                    self._checkpoint.save(job_id, progress)
                if marker is None:
                    return progress

    def _rewrite_blob(self, container: str, item: BlobItem) -> tuple[str, BlobProblem | None, int]:
        """(outcome, problem, conflicts) for one blob."""
        current = item
        conflicts = 0
        for _ in range(self._options.max_conflict_retries + 1):
            skip = self._skip_reason(current)
            if skip is not None:
                return skip[0], skip[1], conflicts
            if self._options.dry_run:
                return "rewritten", None, conflicts
            try:
                self._retrying(functools.partial(self._rewriter.rewrite, container, current))
            except Conflict:
                conflicts += 1
                try:
                    current = self._retrying(functools.partial(self._store.get_properties, container, item.name))
                except NotFound:
                    return "vanished", None, conflicts
                except (PermanentError, _Exhausted) as err:
                    return "failed", BlobProblem(item.name, "read_failed", type(err).__name__), conflicts
                continue
            except NotFound:
                return "vanished", None, conflicts
            except Forbidden:
                return "failed", BlobProblem(item.name, "key_forbidden"), conflicts
            except PermanentError as err:
                return "failed", BlobProblem(item.name, "rewrite_failed", type(err).__name__), conflicts
            except _Exhausted:
                return "failed", BlobProblem(item.name, "throttled"), conflicts
            return "rewritten", None, conflicts
        return "failed", BlobProblem(item.name, "conflicts_exhausted"), conflicts

    def _skip_reason(self, item: BlobItem) -> tuple[str, BlobProblem | None] | None:
        try:
            entry = find_envelope(item.metadata)
            if entry is None:
                return "not_encrypted", None
            envelope = parse_envelope(entry[1])
        except MalformedEnvelope as err:
            return "skipped_malformed", BlobProblem(item.name, "malformed_envelope", err.reason)
        try:
            key = parse_key_id(envelope.wrapped_key.key_id, custom_origins=self._options.custom_origins)
        except InvalidKeyId:
            return "skipped_unknown_key", BlobProblem(item.name, "unknown_key", "not_key_vault_key")
        if not key.same_key(self._target):
            return "skipped_unknown_key", BlobProblem(item.name, "unknown_key", "other_key")
        return None

    def _retrying(self, operation: Callable[[], _T]) -> _T:
        attempts = 0
        while True:
            try:
                return operation()
            except TransientError as err:
                attempts += 1
                if attempts >= self._options.max_transient_attempts:
                    raise _Exhausted from err
                delay = err.retry_after
                if delay is None:
                    delay = min(self._options.max_backoff, self._options.initial_backoff * 2 ** (attempts - 1))
                self._sleep(delay)


class _Exhausted(Exception):
    """Transient failures outlasted the retry budget."""


def _merge_outcomes(
    progress: RewrapProgress,
    outcomes: list[tuple[str, BlobProblem | None, int]],
    marker: str | None,
    limit: int,
) -> RewrapProgress:
    counts = Counter(progress.counts)
    counts.update(outcome for outcome, _, _ in outcomes)
    problems = list(progress.problems)
    dropped = progress.problems_dropped
    for _, problem, _ in outcomes:
        if problem is None:
            continue
        if len(problems) < limit:
            problems.append(problem)
        else:
            dropped += 1
    return replace(
        progress,
        marker=marker,
        pages=progress.pages + 1,
        counts=dict(counts),
        writes=progress.writes + sum(1 for outcome, _, _ in outcomes if outcome == "rewritten"),
        conflicts=progress.conflicts + sum(conflicts for _, _, conflicts in outcomes),
        problems=tuple(problems),
        problems_dropped=dropped,
    )


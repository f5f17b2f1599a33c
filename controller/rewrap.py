"""Re-wrap of client-side-encrypted blobs onto a new key version: the engine, over ports only.

For each blob of a container the engine parses the ``encryptiondata`` envelope, and when the content
key is wrapped by another version of the target key it unwraps it (one Key Vault call), wraps the
same payload locally with the target version's public key and writes the metadata back under the
blob's ETag. The blob's data never moves: only the wrapped content key changes.

Guarantees:

* One successful unwrap per blob and envelope: a lost ETag race that left the wrapped key as it was
  reuses the payload already unwrapped; throttled calls are retried after the service's delay (and
  counted, like every call, in ``unwrap_calls``). Blobs already on the target version cost none.
* Every other metadata entry is written back as it was read (Set Blob Metadata replaces them all);
  a concurrent writer's change is never overwritten: the write is conditional, and on a conflict the
  blob is read again and decided afresh.
* Malformed envelopes, keys of other vaults or keys, and blobs that cannot be re-wrapped are
  recorded with a stable reason and skipped; one blob never aborts the run.
* Progress is checkpointed after every page, so a killed run resumes where it stopped.
* Content keys and plaintext are never logged, never put into an error or into the report.
"""

from __future__ import annotations

import enum
import functools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TypeVar

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from controller.envelope import Envelope, WrappedContentKey, find_envelope, parse_envelope
from controller.errors import (
    Conflict,
    Forbidden,
    InvalidKeyId,
    MalformedEnvelope,
    NotFound,
    PermanentError,
    TransientError,
)
from controller.logs import log_record
from controller.model import KeyRef, parse_key_id
from controller.ports import (
    BlobItem,
    BlobProblem,
    BlobStore,
    KeyUnwrapper,
    KeyWrapper,
    RewrapCheckpoint,
    RewrapProgress,
)

log = logging.getLogger("controller.rewrap")

_T = TypeVar("_T")

RSA_OAEP = "RSA-OAEP"
RSA_OAEP_256 = "RSA-OAEP-256"
RSA1_5 = "RSA1_5"
#: Algorithms the controller wraps with. RSA1_5 is read (unwrapped) but never written again.
WRAP_ALGORITHMS: tuple[str, ...] = (RSA_OAEP, RSA_OAEP_256)
#: Algorithms Key Vault unwraps with an RSA key.
UNWRAP_ALGORITHMS: tuple[str, ...] = (RSA_OAEP, RSA_OAEP_256, RSA1_5)
_MIN_RSA_BITS = 2048


class Outcome(enum.StrEnum):
    """What happened to one blob. In a dry run REWRAPPED means "would be re-wrapped"."""

    REWRAPPED = "rewrapped"
    ALREADY_CURRENT = "already_current"
    NOT_ENCRYPTED = "not_encrypted"
    SKIPPED_UNKNOWN_KEY = "skipped_unknown_key"
    SKIPPED_MALFORMED = "skipped_malformed"
    FAILED = "failed"
    VANISHED = "vanished"  # deleted while the run looked at it: nothing left to re-wrap


class ProblemReason(enum.StrEnum):
    """Why a blob was skipped or failed; the report's per-blob reason codes."""

    MALFORMED_ENVELOPE = "malformed_envelope"  # detail: envelope.MalformedReason
    UNKNOWN_KEY = "unknown_key"  # wrapped by another key, vault, or a non-Key Vault KEK
    UNSUPPORTED_WRAP_ALGORITHM = "unsupported_wrap_algorithm"
    KEY_FORBIDDEN = "key_forbidden"  # unwrap refused: permission, disabled or expired version
    KEY_NOT_FOUND = "key_not_found"  # the old version is gone (deleted or purged)
    UNWRAP_FAILED = "unwrap_failed"
    WRITE_FORBIDDEN = "write_forbidden"
    WRITE_FAILED = "write_failed"
    THROTTLED = "throttled"  # transient failures outlasted the retry budget
    CONFLICTS_EXHAUSTED = "conflicts_exhausted"  # lost the ETag race too many times


_OUTCOME_OF_REASON: Mapping[ProblemReason, Outcome] = {
    ProblemReason.MALFORMED_ENVELOPE: Outcome.SKIPPED_MALFORMED,
    ProblemReason.UNKNOWN_KEY: Outcome.SKIPPED_UNKNOWN_KEY,
    ProblemReason.UNSUPPORTED_WRAP_ALGORITHM: Outcome.SKIPPED_UNKNOWN_KEY,
}


@dataclass(frozen=True, slots=True)
class RsaPublicKeyWrapper:
    """A KeyWrapper over the public half of an RSA key version: wraps locally, never calls Key Vault.

    Build it from the version's JWK (``KeyVaultKey.key.n`` / ``.e``) with ``from_jwk``.
    """

    key_id: str
    public_key: rsa.RSAPublicKey = field(repr=False)

    def __post_init__(self) -> None:
        if self.public_key.key_size < _MIN_RSA_BITS:
            raise ValueError(f"RSA key {self.key_id} has {self.public_key.key_size} bits, below {_MIN_RSA_BITS}")

    @classmethod
    def from_jwk(cls, key_id: str, *, n: bytes, e: bytes) -> RsaPublicKeyWrapper:
        numbers = rsa.RSAPublicNumbers(e=int.from_bytes(e, "big"), n=int.from_bytes(n, "big"))
        return cls(key_id=key_id, public_key=numbers.public_key())

    def wrap(self, algorithm: str, payload: bytes) -> bytes:
        return self.public_key.encrypt(payload, oaep_padding(algorithm))


def oaep_padding(algorithm: str) -> padding.OAEP:
    """The padding JOSE names: RSA-OAEP is OAEP with SHA-1 (and MGF1-SHA-1), RSA-OAEP-256 with SHA-256."""
    if algorithm == RSA_OAEP:
        return padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)  # noqa: S303
    if algorithm == RSA_OAEP_256:
        return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    raise ValueError(f"{algorithm!r} is not a wrap algorithm the controller writes ({', '.join(WRAP_ALGORITHMS)})")


@dataclass(frozen=True, slots=True)
class RewrapOptions:
    max_workers: int = 8
    dry_run: bool = False
    #: None keeps each blob's wrap algorithm (readers' KEKs may hard-code it); RSA1_5 becomes
    #: RSA-OAEP-256 either way.
    wrap_algorithm: str | None = None
    max_conflict_retries: int = 5
    max_transient_attempts: int = 8
    initial_backoff: float = 1.0
    max_backoff: float = 32.0
    #: Per-blob problems kept in the report and checkpoint; the rest are only counted.
    max_problems: int = 1000
    #: Vault origins besides the Azure clouds' (the local sandbox's), for parsing KeyIds.
    custom_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        if self.max_conflict_retries < 0 or self.max_transient_attempts < 1:
            raise ValueError("retry budgets must be non-negative, with at least one attempt")
        if self.wrap_algorithm is not None and self.wrap_algorithm not in WRAP_ALGORITHMS:
            raise ValueError(f"wrap_algorithm must be one of {', '.join(WRAP_ALGORITHMS)}")


@dataclass(frozen=True, slots=True)
class RewrapReport:
    job_id: str
    container: str
    prefix: str | None
    target_key_id: str
    dry_run: bool
    progress: RewrapProgress
    #: Dry run only: names of blobs that would be re-wrapped (capped like problems).
    planned: tuple[str, ...] = ()

    @property
    def counts(self) -> Mapping[str, int]:
        return {outcome.value: self.progress.counts.get(outcome.value, 0) for outcome in Outcome}

    @property
    def blobs(self) -> int:
        return sum(self.counts.values())

    @property
    def unwrap_calls_per_blob(self) -> float:
        return self.progress.unwrap_calls / self.blobs if self.blobs else 0.0

    def as_json(self) -> dict[str, object]:
        return {
            "job_id": self.job_id,
            "container": self.container,
            "prefix": self.prefix,
            "target_key_id": self.target_key_id,
            "dry_run": self.dry_run,
            "complete": self.progress.complete,
            "pages": self.progress.pages,
            "blobs": self.blobs,
            "counts": dict(self.counts),
            "unwrap_calls": self.progress.unwrap_calls,
            "writes": self.progress.writes,
            "conflicts": self.progress.conflicts,
            "throttled": self.progress.throttled,
            "problems": [
                {"name": problem.name, "reason": problem.reason, "detail": problem.detail}
                for problem in self.progress.problems
            ],
            "problems_dropped": self.progress.problems_dropped,
            "planned": list(self.planned),
        }


@dataclass(slots=True)
class _Tally:
    throttled: int = 0


@dataclass(slots=True)
class _BlobResult(_Tally):
    name: str = ""
    outcome: Outcome = Outcome.FAILED
    problem: BlobProblem | None = None
    unwrap_calls: int = 0
    writes: int = 0
    conflicts: int = 0


class _RetriesExhausted(Exception):
    """Transient failures outlasted the budget (internal: becomes a THROTTLED problem)."""


class _Backoff:
    """One back-off shared by all workers: when the service throttles one call, every worker pauses
    until the delay it asked for (``retry_after``) has passed, or, without one, an exponential delay
    that grows with consecutive throttles and resets on the first success."""

    def __init__(
        self,
        *,
        sleep: Callable[[float], None],
        monotonic: Callable[[], float],
        initial: float,
        maximum: float,
    ) -> None:
        self._sleep = sleep
        self._monotonic = monotonic
        self._initial = initial
        self._maximum = maximum
        self._lock = threading.Lock()
        self._resume_at = 0.0
        self._streak = 0

    def wait(self) -> None:
        while True:
            with self._lock:
                delay = self._resume_at - self._monotonic()
            if delay <= 0:
                return
            self._sleep(delay)

    def throttled(self, retry_after: float | None) -> None:
        with self._lock:
            self._streak += 1
            if retry_after is not None and retry_after >= 0:
                delay = retry_after
            else:
                delay = min(self._maximum, self._initial * 2 ** (self._streak - 1))
            self._resume_at = max(self._resume_at, self._monotonic() + delay)

    def succeeded(self) -> None:
        with self._lock:
            self._streak = 0


class RewrapEngine:
    """Re-wraps the blobs of containers onto the key version ``wrapper.key_id`` names."""

    def __init__(
        self,
        *,
        store: BlobStore,
        unwrapper: KeyUnwrapper,
        wrapper: KeyWrapper,
        checkpoint: RewrapCheckpoint,
        options: RewrapOptions | None = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._unwrapper = unwrapper
        self._wrapper = wrapper
        self._checkpoint = checkpoint
        self._options = options or RewrapOptions()
        self._target = parse_key_id(wrapper.key_id, custom_origins=self._options.custom_origins)
        if not self._target.is_versioned:
            raise InvalidKeyId(f"re-wrap target {wrapper.key_id} must name a key version")
        self._backoff = _Backoff(
            sleep=sleep,
            monotonic=monotonic,
            initial=self._options.initial_backoff,
            maximum=self._options.max_backoff,
        )

    @property
    def target(self) -> KeyRef:
        return self._target

    def job_id(self, container: str, prefix: str | None = None) -> str:
        return f"rewrap|{container}|{prefix or ''}|{self._target.uri}"

    def rewrap_container(self, container: str, *, prefix: str | None = None) -> RewrapReport:
        """Re-wrap every blob of ``container`` (under ``prefix``), resuming a checkpointed run.

        Raises TransientError when listing stays throttled past the retry budget (progress up to the
        last completed page is saved, so a retry resumes there). A dry run neither unwraps, writes,
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
        with ThreadPoolExecutor(max_workers=options.max_workers, thread_name_prefix="rewrap") as executor:
            while True:
                listing = functools.partial(self._store.list_blobs, container, prefix=prefix, marker=marker)
                listing_tally = _Tally()
                try:
                    page = self._call(listing, listing_tally)
                except _RetriesExhausted as err:
                    raise TransientError(f"listing {container} stayed throttled; resume from the checkpoint") from err
                results = _run_all(executor, functools.partial(self._rewrap_blob, container), page.items)
                progress = _merge(progress, results, marker=page.next_marker, limit=options.max_problems)
                progress = replace(progress, throttled=progress.throttled + listing_tally.throttled)
                if options.dry_run:
                    planned.extend(result.name for result in results if result.outcome is Outcome.REWRAPPED)
                    del planned[options.max_problems :]
                marker = page.next_marker
                if marker is None:
                    progress = replace(progress, complete=True)
                if not options.dry_run:
                    self._checkpoint.save(job_id, progress)
                if marker is None:
                    break
        report = RewrapReport(
            job_id=job_id,
            container=container,
            prefix=prefix,
            target_key_id=self._target.uri,
            dry_run=options.dry_run,
            progress=progress,
            planned=tuple(planned),
        )
        summary = {key: value for key, value in report.as_json().items() if key not in ("problems", "planned")}
        log_record(log, logging.INFO, "re-wrap finished", summary)
        return report

    # -- one blob ------------------------------------------------------------------------------------

    def _rewrap_blob(self, container: str, item: BlobItem) -> _BlobResult:
        result = _BlobResult(name=item.name, outcome=Outcome.FAILED)
        # The unwrapped payload of the envelope being worked on, kept only while this blob is: a lost
        # ETag race that left the wrapped key unchanged must not cost a second Key Vault call.
        unwrapped: dict[WrappedContentKey, bytes] = {}
        current = item
        for _ in range(self._options.max_conflict_retries + 1):
            decided = self._decide(current, result)
            if decided is None:
                return result
            entry_name, envelope = decided
            if self._options.dry_run:
                result.outcome = Outcome.REWRAPPED
                return result
            try:
                payload = unwrapped.get(envelope.wrapped_key)
                if payload is None:
                    payload = self._unwrap(envelope, result)
                    unwrapped[envelope.wrapped_key] = payload
                envelope.check_payload(payload)
                algorithm = self._target_algorithm(envelope.wrapped_key.algorithm)
                rewrapped = envelope.with_wrapped_key(
                    WrappedContentKey(
                        key_id=self._target.uri,
                        encrypted_key=self._wrapper.wrap(algorithm, payload),
                        algorithm=algorithm,
                    )
                )
            except MalformedEnvelope as err:
                return _problem(result, ProblemReason.MALFORMED_ENVELOPE, err.reason)
            except Forbidden:
                return _problem(result, ProblemReason.KEY_FORBIDDEN)
            except NotFound:
                return _problem(result, ProblemReason.KEY_NOT_FOUND)
            except PermanentError as err:
                return _problem(result, ProblemReason.UNWRAP_FAILED, type(err).__name__)
            except _RetriesExhausted:
                return _problem(result, ProblemReason.THROTTLED, "unwrap")
            metadata = dict(current.metadata)
            metadata[entry_name] = rewrapped.to_metadata_value()
            write = functools.partial(
                self._store.set_metadata, container, current.name, metadata, if_match=current.etag
            )
            try:
                self._call(write, result)
            except Conflict:
                result.conflicts += 1
                try:
                    current = self._call(functools.partial(self._store.get_properties, container, item.name), result)
                except NotFound:
                    result.outcome = Outcome.VANISHED
                    return result
                except PermanentError as err:
                    return _problem(result, ProblemReason.WRITE_FAILED, type(err).__name__)
                except _RetriesExhausted:
                    return _problem(result, ProblemReason.THROTTLED, "read")
                continue
            except NotFound:
                result.outcome = Outcome.VANISHED
                return result
            except Forbidden:
                return _problem(result, ProblemReason.WRITE_FORBIDDEN)
            except PermanentError as err:
                return _problem(result, ProblemReason.WRITE_FAILED, type(err).__name__)
            except _RetriesExhausted:
                return _problem(result, ProblemReason.THROTTLED, "write")
            result.writes += 1
            result.outcome = Outcome.REWRAPPED
            return result
        return _problem(result, ProblemReason.CONFLICTS_EXHAUSTED)

    def _decide(self, item: BlobItem, result: _BlobResult) -> tuple[str, Envelope] | None:
        """The envelope to re-wrap and its metadata name, or None with ``result`` set to the outcome."""
        try:
            entry = find_envelope(item.metadata)
            if entry is None:
                result.outcome = Outcome.NOT_ENCRYPTED
                return None
            envelope = parse_envelope(entry[1])
        except MalformedEnvelope as err:
            _problem(result, ProblemReason.MALFORMED_ENVELOPE, err.reason)
            return None
        try:
            key = parse_key_id(envelope.wrapped_key.key_id, custom_origins=self._options.custom_origins)
        except InvalidKeyId:
            _problem(result, ProblemReason.UNKNOWN_KEY, "not_key_vault_key")
            return None
        if not key.same_key(self._target):
            _problem(result, ProblemReason.UNKNOWN_KEY, "other_key")
            return None
        if key.version == self._target.version:
            result.outcome = Outcome.ALREADY_CURRENT
            return None
        if envelope.wrapped_key.algorithm not in UNWRAP_ALGORITHMS:
            _problem(result, ProblemReason.UNSUPPORTED_WRAP_ALGORITHM, envelope.wrapped_key.algorithm[:32])
            return None
        return entry[0], envelope

    def _unwrap(self, envelope: Envelope, result: _BlobResult) -> bytes:
        wrapped = envelope.wrapped_key

        def unwrap() -> bytes:
            result.unwrap_calls += 1
            return self._unwrapper.unwrap(wrapped.key_id, wrapped.algorithm, wrapped.encrypted_key)

        return self._call(unwrap, result)

    def _target_algorithm(self, source_algorithm: str) -> str:
        if self._options.wrap_algorithm is not None:
            return self._options.wrap_algorithm
        return source_algorithm if source_algorithm in WRAP_ALGORITHMS else RSA_OAEP_256

    def _call(self, operation: Callable[[], _T], tally: _Tally) -> _T:
        """Run ``operation``, retrying TransientError after the shared back-off."""
        attempts = 0
        while True:
            self._backoff.wait()
            try:
                value = operation()
            except TransientError as err:
                attempts += 1
                tally.throttled += 1
                if attempts >= self._options.max_transient_attempts:
                    raise _RetriesExhausted from err
                self._backoff.throttled(err.retry_after)
                continue
            self._backoff.succeeded()
            return value


def _problem(result: _BlobResult, reason: ProblemReason, detail: str = "") -> _BlobResult:
    result.outcome = _OUTCOME_OF_REASON.get(reason, Outcome.FAILED)
    result.problem = BlobProblem(name=result.name, reason=reason.value, detail=detail)
    log_record(
        log,
        logging.WARNING,
        "blob not re-wrapped",
        {"blob": result.name, "outcome": result.outcome.value, "reason": reason.value, "detail": detail},
    )
    return result


def _run_all(
    executor: ThreadPoolExecutor, task: Callable[[BlobItem], _BlobResult], items: Iterable[BlobItem]
) -> list[_BlobResult]:
    """Run ``task`` over one page; if anything escapes (a kill, a bug), cancel what has not started."""
    futures: list[Future[_BlobResult]] = [executor.submit(task, item) for item in items]
    try:
        return [future.result() for future in futures]
    except BaseException:
        for future in futures:
            future.cancel()
        raise


def _merge(progress: RewrapProgress, results: list[_BlobResult], *, marker: str | None, limit: int) -> RewrapProgress:
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

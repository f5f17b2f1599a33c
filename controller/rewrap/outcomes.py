"""What happened to each blob (one outcome enum, stable problem reasons) and the report of a run."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from controller.envelope import WrappedContentKey
from controller.ports import BlobItem, BlobProblem, RewrapProgress
from controller.rewrap.work import RewrapMode


class Outcome(enum.StrEnum):
    """What happened to one blob. In a dry run REWRAPPED / REWRITTEN mean "would be"."""

    REWRAPPED = "rewrapped"  # re-wrap: the content key is now wrapped by the target version
    REWRITTEN = "rewritten"  # rewrite: new content key, wrapped by the target version, data re-encrypted
    #: Rewrite: while the run worked on the blob, its application uploaded it anew under the target version,
    #: with a content key other than the one the blob was listed with: what the rewrite was for is done.
    SUPERSEDED = "superseded"
    ALREADY_CURRENT = "already_current"
    NOT_ENCRYPTED = "not_encrypted"
    SKIPPED_UNKNOWN_KEY = "skipped_unknown_key"
    SKIPPED_MALFORMED = "skipped_malformed"
    FAILED = "failed"
    VANISHED = "vanished"  # deleted while the run looked at it: nothing left to do


#: The outcomes each mode can give, in report order (a report names every one, zero or not).
OUTCOMES_OF_MODE: Mapping[RewrapMode, tuple[Outcome, ...]] = {
    RewrapMode.REWRAP: (
        Outcome.REWRAPPED, Outcome.ALREADY_CURRENT, Outcome.NOT_ENCRYPTED, Outcome.SKIPPED_UNKNOWN_KEY,
        Outcome.SKIPPED_MALFORMED, Outcome.FAILED, Outcome.VANISHED,
    ),
    RewrapMode.REWRITE: (
        Outcome.REWRITTEN, Outcome.SUPERSEDED, Outcome.NOT_ENCRYPTED, Outcome.SKIPPED_UNKNOWN_KEY,
        Outcome.SKIPPED_MALFORMED, Outcome.FAILED, Outcome.VANISHED,
    ),
}


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
    READ_FAILED = "read_failed"  # reading the blob again after a lost ETag race failed
    REWRITE_FAILED = "rewrite_failed"  # e.g. the new copy failed verification
    THROTTLED = "throttled"  # transient failures outlasted the retry budget; detail: which call
    #: Lost the ETag race in every attempt of every round (the first, then again at the end of its page).
    CONFLICTS_EXHAUSTED = "conflicts_exhausted"
    #: Scale-out: the blob's page was given up as a whole (its work item failed for good or went to the
    #: poison queue); detail: why. The blob may or may not be on the target version.
    PAGE_FAILED = "page_failed"


_OUTCOME_OF_REASON: Mapping[ProblemReason, Outcome] = {
    ProblemReason.MALFORMED_ENVELOPE: Outcome.SKIPPED_MALFORMED,
    ProblemReason.UNKNOWN_KEY: Outcome.SKIPPED_UNKNOWN_KEY,
    ProblemReason.UNSUPPORTED_WRAP_ALGORITHM: Outcome.SKIPPED_UNKNOWN_KEY,
}


@dataclass(slots=True)
class CallTally:
    """Transient failures met by the calls made for one blob or one listing."""

    throttled: int = 0


@dataclass(slots=True)
class BlobResult(CallTally):
    """What one blob came to, filled in by a strategy while the blob is worked on."""

    name: str = ""
    #: The blob as the run found it in the listing (rewrite compares what the blob holds now with it).
    listed: BlobItem | None = field(default=None, repr=False)
    outcome: Outcome = Outcome.FAILED
    problem: BlobProblem | None = None
    unwrap_calls: int = 0
    writes: int = 0
    conflicts: int = 0
    #: Re-wrap: the wrapped key being worked on and its unwrapped payload, kept only while this blob is,
    #: so that a lost ETag race that left the wrapped key unchanged costs no second Key Vault call.
    unwrapped: tuple[WrappedContentKey, bytes] | None = field(default=None, repr=False)

    def fail(self, reason: ProblemReason, detail: str = "") -> None:
        self.outcome = _OUTCOME_OF_REASON.get(reason, Outcome.FAILED)
        self.problem = BlobProblem(name=self.name, reason=reason.value, detail=detail)


@dataclass(frozen=True, slots=True)
class RewrapReport:
    """One container (and prefix) run: the job's progress, and in a dry run what would change."""

    mode: RewrapMode
    job_id: str
    container: str
    prefix: str | None
    target_key_id: str
    dry_run: bool
    progress: RewrapProgress
    #: Dry run only: names of blobs that would be re-wrapped or rewritten (capped like problems).
    planned: tuple[str, ...] = field(default=())

    @property
    def counts(self) -> Mapping[str, int]:
        return {outcome.value: self.progress.counts.get(outcome.value, 0) for outcome in OUTCOMES_OF_MODE[self.mode]}

    @property
    def blobs(self) -> int:
        return sum(self.progress.counts.values())

    @property
    def unwrap_calls_per_blob(self) -> float:
        return self.progress.unwrap_calls / self.blobs if self.blobs else 0.0

    @property
    def incomplete(self) -> bool:
        """Blobs were left behind (failed or malformed) or the listing did not finish."""
        counts = self.progress.counts
        return bool(counts.get(Outcome.FAILED, 0) or counts.get(Outcome.SKIPPED_MALFORMED, 0)) or (
            not self.progress.complete
        )

    def as_json(self) -> dict[str, object]:
        return {
            "mode": self.mode.value,
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

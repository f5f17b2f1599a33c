"""Interfaces the pure core needs from the outside world (typing.Protocol).

Adapters in controller/adapters/ implement them against Azure; unit tests implement them with small
hand-written fakes. Later capabilities add their ports here (KeyVault, StorageControl, Inventory,
BlobStore, AuditLog, Notifier) next to the ones the event intake needs today.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware (UTC)."""
        ...


class EventLedger(Protocol):
    """Remembers processed event ids so that redeliveries (Event Grid is at-least-once) are dropped."""

    def claim_event(self, event_id: str, *, now: datetime, ttl: timedelta) -> bool:
        """Atomically record ``event_id``; True if this call claimed it, False if it was already claimed
        and has not expired. Must be safe against concurrent claims of the same id."""
        ...

    def release_event(self, event_id: str) -> None:
        """Forget a claim whose processing failed transiently, so the redelivery is processed."""
        ...

    def purge_expired(self, *, now: datetime) -> int:
        """Delete expired claims (housekeeping); return how many were deleted."""
        ...


class WorkQueue(Protocol):
    def enqueue(self, message: dict[str, object], *, delay: timedelta | None = None) -> None:
        """Put a JSON work item on the queue, invisible for ``delay``."""
        ...


# === Client-side encryption re-wrap (controller/rewrap.py) ==========================================


@dataclass(frozen=True, slots=True)
class BlobItem:
    """One blob as the re-wrap engine sees it: its name, its ETag and its full user metadata."""

    name: str
    etag: str
    metadata: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class BlobPage:
    """One page of a listing; ``next_marker`` continues it (None: the listing is complete)."""

    items: tuple[BlobItem, ...]
    next_marker: str | None


class BlobStore(Protocol):
    """The blob data plane of one storage account (azure-storage-blob ContainerClient/BlobClient)."""

    def list_blobs(self, container: str, *, prefix: str | None, marker: str | None) -> BlobPage:
        """One page of blobs with their metadata, starting at ``marker`` (None: the first page)."""
        ...

    def get_properties(self, container: str, name: str) -> BlobItem:
        """The blob's current ETag and metadata. Raises NotFound when the blob is gone."""
        ...

    def set_metadata(self, container: str, name: str, metadata: Mapping[str, str], *, if_match: str) -> str:
        """Replace ALL of the blob's metadata with ``metadata`` if its ETag is still ``if_match``.

        Returns the new ETag. Raises Conflict when the ETag no longer matches (another writer won),
        NotFound when the blob is gone, TransientError when throttled (with ``retry_after`` if known).
        """
        ...


class KeyUnwrapper(Protocol):
    """Unwraps a content key with the private half of a Key Vault key: one Key Vault call per call."""

    def unwrap(self, key_id: str, algorithm: str, wrapped: bytes) -> bytes:
        """Raises Forbidden (no unwrapKey permission, key disabled), NotFound, TransientError (429)."""
        ...


class KeyWrapper(Protocol):
    """Wraps content keys with the PUBLIC half of the target key version, locally (no Key Vault call)."""

    @property
    def key_id(self) -> str:
        """The versioned key identifier recorded as the envelope's KeyId."""
        ...

    def wrap(self, algorithm: str, payload: bytes) -> bytes:
        """Wrap ``payload`` with ``algorithm`` (RSA-OAEP or RSA-OAEP-256)."""
        ...


@dataclass(frozen=True, slots=True)
class BlobProblem:
    """A blob the re-wrap left alone or could not re-wrap: name and stable codes, never key material."""

    name: str
    reason: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class RewrapProgress:
    """What a re-wrap job has done so far; ``marker`` is where the next page starts (None: the start).

    Saved after every completed page, so a killed run resumes at the first unfinished page. Blobs of
    that page that were re-wrapped before the kill are counted as already current on resume.
    """

    marker: str | None = None
    complete: bool = False
    pages: int = 0
    counts: Mapping[str, int] = field(default_factory=dict)
    unwrap_calls: int = 0
    writes: int = 0
    conflicts: int = 0
    throttled: int = 0
    problems: tuple[BlobProblem, ...] = ()
    problems_dropped: int = 0


class RewrapCheckpoint(Protocol):
    """Durable progress of re-wrap jobs (a table or blob in production), keyed by job id."""

    def load(self, job_id: str) -> RewrapProgress | None:
        """The last saved progress of ``job_id``, or None when it never ran."""
        ...

    def save(self, job_id: str, progress: RewrapProgress) -> None:
        """Persist ``progress`` (overwrites the previous one)."""
        ...


# === end of client-side encryption re-wrap ==========================================================


# === Rotation reconciler (controller/service.py reconcile_key) ======================================
# Imported here so this section stays self-contained while others append theirs.
from controller.audit import AuditReport  # noqa: E402
from controller.model import (  # noqa: E402
    Condition,
    Consumer,
    ForceAdoptionIntent,
    KeyRef,
    KeyState,
    KeyVersionInfo,
    Severity,
    VaultOrigin,
)
from controller.reasons import Reason  # noqa: E402


class KeyVaultReader(Protocol):
    """Key Vault key management for the reconciler: one listing per key, rotation on request."""

    def get_key_state(self, key: KeyRef) -> KeyState:
        """Every version of the (versionless) key with its attributes; ``reachable`` False when the
        vault cannot be read (the planner then decides nothing)."""
        ...

    def rotate_key(self, key: KeyRef) -> KeyVersionInfo:
        """Create a new version now (Key Vault's rotate); returns it."""
        ...


class ConsumerInventory(Protocol):
    def consumers_of(self, key: KeyRef) -> list[Consumer]:
        """Every storage account and encryption scope configured with ``key`` (versionless or pinned),
        with their identity's observed access to the key."""
        ...

    def keys_in_use(self, vault: VaultOrigin) -> list[KeyRef]:
        """The (versionless) keys of ``vault`` that at least one consumer is configured with."""
        ...

    def reread(self, consumer: Consumer) -> Consumer | None:
        """The consumer as ARM holds it now, with its identity's access to its key; None when it is
        gone or no longer uses a Key Vault key. Read from ARM itself, never from Resource Graph,
        which lags writes by minutes."""
        ...


class ConsumerControl(Protocol):
    def set_key(self, consumer: Consumer, key: KeyRef) -> Consumer:
        """Point the consumer's CMK at ``key`` (versioned: pin; versionless: automatic updates) and
        return the consumer as Azure reports it afterwards."""
        ...


@dataclass(frozen=True, slots=True)
class RotationRecord:
    """What the ledger keeps per key: forced-adoption intents and the last recorded conditions."""

    intents: tuple[ForceAdoptionIntent, ...] = ()
    consumer_conditions: Mapping[str, tuple[Condition, ...]] = field(default_factory=dict)
    version_conditions: Mapping[str, tuple[Condition, ...]] = field(default_factory=dict)


class RotationLedger(Protocol):
    def load(self, key: KeyRef) -> RotationRecord:
        ...

    def save_intent(self, key: KeyRef, intent: ForceAdoptionIntent) -> None:
        """Durably record a forced-adoption step; must complete before the consumer is written."""
        ...

    def save_conditions(
        self,
        key: KeyRef,
        consumer_conditions: Mapping[str, tuple[Condition, ...]],
        version_conditions: Mapping[str, tuple[Condition, ...]],
    ) -> None:
        ...


@dataclass(frozen=True, slots=True)
class Alert:
    """A notification for humans. ``fingerprint`` identifies the problem so receivers can dedupe."""

    severity: Severity
    title: str
    resource: str
    reason: Reason
    message: str
    fingerprint: str
    details: Mapping[str, object] = field(default_factory=dict)


class Notifier(Protocol):
    def send(self, alert: Alert) -> None:
        ...


class AuditLog(Protocol):
    """Key Vault audit logs (Log Analytics): evidence of which key versions are still being used."""

    def last_successful_unwraps(self, key: KeyRef) -> Mapping[str, datetime] | None:
        """Per version of ``key``: the time of its last successful KeyUnwrap within the retention;
        None when no audit log is configured (no evidence either way)."""
        ...

    def failures(self, vaults: Sequence[str], *, start: datetime, end: datetime) -> AuditReport | None:
        """Failed KeyWrap/KeyUnwrap/KeyGet of ``vaults`` (origins) in [start, end], grouped and classified
        (CMK-017); None when no audit log is configured."""
        ...


# === end of rotation reconciler =====================================================================

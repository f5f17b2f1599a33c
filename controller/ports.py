"""Interfaces the pure core needs from the outside world (typing.Protocol).

Adapters in controller/adapters/ implement them against Azure; unit tests implement them with small
hand-written fakes (tests/unit/fakes.py).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from controller.alerts import AlertState, Delivery, DeliveryReport, Notice
from controller.audit import AuditReport
from controller.compliance.drift import DriftFocus, FocusedEstate
from controller.compliance.estate import Estate
from controller.model import (
    Alert,
    Condition,
    Consumer,
    ForceAdoptionIntent,
    KeyRef,
    KeyState,
    KeyVersionInfo,
    VaultOrigin,
)
from controller.rewrap.work import RewrapWorkItem

if TYPE_CHECKING:  # audit_watch builds on the reconciler, which builds on these ports; pages imports BlobProblem
    from controller.audit_watch import AuditWatch
    from controller.rewrap.pages import JobListing, JobProgress, PageClaim, PageResult


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


@dataclass(frozen=True, slots=True)
class QueuedWork:
    """A work item as the queue acknowledged it: what withdrawing it before its delivery takes."""

    message_id: str
    receipt: str


class WorkQueue(Protocol):
    def enqueue(self, message: dict[str, object], *, delay: timedelta | None = None) -> QueuedWork:
        """Put a JSON work item on the queue, invisible for ``delay``."""
        ...

    def withdraw(self, work: QueuedWork) -> None:
        """Remove an item not delivered yet; one already delivered (or gone) is left alone."""
        ...


# --- client-side encryption re-wrap and rewrite (controller/rewrap/) ----------------------------------


@dataclass(frozen=True, slots=True)
class BlobItem:
    """One blob as a re-wrap or rewrite run sees it: its name, its ETag and its full user metadata."""

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


class BlobRewriter(Protocol):
    """Rewrites blobs under a new content key wrapped by the target version (controller/rewrap/strategies.py)."""

    def rewrite(self, container: str, item: BlobItem) -> None:
        """Re-encrypt ``item`` under a new content key wrapped by the target version, verified, swapped in
        only if the blob still has ``item.etag``.

        Raises Conflict (the blob changed: nothing was replaced), NotFound (it is gone), Forbidden
        (the key refuses), TransientError, or PermanentError (e.g. the copy failed verification).
        """
        ...


@dataclass(frozen=True, slots=True)
class RewrapPorts:
    """The ports one work item runs over (one storage account, one target key version)."""

    store: BlobStore
    unwrapper: KeyUnwrapper
    #: The target version (its ``key_id`` is the versioned key the blobs end up wrapped by).
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

    def target_version(self, key: KeyRef) -> KeyRef:
        """The version a job onto ``key`` targets: the version it names (once seen to exist), or the
        key's current version when it is versionless."""
        ...


class RewrapJobLedger(Protocol):
    """Scale-out jobs in the ledger (controller/rewrap/pages.py): the lister's listing, one entity per
    page (claimed under a lease, then recorded once), and the job's progress summed over pages. Every
    write is ETag-conditional."""

    def listing(self, job_id: str) -> JobListing:
        """The lister's progress (an empty listing when the job never ran)."""
        ...

    def save_listing(self, job_id: str, listing: JobListing) -> None:
        """Advance the listing. Raises Conflict when another lister advanced it since it was read."""
        ...

    def claim_page(self, job_id: str, number: int, *, worker: str, lease_seconds: float) -> PageClaim:
        """Claim page ``number`` for ``worker``: CLAIMED (no one holds it, or its holder's lease ran
        out), FINISHED (done or failed already) or HELD (a live lease of another worker)."""
        ...

    def renew_page(self, job_id: str, number: int, *, worker: str, lease_seconds: float) -> bool:
        """``worker``'s lease on page ``number`` runs ``lease_seconds`` from now; False (nothing changes)
        when the page is no longer that worker's claim (taken over, recorded or released)."""
        ...

    def record_page(self, job_id: str, number: int, *, worker: str, result: PageResult) -> None:
        """Record what the page came to. Raises Conflict when ``worker`` no longer holds the claim
        (its lease ran out and another worker took the page over)."""
        ...

    def release_page(self, job_id: str, number: int, *, worker: str, retry_in: float) -> None:
        """``worker`` gives its claim on page ``number`` up (a transient error): the page may be claimed
        again after ``retry_in`` seconds instead of after the whole lease. Nothing when it was taken over."""
        ...

    def fail_page(self, job_id: str, number: int, *, result: PageResult) -> bool:
        """Record page ``number`` as failed whoever holds it (its work item is given up, e.g. moved to
        the poison queue); False when the page was recorded already (then nothing changes)."""
        ...

    def progress(self, job_id: str) -> JobProgress:
        """The job across its workers: the listing plus every page recorded so far."""
        ...

    def finish(self, job_id: str) -> bool:
        """Mark the job finished; True for the one caller that did (False: it was already)."""
        ...


class RewrapObserver(Protocol):
    """Follows a run page by page (the CLI's progress display)."""

    def page_done(self, listed: int, progress: RewrapProgress) -> None:
        """``listed`` blobs were on the page just finished; ``progress`` is the job's so far."""
        ...


# --- rotation reconciler (controller/reconciler.py) ----------------------------------------------------


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

    def refresh(self, consumers: Sequence[Consumer]) -> list[Consumer | None]:
        """``consumers`` as ARM holds them now, in the same order (None: gone, or no longer on a Key
        Vault key), read in as few requests as possible (a subscription's paged listing rather than
        one read per consumer); their identity's access is kept as gathered. The states read are
        what ``ConsumerControl.set_key`` checks its write against, so a write needs no read of its own."""
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


@dataclass(frozen=True, slots=True)
class Worklist:
    """A key's consumers as a reconcile cut off by its time budget last knew them (what the inventory
    answered, or its own write's answer), kept in the ledger for the continuations that carry on from
    it: a continuation plans from these instead of listing the estate again. A hint, never the truth:
    each consumer is verified against ARM before it is written, so a stale state costs a read, never a
    wrong write. ``saved_at``: when a run last recorded it (an old one is not believed)."""

    id: str
    saved_at: datetime
    consumers: tuple[Consumer, ...]


class WriteClaim(enum.Enum):
    """The answer to a write claim (RotationLedger.claim_write)."""

    CLAIMED = "claimed"
    #: Claimed, but another run ended its claim after the caller read the consumer: re-read before writing.
    CHANGED_SINCE_READ = "changed_since_read"
    #: Another run holds a live claim: it writes the consumer, not the caller.
    HELD_ELSEWHERE = "held_elsewhere"


class RotationLedger(Protocol):
    def load(self, key: KeyRef) -> RotationRecord:
        ...

    def save_intent(self, key: KeyRef, intent: ForceAdoptionIntent) -> None:
        """Durably record a forced-adoption step; must complete before the consumer is written. Raises
        Conflict when another run recorded this consumer's intent since this ledger loaded or wrote it
        (nothing is recorded): read it again with ``load_intent`` and plan from it."""
        ...

    def load_intent(self, key: KeyRef, consumer_id: str) -> ForceAdoptionIntent | None:
        """The consumer's intent as recorded now (None: none), which the next ``save_intent`` replaces."""
        ...

    def claim_write(self, key: KeyRef, consumer_id: str, write: str, *, owner: str, now: datetime,
                    until: datetime, read_at: datetime, read_state: str | None = None,
                    inherits: str | None = None) -> WriteClaim:
        """Atomically claim one consumer's write (``write``: the key URI being set) for ``owner`` until
        ``until``: HELD_ELSEWHERE when another owner holds a claim on that consumer lasting beyond ``now``,
        so two runs reconciling the same key never write one consumer at the same time; the claim of a
        crashed run lapses. CHANGED_SINCE_READ when the claim was taken but a run released it after
        ``read_at`` (when the caller read the consumer): that run may have written it, so re-read it first;
        unless that run noted the state it left the consumer in and it is ``read_state``, what the caller read
        (then the read shows what the consumer is now, whether it was made before or after that run's writes).
        ``inherits``: an owner whose live claims ``owner`` takes over (the run a continuation continues);
        the takeover is conditional, so of two deliveries of one continuation only one gets them."""
        ...

    def release_writes(self, key: KeyRef, consumer_ids: Sequence[str], *, owner: str, now: datetime,
                       left: Mapping[str, str] | None = None) -> None:
        """End ``owner``'s claims on these consumers (its writes of them are over, done or failed), noting
        ``now`` as when and, from ``left``, the state each consumer was left in as ARM answered (consumer id
        -> state; none where the outcome is unknown): another run may claim them at once, and one that read
        a consumer before ``now`` in another state re-reads it first. Nothing for a claim that is someone
        else's or gone."""
        ...

    def save_conditions(
        self,
        key: KeyRef,
        consumer_conditions: Mapping[str, tuple[Condition, ...]],
        version_conditions: Mapping[str, tuple[Condition, ...]],
    ) -> None:
        """Record the conditions of these consumers and versions (those that changed; the others keep
        theirs). Raises Conflict when another instance recorded some of them since this one loaded the
        record: nothing of what it refused is recorded; load, re-plan and save again."""
        ...

    def start_worklist(self, key: KeyRef, worklist_id: str, consumers: Sequence[Consumer], *,
                       now: datetime) -> None:
        """Record ``consumers`` as the key's worklist ``worklist_id``, saved ``now``: it replaces whichever
        worklist the key had (a key has one; a continuation of the one replaced finds it gone)."""
        ...

    def load_worklist(self, key: KeyRef, worklist_id: str) -> Worklist | None:
        """The key's worklist ``worklist_id`` as last recorded; None when the key has none, has another, or
        this one is no longer whole (another run's worklist took some of its consumers over meanwhile)."""
        ...

    def update_worklist(self, key: KeyRef, worklist_id: str, changed: Mapping[str, Consumer | None], *,
                        now: datetime) -> None:
        """Record the new states of the worklist's consumers that ``changed`` since ``load_worklist`` read
        them (by consumer id; None: no longer a consumer of the key), and ``now`` as when it was saved. Each
        consumer's state is conditional on it being as loaded: one another run recorded since stays as that
        run recorded it. Raises Conflict (nothing recorded) when the key's worklist is no longer this one."""
        ...


class AlertLedger(Protocol):
    """Alert states by scope and fingerprint, and the outbox of deliveries not yet accepted."""

    def load_scope(self, scope: str) -> list[AlertState]:
        ...

    def load(self, scope: str, fingerprint: str) -> AlertState | None:
        ...

    def save(self, states: Sequence[AlertState], deliveries: Sequence[Delivery]) -> None:
        """Write ``deliveries`` first, then ``states``, each state ETag-conditional against what this
        instance loaded: raises Conflict when another instance changed one first. A delivery whose key
        is already owed or was delivered is not added again (two instances deciding the same
        transition owe one notice)."""
        ...

    def due(self, now: datetime, *, limit: int) -> list[Delivery]:
        """Deliveries whose next attempt is at or before ``now``, oldest first."""
        ...

    def claim(self, delivery: Delivery, until: datetime) -> bool:
        """Take ``delivery`` (as ``due`` returned it to this instance) until ``until``: its next attempt
        moves there, so other instances' ``due`` skip it. Conditional on the row being unchanged since
        that read: False when another instance claimed, delivered or rescheduled it first. A claim left
        by an instance that died expires at ``until`` and the delivery is due again."""
        ...

    def delivered(self, delivery: Delivery) -> None:
        """Mark the delivery made (kept, so the same notice is never owed again)."""
        ...

    def reschedule(self, delivery: Delivery) -> None:
        ...


class AlertChannel(Protocol):
    """One destination of notices (Teams, Slack, a webhook, an Event Grid topic)."""

    def deliver(self, notice: Notice) -> None:
        """Raises TransientError (retry later) or PermanentError (refused: retried with long back-off)."""
        ...


class Notifier(Protocol):
    """Where every alert leaves (controller/alert_desk.py: the ledger decides what is new, still
    open or resolved, and each channel gets what it should)."""

    def send(self, alert: Alert) -> None:
        """A one-shot alert (nothing will clear it): notified once, again only after the re-alert interval."""
        ...

    def sync(self, scope: str, alerts: Sequence[Alert], *, within: Callable[[Alert], bool] | None = None) -> None:
        """Every alert that holds now in ``scope`` (e.g. one key's consumers): new ones are opened,
        lasting ones reminded of after the re-alert interval, missing ones resolved. ``within``: a
        partial evaluation resolves only the missing alerts it accepts (None: the whole scope)."""
        ...

    def dispatch(self) -> DeliveryReport:
        """Deliver the notices still owed to a channel (the timer calls it: nothing waits for an event)."""
        ...


class AuditLog(Protocol):
    """Key Vault audit logs (Log Analytics): evidence of which key versions are still being used."""

    def last_successful_unwraps(self, key: KeyRef) -> Mapping[str, datetime] | None:
        """Per version of ``key``: the time of its last successful KeyUnwrap within the retention;
        None when no audit log is configured (no evidence either way)."""
        ...

    def failures(self, vaults: Sequence[str], *, start: datetime, end: datetime) -> AuditReport | None:
        """Failed KeyWrap/KeyUnwrap/KeyGet of ``vaults`` (origins) in [start, end], grouped and classified
        (CMK-017), with each key's latest KeyDelete/KeyPurge/KeyRecover (``key_operations``); None when no
        audit log is configured."""
        ...


class AuditCheckpoint(Protocol):
    """The audit timer's checkpoint in the ledger (controller/audit_watch.py), written ETag-conditionally."""

    def load(self) -> AuditWatch:
        """The last saved checkpoint (an empty one before the first scan); remembers what was read."""
        ...

    def save(self, watch: AuditWatch) -> None:
        """Replace the checkpoint; Conflict when another instance saved one since this one's load."""
        ...


class EstateReader(Protocol):
    """Everything the compliance rules read, gathered once per sweep (controller/adapters/estate_gatherer.py)."""

    def gather(self, subscriptions: Sequence[str], now: datetime) -> Estate:
        """One snapshot of ``subscriptions`` (empty: every subscription the identity can read). What
        cannot be read is recorded in ``Estate.read_failures``; this raises only when nothing could be."""
        ...

    def gather_focus(self, subscriptions: Sequence[str], focus: DriftFocus, now: datetime) -> FocusedEstate:
        """Only what ``focus`` touches, and what its rules need (compliance.drift.select), read in
        full; the rest of ``subscriptions`` only listed. Raises like ``gather``."""
        ...


class ReportStore(Protocol):
    """Where compliance reports are kept (a container of the app's own storage account)."""

    def save(self, name: str, document: bytes) -> None:
        """Write (or overwrite) the report ``name`` (a path such as ``latest.json``)."""
        ...

    def load(self, name: str) -> bytes | None:
        """The report ``name``; None when there is none yet."""
        ...

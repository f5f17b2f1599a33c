"""Small hand-written fakes of the ports, for unit tests of the pure core and the function entry points."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from controller.alerts import AlertState, Delivery, DeliveryReport, Notice
from controller.audit import AuditFailureGroup, AuditReport, KeyOperation, VaultSource, report_of
from controller.audit_watch import AuditWatch
from controller.compliance.drift import DriftFocus, FocusedEstate, ListedVault, coverage_of, scope_vaults, select
from controller.compliance.estate import Estate
from controller.errors import Conflict, TransientError
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
from controller.ports import QueuedWork, RotationRecord, Worklist, WriteClaim
from controller.reconciler import ReconcileDeps
from controller.rotation import PlannerSettings
from controller.service import Dependencies
from controller.settings import Settings


@dataclass
class FakeClock:
    moment: datetime = field(default_factory=lambda: datetime(2026, 11, 30, 12, 0, tzinfo=UTC))

    def now(self) -> datetime:
        return self.moment

    def advance(self, delta: timedelta) -> None:
        self.moment += delta


@dataclass
class FakeLedger:
    """Event claims in a dict; can be told to fail transiently to exercise retry paths."""

    claims: dict[str, datetime] = field(default_factory=dict)
    fail_with: TransientError | None = None
    released: list[str] = field(default_factory=list)

    def claim_event(self, event_id: str, *, now: datetime, ttl: timedelta) -> bool:
        if self.fail_with is not None:
            raise self.fail_with
        expires = self.claims.get(event_id)
        if expires is not None and expires > now:
            return False
        self.claims[event_id] = now + ttl
        return True

    def release_event(self, event_id: str) -> None:
        self.claims.pop(event_id, None)
        self.released.append(event_id)

    def purge_expired(self, *, now: datetime) -> int:
        expired = [event_id for event_id, expires in self.claims.items() if expires <= now]
        for event_id in expired:
            del self.claims[event_id]
        return len(expired)


class Killed(BaseException):
    """Stands for the process dying mid-way (not an error the reconciler may catch)."""


@dataclass
class FakeVault:
    versions: list[KeyVersionInfo]
    rotations: int = 0
    clock: FakeClock = field(default_factory=FakeClock)
    #: Raised by every read while set (the vault throttled or unreachable).
    fail: Exception | None = None

    def get_key_state(self, key: KeyRef) -> KeyState:
        if self.fail is not None:
            raise self.fail
        return KeyState(key.versionless, tuple(self.versions))

    def rotate_key(self, key: KeyRef) -> KeyVersionInfo:
        self.rotations += 1
        created = self.clock.now()
        version = KeyVersionInfo(f"{self.rotations:032x}", enabled=True, created=created)
        self.versions.append(version)
        return version


@dataclass
class FakeStorage:
    """Inventory and control over a dict of consumers, with Azure's semantics: a pin takes effect at
    once; setting the versionless URI keeps the version in use until the next daily poll."""

    consumers: dict[str, Consumer]
    kill_after_writes: int | None = None
    fail_for: dict[str, Exception] = field(default_factory=dict)
    #: Someone else's change to a consumer, applied just before our next write to it (a race).
    interfere: dict[str, Callable[[Consumer], Consumer | None]] = field(default_factory=dict)
    writes: list[tuple[str, str]] = field(default_factory=list)
    inventory_reads: int = 0
    rereads: int = 0
    refreshes: int = 0

    def consumers_of(self, key: KeyRef) -> list[Consumer]:
        self.inventory_reads += 1
        return [consumer for consumer in self.consumers.values() if consumer.key.same_key(key)]

    def keys_in_use(self, vault: VaultOrigin) -> list[KeyRef]:
        return sorted({consumer.key.versionless for consumer in self.consumers.values()
                       if consumer.key.vault == vault}, key=lambda key: key.uri)

    def reread(self, consumer: Consumer) -> Consumer | None:
        self.rereads += 1
        return self.consumers.get(consumer.id)

    def refresh(self, consumers: Sequence[Consumer]) -> list[Consumer | None]:
        self.refreshes += 1
        return [self.consumers.get(consumer.id) for consumer in consumers]

    def set_key(self, consumer: Consumer, key: KeyRef) -> Consumer:
        if consumer.id in self.fail_for:
            raise self.fail_for[consumer.id]
        if self.kill_after_writes is not None and len(self.writes) >= self.kill_after_writes:
            raise Killed
        change = self.interfere.pop(consumer.id, None)
        if change is not None:
            changed = change(self.consumers[consumer.id])
            if changed is None:
                del self.consumers[consumer.id]
            else:
                self.consumers[consumer.id] = changed
        stored = self.consumers.get(consumer.id)
        if stored is None or stored.key != consumer.key:
            # As StorageControl: the write is refused when the consumer changed since it was read.
            raise Conflict(f"{consumer.resource_id} changed since it was read")
        self.writes.append((consumer.id, key.uri))
        current = key if key.version else self.consumers[consumer.id].current_key
        updated = replace(self.consumers[consumer.id], key=key, current_key=current)
        self.consumers[consumer.id] = updated
        return updated


@dataclass
class FakeRotationLedger:
    intents: dict[str, ForceAdoptionIntent] = field(default_factory=dict)
    consumer_conditions: dict[str, tuple[Condition, ...]] = field(default_factory=dict)
    version_conditions: dict[str, tuple[Condition, ...]] = field(default_factory=dict)
    intent_log: list[tuple[str, str]] = field(default_factory=list)
    condition_saves: int = 0
    subjects_written: int = 0
    #: consumer id -> (owner, until): the write claims, one per consumer as the Table ledger keeps them.
    claims: dict[str, tuple[str, datetime]] = field(default_factory=dict)
    #: consumer id -> when its claim's owner ended it (as the Table ledger notes it).
    ended: dict[str, datetime] = field(default_factory=dict)
    #: consumer id -> the state its claim's owner left it in (noted as the claim ended).
    left: dict[str, str] = field(default_factory=dict)
    #: The consumers each release_writes call named.
    releases: list[tuple[str, ...]] = field(default_factory=list)
    #: Condition saves to refuse with Conflict, as when another instance saved the key's conditions first.
    save_conflicts: int = 0
    #: consumer id -> another run's work on it, done just before this run's next intent for it is saved
    #: (which is then refused with Conflict, as the Table ledger refuses a stale ETag).
    other_run_first: dict[str, Callable[[], None]] = field(default_factory=dict)
    #: The consumers each condition save recorded.
    saved_consumers: list[tuple[str, ...]] = field(default_factory=list)
    #: Versionless key URI (lower case) -> its worklist: id, when saved, each consumer id -> its state (None: gone).
    worklists: dict[str, tuple[str, datetime, dict[str, Consumer | None]]] = field(default_factory=dict)
    #: (worklist id, consumers recorded) per start_worklist and update_worklist call.
    worklist_saves: list[tuple[str, int]] = field(default_factory=list)

    def load(self, key: KeyRef) -> RotationRecord:
        return RotationRecord(tuple(self.intents.values()), dict(self.consumer_conditions),
                              dict(self.version_conditions))

    def save_intent(self, key: KeyRef, intent: ForceAdoptionIntent) -> None:
        other_run = self.other_run_first.pop(intent.consumer_id, None)
        if other_run is not None:
            other_run()  # it records its own intent: this one's ETag no longer matches
            raise Conflict(f"the forced-adoption record of {intent.consumer_id} changed concurrently")
        self.intents[intent.consumer_id] = intent
        self.intent_log.append((intent.consumer_id, intent.step.value))

    def load_intent(self, key: KeyRef, consumer_id: str) -> ForceAdoptionIntent | None:
        return self.intents.get(consumer_id)

    def claim_write(self, key: KeyRef, consumer_id: str, write: str, *, owner: str, now: datetime,
                    until: datetime, read_at: datetime, read_state: str | None = None,
                    inherits: str | None = None) -> WriteClaim:
        held = self.claims.get(consumer_id.lower())
        if held is not None and held[0] not in (owner, inherits) and held[1] > now:
            return WriteClaim.HELD_ELSEWHERE
        self.claims[consumer_id.lower()] = (owner, until)
        ended = self.ended.pop(consumer_id.lower(), None)
        left = self.left.pop(consumer_id.lower(), None)
        if (held is not None and held[0] != owner and ended is not None and ended >= read_at
                and (read_state is None or left != read_state)):
            return WriteClaim.CHANGED_SINCE_READ
        return WriteClaim.CLAIMED

    def release_writes(self, key: KeyRef, consumer_ids: Sequence[str], *, owner: str, now: datetime,
                       left: Mapping[str, str] | None = None) -> None:
        self.releases.append(tuple(consumer_ids))
        for consumer_id in consumer_ids:
            held = self.claims.get(consumer_id.lower())
            if held is not None and held[0] == owner:
                self.claims[consumer_id.lower()] = (owner, now)
                self.ended[consumer_id.lower()] = now
                if left is not None and consumer_id in left:
                    self.left[consumer_id.lower()] = left[consumer_id]
                else:
                    self.left.pop(consumer_id.lower(), None)

    def start_worklist(self, key: KeyRef, worklist_id: str, consumers: Sequence[Consumer], *, now: datetime) -> None:
        states: dict[str, Consumer | None] = {consumer.id: consumer for consumer in consumers}
        self.worklists[key.versionless.uri.lower()] = (worklist_id, now, states)
        self.worklist_saves.append((worklist_id, len(consumers)))

    def load_worklist(self, key: KeyRef, worklist_id: str) -> Worklist | None:
        held = self.worklists.get(key.versionless.uri.lower())
        if held is None or held[0] != worklist_id:
            return None
        return Worklist(worklist_id, held[1], tuple(state for state in held[2].values() if state is not None))

    def update_worklist(self, key: KeyRef, worklist_id: str, changed: Mapping[str, Consumer | None], *,
                        now: datetime) -> None:
        held = self.worklists.get(key.versionless.uri.lower())
        if held is None or held[0] != worklist_id:
            raise Conflict(f"the worklist of {key.uri} is no longer {worklist_id}")
        self.worklists[key.versionless.uri.lower()] = (worklist_id, now, {**held[2], **changed})
        self.worklist_saves.append((worklist_id, len(changed)))

    def save_conditions(self, key, consumer_conditions, version_conditions) -> None:
        # As the table: each subject given is written (upserted); the others keep their row.
        if self.save_conflicts:
            self.save_conflicts -= 1
            raise Conflict("the conditions changed concurrently")
        self.saved_consumers.append(tuple(sorted(consumer_conditions)))
        self.consumer_conditions = {**self.consumer_conditions, **consumer_conditions}
        self.version_conditions = {**self.version_conditions, **version_conditions}
        self.condition_saves += 1
        self.subjects_written += len(consumer_conditions) + len(version_conditions)


@dataclass
class FakeQueue:
    items: list[tuple[dict[str, object], timedelta | None]] = field(default_factory=list)
    withdrawn: list[tuple[dict[str, object], timedelta | None]] = field(default_factory=list)
    _sent: dict[str, tuple[dict[str, object], timedelta | None]] = field(default_factory=dict)

    def enqueue(self, message, *, delay=None) -> QueuedWork:
        item = (message, delay)
        self.items.append(item)
        work = QueuedWork(message_id=f"m{len(self._sent)}", receipt="r")
        self._sent[work.message_id] = item
        return work

    def withdraw(self, work: QueuedWork) -> None:
        item = self._sent.pop(work.message_id, None)
        if item is not None and item in self.items:
            self.items.remove(item)
            self.withdrawn.append(item)


@dataclass
class FakeNotifier:
    """Records what was sent: ``alerts`` in order (one-shots and every sync's alerts), ``scopes`` the
    last sync of each scope."""

    alerts: list[Alert] = field(default_factory=list)
    scopes: dict[str, list[Alert]] = field(default_factory=dict)
    within: dict[str, Callable[[Alert], bool] | None] = field(default_factory=dict)
    dispatches: int = 0

    def send(self, alert: Alert) -> None:
        self.alerts.append(alert)

    def sync(self, scope: str, alerts: Sequence[Alert], *, within: Callable[[Alert], bool] | None = None) -> None:
        self.alerts.extend(alerts)
        self.scopes[scope] = list(alerts)
        self.within[scope] = within

    def dispatch(self) -> DeliveryReport:
        self.dispatches += 1
        return DeliveryReport()


@dataclass
class FakeAuditLog:
    """Last successful unwraps per version; None stands for "no audit log configured".

    ``failure_groups`` None: no audit log configured; otherwise the groups every window reports.
    ``key_operations``: deletions and recoveries, each reported by the windows that contain its time.
    ``asked`` records each failures() call (vaults, start, end).
    """

    unwraps: dict[str, datetime] | None = None
    failure_groups: list[AuditFailureGroup] | None = None
    partial_detail: str | None = None
    key_operations: list[KeyOperation] = field(default_factory=list)
    asked: list[tuple[tuple[str, ...], datetime, datetime]] = field(default_factory=list)

    def last_successful_unwraps(self, key: KeyRef) -> dict[str, datetime] | None:
        return self.unwraps

    def failures(self, vaults: Sequence[str], *, start: datetime, end: datetime) -> AuditReport | None:
        self.asked.append((tuple(vaults), start, end))
        if self.failure_groups is None:
            return None
        return report_of(start, end, self.failure_groups, managed_vaults=vaults, partial_detail=self.partial_detail,
                         sources=[VaultSource(vault, "AZKVAuditLogs", 1) for vault in vaults],
                         key_operations=[op for op in self.key_operations if start <= op.at <= end])


@dataclass
class FakeEstateReader:
    """Hands out ``estate`` and records the subscriptions each sweep asked for; a focused gather is
    the part of ``estate`` that compliance.drift selects, as the gatherer reads it (``focused`` records
    each focus). ``failure`` is raised by every read when set."""

    estate: Estate
    asked: list[tuple[str, ...]] = field(default_factory=list)
    focused: list[DriftFocus] = field(default_factory=list)
    failure: Exception | None = None

    def gather(self, subscriptions: Sequence[str], now: datetime) -> Estate:
        self.asked.append(tuple(subscriptions))
        if self.failure is not None:
            raise self.failure
        return self.estate

    def gather_focus(self, subscriptions: Sequence[str], focus: DriftFocus, now: datetime) -> FocusedEstate:
        self.focused.append(focus)
        if self.failure is not None:
            raise self.failure
        listed = [ListedVault(id=vault.id, vault_uri=vault.vault_uri) for vault in self.estate.vaults]
        selection = select(focus, self.estate.storage_accounts, listed)
        accounts = tuple(account for account in self.estate.storage_accounts
                         if account.id.lower() in selection.accounts)
        wanted = selection.vaults | scope_vaults(accounts, listed)
        partial = replace(self.estate, storage_accounts=accounts, audit=None, container_census=(),
                          vaults=tuple(vault for vault in self.estate.vaults if vault.id.lower() in wanted))
        return FocusedEstate(partial, coverage_of(partial, selection, listed))


@dataclass
class FakeReportStore:
    """Reports by name, as written."""

    documents: dict[str, bytes] = field(default_factory=dict)

    def save(self, name: str, document: bytes) -> None:
        self.documents[name] = document

    def load(self, name: str) -> bytes | None:
        return self.documents.get(name)


class NotExpected:
    """A dependency the test does not expect to be used: any use fails the test with its name."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> object:
        raise AssertionError(f"{self._name}.{attribute} was used, but this test did not expect it")

    def __call__(self, *args: object, **kwargs: object) -> object:
        raise AssertionError(f"{self._name} was called, but this test did not expect it")


def fake_reconcile_deps(storage: FakeStorage | None = None, vault: FakeVault | None = None, *,
                        clock: FakeClock | None = None, ledger: FakeRotationLedger | None = None,
                        queue: FakeQueue | None = None, notifier: FakeNotifier | None = None,
                        planner: PlannerSettings | None = None) -> ReconcileDeps:
    clock = clock or FakeClock()
    known_vault = vault or FakeVault([], clock=clock)
    return ReconcileDeps(
        keys=lambda origin: known_vault, inventory=storage or FakeStorage({}), control=storage or FakeStorage({}),
        ledger=ledger or FakeRotationLedger(), queue=queue or FakeQueue(), notifier=notifier or FakeNotifier(),
        clock=clock, planner=planner or PlannerSettings(),
    )


def fake_dependencies(settings: Settings, **overrides: Any) -> Dependencies:
    """Dependencies of the use cases over fakes; pass the ones a test looks at as keyword arguments.

    The notifier, clock and work queue are shared with ``reconcile`` unless it is given, so an alert
    raised anywhere lands in the one FakeNotifier the test reads.
    """
    clock = overrides.pop("clock", None) or FakeClock()
    notifier = overrides.pop("notifier", None) or FakeNotifier()
    queue = overrides.pop("work_queue", None) or FakeQueue()
    reconcile = overrides.pop("reconcile", None) or fake_reconcile_deps(clock=clock, queue=queue, notifier=notifier)
    values: dict[str, Any] = {
        "settings": settings, "clock": clock, "ledger": FakeLedger(), "notifier": notifier, "work_queue": queue,
        "reconcile": reconcile, "rewrap": NotExpected("rewrap"),
        "rewrap_jobs": NotExpected("rewrap_jobs"), "blob_stores": NotExpected("blob_stores"),
        "audit": FakeAuditLog(), "audit_checkpoint": NotExpected("audit_checkpoint"), "estate": NotExpected("estate"),
        "reports": NotExpected("reports"),
    }
    values.update(overrides)
    return Dependencies(**values)


@dataclass
class FakeAlertLedger:
    """Alert states and the outbox in dicts, with the Table ledger's optimistic concurrency: a save
    fails with Conflict when a state changed since this ledger's last read of it."""

    states: dict[tuple[str, str], AlertState] = field(default_factory=dict)
    outbox: dict[str, Delivery] = field(default_factory=dict)
    sent: set[str] = field(default_factory=set)
    versions: dict[tuple[str, str], int] = field(default_factory=dict)
    read_versions: dict[tuple[str, str], int] = field(default_factory=dict)

    def load_scope(self, scope: str) -> list[AlertState]:
        found = [state for (held, _), state in self.states.items() if held == scope]
        for state in found:
            self._read(scope, state.fingerprint)
        return found

    def load(self, scope: str, fingerprint: str) -> AlertState | None:
        self._read(scope, fingerprint)
        return self.states.get((scope, fingerprint))

    def _read(self, scope: str, fingerprint: str) -> None:
        self.read_versions[(scope, fingerprint)] = self.versions.get((scope, fingerprint), 0)

    def save(self, states: Sequence[AlertState], deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            self.outbox.setdefault(delivery.key, delivery)  # a delivery owed or made once is never re-added
        for state in states:
            key = (state.scope, state.fingerprint)
            if self.versions.get(key, 0) != self.read_versions.get(key, 0):
                raise Conflict(f"alert {state.fingerprint} changed concurrently")
        for state in states:
            key = (state.scope, state.fingerprint)
            self.states[key] = state
            self.versions[key] = self.versions.get(key, 0) + 1
            self.read_versions[key] = self.versions[key]

    def pending(self) -> list[Delivery]:
        return [delivery for key, delivery in self.outbox.items() if key not in self.sent]

    def due(self, now: datetime, *, limit: int) -> list[Delivery]:
        due = [delivery for delivery in self.pending() if (delivery.next_attempt or now) <= now]
        return sorted(due, key=lambda delivery: (delivery.next_attempt or now, delivery.key))[:limit]

    def claim(self, delivery: Delivery, until: datetime) -> bool:
        # As the Table ledger's ETag condition: only the delivery exactly as ``due`` returned it.
        if delivery.key in self.sent or self.outbox.get(delivery.key) != delivery:
            return False
        self.outbox[delivery.key] = replace(delivery, next_attempt=until)
        return True

    def delivered(self, delivery: Delivery) -> None:
        self.sent.add(delivery.key)

    def reschedule(self, delivery: Delivery) -> None:
        self.outbox[delivery.key] = delivery


@dataclass
class FakeChannel:
    """Accepts notices after failing ``failures`` times (each failure a TransientError)."""

    failures: int = 0
    received: list[Notice] = field(default_factory=list)
    attempts: int = 0

    def deliver(self, notice: Notice) -> None:
        self.attempts += 1
        if self.failures > 0:
            self.failures -= 1
            raise TransientError("HTTP 503")
        self.received.append(notice)


@dataclass
class FakeAuditCheckpoint:
    """The audit checkpoint with the Table adapter's concurrency: a save fails with Conflict when another
    instance saved since this one's load (``race_after_load``: another instance saves right after each load)."""

    watch: AuditWatch = field(default_factory=AuditWatch)
    race_after_load: bool = False
    version: int = 0
    read_version: int = 0
    saves: int = 0

    def load(self) -> AuditWatch:
        self.read_version = self.version
        if self.race_after_load:
            self.version += 1
        return self.watch

    def save(self, watch: AuditWatch) -> None:
        if self.version != self.read_version:
            raise Conflict("the audit checkpoint changed since it was read")
        self.watch, self.version, self.read_version = watch, self.version + 1, self.version + 1
        self.saves += 1

"""The rotation reconciler use case: gather once, plan (pure), execute in crash-safe order, record.

For one key: read its versions (one Key Vault listing), its consumers (the inventory), and the
ledger's record; let controller.rotation decide; then for each decision write the ledger intent
first, change the consumer, write the completing intent; re-plan with what Azure reported back
until nothing is left to write (a forced adoption is pin -> verify -> restore, all within the same
invocation); record the conditions when they changed; alert on what needs a human; and schedule the
next look when the plan asks for one. Every step is idempotent: running it again on the same state
writes nothing, and a crash between two writes is repaired by the next run from the ledger intent.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from controller import rotation
from controller.errors import Conflict, PermanentError, TransientError
from controller.logs import log_record
from controller.model import (
    Alert,
    Condition,
    Consumer,
    ForceAdoptionIntent,
    KeyEvent,
    KeyEventKind,
    KeyRef,
    KeyState,
    Severity,
    VaultOrigin,
)
from controller.ports import (
    Clock,
    ConsumerControl,
    ConsumerInventory,
    KeyVaultReader,
    Notifier,
    RotationLedger,
    RotationRecord,
    WorkQueue,
)
from controller.reasons import Reason

log = logging.getLogger("controller.reconciler")

#: Forced adoption takes three rounds (pin, verify, restore); a fourth finds nothing to do. A plan
#: that still wants writes after this many rounds is left to the scheduled re-check.
MAX_ROUNDS = 4
#: Azure Storage queues hide a message for at most 7 days; later re-checks are chained.
MAX_QUEUE_DELAY = timedelta(days=7) - timedelta(minutes=1)
#: A consumer whose every write of ours loses a race to someone else's change is left alone after
#: this many re-reads within one run (their configuration wins); a prompt re-check looks again.
MAX_CONFLICTS_PER_CONSUMER = 2

_ALERT_SEVERITY = {
    rotation.Action.ALERT: Severity.HIGH,
    rotation.Action.BLOCKED: Severity.CRITICAL,
}


@dataclass(frozen=True, slots=True)
class ExecutionLimits:
    """How one reconcile spends ARM's budget and its invocation's time.

    ``concurrency``: consumers written at the same time. ARM's write latency (about a second for a
    storage account) overlaps; the pace is ARM's, kept by the adapters' pacer (adapters/arm_pacing.py).
    ``time_budget``: no write is started after this long; what is left continues through the work
    queue (None: no limit). ``owner`` names this instance in the ledger's write claims and
    ``claim_for`` is how long a claim keeps other instances off a consumer.
    """

    concurrency: int = 1
    time_budget: timedelta | None = None
    owner: str = "controller"
    claim_for: timedelta = timedelta(minutes=10)

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.time_budget is not None and self.time_budget <= timedelta(0):
            raise ValueError("time_budget must be positive")


@dataclass(frozen=True, slots=True)
class ReconcileDeps:
    keys: Callable[[VaultOrigin], KeyVaultReader]
    inventory: ConsumerInventory
    control: ConsumerControl
    ledger: RotationLedger
    queue: WorkQueue
    notifier: Notifier
    clock: Clock
    planner: rotation.PlannerSettings
    limits: ExecutionLimits = ExecutionLimits()


@dataclass(slots=True)
class ReconcileResult:
    key: KeyRef
    plan: rotation.Plan
    rounds: int = 0
    writes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    #: Writes refused because the consumer changed since it was read (re-read and re-planned).
    conflicts: list[str] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    next_check: datetime | None = None
    #: Writes not started because the time budget ran out (they continue through the work queue).
    deferred: int = 0
    #: Consumers another instance holds a live write claim on (it writes them; this run does not).
    claimed_elsewhere: list[str] = field(default_factory=list)

    def progress(self) -> dict[str, int]:
        """done / pending / blocked consumers of the key, as the last plan sees them."""
        return progress(self.plan)

    def as_json(self) -> dict[str, object]:
        return {
            "key": self.key.uri,
            "target_version": self.plan.target.version if self.plan.target else None,
            "progress": self.progress(),
            "deferred": self.deferred,
            "claimed_elsewhere": list(self.claimed_elsewhere),
            "rounds": self.rounds,
            "writes": list(self.writes),
            "failures": list(self.failures),
            "conflicts": list(self.conflicts),
            "alerts": [alert.title for alert in self.alerts],
            "next_check": self.next_check.isoformat() if self.next_check else None,
            "consumers": [
                {
                    "resource": decision.consumer.resource_id,
                    "action": decision.action.value,
                    "reason": decision.reason.value,
                    "message": decision.message,
                    "configured_key": decision.consumer.key.uri,
                    "current_key": decision.consumer.current_key.uri if decision.consumer.current_key else None,
                }
                for decision in self.plan.decisions
            ],
        }


def reconcile_key(
    key: KeyRef,
    deps: ReconcileDeps,
    *,
    target_version: str | None = None,
    dry_run: bool = False,
    consumers: Sequence[Consumer] | None = None,
    state: KeyState | None = None,
) -> ReconcileResult:
    """Bring every consumer of ``key`` to the newest usable version (see module docstring).

    ``consumers`` and ``state``: the key's consumers and versions when the caller has just read them
    (no second inventory or vault listing)."""
    key = key.versionless
    state = state if state is not None else deps.keys(key.vault).get_key_state(key)
    gathered = deps.inventory.consumers_of(key) if consumers is None else consumers
    consumers = sorted(gathered, key=lambda consumer: consumer.id)
    record = deps.ledger.load(key)
    intents = {intent.consumer_id.lower(): intent for intent in record.intents}
    plan = _plan(state, consumers, intents, record, target_version=target_version, deps=deps)
    result = ReconcileResult(key=key, plan=plan)
    if dry_run:
        result.next_check = plan.next_check
        return result

    started = deps.clock.now()
    run = _Run(key, deps, intents, started)
    for round_number in range(1, MAX_ROUNDS + 1):
        result.rounds = round_number
        pending = [decision for decision in plan.writes
                   if decision.consumer.id not in run.failed and decision.consumer.id not in run.left]
        if not pending:
            break
        # Verify against ARM itself (Resource Graph lags writes) in as few reads as possible, then
        # decide again from what ARM holds now: a consumer someone else already moved is not written.
        fresh = _refreshed([decision for decision in pending if decision.consumer.id not in run.seen_fresh], deps)
        run.seen_fresh.update(fresh)
        if fresh:
            consumers = [current for current in (fresh.get(consumer.id, consumer) for consumer in consumers)
                         if current is not None]
            plan = _plan(state, consumers, intents, record, target_version=target_version, deps=deps)
            result.plan = plan
            pending = [decision for decision in plan.writes
                       if decision.consumer.id not in run.failed and decision.consumer.id not in run.left]
        changed = run.execute(pending, result)
        if not changed:
            break
        consumers = [current for current in (changed.get(consumer.id, consumer) for consumer in consumers)
                     if current is not None]
        plan = _plan(state, consumers, intents, record, target_version=target_version, deps=deps)
        result.plan = plan

    transient, conflicts = run.transient, run.conflicts
    result.deferred = len(run.deferred)
    result.claimed_elsewhere = sorted(run.claimed_elsewhere)
    _record_conditions(key, plan, record, deps)
    result.alerts.extend(_alerts(plan))
    # Level-based: what is not raised now for this key's consumers has cleared and is resolved.
    deps.notifier.sync(alert_scope(key), result.alerts)
    result.next_check = plan.next_check
    if any(count >= MAX_CONFLICTS_PER_CONSUMER for count in conflicts.values()):
        # The consumers that kept changing under us are looked at again shortly, with fresh state.
        prompt = deps.clock.now() + deps.planner.verify_interval
        result.next_check = min(result.next_check, prompt) if result.next_check else prompt
    if run.deferred:
        # Out of this invocation's time: the rest continues at once in another invocation, which
        # re-plans from ARM and the ledger (what is done is not written again).
        _continue(key, len(run.deferred), deps)
    if transient is not None:
        # Everything that could be done was done; the host retries the rest (idempotently).
        raise TransientError(f"reconcile {key.uri}: {transient}", retry_after=transient.retry_after) from transient
    if result.next_check is not None and not run.deferred:
        _schedule(key, result.next_check, deps)
    log_record(log, logging.INFO, "key reconciled", result.as_json())
    return result


def progress(plan: rotation.Plan) -> dict[str, int]:
    """Consumers done (on the target as configured), pending (being or to be moved, or waiting for
    Azure) and blocked (a human has to act: alerts and blocked decisions)."""
    counts = {"done": 0, "pending": 0, "blocked": 0}
    for decision in plan.decisions:
        if decision.action in _ALERT_SEVERITY:
            counts["blocked"] += 1
        elif decision.action is rotation.Action.ADOPTED and not decision.writes_consumer:
            counts["done"] += 1
        else:
            counts["pending"] += 1
    return counts


@dataclass(slots=True)
class _Outcome:
    """What happened to one consumer's write; merged into the result in plan order."""

    consumer: Consumer
    updated: Consumer | None = None
    gone: bool = False
    written: str | None = None
    conflict: str | None = None
    failure: str | None = None
    transient: TransientError | None = None
    alert: Alert | None = None
    deferred: bool = False
    claimed_elsewhere: bool = False
    gave_up: bool = False  # lost too many races to someone else's changes


class _Run:
    """One reconcile's writes: bounded concurrency, the time budget, the ledger's claims."""

    def __init__(self, key: KeyRef, deps: ReconcileDeps, intents: dict[str, ForceAdoptionIntent],
                 started: datetime) -> None:
        self.key, self.deps, self.intents = key, deps, intents
        budget = deps.limits.time_budget
        self.deadline = started + budget if budget is not None else None
        self.failed: set[str] = set()  # a consumer that failed is not retried within this run
        self.left: set[str] = set()  # deferred or claimed elsewhere: not this run's any more
        self.deferred: set[str] = set()
        self.claimed_elsewhere: set[str] = set()
        self.seen_fresh: set[str] = set()  # consumers whose state this run read from ARM itself
        self.conflicts: Counter[str] = Counter()
        self.transient: TransientError | None = None
        self._started_any = False  # the first write of a run always starts: every run makes progress
        self._lock = threading.Lock()

    def execute(self, pending: Sequence[rotation.Decision], result: ReconcileResult) -> dict[str, Consumer | None]:
        """Run the decisions' writes, ``limits.concurrency`` at a time; return the changed consumers
        (None: no longer a consumer of this key)."""
        workers = min(self.deps.limits.concurrency, len(pending))
        if workers <= 1:
            outcomes = [self._attempt(decision) for decision in pending]
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reconcile") as pool:
                outcomes = list(pool.map(self._attempt, pending))
        changed: dict[str, Consumer | None] = {}
        for decision, outcome in zip(pending, outcomes, strict=True):
            consumer_id = outcome.consumer.id
            if outcome.deferred or outcome.claimed_elsewhere:
                self.left.add(consumer_id)
                (self.deferred if outcome.deferred else self.claimed_elsewhere).add(consumer_id)
                continue
            if outcome.conflict is not None:
                result.conflicts.append(outcome.conflict)
                log_record(log, logging.INFO, "consumer changed concurrently", {
                    "resource": outcome.consumer.resource_id, "reason": Reason.CONSUMER_CHANGED.value,
                    "action": decision.action.value})
            if outcome.written is not None:
                result.writes.append(outcome.written)
            if outcome.failure is not None:
                self.failed.add(consumer_id)
                result.failures.append(outcome.failure)
                self.transient = self.transient or outcome.transient
                if outcome.alert is not None:
                    result.alerts.append(outcome.alert)
            elif outcome.gave_up:
                self.failed.add(consumer_id)
            elif outcome.gone:
                changed[consumer_id] = None
            elif outcome.updated is not None:
                changed[outcome.updated.id] = outcome.updated
                self.seen_fresh.add(outcome.updated.id)
        return changed

    def _out_of_time(self) -> bool:
        with self._lock:
            if self._started_any and self.deadline is not None and self.deps.clock.now() >= self.deadline:
                return True
            self._started_any = True
            return False

    def _attempt(self, decision: rotation.Decision) -> _Outcome:
        consumer = decision.consumer
        outcome = _Outcome(consumer)
        if self._out_of_time():
            outcome.deferred = True
            return outcome
        try:
            now = self.deps.clock.now()
            if decision.set_key is not None and not self.deps.ledger.claim_write(
                    self.key, consumer.id, decision.set_key.uri, owner=self.deps.limits.owner, now=now,
                    until=now + self.deps.limits.claim_for):
                outcome.claimed_elsewhere = True
                return outcome
            try:
                outcome.updated = _execute(decision, self.key, self.deps, self.intents, outcome)
            except Conflict as err:
                # Someone changed the consumer between our read and our write: their change wins.
                # Re-read it from ARM and let the next round plan from what it holds now.
                self.conflicts[consumer.id] += 1
                outcome.conflict = f"{consumer.resource_id}: {err}"
                if self.conflicts[consumer.id] >= MAX_CONFLICTS_PER_CONSUMER:
                    outcome.gave_up = True
                    return outcome
                updated = self.deps.inventory.reread(consumer)
                if updated is None or not updated.key.same_key(self.key):
                    outcome.gone = True
                else:
                    outcome.updated = updated
        except TransientError as err:
            outcome.failure, outcome.transient = f"{consumer.resource_id}: {err}", err
        except PermanentError as err:
            outcome.failure = f"{consumer.resource_id}: {err}"
            outcome.alert = _failure_alert(decision, err)
        return outcome


def _refreshed(pending: Sequence[rotation.Decision], deps: ReconcileDeps) -> dict[str, Consumer | None]:
    """The pending writes' consumers as ARM holds them now (None: gone, or no longer on a Key Vault
    key), for the consumers that a write is about to change."""
    targets = [decision.consumer for decision in pending if decision.set_key is not None]
    if not targets:
        return {}
    current = deps.inventory.refresh(targets)
    return {consumer.id: fresh if fresh is None or fresh.key.same_key(consumer.key) else None
            for consumer, fresh in zip(targets, current, strict=True)}


def _plan(
    state: KeyState,
    consumers: Sequence[Consumer],
    intents: Mapping[str, ForceAdoptionIntent],
    record: RotationRecord,
    *,
    target_version: str | None,
    deps: ReconcileDeps,
) -> rotation.Plan:
    view = rotation.LedgerView.of(
        intents.values(), record.consumer_conditions, record.version_conditions
    )
    return rotation.plan(state, consumers, view, target_version=target_version, now=deps.clock.now(),
                         settings=deps.planner)


def _execute(
    decision: rotation.Decision,
    key: KeyRef,
    deps: ReconcileDeps,
    intents: dict[str, ForceAdoptionIntent],
    outcome: _Outcome,
) -> Consumer | None:
    """Intent first, then the consumer, then the completing intent: a crash in between is repaired
    by the next run, which finds the intent and continues from it."""
    if decision.intent_before is not None:
        deps.ledger.save_intent(key, decision.intent_before)
        intents[decision.intent_before.consumer_id.lower()] = decision.intent_before
    updated: Consumer | None = None
    if decision.set_key is not None:
        updated = deps.control.set_key(decision.consumer, decision.set_key)
        outcome.written = f"{decision.consumer.resource_id} -> {decision.set_key.uri}"
        log_record(log, logging.INFO, "consumer key updated", {
            "resource": decision.consumer.resource_id, "key": decision.set_key.uri,
            "action": decision.action.value, "reason": decision.reason.value,
            "current_key": updated.current_key.uri if updated.current_key else None,
        })
    if decision.intent_after is not None:
        deps.ledger.save_intent(key, decision.intent_after)
        intents[decision.intent_after.consumer_id.lower()] = decision.intent_after
        if updated is None:
            # The intent changed the planner's view even though the consumer did not change.
            updated = decision.consumer
    return updated


def _record_conditions(key: KeyRef, plan: rotation.Plan, record: RotationRecord, deps: ReconcileDeps) -> None:
    """Persist the conditions that changed, and only those: a key's every version again on each event
    would make each event's ledger writes grow with the key's history."""
    consumer_conditions = _changed({decision.consumer.id: decision.conditions for decision in plan.decisions},
                                   record.consumer_conditions)
    version_conditions = _changed({status.version: status.conditions for status in plan.versions},
                                  record.version_conditions)
    if consumer_conditions or version_conditions:
        deps.ledger.save_conditions(key, consumer_conditions, version_conditions)


def _changed(new: Mapping[str, tuple[Condition, ...]],
             old: Mapping[str, tuple[Condition, ...]]) -> dict[str, tuple[Condition, ...]]:
    recorded = {name.lower(): tuple(conditions) for name, conditions in old.items()}
    return {name: conditions for name, conditions in new.items() if recorded.get(name.lower()) != tuple(conditions)}


def alert_scope(key: KeyRef) -> str:
    """The alerts one reconcile of ``key`` sees completely: those of its consumers."""
    return f"reconcile {key.versionless.uri.lower()}"


def _alerts(plan: rotation.Plan) -> list[Alert]:
    alerts = []
    target = plan.target.version if plan.target else "none"
    for decision in plan.decisions:
        severity = _ALERT_SEVERITY.get(decision.action)
        if severity is None:
            continue
        alerts.append(Alert(
            severity=severity,
            title=f"{decision.consumer.resource_id}: {decision.reason.value}",
            resource=decision.consumer.resource_id,
            reason=decision.reason,
            message=decision.message,
            fingerprint=fingerprint(decision.consumer.id, decision.reason.value, plan.key.uri, target),
            details={"key": plan.key.uri, "target_version": target, "action": decision.action.value},
        ))
    return alerts


def _failure_alert(decision: rotation.Decision, err: PermanentError) -> Alert:
    return Alert(
        severity=Severity.CRITICAL,
        title=f"{decision.consumer.resource_id}: update failed",
        resource=decision.consumer.resource_id,
        reason=Reason.UPDATE_FAILED,
        message=str(err),
        fingerprint=fingerprint(decision.consumer.id, Reason.UPDATE_FAILED.value, decision.consumer.key.uri, ""),
        details={"action": decision.action.value, "set_key": decision.set_key.uri if decision.set_key else None},
    )


def fingerprint(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:32]


def _continue(key: KeyRef, left: int, deps: ReconcileDeps) -> None:
    """A continuation: the next invocation re-plans from ARM and the ledger and writes what is left."""
    log_record(log, logging.INFO, "reconcile continues in another invocation", {"key": key.uri, "left": left})
    deps.queue.enqueue({"kind": "reconcile", "key": key.uri, "continuation": True, "left": left})


def _schedule(key: KeyRef, when: datetime, deps: ReconcileDeps) -> None:
    delay = max(timedelta(0), min(when - deps.clock.now(), MAX_QUEUE_DELAY))
    deps.queue.enqueue({"kind": "reconcile", "key": key.uri}, delay=delay)


def blast_radius(key: KeyRef, deps: ReconcileDeps) -> list[Consumer]:
    """Every consumer of the key, whichever version it uses: who loses access if the key goes."""
    return sorted(deps.inventory.consumers_of(key.versionless), key=lambda consumer: consumer.id)


def blast_radius_alert(key: KeyRef, consumers: Sequence[Consumer], *, severity: Severity, reason: Reason,
                       message: str, version: str | None) -> Alert:
    names = [consumer.resource_id for consumer in consumers]
    return Alert(
        severity=severity,
        title=f"{key.uri}: {reason.value}",
        resource=key.uri,
        reason=reason,
        message=f"{message}; {len(names)} consumer(s) depend on this key",
        fingerprint=fingerprint(key.uri.lower(), reason.value, version or ""),
        details={"key": key.uri, "version": version, "consumers": names},
    )


#: Key Vault's and our clocks may disagree a little; an expiry this close is not a contradiction.
CLOCK_SKEW = timedelta(minutes=5)


def on_key_event(event: KeyEvent, deps: ReconcileDeps, *, auto_rotate: bool) -> list[ReconcileResult]:
    """What each kind of Key Vault event means for the consumers.

    An event is a trigger, never the truth: the key's versions are read from the vault first, and an
    event the vault contradicts (a version it does not list, an expiry it does not have) is logged
    and acted on no further than the sweep would act anyway. Events are hints; the sweep and the
    scheduled re-checks converge whatever order they arrive in.

    new_version: reconcile towards that version (the planner never moves a consumer backwards, so a
    stale event for an older version changes nothing). near_expiry: rotate when CMK_AUTO_ROTATE
    allows and the expiring version is still the newest (a redelivered event does not rotate twice),
    otherwise alert with the blast radius. expired: alert with the blast radius, and reconcile in
    case a newer version exists. access_policy_changed: re-check every key of that vault that has
    consumers (access may have been granted or revoked). Alert severity follows the blast radius: a
    key no storage account uses is worth knowing about, not worth waking anyone.
    """
    if event.kind is KeyEventKind.ACCESS_POLICY_CHANGED:
        return [reconcile_key(key, deps) for key in deps.inventory.keys_in_use(event.vault)]
    key = event.key
    if key is None:
        raise PermanentError(f"{event.kind.value} event {event.event_id} names no key")
    state = deps.keys(key.vault).get_key_state(key.versionless)
    contradiction = _contradiction(event, key, state, deps.clock.now())
    if contradiction:
        log_record(log, logging.WARNING, "event not acted on: the vault contradicts it", {
            "event_id": event.event_id, "kind": event.kind.value, "key": key.uri, "why": contradiction})
        # Converge on what the vault really holds, exactly as the sweep would.
        return [reconcile_key(key, deps, state=state)] if event.kind is KeyEventKind.NEW_VERSION else []
    if event.kind is KeyEventKind.NEW_VERSION:
        return [reconcile_key(key, deps, target_version=key.version, state=state)]
    if event.kind is KeyEventKind.NEAR_EXPIRY:
        if auto_rotate:
            return [_rotate_if_current(key, state, deps)]
        consumers = blast_radius(key, deps)
        deps.notifier.send(blast_radius_alert(
            key.versionless, consumers, severity=by_blast_radius(Severity.HIGH, consumers),
            reason=Reason.KEY_NEAR_EXPIRY, version=key.version,
            message=f"version {key.version} expires at {_at(_expiry(state, key))} and CMK_AUTO_ROTATE is off: "
                    "rotate it",
        ))
        return []
    consumers = blast_radius(key, deps)
    deps.notifier.send(blast_radius_alert(
        key.versionless, consumers, severity=by_blast_radius(Severity.CRITICAL, consumers),
        reason=Reason.KEY_EXPIRED, version=key.version,
        message=f"version {key.version} expired at {_at(_expiry(state, key))}",
    ))
    return [reconcile_key(key, deps, consumers=consumers, state=state)]


def _contradiction(event: KeyEvent, key: KeyRef, state: KeyState, now: datetime) -> str:
    """Why the vault's state contradicts the event ("" when it does not, or cannot be read)."""
    if not state.reachable:
        return ""  # nothing to check against: the planner records the vault as unreachable
    info = state.version(key.version)
    if info is None:
        return f"the vault lists no version {key.version} of {key.versionless.uri}"
    if event.kind is KeyEventKind.NEW_VERSION:
        return ""
    if info.expires is None:
        return f"version {key.version} has no expiry date in the vault"
    if event.expires is not None and abs(event.expires - info.expires) > timedelta(seconds=1):
        return (f"the event says version {key.version} expires at {event.expires.isoformat()}, "
                f"the vault says {info.expires.isoformat()}")
    if event.kind is KeyEventKind.EXPIRED and info.expires > now + CLOCK_SKEW:
        return f"version {key.version} has not expired: it expires at {info.expires.isoformat()}"
    return ""


def _expiry(state: KeyState, key: KeyRef) -> datetime | None:
    info = state.version(key.version)
    return info.expires if info else None


def by_blast_radius(severity: Severity, consumers: Sequence[Consumer]) -> Severity:
    """``severity`` when storage depends on the key; low when nothing does."""
    return severity if consumers else Severity.LOW


def event_failed_alert(event: KeyEvent, error: Exception, deps: ReconcileDeps) -> Alert:
    """A key event that cannot be handled (e.g. the key was deleted): how bad depends on who uses it."""
    subject = event.key.versionless.uri if event.key else event.vault.url
    severity, consumers = Severity.CRITICAL, None
    if event.key is not None:
        try:
            consumers = blast_radius(event.key, deps)
        except (TransientError, PermanentError, Conflict) as err:  # unknown blast radius: assume the worst
            log_record(log, logging.WARNING, "blast radius unknown", {"key": subject, "error": str(err)})
        else:
            severity = by_blast_radius(Severity.CRITICAL, consumers)
    return Alert(
        severity=severity, title=f"{subject}: {event.kind.value} could not be handled",
        resource=subject, reason=Reason.EVENT_FAILED, message=str(error),
        fingerprint=fingerprint(subject.lower(), Reason.EVENT_FAILED.value, event.kind.value),
        details={"event_id": event.event_id, "event_type": event.event_type,
                 "consumers": None if consumers is None else [consumer.resource_id for consumer in consumers]},
    )


def _rotate_if_current(key: KeyRef, state: KeyState, deps: ReconcileDeps) -> ReconcileResult:
    latest = state.latest_enabled
    if latest is None or latest.version == key.version:
        rotated = deps.keys(key.vault).rotate_key(key.versionless)
        log_record(log, logging.INFO, "key rotated before expiry", {"key": key.versionless.uri,
                                                                   "new_version": rotated.version})
        return reconcile_key(key, deps, target_version=rotated.version)
    return reconcile_key(key, deps, target_version=latest.version, state=state)


def _at(moment: datetime | None) -> str:
    return moment.isoformat() if moment else "an unknown time"

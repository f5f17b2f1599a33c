"""The rotation reconciler use case: gather once, plan (pure), execute in crash-safe order, record.

For one key: read its versions (one Key Vault listing), its consumers (the inventory), and the
ledger's record; let controller.rotation decide; then for each decision write the ledger intent
first, change the consumer, write the completing intent; re-plan with what Azure reported back
until nothing is left to write (a forced adoption is pin -> verify -> restore, all within the same
invocation); record the conditions when they changed; alert on what needs a human; and schedule the
next look when the plan asks for one. Every step is idempotent: running it again on the same state
writes nothing, and a crash between two writes is repaired by the next run from the ledger intent.

A transient failure of one consumer's write (throttling, a 5xx, a dropped connection) does not fail the
invocation: the other consumers are finished, that consumer's ``Synced`` condition records the failure
(UpdateRetrying), and a continuation on the work queue retries it after a back-off (doubling, at least
the service's Retry-After), at most ``MAX_WRITE_RETRIES`` times; then a high alert, and the plan's
scheduled re-check keeps looking.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from controller import rotation
from controller.errors import Conflict, PermanentError, TransientError
from controller.logs import log_record
from controller.model import (
    Alert,
    Condition,
    ConditionStatus,
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
    Worklist,
    WorkQueue,
    WriteClaim,
)
from controller.reasons import Reason
from controller.thread_pools import interruptible_pool

log = logging.getLogger("controller.reconciler")

#: Forced adoption takes three rounds (pin, verify, restore); a fourth finds nothing to do. A plan
#: that still wants writes after this many rounds is left to the scheduled re-check.
MAX_ROUNDS = 4
#: Azure Storage queues hide a message for at most 7 days; later re-checks are chained.
MAX_QUEUE_DELAY = timedelta(days=7) - timedelta(minutes=1)
#: A consumer whose every write of ours loses a race to someone else's change is left alone after
#: this many re-reads within one run (their configuration wins); a prompt re-check looks again.
MAX_CONFLICTS_PER_CONSUMER = 2
#: Consumers verified with one listing right before their writes (ExecutionLimits.refresh_every): at ARM's
#: 10 writes per second their up to 2 writes each take at most about 40 s.
REFRESH_EVERY = 200
#: Attempts at saving a key's conditions while other instances keep saving theirs (each refused save
#: is followed by a re-read and a re-plan); after the last the host retries the invocation.
MAX_CONDITION_SAVES = 3
#: How soon a key is looked at again when another run held some of its consumers' write claims.
CLAIMED_ELSEWHERE_RECHECK = timedelta(minutes=1)
#: Continuations that retry a key's transiently failed writes before a human is alerted (the plan's
#: scheduled re-check keeps retrying after that, at its own pace).
MAX_WRITE_RETRIES = 5
#: The first retry's back-off; each further retry waits twice as long (5 s ... 80 s: 2.5 minutes in all),
#: and never less than the failed request's Retry-After.
RETRY_BACKOFF = timedelta(seconds=5)
MAX_RETRY_BACKOFF = timedelta(minutes=5)

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
    ``claim_for`` is how long a claim keeps other instances off a consumer. ``refresh_every``: consumers
    verified with one read of ARM (a listing) right before their writes; someone else's change made
    after that read and before the write is overwritten (ARM has no conditional storage account
    update), so this bounds that window to the time these consumers' writes take.
    """

    concurrency: int = 1
    time_budget: timedelta | None = None
    owner: str = "controller"
    claim_for: timedelta = timedelta(minutes=10)
    refresh_every: int = REFRESH_EVERY

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.refresh_every < 1:
            raise ValueError("refresh_every must be at least 1")
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
    #: Consumers whose write failed transiently in this run (retried by a continuation, or alerted).
    retrying: list[str] = field(default_factory=list)

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
            "retrying": list(self.retrying),
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
    retry: int = 0,
    continues: str | None = None,
    worklist: str | None = None,
) -> ReconcileResult:
    """Bring every consumer of ``key`` to the newest usable version (see module docstring).

    ``consumers`` and ``state``: the key's consumers and versions when the caller has just read them
    (no second inventory or vault listing). ``retry``: how many continuations in a row before this run
    retried the key's transiently failed writes without writing anything (the continuation carries it).
    ``continues``: the claim owner of the run this one continues (its continuation item carries it): this
    run takes over that run's write claims (a forced adoption pinned there is restored here) and no other's.
    ``worklist``: the worklist that run left in the ledger (its continuation item carries its id): the consumers
    as it last knew them, planned from instead of listing the estate again (see ``_load_worklist``)."""
    key = key.versionless
    # The time budget counts from here: the inventory is part of the invocation's time (at 10,000 accounts
    # its scope listings take minutes of ARM's read budget), and the host ends an invocation at its limit.
    started = deps.clock.now()
    state = state if state is not None else deps.keys(key.vault).get_key_state(key)
    loaded = _load_worklist(key, worklist, deps) if worklist is not None and consumers is None else None
    if loaded is not None:
        gathered: Sequence[Consumer] = loaded.consumers
    else:
        gathered = deps.inventory.consumers_of(key) if consumers is None else consumers
    consumers = sorted(gathered, key=lambda consumer: consumer.id)
    record = deps.ledger.load(key)
    intents = {intent.consumer_id.lower(): intent for intent in record.intents}
    plan = _plan(state, consumers, intents, record, target_version=target_version, deps=deps)
    result = ReconcileResult(key=key, plan=plan)
    if dry_run:
        result.next_check = plan.next_check
        return result

    conditions = {consumer_id.lower(): held for consumer_id, held in record.consumer_conditions.items()}

    def plan_one(consumer: Consumer) -> rotation.Decision:
        # Decisions are per consumer: one consumer's view of the ledger (the intents other workers are
        # writing meanwhile are not read), so each step costs the same whatever the number of consumers.
        own = consumer.id.lower()
        intent = intents.get(own)
        view = rotation.LedgerView.of([intent] if intent else [], {own: conditions.get(own, ())},
                                      record.version_conditions)
        return rotation.plan(state, [consumer], view, target_version=target_version, now=deps.clock.now(),
                             settings=deps.planner).decisions[0]

    run = _Run(key, deps, intents, started, plan_one=plan_one, continues=continues)
    current: dict[str, Consumer | None] = {consumer.id: consumer for consumer in consumers}
    try:
        run.adopt([decision for decision in plan.writes], current, result)
        # The consumers this run is done with are free for other runs at once (a consumer it was cut off from
        # half-way, e.g. pinned and not yet restored, stays claimed for the continuation that inherits it).
        run.end_claims(run.claimed - run.deferred)
        consumers = [consumer for consumer in current.values() if consumer is not None]
        plan = _plan(state, consumers, intents, record, target_version=target_version, deps=deps)
        result.plan = plan

        conflicts = run.conflicts
        result.deferred = len(run.deferred)
        result.claimed_elsewhere = sorted(run.claimed_elsewhere)
        result.retrying = sorted(run.retrying)
        # Retries count the runs in a row that wrote nothing: one that moved a consumer on starts the count again
        # (bounded all the same: a key has only so many writes to make).
        spent = 0 if result.writes else retry
        retries_left = bool(run.retrying) and spent < MAX_WRITE_RETRIES
        retry_in = _backoff(spent, run.retry_after())
        retry_at = deps.clock.now() + retry_in
        plan = _record_conditions(key, state, plan, record, consumers=consumers, deps=deps,
                                  target_version=target_version,
                                  noted=lambda plan: _note_retrying(plan, run.retrying, retry=spent,
                                                                    retry_at=retry_at if retries_left else None,
                                                                    now=deps.clock.now()))
        result.plan = plan
        result.alerts.extend(_alerts(plan))
        if run.retrying and not retries_left:
            result.alerts.extend(_retries_spent_alert(decision, run.retrying[decision.consumer.id], spent)
                                 for decision in plan.decisions if decision.consumer.id in run.retrying)
        # Level-based: what is not raised now for this key's consumers has cleared and is resolved.
        deps.notifier.sync(alert_scope(key), result.alerts)
        result.next_check = plan.next_check
        if any(count >= MAX_CONFLICTS_PER_CONSUMER for count in conflicts.values()):
            # The consumers that kept changing under us are looked at again shortly, with fresh state.
            prompt = deps.clock.now() + deps.planner.verify_interval
            result.next_check = min(result.next_check, prompt) if result.next_check else prompt
        if run.retrying and not retries_left:
            # The retries are spent (and a human alerted): the consumers are looked at again at the re-check pace.
            later = deps.clock.now() + deps.planner.recheck_interval
            result.next_check = min(result.next_check, later) if result.next_check else later
        if run.claimed_elsewhere:
            # Another run holds these consumers' claims: it is writing them (its claims end when it is done), or it
            # crashed (they lapse). The key is looked at again shortly, so whatever that run left is finished.
            soon = deps.clock.now() + min(deps.limits.claim_for, CLAIMED_ELSEWHERE_RECHECK)
            result.next_check = min(result.next_check, soon) if result.next_check else soon
        continued = bool(run.deferred) or retries_left
        if continued:
            # Out of this invocation's time (the rest continues at once), or writes that failed transiently
            # (retried after the back-off): another invocation re-plans from the worklist (each consumer as
            # this run last knew it), ARM and the ledger, so what is done is not written again.
            _continue(key, len(run.deferred) + len(run.retrying), deps,
                      retry=spent + 1 if retries_left else None, owner=run.owner,
                      delay=None if run.deferred else retry_in, worklist=_keep_worklist(key, loaded, current, deps))
        if result.next_check is not None and not continued:
            _schedule(key, result.next_check, deps)
    except Exception:
        run.end_claims(run.claimed)  # the invocation fails: whichever run retries it may write these at once
        raise
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
    """One reconcile's writes: each consumer's steps in turn (a forced adoption's pin, then its restore
    from the pin's answer), ``limits.concurrency`` consumers at a time, in chunks of ``limits.refresh_every``
    consumers each verified against ARM just before its writes; the time budget; the ledger's claims."""

    def __init__(self, key: KeyRef, deps: ReconcileDeps, intents: dict[str, ForceAdoptionIntent],
                 started: datetime, *, plan_one: Callable[[Consumer], rotation.Decision],
                 continues: str | None = None) -> None:
        self.key, self.deps, self.intents = key, deps, intents
        # The run's own name in the ledger's write claims: two runs of one key in one process (two queue
        # items worked at once, an event and a continuation) must not pass for each other, or the later
        # one repeats the earlier one's write from a read made before it.
        self.owner = f"{deps.limits.owner}/{uuid.uuid4().hex[:12]}"
        self.continues = continues
        self.started = started
        #: The consumers this run claimed (and has not released), and when each was last read from ARM
        #: (a listing right before its chunk's writes, or its last write's answer).
        self.claimed: set[str] = set()
        self._read_at: dict[str, datetime] = {}
        #: Each consumer as ARM last answered for it (a listing, a write's answer, a re-read); none after a
        #: failed write (it may or may not have landed). Noted in the ledger as its claim ends.
        self._seen: dict[str, Consumer] = {}
        self.plan_one = plan_one
        budget = deps.limits.time_budget
        self.deadline = started + budget if budget is not None else None
        self.failed: set[str] = set()  # a consumer that failed is not retried within this run
        self.deferred: set[str] = set()
        self.claimed_elsewhere: set[str] = set()
        self.conflicts: Counter[str] = Counter()
        #: Consumers whose write failed transiently: the error each met.
        self.retrying: dict[str, TransientError] = {}
        self._started_any = False  # the first write of a run always starts: every run makes progress
        #: Each consumer's place in the plan, and the writes as they finished (reported in plan order).
        self._positions: dict[str, int] = {}
        self._written: list[tuple[int, str]] = []
        self._lock = threading.Lock()

    def adopt(self, decisions: Sequence[rotation.Decision], current: dict[str, Consumer | None],
              result: ReconcileResult) -> None:
        """Carry out ``decisions`` (and each consumer's next steps); ``current`` ends with each consumer as
        ARM answered (None: no longer a consumer of this key)."""
        self._positions = {decision.consumer.id: position for position, decision in enumerate(decisions)}
        workers = max(1, min(self.deps.limits.concurrency, len(decisions)))
        chunk = self.deps.limits.refresh_every
        slots = threading.BoundedSemaphore(workers)
        with interruptible_pool(workers, "reconcile") as pool:
            futures = []
            for start in range(0, len(decisions), chunk):
                # Verify against ARM itself (Resource Graph lags writes) right before this chunk's writes,
                # in as few reads as possible (a listing): a consumer someone changed meanwhile is planned
                # from what ARM holds now, and a change made after this read is at most a chunk's writes old.
                # Past the time budget no write starts: the chunks left are deferred as they are, unread.
                read_at = self.deps.clock.now()
                refreshed = {} if self._past_deadline() else _refreshed(decisions[start:start + chunk], self.deps)
                for consumer_id, fresh in refreshed.items():
                    current[consumer_id] = fresh
                    self._read_at[consumer_id] = read_at
                    self._note_seen(consumer_id, fresh)
                for decision in decisions[start:start + chunk]:
                    consumer = current[decision.consumer.id]
                    if consumer is None:
                        continue
                    slots.acquire()  # the next chunk is read while this one's last writes are in flight
                    futures.append(pool.submit(self._steps, consumer, current, result, slots))
            for future in futures:
                future.result()
        # In plan order whatever order the threads finished in (a consumer's own writes keep theirs: stable sort).
        result.writes.extend(text for _, text in sorted(self._written, key=lambda written: written[0]))

    def _steps(self, consumer: Consumer, current: dict[str, Consumer | None], result: ReconcileResult,
               slots: threading.BoundedSemaphore) -> None:
        """One consumer's writes, each planned from the previous one's answer (no read in between)."""
        try:
            for step in range(1, MAX_ROUNDS + 1):
                decision = self.plan_one(consumer)
                if not (decision.writes_consumer or decision.writes_ledger):
                    return
                outcome = self._attempt(decision)
                with self._lock:
                    result.rounds = max(result.rounds, step)
                    updated = self._record(decision, outcome, result)
                    if updated is not None or outcome.gone:
                        current[consumer.id] = updated
                    if outcome.failure is not None or outcome.gone:
                        self._seen.pop(consumer.id, None)
                    elif updated is not None:
                        self._seen[consumer.id] = updated
                if updated is None:
                    return
                consumer = updated
        finally:
            slots.release()

    def _record(self, decision: rotation.Decision, outcome: _Outcome, result: ReconcileResult) -> Consumer | None:
        """Merge one outcome into the result; the consumer to plan the next step from (None: stop)."""
        consumer_id = outcome.consumer.id
        if outcome.deferred or outcome.claimed_elsewhere:
            (self.deferred if outcome.deferred else self.claimed_elsewhere).add(consumer_id)
            return None
        if outcome.conflict is not None:
            result.conflicts.append(outcome.conflict)
            log_record(log, logging.INFO, "consumer changed concurrently", {
                "resource": outcome.consumer.resource_id, "reason": Reason.CONSUMER_CHANGED.value,
                "action": decision.action.value})
        if outcome.written is not None:
            self._written.append((self._positions.get(consumer_id, len(self._positions)), outcome.written))
        if outcome.failure is not None:
            self.failed.add(consumer_id)
            result.failures.append(outcome.failure)
            if outcome.transient is not None:
                self.retrying[consumer_id] = outcome.transient
            if outcome.alert is not None:
                result.alerts.append(outcome.alert)
            return None
        if outcome.gave_up:
            self.failed.add(consumer_id)
            return None
        return None if outcome.gone else outcome.updated

    def retry_after(self) -> timedelta:
        """The longest Retry-After the transiently failed writes were answered with."""
        seconds = max((err.retry_after or 0.0 for err in self.retrying.values()), default=0.0)
        return timedelta(seconds=seconds)

    def end_claims(self, consumer_ids: Collection[str]) -> None:
        """End this run's write claims on these consumers (each noted as ended now, in a few requests)."""
        with self._lock:
            ending = sorted(self.claimed.intersection(consumer_ids))
            self.claimed.difference_update(ending)
            left = {consumer_id: state_token(self._seen[consumer_id])
                    for consumer_id in ending if consumer_id in self._seen}
        if not ending:
            return
        try:
            self.deps.ledger.release_writes(self.key, ending, owner=self.owner, now=self.deps.clock.now(), left=left)
        except (TransientError, PermanentError) as err:  # then they lapse on their own; other runs wait for that
            log_record(log, logging.WARNING, "write claims not ended",
                       {"key": self.key.uri, "claims": len(ending), "error": str(err)})

    def _deadline_passed(self) -> bool:
        """No further write of this run starts (the first always does). The caller holds ``_lock``."""
        return self._started_any and self.deadline is not None and self.deps.clock.now() >= self.deadline

    def _past_deadline(self) -> bool:
        with self._lock:
            return self._deadline_passed()

    def _out_of_time(self) -> bool:
        """Whether the write about to start is past the deadline; if not, it counts as started."""
        with self._lock:
            if self._deadline_passed():
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
            if decision.set_key is not None:
                now = self.deps.clock.now()
                claim = self.deps.ledger.claim_write(
                    self.key, consumer.id, decision.set_key.uri, owner=self.owner, now=now,
                    until=now + self.deps.limits.claim_for, read_at=self._read_at.get(consumer.id, self.started),
                    read_state=state_token(consumer), inherits=self.continues)
                if claim is WriteClaim.HELD_ELSEWHERE:
                    outcome.claimed_elsewhere = True
                    return outcome
                with self._lock:
                    self.claimed.add(consumer.id)
                if claim is WriteClaim.CHANGED_SINCE_READ:
                    # Another run was done with the consumer after it was read here: what was read may be
                    # older than that run's write. The next round plans from ARM's answer now.
                    self._reread(consumer, outcome)
                    return outcome
            try:
                outcome.updated = _execute(decision, self.key, self.deps, self.intents, outcome)
                self._read_at[consumer.id] = self.deps.clock.now()  # the write's answer is ARM's state
            except Conflict as err:
                # Someone changed the consumer between our read and our write: their change wins.
                # Re-read it from ARM and let the next round plan from what it holds now.
                self.conflicts[consumer.id] += 1
                outcome.conflict = f"{consumer.resource_id}: {err}"
                if self.conflicts[consumer.id] >= MAX_CONFLICTS_PER_CONSUMER:
                    outcome.gave_up = True
                    return outcome
                self._reread(consumer, outcome)
        except TransientError as err:
            outcome.failure, outcome.transient = f"{consumer.resource_id}: {err}", err
            self._note_seen(consumer.id, None)  # the write may have landed or not: its state is not known
            if decision.set_key is not None:
                # The retry (a continuation) may run on another instance: the claim would keep it off.
                self.end_claims([consumer.id])
        except PermanentError as err:
            outcome.failure = f"{consumer.resource_id}: {err}"
            outcome.alert = _failure_alert(decision, err)
        return outcome

    def _note_seen(self, consumer_id: str, consumer: Consumer | None) -> None:
        with self._lock:
            if consumer is None:
                self._seen.pop(consumer_id, None)
            else:
                self._seen[consumer_id] = consumer

    def _reread(self, consumer: Consumer, outcome: _Outcome) -> None:
        self._read_at[consumer.id] = self.deps.clock.now()
        updated = self.deps.inventory.reread(consumer)
        if updated is None or not updated.key.same_key(self.key):
            outcome.gone = True
        else:
            outcome.updated = updated


def state_token(consumer: Consumer) -> str:
    """What a consumer's adoption depends on, as one string: the key it is configured with and the version it
    uses (the ledger compares a run's read with the state the last run left the consumer in)."""
    in_use = consumer.current_key.uri if consumer.current_key is not None else "-"
    return f"{consumer.key.uri} {in_use}".lower()


def _refreshed(decisions: Sequence[rotation.Decision], deps: ReconcileDeps) -> dict[str, Consumer | None]:
    """The consumers these decisions write as ARM holds them now (None: gone, or no longer on a Key
    Vault key)."""
    targets = [decision.consumer for decision in decisions if decision.set_key is not None]
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
        _save_intent(key, decision.intent_before, deps, intents)
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
        _save_intent(key, decision.intent_after, deps, intents)
        if updated is None:
            # The intent changed the planner's view even though the consumer did not change.
            updated = decision.consumer
    return updated


def _save_intent(key: KeyRef, intent: ForceAdoptionIntent, deps: ReconcileDeps,
                 intents: dict[str, ForceAdoptionIntent]) -> None:
    """Record the intent, or, when another run recorded this consumer's intent since this run loaded the
    record (it wrote the consumer before this run claimed it), take up that run's intent and let Conflict
    go up: the consumer is read again from ARM and the next round plans from both."""
    own = intent.consumer_id.lower()
    try:
        deps.ledger.save_intent(key, intent)
    except Conflict:
        current = deps.ledger.load_intent(key, intent.consumer_id)
        if current is None:
            intents.pop(own, None)
        else:
            intents[own] = current
        raise
    intents[own] = intent


def _record_conditions(key: KeyRef, state: KeyState, plan: rotation.Plan, record: RotationRecord, *,
                       consumers: Sequence[Consumer], deps: ReconcileDeps, target_version: str | None,
                       noted: Callable[[rotation.Plan], rotation.Plan]) -> rotation.Plan:
    """Save the conditions that changed (``noted``: with what this run adds to the planner's); return
    the plan they come from.

    Another instance may have saved this key's conditions since the record was read (two instances on
    one key, each writing the consumers it claimed): the save is refused (Conflict), and this run
    merges rather than fails: it re-reads the record (the other instance's conditions become the
    previous ones) and the consumers from ARM (one listing), plans again and saves that."""
    plan = noted(plan)
    for _ in range(MAX_CONDITION_SAVES - 1):
        try:
            _save_changed_conditions(key, plan, record, deps)
        except Conflict as err:
            log_record(log, logging.INFO, "conditions saved concurrently: re-reading and merging",
                       {"key": key.uri, "reason": Reason.CONSUMER_CHANGED.value, "error": str(err)})
        else:
            return plan
        record = deps.ledger.load(key)
        intents = {intent.consumer_id.lower(): intent for intent in record.intents}
        fresh = dict(zip((consumer.id for consumer in consumers), deps.inventory.refresh(consumers), strict=True))
        consumers = [current for current in (fresh[consumer.id] for consumer in consumers)
                     if current is not None and current.key.same_key(key)]
        plan = noted(_plan(state, consumers, intents, record, target_version=target_version, deps=deps))
    try:
        _save_changed_conditions(key, plan, record, deps)
    except Conflict as err:
        raise TransientError(f"the conditions of {key.uri} kept changing concurrently: {err}") from err
    return plan


def _save_changed_conditions(key: KeyRef, plan: rotation.Plan, record: RotationRecord, deps: ReconcileDeps) -> None:
    consumer_conditions = _changed({decision.consumer.id: decision.conditions for decision in plan.decisions},
                                   record.consumer_conditions)
    version_conditions = _changed({status.version: status.conditions for status in plan.versions},
                                  record.version_conditions)
    if consumer_conditions or version_conditions:  # persist only what changed
        deps.ledger.save_conditions(key, consumer_conditions, version_conditions)


def _note_retrying(plan: rotation.Plan, retrying: Mapping[str, TransientError], *, retry: int,
                   retry_at: datetime | None, now: datetime) -> rotation.Plan:
    """The plan with a ``Synced`` condition (False, UpdateRetrying) on each consumer whose write failed
    transiently: the ledger and ``cmkctl status`` show why it lags, and when it is tried again
    (``retry_at`` None: the retries are spent; the scheduled re-check tries again)."""
    if not retrying:
        return plan
    then = f"retried at {retry_at.isoformat()}" if retry_at else f"retries spent ({MAX_WRITE_RETRIES})"

    def noted(decision: rotation.Decision) -> rotation.Decision:
        err = retrying.get(decision.consumer.id)
        if err is None:
            return decision
        synced = Condition(rotation.ConditionType.SYNCED.value, ConditionStatus.FALSE, Reason.UPDATE_RETRYING,
                           f"the write failed transiently (retry {retry} of {MAX_WRITE_RETRIES}): {err}; {then}", now)
        return replace(decision, conditions=(*decision.conditions, synced))

    return replace(plan, decisions=tuple(noted(decision) for decision in plan.decisions))


def _backoff(retry: int, retry_after: timedelta) -> timedelta:
    """How long the ``retry``-th continuation waits: doubling from RETRY_BACKOFF, capped, and never less
    than the service asked for."""
    doubled: timedelta = RETRY_BACKOFF * 2 ** min(retry, 16)
    return max(retry_after, min(doubled, MAX_RETRY_BACKOFF))


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


def _retries_spent_alert(decision: rotation.Decision, err: TransientError, retry: int) -> Alert:
    return Alert(
        severity=Severity.HIGH,
        title=f"{decision.consumer.resource_id}: {Reason.UPDATE_RETRYING.value}",
        resource=decision.consumer.resource_id,
        reason=Reason.UPDATE_RETRYING,
        message=f"the write failed transiently {retry + 1} times in a row: {err}; the scheduled re-check tries again",
        fingerprint=fingerprint(decision.consumer.id, Reason.UPDATE_RETRYING.value, decision.consumer.key.uri),
        details={"action": decision.action.value, "retries": retry},
    )


def fingerprint(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:32]


def _continue(key: KeyRef, left: int, deps: ReconcileDeps, *, retry: int | None, delay: timedelta | None,
              owner: str, worklist: str | None) -> None:
    """A continuation: the next invocation re-plans from ARM and the ledger and writes what is left
    (``retry``: the how-manieth retry of transiently failed writes it is; ``owner``: the run whose write
    claims it takes over, as ``claims``; ``worklist``: the ledger's worklist it plans from, None: it lists
    the consumers again)."""
    item: dict[str, object] = {"kind": "reconcile", "key": key.uri, "continuation": True, "left": left,
                               "claims": owner}
    if retry is not None:
        item["retry"] = retry
    if worklist is not None:
        item["worklist"] = worklist
    log_record(log, logging.INFO, "reconcile continues in another invocation",
               {"key": key.uri, "left": left, "retry": retry,
                "delay_seconds": delay.total_seconds() if delay is not None else 0})
    deps.queue.enqueue(item, delay=delay)


def _load_worklist(key: KeyRef, worklist_id: str, deps: ReconcileDeps) -> Worklist | None:
    """The worklist a continuation carries on from (table pages, no ARM read); None when it is gone,
    replaced by another run's, or older than a write claim lasts: a run that stalled or crashed that long
    ago left no trustworthy picture (consumers may have been added since), so the inventory lists them."""
    loaded = deps.ledger.load_worklist(key, worklist_id)
    why = ""
    if loaded is None:
        why = "the worklist is gone or was replaced"
    elif loaded.saved_at < deps.clock.now() - deps.limits.claim_for:
        why = f"the worklist was saved at {loaded.saved_at.isoformat()}, longer ago than a write claim lasts"
        loaded = None
    if why:
        log_record(log, logging.INFO, "continuation lists the consumers again",
                   {"key": key.uri, "worklist": worklist_id, "why": why})
    return loaded


def _keep_worklist(key: KeyRef, loaded: Worklist | None, current: Mapping[str, Consumer | None],
                   deps: ReconcileDeps) -> str | None:
    """Record each consumer as this run last knew it (``current``: the inventory's answer, a listing's or
    its own write's) for the continuation: a new worklist, or, continuing one, only the states that changed
    (a few table transactions per hundred written, whatever the number of consumers). None when it could
    not be recorded: the continuation lists the consumers again (slower, as correct)."""
    now = deps.clock.now()
    worklist_id = uuid.uuid4().hex if loaded is None else loaded.id
    try:
        if loaded is None:
            deps.ledger.start_worklist(key, worklist_id, [consumer for consumer in current.values() if consumer],
                                       now=now)
        else:
            known = {consumer.id: consumer for consumer in loaded.consumers}
            deps.ledger.update_worklist(key, worklist_id, {consumer_id: consumer for consumer_id, consumer
                                                           in current.items() if known.get(consumer_id) != consumer},
                                        now=now)
    except (TransientError, PermanentError, Conflict) as err:
        log_record(log, logging.WARNING, "worklist not saved: the continuation lists the consumers again",
                   {"key": key.uri, "error": str(err)})
        return None
    return worklist_id


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

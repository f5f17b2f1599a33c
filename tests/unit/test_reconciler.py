"""The reconciler use case over hand-written fakes: execution order, crash safety, idempotence, events."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest

from controller import reconciler, rotation
from controller.errors import Forbidden, TransientError
from controller.model import (
    Consumer,
    ConsumerKind,
    ForceAdoptionIntent,
    ForceAdoptionStep,
    IdentityAccess,
    KeyEvent,
    KeyEventKind,
    KeyRef,
    KeyState,
    KeyVersionInfo,
    Severity,
    VaultOrigin,
)
from controller.reasons import Reason
from tests.unit.fakes import (
    FakeClock,
    FakeNotifier,
    FakeQueue,
    FakeRotationLedger,
    FakeStorage,
    FakeVault,
    Killed,
)

pytestmark = pytest.mark.unit

VAULT = VaultOrigin("https://contoso-cmk.vault.azure.net")
KEY = KeyRef(VAULT, "storage-cmk")
OLD, NEW, NEWER = "a" * 32, "b" * 32, "c" * 32
T0 = datetime(2026, 11, 30, 12, tzinfo=UTC)
SUB = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg/providers/Microsoft.Storage"


def account(name: str, *, pinned: str | None = None, current: str = OLD,
            access: IdentityAccess = IdentityAccess.GRANTED, tags: tuple[tuple[str, str], ...] = ()) -> Consumer:
    key = KEY.with_version(pinned) if pinned else KEY
    return Consumer(ConsumerKind.ACCOUNT, f"{SUB}/storageAccounts/{name}", name, key, KEY.with_version(current),
                    identity_access=access, tags=tags)


@dataclass
class World:
    vault: FakeVault
    storage: FakeStorage
    ledger: FakeRotationLedger
    queue: FakeQueue
    notifier: FakeNotifier
    clock: FakeClock
    deps: reconciler.ReconcileDeps


def world(*consumers: Consumer, force_after: timedelta | None = timedelta(0),
          pinned_policy: rotation.PinnedPolicy = rotation.PinnedPolicy.UPDATE) -> World:
    clock = FakeClock(T0 + timedelta(minutes=5))
    vault = FakeVault([KeyVersionInfo(OLD, enabled=True, created=T0 - timedelta(days=90)),
                       KeyVersionInfo(NEW, enabled=True, created=T0)], clock=clock)
    storage = FakeStorage({consumer.id: consumer for consumer in consumers})
    ledger, queue, notifier = FakeRotationLedger(), FakeQueue(), FakeNotifier()
    planner = rotation.PlannerSettings(adoption_window=timedelta(hours=24), force_versionless_after=force_after,
                                       pinned_policy=pinned_policy)
    deps = reconciler.ReconcileDeps(keys=lambda origin: vault, inventory=storage, control=storage, ledger=ledger,
                                    queue=queue, notifier=notifier, clock=clock, planner=planner)
    return World(vault, storage, ledger, queue, notifier, clock, deps)


def state(w: World, name: str) -> Consumer:
    return w.storage.consumers[f"{SUB}/storageAccounts/{name}".lower()]


def test_a_lagging_versionless_account_is_pinned_then_restored_in_one_run():
    w = world(account("stfree"))
    result = reconciler.reconcile_key(KEY.with_version(NEW), w.deps, target_version=NEW)
    consumer = state(w, "stfree")
    assert consumer.key == KEY  # automatic updates stay on
    assert consumer.current_version == NEW
    assert [uri for _, uri in w.storage.writes] == [KEY.with_version(NEW).uri, KEY.uri]
    assert [step for _, step in w.ledger.intent_log] == ["pinned", "restored"]
    assert result.plan.decision_for(consumer.id).action is rotation.Action.ADOPTED
    assert result.failures == []


def test_the_intent_is_written_before_the_pin():
    w = world(account("stfree"))
    w.storage.kill_after_writes = 0
    with pytest.raises(Killed):
        reconciler.reconcile_key(KEY, w.deps, target_version=NEW)
    assert [step for _, step in w.ledger.intent_log] == ["pinned"]
    assert w.storage.writes == []


def test_a_crash_between_pin_and_restore_is_repaired_once_the_crashed_runs_claim_lapses():
    w = world(account("stfree"))
    w.storage.kill_after_writes = 1
    with pytest.raises(Killed):
        reconciler.reconcile_key(KEY, w.deps, target_version=NEW)
    assert state(w, "stfree").key == KEY.with_version(NEW)  # left pinned by the crash

    w.storage.kill_after_writes = None
    w.queue.items.clear()
    # The redelivered event, at once: the crashed run's claim still keeps others off (it might be alive,
    # and slow); the key is looked at again shortly, until the claim has ended or lapsed.
    result = reconciler.reconcile_key(KEY, w.deps)
    assert state(w, "stfree").key == KEY.with_version(NEW)
    assert result.claimed_elsewhere == [state(w, "stfree").id]
    [(item, delay)] = w.queue.items
    assert item == {"kind": "reconcile", "key": KEY.uri}
    assert delay == reconciler.CLAIMED_ELSEWHERE_RECHECK

    w.clock.advance(w.deps.limits.claim_for)
    reconciler.reconcile_key(KEY, w.deps)  # that re-check
    assert state(w, "stfree").key == KEY
    assert state(w, "stfree").current_version == NEW
    assert [step for _, step in w.ledger.intent_log] == ["pinned", "restored"]


def test_an_intent_another_run_recorded_since_this_one_read_the_ledger_is_taken_up_not_failed():
    """Two runs on one key (the function app on the rotation's event, `cmkctl rotate` following it): the
    other adopted the consumer after this run loaded the ledger, and its intent refuses this run's (the
    ETag). This run reads that intent and the consumer again and finds nothing left to do."""
    w = world(account("stfree"))
    consumer = state(w, "stfree")

    def other_run_adopts() -> None:
        w.ledger.intents[consumer.id] = ForceAdoptionIntent(consumer.id, NEW, ForceAdoptionStep.RESTORED, T0)
        w.storage.consumers[consumer.id] = replace(consumer, current_key=KEY.with_version(NEW))

    w.ledger.other_run_first[consumer.id] = other_run_adopts
    result = reconciler.reconcile_key(KEY.with_version(NEW), w.deps, target_version=NEW)
    assert result.failures == []
    assert w.storage.writes == []  # nothing written from the stale view
    assert w.ledger.intents[consumer.id].step is ForceAdoptionStep.RESTORED
    assert result.plan.decision_for(consumer.id).action is rotation.Action.ADOPTED
    assert state(w, "stfree").key == KEY


def test_an_intent_refused_after_the_write_is_read_again_and_the_adoption_finishes():
    """The pin was written, then the pinned intent's successor was refused: the consumer is read again
    from ARM and the run finishes the adoption from the intent the ledger holds."""
    w = world(account("stfree"))
    consumer = state(w, "stfree")
    pinned = ForceAdoptionIntent(consumer.id, NEW, ForceAdoptionStep.PINNED, T0)

    def other_run_records_the_pin_too() -> None:
        w.ledger.intents[consumer.id] = pinned

    w.storage.interfere[consumer.id] = lambda current: (
        w.ledger.other_run_first.setdefault(consumer.id, other_run_records_the_pin_too) and current)
    result = reconciler.reconcile_key(KEY.with_version(NEW), w.deps, target_version=NEW)
    assert result.failures == []
    assert state(w, "stfree").key == KEY  # automatic updates back on
    assert state(w, "stfree").current_version == NEW
    assert [uri for _, uri in w.storage.writes] == [KEY.with_version(NEW).uri, KEY.uri]


def test_a_second_run_writes_nothing():
    w = world(account("stfree"), account("stpinned", pinned=OLD))
    reconciler.reconcile_key(KEY, w.deps, target_version=NEW)
    writes, intents, saves = len(w.storage.writes), len(w.ledger.intent_log), w.ledger.condition_saves
    again = reconciler.reconcile_key(KEY, w.deps, target_version=NEW)
    assert (len(w.storage.writes), len(w.ledger.intent_log), w.ledger.condition_saves) == (writes, intents, saves)
    assert again.writes == []


def test_conditions_saved_concurrently_by_another_instance_are_reread_and_merged_not_failed():
    w = world(account("stfree"), account("stpinned", pinned=OLD))
    w.ledger.save_conflicts = 1  # another instance saved this key's conditions after this run loaded them
    refreshes = w.storage.refreshes
    result = reconciler.reconcile_key(KEY, w.deps, target_version=NEW)  # no TransientError
    assert w.storage.refreshes == refreshes + 2  # the pre-write refresh, then the re-read after the conflict
    assert w.ledger.condition_saves == 1
    adopted = {name: dict((c.type, c.status.value) for c in w.ledger.consumer_conditions[state(w, name).id])
               for name in ("stfree", "stpinned")}
    assert adopted == {name: {"Adopted": "True", "KeyAccessible": "True", "PinnedCurrent": "True"}
                       for name in ("stfree", "stpinned")}
    assert result.progress() == {"done": 2, "pending": 0, "blocked": 0}


def test_conditions_that_keep_being_saved_concurrently_leave_the_retry_to_the_host():
    w = world(account("stfree"))
    w.ledger.save_conflicts = reconciler.MAX_CONDITION_SAVES
    with pytest.raises(TransientError, match="kept changing"):
        reconciler.reconcile_key(KEY, w.deps, target_version=NEW)
    assert state(w, "stfree").current_version == NEW  # the writes were done before


def test_only_changed_conditions_are_saved():
    w = world(account("stfree"), account("stpinned", pinned=OLD))
    reconciler.reconcile_key(KEY, w.deps, target_version=NEW)
    w.storage.consumers[state(w, "stpinned").id] = replace(state(w, "stpinned"), identity_access=IdentityAccess.DENIED)
    reconciler.reconcile_key(KEY, w.deps, target_version=NEW)
    saved = w.ledger.saved_consumers[-1:]
    assert saved == [(state(w, "stpinned").id,)]


def test_pinned_accounts_follow_the_policy_and_its_tag_override():
    w = world(account("stupdate", pinned=OLD),
              account("stalert", pinned=OLD, tags=(("cmk-pinned-policy", "alert"),)),
              pinned_policy=rotation.PinnedPolicy.UPDATE)
    reconciler.reconcile_key(KEY, w.deps, target_version=NEW)
    assert state(w, "stupdate").key == KEY.with_version(NEW)
    assert state(w, "stalert").key == KEY.with_version(OLD)
    [alert] = w.notifier.alerts
    assert alert.resource.endswith("/stalert")
    assert (alert.severity, alert.reason) == (Severity.HIGH, Reason.PINNED_TO_OLD_VERSION)


def test_an_identity_without_access_to_the_new_version_is_blocked_and_alerted_not_changed():
    w = world(account("stdenied", access=IdentityAccess.DENIED))
    reconciler.reconcile_key(KEY, w.deps, target_version=NEW)
    assert w.storage.writes == []
    [alert] = w.notifier.alerts
    assert (alert.severity, alert.reason) == (Severity.CRITICAL, Reason.IDENTITY_LACKS_ACCESS)


def test_a_stale_event_never_moves_a_consumer_backwards():
    w = world(account("stpinned", pinned=NEW, current=NEW))
    reconciler.reconcile_key(KEY, w.deps, target_version=OLD)
    assert w.storage.writes == []
    assert state(w, "stpinned").key == KEY.with_version(NEW)


def test_out_of_order_events_converge_on_the_newest_version():
    w = world(account("stfree"))
    w.vault.versions.append(KeyVersionInfo(NEWER, enabled=True, created=T0 + timedelta(minutes=1)))
    reconciler.reconcile_key(KEY, w.deps, target_version=NEWER)
    reconciler.reconcile_key(KEY, w.deps, target_version=NEW)  # the older event arrives late
    assert state(w, "stfree").current_version == NEWER
    assert state(w, "stfree").key == KEY


def test_one_failing_consumer_is_recorded_and_the_others_still_converge():
    w = world(account("stbroken", pinned=OLD), account("stfine", pinned=OLD))
    w.storage.fail_for[state(w, "stbroken").id] = Forbidden("HTTP 403 AuthorizationFailed")
    result = reconciler.reconcile_key(KEY, w.deps, target_version=NEW)
    assert state(w, "stfine").key == KEY.with_version(NEW)
    assert len(result.failures) == 1
    assert [(alert.severity, alert.reason) for alert in w.notifier.alerts] == [
        (Severity.CRITICAL, Reason.UPDATE_FAILED)]


def continuations(w: World) -> list[tuple[dict[str, object], timedelta | None]]:
    return [(item, delay) for item, delay in w.queue.items if item.get("continuation")]


def without_run_ids(item: dict[str, object]) -> dict[str, object]:
    """A continuation item but for its "claims" (the deferring run's claim owner) and its "worklist" (the id of
    the worklist it left in the ledger), both random per run."""
    assert str(item["claims"]).startswith("controller/")
    assert re.fullmatch("[0-9a-f]{32}", str(item["worklist"]))
    return {name: value for name, value in item.items() if name not in ("claims", "worklist")}


def run_continuation(w: World, item: dict[str, object]) -> reconciler.ReconcileResult:
    """As the queue trigger runs a continuation item (service._reconcile_item): its retry, claims and worklist."""
    worklist = item.get("worklist")
    return reconciler.reconcile_key(KEY, w.deps, retry=int(str(item.get("retry", 0))), continues=str(item["claims"]),
                                    worklist=None if worklist is None else str(worklist))


def run_continuations(w: World) -> list[reconciler.ReconcileResult]:
    """The continuations the queue holds, and theirs, until none is left."""
    results = []
    while pending := continuations(w):
        w.queue.items.clear()
        results.extend(run_continuation(w, item) for item, _ in pending)
    return results


def synced(w: World, name: str) -> list[tuple[str, Reason]]:
    """The ``Synced`` conditions the ledger holds for the consumer: (status, reason)."""
    return [(condition.status.value, condition.reason)
            for condition in w.ledger.consumer_conditions.get(state(w, name).id, ())
            if condition.type == rotation.ConditionType.SYNCED.value]


def test_a_transient_write_failure_finishes_the_others_and_retries_that_consumer_through_the_queue():
    w = world(account("stthrottled", pinned=OLD), account("stfine", pinned=OLD))
    throttled = state(w, "stthrottled").id
    w.storage.fail_for[throttled] = TransientError("HTTP 503 ServerBusy", retry_after=3)
    result = reconciler.reconcile_key(KEY, w.deps, target_version=NEW)  # the invocation does not fail
    assert state(w, "stfine").key == KEY.with_version(NEW)
    assert result.retrying == [throttled]
    assert synced(w, "stthrottled") == [("False", Reason.UPDATE_RETRYING)]
    assert synced(w, "stfine") == []
    assert w.notifier.alerts == []  # a transient failure is retried, not alerted
    [(item, delay)] = continuations(w)
    assert without_run_ids(item) == {"kind": "reconcile", "key": KEY.uri, "continuation": True, "left": 1, "retry": 1}
    assert delay is not None and delay >= timedelta(seconds=3)  # never before the service's Retry-After
    assert [item for item, _ in w.queue.items if not item.get("continuation")] == []  # the continuation re-checks

    del w.storage.fail_for[throttled]
    w.queue.items.clear()
    retried = run_continuation(w, item)
    assert state(w, "stthrottled").key == KEY.with_version(NEW)
    assert retried.retrying == [] and continuations(w) == []
    assert synced(w, "stthrottled") == []  # the condition cleared with the write
    written = [consumer for consumer, _ in w.storage.writes]
    assert written.count(state(w, "stfine").id) == 1  # the retry did not write the finished consumer again


def test_a_transient_failure_releases_the_write_claim_so_another_instance_can_retry_it():
    w = with_limits(world(account("stthrottled", pinned=OLD)), owner="instance-a")
    throttled = state(w, "stthrottled").id
    w.storage.fail_for[throttled] = TransientError("HTTP 503")
    reconciler.reconcile_key(KEY, w.deps, target_version=NEW)
    assert w.ledger.ended[throttled.lower()] == w.clock.now()  # ended: the retry may run on any instance
    del w.storage.fail_for[throttled]
    elsewhere = with_limits(w, owner="instance-b")
    retried = reconciler.reconcile_key(KEY, elsewhere.deps, retry=1)
    assert retried.claimed_elsewhere == [] and state(w, "stthrottled").key == KEY.with_version(NEW)


def test_transient_retries_back_off_and_are_bounded_then_a_human_is_alerted():
    w = world(account("stthrottled", pinned=OLD))
    w.storage.fail_for[state(w, "stthrottled").id] = TransientError("HTTP 503")
    delays: list[timedelta] = []
    retry = 0
    for _ in range(reconciler.MAX_WRITE_RETRIES + 1):
        reconciler.reconcile_key(KEY, w.deps, retry=retry)
        if not continuations(w):
            break
        [(item, delay)] = continuations(w)
        assert delay is not None
        delays.append(delay)
        retry = int(str(item["retry"]))
        w.queue.items.clear()
    assert len(delays) == reconciler.MAX_WRITE_RETRIES
    assert all(later == 2 * earlier for earlier, later in itertools.pairwise(delays))
    assert [(alert.severity, alert.reason) for alert in w.notifier.alerts] == [(Severity.HIGH, Reason.UPDATE_RETRYING)]
    [(recheck, _)] = w.queue.items  # the plan's scheduled re-check keeps looking
    assert recheck == {"kind": "reconcile", "key": KEY.uri}
    assert synced(w, "stthrottled") == [("False", Reason.UPDATE_RETRYING)]


def test_a_retry_that_moves_a_consumer_on_starts_the_count_again():
    w = world(account("stthrottled", pinned=OLD), account("stlater", pinned=OLD))
    w.storage.fail_for[state(w, "stthrottled").id] = TransientError("HTTP 503")
    w.storage.fail_for[state(w, "stlater").id] = TransientError("HTTP 503")
    reconciler.reconcile_key(KEY, w.deps, retry=0)
    [(item, _)] = continuations(w)
    w.queue.items.clear()
    del w.storage.fail_for[state(w, "stlater").id]
    reconciler.reconcile_key(KEY, w.deps, retry=reconciler.MAX_WRITE_RETRIES)  # progress: stlater written
    [(item, _)] = continuations(w)
    assert item["retry"] == 1
    assert w.notifier.alerts == []


def test_waiting_inside_the_window_schedules_a_recheck():
    w = world(account("stfree"), force_after=timedelta(hours=24))
    result = reconciler.reconcile_key(KEY, w.deps, target_version=NEW)
    assert w.storage.writes == []
    assert result.next_check is not None
    [(message, delay)] = w.queue.items
    assert message == {"kind": "reconcile", "key": KEY.uri}
    assert delay is not None
    assert timedelta(0) < delay <= timedelta(hours=24)


def test_dry_run_plans_without_writing_anything():
    w = world(account("stfree"), account("stpinned", pinned=OLD))
    result = reconciler.reconcile_key(KEY, w.deps, target_version=NEW, dry_run=True)
    assert w.storage.writes == [] and w.ledger.intent_log == [] and w.queue.items == []
    assert {decision.action for decision in result.plan.decisions} == {
        rotation.Action.FORCE_ADOPTION, rotation.Action.UPDATE_PINNED}


def event(kind: KeyEventKind, version: str | None = NEW, *, expires: datetime | None = T0 + timedelta(days=30)
          ) -> KeyEvent:
    return KeyEvent(event_id="e", kind=kind, event_type="t", vault=VAULT, vault_resource_id=None,
                    key=KEY.with_version(version) if version else None, event_time=T0, expires=expires)


def expiring(w: World, version: str, expires: datetime) -> None:
    """Give ``version`` an expiry date in the fake vault (as the event that follows will claim)."""
    w.vault.versions = [replace(info, expires=expires) if info.version == version else info
                        for info in w.vault.versions]


def test_near_expiry_rotates_once_when_allowed_even_if_redelivered():
    w = world(account("stfree", current=NEW))
    expiring(w, NEW, T0 + timedelta(days=30))
    reconciler.on_key_event(event(KeyEventKind.NEAR_EXPIRY), w.deps, auto_rotate=True)
    reconciler.on_key_event(event(KeyEventKind.NEAR_EXPIRY), w.deps, auto_rotate=True)
    assert w.vault.rotations == 1
    newest = w.vault.versions[-1].version
    assert state(w, "stfree").current_version == newest


def test_near_expiry_without_auto_rotation_alerts_with_the_blast_radius():
    w = world(account("st1"), account("st2", pinned=OLD))
    expiring(w, NEW, T0 + timedelta(days=30))
    assert reconciler.on_key_event(event(KeyEventKind.NEAR_EXPIRY), w.deps, auto_rotate=False) == []
    [alert] = w.notifier.alerts
    assert (alert.severity, alert.reason) == (Severity.HIGH, Reason.KEY_NEAR_EXPIRY)
    assert len(alert.details["consumers"]) == 2
    assert w.vault.rotations == 0 and w.storage.writes == []


def test_expiry_alerts_critical_with_the_blast_radius_and_reconciles():
    w = world(account("st1"))
    expiring(w, OLD, T0)
    results = reconciler.on_key_event(event(KeyEventKind.EXPIRED, OLD, expires=T0), w.deps, auto_rotate=False)
    assert w.storage.inventory_reads == 1  # the blast radius and the reconcile share one inventory
    assert w.notifier.alerts[0].severity is Severity.CRITICAL
    assert w.notifier.alerts[0].reason is Reason.KEY_EXPIRED
    assert len(results) == 1
    assert state(w, "st1").current_version == NEW


# ---- an event is a trigger, never the truth ----------------------------------------------------------


def test_a_forged_expiry_of_a_live_key_alerts_nobody_and_changes_nothing():
    w = world(account("st1"), account("st2", pinned=OLD))  # OLD has no expiry date in the vault
    assert reconciler.on_key_event(event(KeyEventKind.EXPIRED, OLD, expires=T0), w.deps, auto_rotate=True) == []
    assert w.notifier.alerts == []
    assert w.storage.writes == [] and w.vault.rotations == 0


def test_an_expiry_date_the_vault_does_not_have_is_not_believed():
    w = world(account("st1"))
    expiring(w, OLD, T0 + timedelta(days=400))
    for kind, claimed in ((KeyEventKind.EXPIRED, T0), (KeyEventKind.NEAR_EXPIRY, T0 + timedelta(days=3))):
        assert reconciler.on_key_event(event(kind, OLD, expires=claimed), w.deps, auto_rotate=True) == []
    assert w.notifier.alerts == [] and w.vault.rotations == 0 and w.storage.writes == []


def test_an_expired_event_for_a_version_that_expires_later_is_not_believed_even_with_its_date():
    w = world(account("st1"))
    expiring(w, OLD, T0 + timedelta(days=2))
    assert reconciler.on_key_event(event(KeyEventKind.EXPIRED, OLD, expires=T0 + timedelta(days=2)), w.deps,
                                   auto_rotate=False) == []
    assert w.notifier.alerts == []


def test_a_new_version_the_vault_does_not_list_raises_no_alert_and_converges_on_the_real_latest():
    w = world(account("stpinned", pinned=OLD))
    results = reconciler.on_key_event(event(KeyEventKind.NEW_VERSION, "f" * 32), w.deps, auto_rotate=False)
    assert w.notifier.alerts == []
    assert [result.plan.target.version for result in results if result.plan.target] == [NEW]
    assert state(w, "stpinned").key.version == NEW


def test_an_expired_key_nobody_uses_is_a_low_severity_alert():
    w = world()
    expiring(w, OLD, T0)
    reconciler.on_key_event(event(KeyEventKind.EXPIRED, OLD, expires=T0), w.deps, auto_rotate=False)
    [alert] = w.notifier.alerts
    assert (alert.severity, alert.reason) == (Severity.LOW, Reason.KEY_EXPIRED)
    assert alert.details["consumers"] == []


def test_a_near_expiry_nobody_depends_on_is_low_severity():
    w = world()
    expiring(w, NEW, T0 + timedelta(days=30))
    reconciler.on_key_event(event(KeyEventKind.NEAR_EXPIRY), w.deps, auto_rotate=False)
    assert [(alert.severity, alert.reason) for alert in w.notifier.alerts] == [(Severity.LOW, Reason.KEY_NEAR_EXPIRY)]


def test_an_access_policy_change_rechecks_every_key_of_the_vault_in_use():
    w = world(account("st1"))
    results = reconciler.on_key_event(event(KeyEventKind.ACCESS_POLICY_CHANGED, None), w.deps, auto_rotate=False)
    assert [result.key for result in results] == [KEY]


# ---- a consumer that changes between our read and our write (Conflict) -----------------------------------


def test_a_consumer_changed_concurrently_is_reread_and_replanned_without_aborting_the_others():
    w = world(account("stfirst", pinned=OLD), account("stsecond", pinned=OLD), account("stthird", pinned=OLD))
    first = state(w, "stfirst").id
    # Someone re-pins stfirst to OLD's successor themselves just before our write: theirs wins.
    w.storage.interfere[first] = lambda consumer: replace(consumer, key=KEY.with_version(NEW),
                                                          current_key=KEY.with_version(NEW))
    result = reconciler.reconcile_key(KEY, w.deps, target_version=NEW)
    assert state(w, "stsecond").key.version == NEW
    assert state(w, "stthird").key.version == NEW
    assert state(w, "stfirst").key == KEY.with_version(NEW)
    assert w.storage.rereads == 1
    assert result.conflicts == [f"{state(w, 'stfirst').resource_id}: {state(w, 'stfirst').resource_id} "
                                "changed since it was read"]
    assert result.failures == []
    assert result.plan.decision_for(first).action is rotation.Action.ADOPTED
    assert first not in {consumer for consumer, _ in w.storage.writes}  # never written over their change
    assert w.notifier.alerts == []


def test_a_consumer_moved_to_another_key_concurrently_is_dropped_from_the_plan():
    w = world(account("stgone", pinned=OLD), account("stkept", pinned=OLD))
    gone = state(w, "stgone").id
    other_key = KeyRef(VAULT, "another-key").with_version(NEW)
    w.storage.interfere[gone] = lambda consumer: replace(consumer, key=other_key, current_key=other_key)
    result = reconciler.reconcile_key(KEY, w.deps, target_version=NEW)
    assert state(w, "stkept").key.version == NEW
    assert state(w, "stgone").key == other_key
    assert all(decision.consumer.id != gone for decision in result.plan.decisions)
    assert len(result.conflicts) == 1


def test_a_consumer_that_keeps_changing_is_left_for_a_prompt_recheck():
    w = world(account("stflappy", pinned=OLD), account("ststeady", pinned=OLD))
    flappy = state(w, "stflappy").id

    def flip(consumer: Consumer) -> Consumer:
        w.storage.interfere[flappy] = flip  # and again before every write of ours
        return replace(consumer, key=KEY if consumer.key.version else KEY.with_version(OLD))

    w.storage.interfere[flappy] = flip
    result = reconciler.reconcile_key(KEY, w.deps, target_version=NEW)
    assert state(w, "ststeady").key.version == NEW
    assert len(result.conflicts) == reconciler.MAX_CONFLICTS_PER_CONSUMER
    assert flappy not in {consumer for consumer, _ in w.storage.writes}
    assert result.next_check == w.clock.now() + w.deps.planner.verify_interval
    assert w.queue.items == [({"kind": "reconcile", "key": KEY.uri}, w.deps.planner.verify_interval)]


# --- at scale: concurrent writes, the time budget, write claims ------------------------------------------


def with_limits(w: World, **limits: object) -> World:
    w.deps = replace(w.deps, limits=reconciler.ExecutionLimits(**limits))  # type: ignore[arg-type]
    return w


def estate_of(count: int) -> list[Consumer]:
    """Half lagging versionless accounts, half pinned with the update policy."""
    return [account(f"stv{index:02d}") if index % 2 else account(f"stp{index:02d}", pinned=OLD)
            for index in range(count)]


def test_concurrent_writes_end_where_sequential_ones_do_and_report_in_plan_order():
    sequential = world(*estate_of(8))
    concurrent = with_limits(world(*estate_of(8)), concurrency=4)
    first = reconciler.reconcile_key(KEY, sequential.deps, target_version=NEW)
    second = reconciler.reconcile_key(KEY, concurrent.deps, target_version=NEW)
    assert concurrent.storage.consumers == sequential.storage.consumers
    assert second.writes == first.writes  # merged in plan order, whatever order the threads finished in
    assert sorted(concurrent.storage.writes) == sorted(sequential.storage.writes)
    assert second.progress() == {"done": 8, "pending": 0, "blocked": 0}


class SlowStorage(FakeStorage):
    """Every write takes a minute of the (fake) clock."""

    clock: FakeClock

    def set_key(self, consumer: Consumer, key: KeyRef) -> Consumer:
        self.clock.advance(timedelta(minutes=1))
        return super().set_key(consumer, key)


def test_writes_past_the_time_budget_continue_through_the_queue_and_finish():
    w = world()
    slow = SlowStorage({consumer.id: consumer for consumer in estate_of(6)})
    slow.clock = w.clock
    w.storage = slow
    w.deps = replace(w.deps, inventory=slow, control=slow,
                     limits=reconciler.ExecutionLimits(time_budget=timedelta(seconds=150)))

    first = reconciler.reconcile_key(KEY, w.deps, target_version=NEW)
    assert len(first.writes) == 3  # started at 0, 1 and 2 minutes; the rest is past the budget
    assert first.deferred == 3
    assert first.progress()["pending"] > 0
    [(item, delay)] = [(item, delay) for item, delay in w.queue.items if item.get("continuation")]
    assert without_run_ids(item) == {"kind": "reconcile", "key": KEY.uri, "continuation": True, "left": 3}
    assert delay is None  # at once: the next invocation takes over

    results = run_continuations(w)
    runs = 1 + len(results)
    result = results[-1]
    assert result.claimed_elsewhere == []
    assert result.progress() == {"done": 6, "pending": 0, "blocked": 0}
    assert runs > 1
    written = [consumer for consumer, _ in slow.writes]
    assert sorted(written.count(consumer) for consumer in set(written)) == [1, 1, 1, 2, 2, 2]  # never twice


def cut_off(count: int) -> World:
    """A run over ``count`` consumers (estate_of) whose writes take a minute each, cut off by a budget of two
    and a half minutes: it writes three, and a continuation is on the queue."""
    w = world()
    slow = SlowStorage({consumer.id: consumer for consumer in estate_of(count)})
    slow.clock = w.clock
    w.storage = slow
    w.deps = replace(w.deps, inventory=slow, control=slow,
                     limits=reconciler.ExecutionLimits(time_budget=timedelta(seconds=150)))
    first = reconciler.reconcile_key(KEY, w.deps, target_version=NEW)
    assert len(first.writes) == 3 and first.deferred == count - 3
    return w


def writes_of(w: World) -> list[int]:
    """How many times each written consumer was written, in order."""
    written = [consumer for consumer, _ in w.storage.writes]
    return sorted(written.count(consumer) for consumer in set(written))


def test_a_continuation_writes_what_is_left_from_the_worklist_without_listing_the_estate_again():
    w = cut_off(6)
    assert w.storage.inventory_reads == 1
    [(item, _)] = continuations(w)
    assert w.ledger.worklist_saves == [(item["worklist"], 6)]  # every consumer, as the run last knew it

    results = run_continuations(w)

    assert w.storage.inventory_reads == 1  # the continuations planned from the worklist
    assert results[-1].progress() == {"done": 6, "pending": 0, "blocked": 0}
    assert writes_of(w) == [1, 1, 1, 2, 2, 2]
    # Each continuation recorded only the states that its writes changed, not the whole worklist again.
    assert all(count <= 3 for _, count in w.ledger.worklist_saves[1:])


def test_a_worklist_entry_someone_changed_since_is_verified_before_it_is_written_never_written_from():
    w = cut_off(6)
    [(item, _)] = continuations(w)
    w.queue.items.clear()
    gone, raced = state(w, "stv05"), state(w, "stv03")
    # Its owner turned one account to Microsoft-managed keys after the worklist was saved (the listing right
    # before the continuation's writes shows it), and pins another to the new version between that listing
    # and moves another to a key of its own between that listing and the continuation's write (the write is
    # refused: Conflict).
    del w.storage.consumers[gone.id]
    theirs = KeyRef(VAULT, "their-own-key")
    w.storage.interfere[raced.id] = lambda consumer: replace(consumer, key=theirs, current_key=None)

    results = [run_continuation(w, item), *run_continuations(w)]

    written = [consumer for consumer, _ in w.storage.writes]
    assert gone.id not in written and raced.id not in written  # their owners' changes stand
    assert state(w, "stv03").key == theirs
    assert w.storage.rereads == 1  # the refused write cost one read of that consumer, nothing more
    assert [len(result.conflicts) for result in results] == [1] + [0] * (len(results) - 1)
    assert w.storage.inventory_reads == 1
    assert results[-1].failures == []
    assert results[-1].progress() == {"done": 4, "pending": 0, "blocked": 0}


@pytest.mark.parametrize("lost", ["gone", "too old"])
def test_a_continuation_without_a_believable_worklist_lists_the_consumers_again(lost):
    w = cut_off(6)
    if lost == "gone":
        w.ledger.worklists.clear()
    else:  # a run stalled, or its continuation waited on the queue, for longer than a write claim lasts
        w.clock.advance(w.deps.limits.claim_for + timedelta(seconds=1))

    results = run_continuations(w)

    assert w.storage.inventory_reads == 2  # listed again once; its continuations use the new worklist
    assert results[-1].progress() == {"done": 6, "pending": 0, "blocked": 0}
    assert writes_of(w) == [1, 1, 1, 2, 2, 2]


def test_a_continuation_delivered_twice_writes_no_consumer_twice():
    w = cut_off(6)
    [(item, _)] = continuations(w)
    w.queue.items.clear()
    redelivered: list[reconciler.ReconcileResult] = []

    def meanwhile(consumer: Consumer) -> Consumer:
        redelivered.append(run_continuation(w, item))  # the same item, on another instance, at the same time
        return consumer

    w.storage.interfere[state(w, "stv01").id] = meanwhile
    run_continuation(w, item)
    run_continuations(w)
    late = run_continuation(w, item)  # and once more, after all is done

    assert len(redelivered) == 1
    assert writes_of(w) == [1, 1, 1, 2, 2, 2]
    assert late.writes == []
    assert late.progress() == {"done": 6, "pending": 0, "blocked": 0}
    assert w.storage.inventory_reads == 1


class SlowInventory(SlowStorage):
    """Finding the consumers takes two minutes too (at 10,000 accounts their scope listings take minutes
    of ARM's read budget)."""

    def consumers_of(self, key: KeyRef) -> list[Consumer]:
        self.clock.advance(timedelta(minutes=2))
        return super().consumers_of(key)


def test_the_time_budget_counts_the_inventory_too():
    """The host ends an invocation at its time limit, whatever it was doing: the budget is the invocation's,
    from the start of the reconcile, not from its first write."""
    w = world()
    slow = SlowInventory({consumer.id: consumer for consumer in estate_of(6)})
    slow.clock = w.clock
    w.deps = replace(w.deps, inventory=slow, control=slow,
                     limits=reconciler.ExecutionLimits(time_budget=timedelta(seconds=150)))

    first = reconciler.reconcile_key(KEY, w.deps, target_version=NEW)

    assert len(first.writes) == 1  # the first write always starts (at 2 minutes); the next would at 3
    assert first.deferred == 5


def test_a_run_past_its_time_budget_reads_no_more_chunks_before_the_writes_it_will_not_start():
    w = world()
    slow = SlowStorage({consumer.id: consumer for consumer in estate_of(6)})
    slow.clock = w.clock
    w.deps = replace(w.deps, inventory=slow, control=slow,
                     limits=reconciler.ExecutionLimits(time_budget=timedelta(seconds=150), refresh_every=1))
    result = reconciler.reconcile_key(KEY, w.deps, target_version=NEW)
    assert len(result.writes) == 3 and result.deferred == 3
    # A listing per chunk (of one consumer) written, and the next one's, read while the last write was in flight;
    # none for the two chunks after it.
    assert slow.refreshes == 4


def test_every_run_starts_at_least_one_write_however_small_the_budget():
    w = world()
    slow = SlowStorage({consumer.id: consumer for consumer in estate_of(2)})
    slow.clock = w.clock
    w.deps = replace(w.deps, inventory=slow, control=slow,
                     limits=reconciler.ExecutionLimits(time_budget=timedelta(seconds=1)))
    result = reconciler.reconcile_key(KEY, w.deps, target_version=NEW)
    assert len(result.writes) == 1
    assert result.deferred == 1


def test_a_consumer_another_instance_claimed_is_left_to_it():
    w = with_limits(world(account("stmine"), account("sttheirs")), owner="instance-a")
    theirs = state(w, "sttheirs")
    w.ledger.claims[theirs.id] = ("instance-b", w.clock.now() + timedelta(minutes=5))
    result = reconciler.reconcile_key(KEY, w.deps, target_version=NEW)
    assert [consumer for consumer, _ in w.storage.writes] == [state(w, "stmine").id] * 2
    assert result.claimed_elsewhere == [theirs.id]
    assert result.failures == []
    assert result.progress() == {"done": 1, "pending": 1, "blocked": 0}


def test_a_lapsed_claim_of_a_crashed_instance_is_taken_over():
    w = with_limits(world(account("stfree")), owner="instance-a")
    consumer = state(w, "stfree")
    w.ledger.claims[consumer.id] = ("crashed", w.clock.now() - timedelta(seconds=1))
    result = reconciler.reconcile_key(KEY, w.deps, target_version=NEW)
    assert result.claimed_elsewhere == []
    assert state(w, "stfree").current_version == NEW


def test_a_new_version_writes_only_the_conditions_that_changed_not_every_version_again():
    """At a thousand events a minute each key gains versions quickly: rewriting every version's
    conditions on every event made each event's ledger writes grow with the key's history."""
    w = world(account("stfree"))
    w.vault.versions = [KeyVersionInfo(f"{index:02d}" + "e" * 30, enabled=True, created=T0 - timedelta(days=90 - index))
                        for index in range(30)] + w.vault.versions
    reconciler.reconcile_key(KEY.with_version(NEW), w.deps, target_version=NEW)
    written = w.ledger.subjects_written
    newest = w.vault.rotate_key(KEY)
    reconciler.reconcile_key(KEY.with_version(newest.version), w.deps, target_version=newest.version)
    assert 0 < w.ledger.subjects_written - written <= 4  # the new version, the one it supersedes, the consumer


@dataclass
class TieVault(FakeVault):
    """Two versions created within one second (Key Vault reports creation to the second): the vault names
    which one is current."""

    current: str | None = None

    def get_key_state(self, key: KeyRef) -> KeyState:
        return replace(super().get_key_state(key), current_version=self.current)


def test_the_adoption_path_takes_the_vaults_current_version_on_a_same_second_tie():
    """The per-consumer plans of concurrent writers and the continuations of a run cut off by its time
    budget decide the target as one plan does: on a creation-time tie the vault's current version, even
    for a late event naming the other one (pinning consumers back to it, which Azure's automatic update
    would then undo, round after round)."""
    older, current = "f" * 32, "0" * 31 + "1"  # the version strings order the other way round
    w = with_limits(world(*estate_of(8)), concurrency=4, refresh_every=3, time_budget=timedelta(seconds=150))
    w.vault = TieVault([KeyVersionInfo(OLD, enabled=True, created=T0 - timedelta(days=90)),
                        KeyVersionInfo(older, enabled=True, created=T0), KeyVersionInfo(current, enabled=True,
                                                                                         created=T0)],
                       clock=w.clock, current=current)
    w.deps = replace(w.deps, keys=lambda _origin: w.vault)
    w.storage = SlowStorage(w.storage.consumers)
    w.storage.clock = w.clock
    w.deps = replace(w.deps, inventory=w.storage, control=w.storage)

    results = reconciler.on_key_event(event(KeyEventKind.NEW_VERSION, older), w.deps, auto_rotate=False)
    results.extend(run_continuations(w))

    assert len(results) > 1  # the budget cut the first run off
    assert {uri for _, uri in w.storage.writes} == {KEY.with_version(current).uri, KEY.uri}
    for consumer in w.storage.consumers.values():
        assert consumer.current_version == current
        assert consumer.pinned_version in (None, current)
    assert results[-1].progress() == {"done": 8, "pending": 0, "blocked": 0}


def test_two_runs_of_one_key_in_one_process_never_write_a_consumer_twice():
    """Two queue items of one key worked at once by one host process (same ledger, same instance name): the
    second run reads the consumer before the first run's write lands and must not repeat it."""
    w = world(account("stfree"), account("stpinned", pinned=OLD))
    second: list[reconciler.ReconcileResult] = []

    def meanwhile(consumer: Consumer) -> Consumer:
        second.append(reconciler.reconcile_key(KEY, w.deps, target_version=NEW))
        return consumer

    w.storage.interfere[state(w, "stpinned").id] = meanwhile
    first = reconciler.reconcile_key(KEY, w.deps, target_version=NEW)

    written = [consumer for consumer, _ in w.storage.writes]
    assert written.count(state(w, "stpinned").id) == 1
    assert written.count(state(w, "stfree").id) == 2  # its pin and its restore, once each
    assert state(w, "stpinned").id in second[0].claimed_elsewhere
    assert first.conflicts == [] and first.failures == []
    assert state(w, "stpinned").key == KEY.with_version(NEW) and state(w, "stfree").key == KEY


def test_a_continuation_takes_over_its_runs_claims_and_no_one_elses():
    w = with_limits(world(account("stfree")), time_budget=timedelta(seconds=1))
    w.storage = SlowStorage(w.storage.consumers)
    w.storage.clock = w.clock
    w.deps = replace(w.deps, inventory=w.storage, control=w.storage)
    reconciler.reconcile_key(KEY, w.deps, target_version=NEW)  # pinned; out of time before the restore
    assert state(w, "stfree").key == KEY.with_version(NEW)
    [(item, _)] = continuations(w)
    w.queue.items.clear()

    stranger = reconciler.reconcile_key(KEY, w.deps)  # another run of the key (an event): the claim is not its
    assert stranger.claimed_elsewhere == [state(w, "stfree").id]
    assert state(w, "stfree").key == KEY.with_version(NEW)
    w.queue.items.clear()

    run_continuation(w, item)
    assert state(w, "stfree").key == KEY
    assert [step for _, step in w.ledger.intent_log] == ["pinned", "restored"]


def test_a_run_ends_the_claims_of_the_consumers_it_is_done_with_so_the_next_rotation_goes_ahead_at_once():
    w = world(account("stfree"), account("stpinned", pinned=OLD))
    reconciler.reconcile_key(KEY, w.deps, target_version=NEW)
    assert sorted(w.ledger.ended) == sorted([state(w, "stfree").id, state(w, "stpinned").id])
    assert len(w.ledger.releases) == 1  # all in one call (the Table ledger: one request per hundred)

    w.clock.advance(timedelta(minutes=1))  # well inside the claims' ten minutes
    w.vault.versions.append(KeyVersionInfo(NEWER, enabled=True, created=w.clock.now()))
    result = reconciler.reconcile_key(KEY, w.deps, target_version=NEWER)
    assert result.claimed_elsewhere == []
    assert state(w, "stpinned").key == KEY.with_version(NEWER)
    assert state(w, "stfree").current_version == NEWER


class StaleListing(FakeStorage):
    """The listing right before the writes answers, then another run finishes the consumers it lists and
    ends its claims on them: what the listing answered is older than that run's writes."""

    ledger: FakeRotationLedger
    clock: FakeClock
    finish: Callable[[Consumer], Consumer]

    def refresh(self, consumers: Sequence[Consumer]) -> list[Consumer | None]:
        answered = super().refresh(consumers)
        self.clock.advance(timedelta(seconds=2))
        for consumer in consumers:
            self.consumers[consumer.id] = self.finish(self.consumers[consumer.id])
            self.ledger.claims[consumer.id.lower()] = ("controller/other-run", self.clock.now())
            self.ledger.ended[consumer.id.lower()] = self.clock.now()
        return answered


def test_a_run_that_read_a_consumer_before_another_run_was_done_with_it_re_reads_it_instead_of_writing():
    w = world(account("stpinned", pinned=OLD))
    stale = StaleListing(w.storage.consumers)
    stale.ledger, stale.clock = w.ledger, w.clock
    stale.finish = lambda consumer: replace(consumer, key=KEY.with_version(NEW), current_key=KEY.with_version(NEW))
    w.storage = stale
    w.deps = replace(w.deps, inventory=stale, control=stale)
    result = reconciler.reconcile_key(KEY, w.deps, target_version=NEW)
    assert stale.writes == []  # the other run's write is not repeated
    assert stale.rereads == 1 and result.conflicts == []
    assert result.progress() == {"done": 1, "pending": 0, "blocked": 0}


def test_a_stale_read_is_re_read_even_when_the_other_run_noted_what_it_left():
    w = world(account("stpinned", pinned=OLD))
    stale = StaleListing(w.storage.consumers)
    stale.ledger, stale.clock = w.ledger, w.clock

    def finish(consumer: Consumer) -> Consumer:
        finished = replace(consumer, key=KEY.with_version(NEW), current_key=KEY.with_version(NEW))
        w.ledger.left[consumer.id.lower()] = reconciler.state_token(finished)
        return finished

    stale.finish = finish
    w.storage = stale
    w.deps = replace(w.deps, inventory=stale, control=stale)
    result = reconciler.reconcile_key(KEY, w.deps, target_version=NEW)
    assert stale.writes == [] and stale.rereads == 1  # what was read is not what that run left: read again
    assert result.progress() == {"done": 1, "pending": 0, "blocked": 0}


def test_rotations_in_quick_succession_read_each_consumer_once():
    """The last run ended its claims seconds ago, noting the state it left each consumer in; the next run
    reads that same state, so it need not re-read before writing (a key rotated twice within the ledger's
    clock-skew allowance, or a burst of new versions, costs no extra ARM read per consumer)."""
    w = world(account("stfree"), account("stpinned", pinned=OLD))
    reconciler.reconcile_key(KEY.with_version(NEW), w.deps, target_version=NEW)
    assert set(w.ledger.left) == {state(w, "stfree").id, state(w, "stpinned").id}
    w.clock.advance(timedelta(seconds=5))
    w.vault.versions.append(KeyVersionInfo(NEWER, enabled=True, created=w.clock.now()))
    writes = len(w.storage.writes)
    result = reconciler.reconcile_key(KEY.with_version(NEWER), w.deps, target_version=NEWER)
    assert w.storage.rereads == 0
    assert len(w.storage.writes) - writes == 3  # the pinned one once, the versionless one pinned and restored
    assert state(w, "stpinned").key == KEY.with_version(NEWER) and state(w, "stfree").current_version == NEWER
    assert result.failures == []

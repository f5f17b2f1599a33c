"""The rotation planner and the retirement verdicts, table-driven over a fake clock.

``World`` stands in for Azure and the ledger: it executes a plan's decisions the way the service
will (intent first, then the consumer write, then the completing record) and can be told to crash
between the writes.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.errors import InvalidKeyId
from controller.model import (
    Condition,
    ConditionStatus,
    Consumer,
    ConsumerKind,
    ForceAdoptionIntent,
    ForceAdoptionStep,
    IdentityAccess,
    KeyRef,
    KeyState,
    KeyVersionInfo,
    VaultOrigin,
)
from controller.rotation import (
    Action,
    ConditionType,
    ForceStep,
    LedgerView,
    PinnedPolicy,
    Plan,
    PlannerSettings,
    Reason,
    plan,
    retirement,
)
from controller.settings import load_settings
from tests.unit.fakes import FakeClock

pytestmark = pytest.mark.unit

VAULT = VaultOrigin("https://contoso.vault.azure.net")
KEY = KeyRef(VAULT, "storage-cmk")
OTHER_KEY = KeyRef(VAULT, "other-cmk")
T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
WINDOW = timedelta(hours=24)
SUB = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg/providers/Microsoft.Storage"


def version_id(number: int) -> str:
    return f"{number:032x}"


V0, V1, V2, V3, V4 = (version_id(number) for number in range(5))
CREATED = {V0: T0 - timedelta(days=90), V1: T0 - timedelta(days=60), V2: T0 - timedelta(days=30),
           V3: T0 - timedelta(hours=1), V4: T0 - timedelta(minutes=10)}


def kv(version: str, *, enabled: bool = True, not_before: datetime | None = None,
       expires: datetime | None = None) -> KeyVersionInfo:
    return KeyVersionInfo(version, enabled, CREATED[version], not_before, expires)


STANDARD_VERSIONS = (kv(V1), kv(V2), kv(V3))


def key_state(*versions: KeyVersionInfo, reachable: bool = True) -> KeyState:
    return KeyState(KEY, versions or STANDARD_VERSIONS, reachable=reachable,
                    unreachable_detail="" if reachable else "connection refused")


def account(name: str = "acct1", *, pinned: str | None = None, current: str | None = V2,
            access: IdentityAccess = IdentityAccess.GRANTED, tags: dict[str, str] | None = None,
            current_key: KeyRef | None = None) -> Consumer:
    return Consumer(
        kind=ConsumerKind.ACCOUNT,
        resource_id=f"{SUB}/storageAccounts/{name}",
        account_name=name,
        key=KEY.with_version(pinned) if pinned else KEY,
        current_key=current_key or (KEY.with_version(current) if current else None),
        identity_access=access,
        tags=tuple(sorted((tags or {}).items())),
    )


def scope(account_name: str = "acct1", name: str = "scope1", *, pinned: str | None = None,
          current: str | None = V2, access: IdentityAccess = IdentityAccess.GRANTED) -> Consumer:
    return Consumer(
        kind=ConsumerKind.SCOPE,
        resource_id=f"{SUB}/storageAccounts/{account_name}/encryptionScopes/{name}",
        account_name=account_name,
        scope_name=name,
        key=KEY.with_version(pinned) if pinned else KEY,
        current_key=KEY.with_version(current) if current else None,
        identity_access=access,
    )


ACCT = account()


def intent(version: str, step: ForceAdoptionStep = ForceAdoptionStep.PINNED,
           consumer: Consumer = ACCT) -> ForceAdoptionIntent:
    return ForceAdoptionIntent(consumer.id, version, step, T0 - timedelta(minutes=5))


AFTER_WINDOW = CREATED[V3] + WINDOW + timedelta(minutes=1)
FORCE_NOW = PlannerSettings(force_versionless_after=timedelta(0))
NEVER_FORCE = PlannerSettings(force_versionless_after=None)
UPDATE = PlannerSettings(pinned_policy=PinnedPolicy.UPDATE)
FORCE_AND_UPDATE = PlannerSettings(force_versionless_after=timedelta(0), pinned_policy=PinnedPolicy.UPDATE)


@dataclass(frozen=True)
class Case:
    id: str
    consumer: Consumer
    action: Action
    reason: Reason
    key: KeyState = field(default_factory=key_state)
    now: datetime = T0
    settings: PlannerSettings = field(default_factory=PlannerSettings)
    intents: tuple[ForceAdoptionIntent, ...] = ()
    event_version: str | None = None
    step: ForceStep | None = None
    #: "versionless", a version, or None for no consumer write
    writes: str | None = None
    recheck_at: datetime | None = None
    intent_before: ForceAdoptionStep | None = None
    intent_after: ForceAdoptionStep | None = None


CASES = [
    # versionless consumers
    Case("versionless adopted", account(current=V3), Action.ADOPTED, Reason.ADOPTED),
    Case("versionless inside the window: recheck within the hour", account(), Action.RECHECK,
         Reason.ADOPTION_PENDING, recheck_at=T0 + timedelta(hours=1)),
    Case("versionless inside the window: recheck at the deadline when sooner", account(), Action.RECHECK,
         Reason.ADOPTION_PENDING, now=CREATED[V3] + WINDOW - timedelta(minutes=5),
         recheck_at=CREATED[V3] + WINDOW),
    Case("versionless after the window: force (pin first, intent first)", account(), Action.FORCE_ADOPTION,
         Reason.FORCING_ADOPTION, now=AFTER_WINDOW, step=ForceStep.PIN, writes=V3,
         intent_before=ForceAdoptionStep.PINNED),
    Case("force_versionless_after=0 forces at once", account(), Action.FORCE_ADOPTION, Reason.FORCING_ADOPTION,
         settings=FORCE_NOW, step=ForceStep.PIN, writes=V3, intent_before=ForceAdoptionStep.PINNED),
    Case("versionless reporting no current version is forced too", account(current=None), Action.FORCE_ADOPTION,
         Reason.FORCING_ADOPTION, settings=FORCE_NOW, step=ForceStep.PIN, writes=V3,
         intent_before=ForceAdoptionStep.PINNED),
    Case("current version of another key counts as not adopted", account(current_key=OTHER_KEY.with_version(V3)),
         Action.RECHECK, Reason.ADOPTION_PENDING, recheck_at=T0 + timedelta(hours=1)),
    Case("forcing off, inside the window", account(), Action.RECHECK, Reason.ADOPTION_PENDING,
         settings=NEVER_FORCE, recheck_at=T0 + timedelta(hours=1)),
    Case("forcing off, after the window: alert", account(), Action.ALERT, Reason.ADOPTION_OVERDUE,
         settings=NEVER_FORCE, now=AFTER_WINDOW),
    Case("encryption scope forced like an account", scope(), Action.FORCE_ADOPTION, Reason.FORCING_ADOPTION,
         settings=FORCE_NOW, step=ForceStep.PIN, writes=V3, intent_before=ForceAdoptionStep.PINNED),
    # pinned consumers
    Case("pinned to the target and adopted", account(pinned=V3, current=V3), Action.ADOPTED, Reason.ADOPTED),
    Case("pinned to the target, Azure not caught up: verify", account(pinned=V3, current=V2), Action.RECHECK,
         Reason.AWAITING_VERIFICATION, recheck_at=T0 + timedelta(minutes=1)),
    Case("pinned old, policy alert", account(pinned=V2), Action.ALERT, Reason.PINNED_TO_OLD_VERSION),
    Case("pinned old, policy update", account(pinned=V2), Action.UPDATE_PINNED, Reason.UPDATING_PINNED_VERSION,
         settings=UPDATE, writes=V3),
    Case("pinned old, policy alert, tag says update", account(pinned=V2, tags={"CMK-Pinned-Policy": "Update"}),
         Action.UPDATE_PINNED, Reason.UPDATING_PINNED_VERSION, writes=V3),
    Case("pinned old, policy update, tag says alert", account(pinned=V2, tags={"cmk-pinned-policy": "alert"}),
         Action.ALERT, Reason.PINNED_TO_OLD_VERSION, settings=UPDATE),
    Case("pinned old, unreadable tag never authorises a write",
         account(pinned=V2, tags={"cmk-pinned-policy": "yes please"}), Action.ALERT,
         Reason.PINNED_TO_OLD_VERSION, settings=UPDATE),
    Case("pinned old, stays pinned even past the window", account(pinned=V1, current=V1), Action.ALERT,
         Reason.PINNED_TO_OLD_VERSION, now=AFTER_WINDOW),
    # identity access
    Case("identity denied: never force", account(access=IdentityAccess.DENIED), Action.BLOCKED,
         Reason.IDENTITY_LACKS_ACCESS, settings=FORCE_NOW),
    Case("identity denied: never update a pin", account(pinned=V2, access=IdentityAccess.DENIED),
         Action.BLOCKED, Reason.IDENTITY_LACKS_ACCESS, settings=UPDATE),
    Case("identity denied outranks adopted", account(current=V3, access=IdentityAccess.DENIED), Action.BLOCKED,
         Reason.IDENTITY_LACKS_ACCESS),
    Case("access unknown: no forced write", account(access=IdentityAccess.UNKNOWN), Action.BLOCKED,
         Reason.ACCESS_NOT_EVALUATED, now=AFTER_WINDOW),
    Case("access unknown: no pin update", account(pinned=V2, access=IdentityAccess.UNKNOWN), Action.BLOCKED,
         Reason.ACCESS_NOT_EVALUATED, settings=UPDATE),
    Case("access unknown: waiting needs no write", account(access=IdentityAccess.UNKNOWN), Action.RECHECK,
         Reason.ADOPTION_PENDING, recheck_at=T0 + timedelta(hours=1)),
    # target selection
    Case("stale event for an older version: target stays the newest", account(pinned=V2), Action.UPDATE_PINNED,
         Reason.UPDATING_PINNED_VERSION, settings=UPDATE, event_version=V1, writes=V3),
    Case("stale event: an adopted consumer stays adopted", account(current=V3), Action.ADOPTED, Reason.ADOPTED,
         event_version=V2),
    Case("newest version disabled (no event): the newest enabled is the target", account(current=V3),
         Action.ADOPTED, Reason.ADOPTED, key=key_state(kv(V2), kv(V3), kv(V4, enabled=False))),
    Case("event for a disabled new version: blocked", account(current=V3), Action.BLOCKED,
         Reason.TARGET_VERSION_DISABLED, key=key_state(kv(V2), kv(V3), kv(V4, enabled=False)), event_version=V4),
    Case("new version not yet valid: blocked until its not-before", account(current=V3), Action.BLOCKED,
         Reason.TARGET_VERSION_NOT_YET_VALID,
         key=key_state(kv(V3), kv(V4, not_before=T0 + timedelta(hours=2))), recheck_at=T0 + timedelta(hours=2)),
    Case("new version expired: blocked", account(), Action.BLOCKED, Reason.TARGET_VERSION_EXPIRED,
         key=key_state(kv(V2), kv(V3, expires=T0 - timedelta(minutes=1)))),
    Case("event version not listed yet: short recheck", account(), Action.BLOCKED, Reason.TARGET_VERSION_UNKNOWN,
         event_version=V4, recheck_at=T0 + timedelta(minutes=1)),
    Case("no enabled version", account(), Action.BLOCKED, Reason.NO_USABLE_VERSION,
         key=key_state(kv(V2, enabled=False), kv(V3, enabled=False))),
    Case("vault unreachable", account(), Action.BLOCKED, Reason.VAULT_UNREACHABLE, key=key_state(reachable=False)),
    Case("consumer on a version the listing lacks", account(current=V4), Action.BLOCKED,
         Reason.CONSUMER_VERSION_UNKNOWN),
    Case("consumer pinned to a newer (disabled) version is never moved back", account(pinned=V4, current=V4),
         Action.BLOCKED, Reason.CONSUMER_AHEAD_OF_TARGET, key=key_state(kv(V3), kv(V4, enabled=False)),
         settings=UPDATE),
    # forced adoption in flight (the ledger intent)
    Case("intent pinned, consumer pinned and verified: restore versionless", account(pinned=V3, current=V3),
         Action.FORCE_ADOPTION, Reason.RESTORING_VERSIONLESS, intents=(intent(V3),), step=ForceStep.RESTORE,
         writes="versionless", intent_after=ForceAdoptionStep.RESTORED),
    Case("intent pinned, current not yet the target: verify", account(pinned=V3, current=V2),
         Action.FORCE_ADOPTION, Reason.AWAITING_VERIFICATION, intents=(intent(V3),), step=ForceStep.VERIFY,
         recheck_at=T0 + timedelta(minutes=1)),
    Case("intent written, pin never happened: pin again (inside the window too)", account(),
         Action.FORCE_ADOPTION, Reason.FORCING_ADOPTION, intents=(intent(V3),), step=ForceStep.PIN, writes=V3),
    Case("restored but record not completed: complete it", account(current=V3), Action.ADOPTED, Reason.ADOPTED,
         intents=(intent(V3),), intent_after=ForceAdoptionStep.RESTORED),
    Case("our pin to an older target: pin the newer one with a new intent", account(pinned=V2, current=V2),
         Action.FORCE_ADOPTION, Reason.FORCING_ADOPTION, intents=(intent(V2),), step=ForceStep.PIN, writes=V3,
         intent_before=ForceAdoptionStep.PINNED),
    Case("user re-pinned during our forced adoption: their pin, intent abandoned", account(pinned=V1, current=V1),
         Action.ALERT, Reason.PINNED_TO_OLD_VERSION, intents=(intent(V2),), intent_after=ForceAdoptionStep.ABANDONED),
    Case("user pin to the target without an intent is left alone", account(pinned=V3, current=V3),
         Action.ADOPTED, Reason.ADOPTED, intents=(intent(V3, ForceAdoptionStep.RESTORED),)),
    Case("completed record is not rewritten", account(current=V3), Action.ADOPTED, Reason.ADOPTED,
         intents=(intent(V3, ForceAdoptionStep.RESTORED),)),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_decision(case: Case) -> None:
    result = plan(case.key, [case.consumer], LedgerView.of(case.intents), target_version=case.event_version,
                  now=case.now, settings=case.settings)
    decision = result.decisions[0]
    assert (decision.action, decision.reason, decision.step) == (case.action, case.reason, case.step), decision.message
    if case.writes is None:
        assert decision.set_key is None
    elif case.writes == "versionless":
        assert decision.set_key == KEY
    else:
        assert decision.set_key == KEY.with_version(case.writes)
    assert decision.recheck_at == case.recheck_at
    assert result.next_check == case.recheck_at
    assert (decision.intent_before.step if decision.intent_before else None) == case.intent_before
    assert (decision.intent_after.step if decision.intent_after else None) == case.intent_after
    if decision.intent_before is not None:  # the intent names exactly the pin that follows it
        assert decision.set_key is not None
        assert (decision.intent_before.consumer_id, decision.intent_before.target_version) == (
            case.consumer.id, decision.set_key.version)
        assert decision.intent_before.started_at == case.now
    assert decision.message.strip()
    assert {condition.type for condition in decision.conditions} == {
        ConditionType.ADOPTED, ConditionType.KEY_ACCESSIBLE, ConditionType.PINNED_CURRENT}
    assert all(condition.reason in set(Reason) for condition in decision.conditions)


def test_conditions_of_a_pinned_consumer_under_alert() -> None:
    result = plan(key_state(), [account(pinned=V2)], LedgerView(), target_version=V3, now=T0,
                  settings=PlannerSettings())
    conditions = {condition.type: condition for condition in result.decisions[0].conditions}
    assert conditions["PinnedCurrent"].status is ConditionStatus.FALSE
    assert conditions["PinnedCurrent"].reason == "PinnedToOldVersion"
    assert conditions["Adopted"].status is ConditionStatus.FALSE
    assert conditions["KeyAccessible"].status is ConditionStatus.TRUE
    assert V2 in result.decisions[0].message
    assert V3 in result.decisions[0].message


def test_vault_unreachable_makes_adoption_unknown() -> None:
    result = plan(key_state(reachable=False), [account()], LedgerView(), target_version=None, now=T0,
                  settings=PlannerSettings())
    conditions = {condition.type: condition for condition in result.decisions[0].conditions}
    assert conditions["Adopted"].status is ConditionStatus.UNKNOWN
    assert conditions["KeyAccessible"].reason == "VaultUnreachable"
    assert result.target is None
    assert "connection refused" in result.decisions[0].message


def test_version_conditions() -> None:
    key = key_state(kv(V1, enabled=False), kv(V2), kv(V3), kv(V4, not_before=T0 - timedelta(minutes=1)))
    result = plan(key, [account(current=V4), account("acct2", current=V3)], LedgerView(), target_version=None,
                  now=T0, settings=PlannerSettings())
    assert result.target == kv(V4, not_before=T0 - timedelta(minutes=1))
    by_version = {status.version: {c.type: c for c in status.conditions} for status in result.versions}
    assert [status.version for status in result.versions] == [V1, V2, V3, V4]
    assert by_version[V1]["Usable"].reason == "VersionDisabled"
    assert by_version[V2]["Usable"].status is ConditionStatus.TRUE
    assert "Adopted" not in by_version[V3]
    adopted = by_version[V4]["Adopted"]
    assert (adopted.status, adopted.reason) == (ConditionStatus.FALSE, "AdoptionPending")
    assert "1 of 2" in adopted.message
    assert "acct2" in adopted.message


def run(clock: FakeClock, consumer: Consumer, ledger: LedgerView) -> Plan:
    return plan(key_state(), [consumer], ledger, target_version=None, now=clock.now(),
                settings=PlannerSettings())


def test_last_transition_changes_only_with_status() -> None:
    clock = FakeClock(T0)
    first = run(clock, account(), LedgerView()).decisions[0]
    adopted = {c.type: c for c in first.conditions}["Adopted"]
    assert (adopted.status, adopted.last_transition) == (ConditionStatus.FALSE, T0)

    clock.advance(timedelta(minutes=30))  # still pending: same status, message may change, time does not
    ledger = LedgerView.of(consumer_conditions={ACCT.id: first.conditions})
    second = run(clock, account(), ledger).decisions[0]
    adopted = {c.type: c for c in second.conditions}["Adopted"]
    assert (adopted.status, adopted.last_transition) == (ConditionStatus.FALSE, T0)

    clock.advance(timedelta(minutes=30))  # Azure adopted on its own
    ledger = LedgerView.of(consumer_conditions={ACCT.id.upper(): second.conditions})  # ids compare case-insensitively
    third = run(clock, account(current=V3), ledger).decisions[0]
    adopted = {c.type: c for c in third.conditions}["Adopted"]
    assert (adopted.status, adopted.reason, adopted.last_transition) == (ConditionStatus.TRUE, "Adopted", clock.now())
    accessible = {c.type: c for c in third.conditions}["KeyAccessible"]
    assert accessible.last_transition == T0  # unchanged all along

    adopted_at = clock.now()
    clock.advance(timedelta(hours=5))
    ledger = LedgerView.of(consumer_conditions={ACCT.id: third.conditions})
    fourth = run(clock, account(current=V3), ledger).decisions[0]
    assert {c.type: c for c in fourth.conditions}["Adopted"].last_transition == adopted_at


# --- executing plans: convergence, crashes, idempotence ---------------------------------------------


@dataclass
class World:
    """Azure (consumers) and the ledger (intents, conditions), changed only by executing decisions."""

    key: KeyState
    consumers: dict[str, Consumer]
    intents: dict[str, ForceAdoptionIntent] = field(default_factory=dict)
    conditions: dict[str, tuple[Condition, ...]] = field(default_factory=dict)
    version_conditions: dict[str, tuple[Condition, ...]] = field(default_factory=dict)
    consumer_writes: int = 0

    @classmethod
    def of(cls, key: KeyState, consumers: Sequence[Consumer],
           intents: Sequence[ForceAdoptionIntent] = ()) -> World:
        return cls(key, {consumer.id: consumer for consumer in consumers},
                   {item.consumer_id: item for item in intents})

    def ledger(self) -> LedgerView:
        return LedgerView(self.intents, self.conditions, self.version_conditions)

    def plan(self, now: datetime, planner: PlannerSettings, event_version: str | None = None) -> Plan:
        return plan(self.key, list(self.consumers.values()), self.ledger(), target_version=event_version,
                    now=now, settings=planner)

    def execute(self, result: Plan, *, crash_after: str | None = None) -> None:
        """Execute like the service: intent_before, the consumer write, intent_after; then conditions."""
        for decision in result.decisions:
            consumer_id = decision.consumer.id
            if decision.intent_before is not None:
                self.intents[consumer_id] = decision.intent_before
                if crash_after == "intent":
                    return
            if decision.set_key is not None:
                self.consumers[consumer_id] = self.azure_sets_key(self.consumers[consumer_id], decision.set_key)
                self.consumer_writes += 1
                if crash_after == "write":
                    return
            if decision.intent_after is not None:
                self.intents[consumer_id] = decision.intent_after
            self.conditions[consumer_id] = decision.conditions
        self.version_conditions = {status.version: status.conditions for status in result.versions}

    def azure_sets_key(self, consumer: Consumer, key: KeyRef) -> Consumer:
        # A pinned URI is used at once; a versionless one resolves to the newest enabled version.
        latest = self.key.latest_enabled
        current = key if key.version else (KEY.with_version(latest.version) if latest else consumer.current_key)
        return replace(consumer, key=key, current_key=current)

    def versions_in_use(self) -> dict[str, tuple[str | None, str | None]]:
        return {cid: (c.pinned_version, c.current_version) for cid, c in self.consumers.items()}


def test_already_adopted_is_a_no_op() -> None:
    world = World.of(key_state(), [account(current=V3), account("pinned", pinned=V3, current=V3), scope(current=V3)])
    result = world.plan(T0, PlannerSettings())
    assert result.writes == ()
    assert result.next_check is None
    assert {decision.action for decision in result.decisions} == {Action.ADOPTED}


def test_forced_adoption_runs_pin_then_restore_then_nothing() -> None:
    world = World.of(key_state(), [account()])
    steps = []
    for _ in range(4):
        result = world.plan(T0, FORCE_NOW)
        steps.append((result.decisions[0].action, result.decisions[0].step))
        world.execute(result)
    assert steps == [(Action.FORCE_ADOPTION, ForceStep.PIN), (Action.FORCE_ADOPTION, ForceStep.RESTORE),
                     (Action.ADOPTED, None), (Action.ADOPTED, None)]
    final = world.consumers[ACCT.id]
    assert (final.pinned_version, final.current_version) == (None, V3)  # automatic updates are on again
    assert world.intents[ACCT.id].step is ForceAdoptionStep.RESTORED
    assert world.consumer_writes == 2


@pytest.mark.parametrize(
    ("crash_after", "next_step"),
    [("intent", ForceStep.PIN), ("write", ForceStep.RESTORE)],
    ids=["crash between intent and pin", "crash between pin and restore"],
)
def test_crash_during_forced_adoption_is_repaired_by_the_next_run(crash_after: str, next_step: ForceStep) -> None:
    world = World.of(key_state(), [account()])
    world.execute(world.plan(T0, FORCE_NOW), crash_after=crash_after)
    assert world.intents[ACCT.id].step is ForceAdoptionStep.PINNED

    # The next run uses the default policy (inside the window it would not start a forced adoption),
    # yet it finishes the one recorded in the ledger.
    repair = world.plan(T0 + timedelta(minutes=1), PlannerSettings())
    assert (repair.decisions[0].action, repair.decisions[0].step) == (Action.FORCE_ADOPTION, next_step)
    for _ in range(3):
        world.execute(world.plan(T0 + timedelta(minutes=2), PlannerSettings()))
    final = world.consumers[ACCT.id]
    assert (final.pinned_version, final.current_version) == (None, V3)
    assert world.intents[ACCT.id].step is ForceAdoptionStep.RESTORED
    assert world.plan(T0 + timedelta(minutes=3), PlannerSettings()).writes == ()


def test_crash_after_restore_completes_the_record_without_writing_the_account() -> None:
    world = World.of(key_state(), [account(pinned=V3, current=V3)], intents=[intent(V3)])
    restore = world.plan(T0, PlannerSettings())
    world.execute(restore, crash_after="write")
    assert world.intents[ACCT.id].step is ForceAdoptionStep.PINNED
    repair = world.plan(T0, PlannerSettings()).decisions[0]
    assert (repair.action, repair.set_key, repair.intent_after) == (
        Action.ADOPTED, None, replace(intent(V3), step=ForceAdoptionStep.RESTORED))


EVENT_ORDERS = [
    (V3,), (V3, V3), (V1, V3), (V3, V1), (V2, V3, V1, V3), (V3, V2, V2, V1),
]


@pytest.mark.parametrize("events", EVENT_ORDERS, ids=["-".join(v[-1] for v in events) for events in EVENT_ORDERS])
def test_duplicate_and_out_of_order_events_converge(events: tuple[str, ...]) -> None:
    consumers = [account("lagging", current=V1), account("pinned", pinned=V2, current=V2),
                 account("adopted", current=V3), scope("lagging", current=V2)]
    world = World.of(key_state(), consumers)
    for number, event_version in enumerate(events):
        before = world.versions_in_use()
        world.execute(world.plan(T0 + timedelta(seconds=number), FORCE_AND_UPDATE, event_version))
        assert_never_backwards(world, before)
    for _ in range(3):  # what the events left unfinished, the sweep finishes
        world.execute(world.plan(T0 + timedelta(minutes=5), FORCE_AND_UPDATE))
    pinned = account("pinned").id
    assert world.versions_in_use() == {
        consumer_id: (V3 if consumer_id == pinned else None, V3) for consumer_id in world.consumers}
    assert world.plan(T0 + timedelta(minutes=6), FORCE_AND_UPDATE).writes == ()


def order(version: str | None) -> datetime:
    return CREATED[version] if version else datetime.min.replace(tzinfo=UTC)


def assert_never_backwards(world: World, before: dict[str, tuple[str | None, str | None]]) -> None:
    for consumer_id, (_, current_before) in before.items():
        current_after = world.consumers[consumer_id].current_version
        if current_before is not None:
            assert current_after is not None
            assert order(current_after) >= order(current_before), consumer_id


def test_events_after_adoption_change_nothing() -> None:
    world = World.of(key_state(), [account(current=V3), account("pinned", pinned=V3, current=V3)])
    for event_version in (V1, V2, V3, V3):
        result = world.plan(T0, FORCE_AND_UPDATE, event_version)
        assert result.writes == ()
        world.execute(result)


# --- the property: idempotent, never backwards ----------------------------------------------------------

VERSION_CHOICES = st.sampled_from([None, V1, V2, V3])


@st.composite
def worlds(draw: st.DrawFn) -> tuple[World, PlannerSettings, datetime, str | None]:
    versions = (kv(V1, enabled=draw(st.booleans())), kv(V2, enabled=draw(st.booleans())),
                kv(V3, enabled=draw(st.booleans())))
    consumers: list[Consumer] = []
    intents: list[ForceAdoptionIntent] = []
    for number in range(draw(st.integers(0, 6))):
        pinned = draw(VERSION_CHOICES)
        tag = draw(st.sampled_from([None, "alert", "update", "bogus"]))
        make = draw(st.sampled_from(["account", "scope"]))
        access = draw(st.sampled_from(list(IdentityAccess)))
        current = draw(VERSION_CHOICES)
        if make == "account":
            consumer = account(f"acct{number}", pinned=pinned, current=current, access=access,
                               tags={"cmk-pinned-policy": tag} if tag else None)
        else:
            consumer = scope(f"acct{number}", pinned=pinned, current=current, access=access)
        consumers.append(consumer)
        intent_version = draw(st.sampled_from([None, V1, V2, V3]))
        if intent_version is not None:
            step = draw(st.sampled_from(list(ForceAdoptionStep)))
            intents.append(ForceAdoptionIntent(consumer.id, intent_version, step, T0 - timedelta(hours=2)))
    planner = PlannerSettings(
        force_versionless_after=draw(st.sampled_from([timedelta(0), WINDOW, None])),
        pinned_policy=draw(st.sampled_from(list(PinnedPolicy))),
    )
    now = T0 + timedelta(minutes=draw(st.integers(0, 48 * 60)))
    return World.of(key_state(*versions), consumers, intents), planner, now, draw(VERSION_CHOICES)


@settings(max_examples=300, deadline=None)
@given(worlds())
def test_plans_converge_idempotently_and_never_move_a_consumer_backwards(
    drawn: tuple[World, PlannerSettings, datetime, str | None],
) -> None:
    world, planner, now, event_version = drawn
    for round_number in itertools.count():
        assert round_number < 4, "no convergence within three rounds of writes"
        result = world.plan(now, planner, event_version)
        for decision in result.writes:
            if decision.set_key is not None and decision.set_key.version is not None:
                for used in (decision.consumer.pinned_version, decision.consumer.current_version):
                    assert order(decision.set_key.version) >= order(used)
        before = world.versions_in_use()
        world.execute(result)
        assert_never_backwards(world, before)
        if not result.writes:
            break
    again = world.plan(now, planner, event_version)
    assert again.writes == ()
    assert again == world.plan(now, planner, event_version)  # deterministic
    # Only waiting, alerting and blocking remain (a forced adoption's verify step is a re-check too).
    assert {(decision.action, decision.step) for decision in again.decisions} <= {
        (Action.ADOPTED, None), (Action.RECHECK, None), (Action.ALERT, None), (Action.BLOCKED, None),
        (Action.FORCE_ADOPTION, ForceStep.VERIFY)}
    assert [(d.action, d.reason) for d in again.decisions] == [(d.action, d.reason) for d in result.decisions]


# --- retirement ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetireCase:
    id: str
    version: str
    safe: bool
    reason: Reason
    consumers: tuple[Consumer, ...] = (account(current=V3),)
    key: KeyState = field(default_factory=key_state)
    blobs: tuple[tuple[str, int], ...] = ()
    unwraps: tuple[tuple[str, datetime], ...] | None = ()
    now: datetime = T0
    evidence: str = ""


RETIRE_CASES = [
    RetireCase("old version still used by a pinned account", V2, False, Reason.IN_USE,
               consumers=(account(current=V3), account("pinned", pinned=V2, current=V2)), evidence="pinned"),
    RetireCase("old version still reported current by a versionless account", V2, False, Reason.IN_USE,
               consumers=(account(current=V2),)),
    RetireCase("nothing uses it but its successor is inside the window", V2, False, Reason.INSIDE_ADOPTION_WINDOW,
               evidence=(CREATED[V3] + WINDOW).isoformat()),
    RetireCase("nothing uses it and the window has passed", V2, True, Reason.NOT_IN_USE, now=AFTER_WINDOW),
    RetireCase("the window counts from its own successor", V1, True, Reason.NOT_IN_USE),
    RetireCase("blobs still wrapped by it", V1, False, Reason.BLOBS_STILL_WRAPPED, blobs=((V1, 7),),
               evidence="7 blobs"),
    RetireCase("recent successful unwrap in the audit logs", V1, False, Reason.RECENT_UNWRAP,
               unwraps=((V1, T0 - timedelta(hours=2)),)),
    RetireCase("old unwrap in the audit logs", V1, True, Reason.NOT_IN_USE, unwraps=((V1, T0 - timedelta(days=3)),)),
    RetireCase("no audit logs: says so", V1, True, Reason.NOT_IN_USE, unwraps=None, evidence="no audit logs"),
    RetireCase("the newest usable version", V3, False, Reason.CURRENT_VERSION, consumers=()),
    RetireCase("already disabled", V0, True, Reason.ALREADY_DISABLED,
               key=key_state(kv(V0, enabled=False), kv(V2), kv(V3))),
    RetireCase("a versionless consumer reports no version", V1, False, Reason.CONSUMER_VERSION_UNKNOWN,
               consumers=(account(current=None),)),
    RetireCase("the next version, not valid yet", V4, False, Reason.VERSION_NOT_YET_VALID,
               key=key_state(kv(V3), kv(V4, not_before=T0 + timedelta(days=1)))),
    RetireCase("no usable version at all", V2, False, Reason.NO_USABLE_VERSION,
               key=key_state(kv(V2, expires=T0), kv(V3, enabled=False)), consumers=(),
               now=T0 + timedelta(days=1), unwraps=None),
    RetireCase("vault unreachable", V1, False, Reason.VAULT_UNREACHABLE, key=key_state(reachable=False)),
]


@pytest.mark.parametrize("case", RETIRE_CASES, ids=[case.id for case in RETIRE_CASES])
def test_retirement(case: RetireCase) -> None:
    unwraps = None if case.unwraps is None else dict(case.unwraps)
    usages = retirement(case.key, case.consumers, dict(case.blobs), unwraps, now=case.now, window=WINDOW)
    assert [usage.version for usage in usages] == sorted((info.version for info in case.key.versions),
                                                         key=lambda version: CREATED[version])
    usage = next(usage for usage in usages if usage.version == case.version)
    assert (usage.safe, usage.reason) == (case.safe, case.reason), usage.message
    assert case.evidence in usage.message
    assert usage.audit_available is (case.unwraps is not None)


def test_retirement_evidence() -> None:
    consumers = (account("pinned", pinned=V1, current=V1), scope("pinned", current=V1), account(current=V3))
    usages = {usage.version: usage for usage in retirement(
        key_state(), consumers, {V1: 3}, {V1: T0 - timedelta(minutes=5)}, now=T0, window=WINDOW)}
    assert usages[V1].consumers == tuple(sorted(consumer.resource_id for consumer in consumers[:2]))
    assert (usages[V1].blob_count, usages[V1].last_unwrap) == (3, T0 - timedelta(minutes=5))
    assert usages[V3].consumers == (consumers[2].resource_id,)


def test_retirement_without_a_registered_container_says_blobs_were_not_counted() -> None:
    usages = retirement(key_state(), (account(current=V3),), None, {}, now=T0, window=WINDOW)
    assert {usage.blob_count for usage in usages} == {None}
    assert all("no client-side-encrypted container is registered (CMK_REWRAP_TARGETS, or the account tag "
               "cmk-rewrap-containers): blobs were not counted" in usage.message for usage in usages)
    counted = retirement(key_state(), (account(current=V3),), {}, {}, now=T0, window=WINDOW)
    assert {usage.blob_count for usage in counted} == {0}
    assert not any("not counted" in usage.message for usage in counted)


# --- values and settings -------------------------------------------------------------------------------


def test_planner_settings_from_app_settings() -> None:
    app = load_settings({"CMK_VAULTS": "contoso.vault.azure.net", "CMK_ADOPTION_WINDOW_HOURS": "12",
                         "CMK_PINNED_POLICY": "update"})
    planner = PlannerSettings.from_settings(app)
    assert planner.adoption_window == timedelta(hours=12)
    assert planner.force_versionless_after == timedelta(0)  # CMK_FORCE_ADOPTION_AFTER_MINUTES default
    assert planner.pinned_policy is PinnedPolicy.UPDATE
    later = load_settings({"CMK_VAULTS": "contoso.vault.azure.net", "CMK_FORCE_ADOPTION_AFTER_MINUTES": "90"})
    assert PlannerSettings.from_settings(later).force_versionless_after == timedelta(minutes=90)
    never = load_settings({"CMK_VAULTS": "contoso.vault.azure.net", "CMK_FORCE_ADOPTION_AFTER_MINUTES": "off"})
    assert PlannerSettings.from_settings(never).force_versionless_after is None


@pytest.mark.parametrize("kwargs", [
    {"adoption_window": timedelta(0)},
    {"force_versionless_after": timedelta(hours=25)},
    {"force_versionless_after": timedelta(seconds=-1)},
    {"verify_interval": timedelta(0)},
])
def test_planner_settings_are_validated(kwargs: dict[str, timedelta]) -> None:
    with pytest.raises(ValueError, match="must be"):
        PlannerSettings(**kwargs)  # type: ignore[arg-type]


def test_inputs_are_validated() -> None:
    with pytest.raises(InvalidKeyId):
        KeyVersionInfo("NOT-A-VERSION", True, T0)
    with pytest.raises(ValueError, match="timezone-aware"):
        KeyVersionInfo(V1, True, T0.replace(tzinfo=None))
    with pytest.raises(InvalidKeyId):
        KeyState(KEY.with_version(V1), ())
    with pytest.raises(ValueError, match="duplicate"):
        KeyState(KEY, (kv(V1), kv(V1)))
    with pytest.raises(ValueError, match="scope_name"):
        replace(ACCT, kind=ConsumerKind.SCOPE)
    with pytest.raises(ValueError, match="not"):
        plan(key_state(), [replace(ACCT, key=OTHER_KEY)], LedgerView(), target_version=None, now=T0,
             settings=PlannerSettings())
    with pytest.raises(ValueError, match="once"):
        plan(key_state(), [ACCT, ACCT], LedgerView(), target_version=None, now=T0, settings=PlannerSettings())
    with pytest.raises(ValueError, match="timezone-aware"):
        plan(key_state(), [ACCT], LedgerView(), target_version=None, now=T0.replace(tzinfo=None),
             settings=PlannerSettings())


def test_lagging_message_carries_the_evidence() -> None:
    lagging = replace(account(current=V1), last_key_rotation=T0 - timedelta(days=60))
    decision = plan(key_state(), [lagging], LedgerView(), target_version=None, now=T0,
                    settings=PlannerSettings()).decisions[0]
    for evidence in ("acct1", V1, V3, (T0 - timedelta(days=60)).isoformat(), (CREATED[V3] + WINDOW).isoformat()):
        assert evidence in decision.message


def test_on_a_creation_time_tie_the_events_version_is_the_target():
    same_second = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)
    low, high = "0" * 31 + "1", "f" * 32
    key_state = KeyState(
        KeyRef(VaultOrigin("https://contoso-cmk.vault.azure.net"), "storage-cmk"),
        (KeyVersionInfo(low, enabled=True, created=same_second),
         KeyVersionInfo(high, enabled=True, created=same_second)),
    )
    result = plan(key_state, [], LedgerView(), target_version=low, now=same_second + timedelta(minutes=1),
                  settings=PlannerSettings())
    assert result.target is not None
    assert result.target.version == low


def test_on_a_creation_time_tie_the_vaults_current_version_is_the_target_whatever_the_event_names():
    """Found by the delivery reliability scenario: two versions made within one second (Key Vault reports
    creation to the second) and a late event for the older one made it the target: consumers were pinned
    back to it, and Azure's own automatic update moved them forward again, round after round."""
    same_second = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)
    older, newer = "f" * 32, "0" * 31 + "1"  # the version strings order the other way round
    key_state = KeyState(
        KeyRef(VaultOrigin("https://contoso-cmk.vault.azure.net"), "storage-cmk"),
        (KeyVersionInfo(older, enabled=True, created=same_second),
         KeyVersionInfo(newer, enabled=True, created=same_second)),
        current_version=newer,
    )
    assert key_state.latest_enabled is not None
    assert key_state.latest_enabled.version == newer
    for requested in (older, newer, None):
        result = plan(key_state, [], LedgerView(), target_version=requested, now=same_second + timedelta(minutes=1),
                      settings=PlannerSettings())
        assert result.target is not None
        assert result.target.version == newer


def test_consumers_on_a_version_made_in_the_targets_second_are_behind_it_not_ahead():
    """Found by bench/rotation_latency.py (1 rotation in 10 never adopted): two rotations within one second,
    the second (the vault's current) the target; the consumers, already moved to the first, compared
    "newer" by version string, were blocked as ConsumerAheadOfTarget with 50 critical alerts, for good."""
    same_second = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)
    first, second = "f" * 32, "0" * 31 + "1"  # the names order the other way round
    versions = (KeyVersionInfo(first, enabled=True, created=same_second),
                KeyVersionInfo(second, enabled=True, created=same_second))
    state = KeyState(KEY, versions, current_version=second)
    on_first = [account("pinned1", pinned=first, current=first, tags={"cmk-pinned-policy": "update"}),
                account("versionless1", current=first)]
    result = plan(state, on_first, LedgerView(), target_version=second, now=same_second + timedelta(seconds=1),
                  settings=FORCE_AND_UPDATE)
    assert result.target is not None and result.target.version == second
    assert [(decision.action, decision.reason) for decision in result.decisions] == [
        (Action.UPDATE_PINNED, Reason.UPDATING_PINNED_VERSION), (Action.FORCE_ADOPTION, Reason.FORCING_ADOPTION)]
    # Retirement agrees: the first is older than the target, so it is retired once nothing uses it.
    usages = {usage.version: usage for usage in retirement(state, [], {}, {}, now=same_second + WINDOW * 2,
                                                            window=WINDOW)}
    assert usages[first].reason is not Reason.VERSION_NOT_YET_VALID
    assert usages[second].reason is Reason.CURRENT_VERSION

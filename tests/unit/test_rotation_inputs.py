"""controller.rotation: how the planner reads its inputs (versions, the event's version, the ledger,
tags) and refuses inconsistent ones, and how a plan and a retirement report are put together."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from controller.model import Condition, ConditionStatus, ForceAdoptionStep, IdentityAccess, KeyVersionInfo
from controller.rotation import Action, LedgerView, PinnedPolicy, PlannerSettings, Reason, plan, retirement
from tests.unit.test_rotation import (
    CREATED,
    KEY,
    OTHER_KEY,
    T0,
    V1,
    V2,
    V3,
    V4,
    WINDOW,
    account,
    intent,
    key_state,
    kv,
)

pytestmark = pytest.mark.unit

DEFAULTS = PlannerSettings()


def test_an_unreachable_vault_without_detail_says_only_that() -> None:
    key = replace(key_state(reachable=False), unreachable_detail="")
    decision = plan(key, [account()], LedgerView(), target_version=None, now=T0, settings=DEFAULTS).decisions[0]
    assert decision.message == f"account acct1: vault {KEY.vault} could not be read; nothing is changed"


def test_the_events_version_is_found_whatever_its_case() -> None:
    result = plan(key_state(), [account(current=V3)], LedgerView(), target_version=V3.upper(), now=T0,
                  settings=DEFAULTS)
    assert result.target is not None and result.target.version == V3


def test_on_a_creation_time_tie_without_an_event_the_higher_version_wins() -> None:
    low, high = "1" * 32, "e" * 32
    key = key_state(KeyVersionInfo(low, True, CREATED[V3]), KeyVersionInfo(high, True, CREATED[V3]))
    result = plan(key, [], LedgerView(), target_version=None, now=T0, settings=DEFAULTS)
    assert result.target is not None and result.target.version == high


def test_an_event_for_an_older_listed_version_does_not_move_the_target_back() -> None:
    result = plan(key_state(), [], LedgerView(), target_version=V1, now=T0, settings=DEFAULTS)
    assert result.target is not None and result.target.version == V3


@pytest.mark.parametrize(
    ("consumer", "message"),
    [
        (account(pinned=V4, current=V3),
         f"account acct1: pinned version {V4} is not in the listing of {KEY.uri}; nothing is changed"),
        (account(current=V4),
         f"account acct1: current version {V4} is not in the listing of {KEY.uri}; nothing is changed"),
    ],
    ids=["pinned", "current"],
)
def test_a_consumer_on_an_unlisted_version_names_which_one(consumer: object, message: str) -> None:
    decision = plan(key_state(), [consumer], LedgerView(), target_version=None, now=T0,  # type: ignore[list-item]
                    settings=DEFAULTS).decisions[0]
    assert (decision.action, decision.reason, decision.message) == (
        Action.BLOCKED, Reason.CONSUMER_VERSION_UNKNOWN, message)


def test_a_versionless_consumer_ahead_of_the_target_is_never_moved_back() -> None:
    key = key_state(kv(V3), kv(V4, enabled=False))
    decision = plan(key, [account(current=V4)], LedgerView(), target_version=None, now=T0,
                    settings=PlannerSettings(force_versionless_after=timedelta(0))).decisions[0]
    assert (decision.action, decision.reason, decision.set_key) == (
        Action.BLOCKED, Reason.CONSUMER_AHEAD_OF_TARGET, None)
    assert decision.message == (f"account acct1: current version {V4} (created {CREATED[V4].isoformat()}) is newer "
                                f"than the target {V3}; a consumer is never moved back")


def test_the_pinned_policy_tag_is_read_trimmed_and_in_any_case() -> None:
    consumer = account(pinned=V2, tags={"CMK-PINNED-POLICY": " UPDATE "})
    decision = plan(key_state(), [consumer], LedgerView(), target_version=None, now=T0,
                    settings=DEFAULTS).decisions[0]
    assert (decision.action, decision.set_key) == (Action.UPDATE_PINNED, KEY.with_version(V3))


def test_the_ledger_is_read_whatever_the_case_of_ids_and_versions() -> None:
    consumer = account(current=V3)
    earlier = T0 - timedelta(days=1)
    ledger = LedgerView.of(
        [replace(intent(V3), consumer_id=consumer.resource_id.upper())],
        consumer_conditions={consumer.resource_id.upper(): [
            Condition("Adopted", ConditionStatus.TRUE, Reason.ADOPTED, "old", earlier)]},
        version_conditions={V3.upper(): [Condition("Usable", ConditionStatus.TRUE, Reason.VERSION_USABLE, "old",
                                                   earlier)]},
    )
    result = plan(key_state(), [consumer], ledger, target_version=None, now=T0, settings=DEFAULTS)
    (decision,) = result.decisions
    assert decision.intent_after is not None and decision.intent_after.step is ForceAdoptionStep.RESTORED
    assert {c.type: c.last_transition for c in decision.conditions}["Adopted"] == earlier
    (v3,) = [status for status in result.versions if status.version == V3]
    assert {c.type: c.last_transition for c in v3.conditions}["Usable"] == earlier


def test_the_next_check_is_the_earliest_recheck_of_any_consumer() -> None:
    verifying = account("a", pinned=V3, current=V2)  # re-read a minute after now
    waiting = account("b")  # re-checked within the hour
    result = plan(key_state(), [waiting, verifying], LedgerView(), target_version=None, now=T0, settings=DEFAULTS)
    assert [d.recheck_at for d in result.decisions] == [T0 + timedelta(minutes=1), T0 + timedelta(hours=1)]
    assert result.next_check == T0 + timedelta(minutes=1)


def test_a_plan_lists_only_the_decisions_that_write() -> None:
    writer = account("a", pinned=V2)
    idle = account("b", current=V3)
    result = plan(key_state(), [writer, idle], LedgerView.of([intent(V3, consumer=account("b"))]),
                  target_version=None, now=T0, settings=PlannerSettings(pinned_policy=PinnedPolicy.UPDATE))
    by_name = {decision.consumer.account_name: decision for decision in result.decisions}
    assert (by_name["a"].writes_consumer, by_name["a"].writes_ledger) == (True, False)
    assert (by_name["b"].writes_consumer, by_name["b"].writes_ledger) == (False, True)
    assert result.writes == (by_name["a"], by_name["b"])


@pytest.mark.parametrize(
    ("consumers", "now", "message"),
    [
        ([replace(account(), key=OTHER_KEY)], T0,
         f"{account().resource_id} is configured with {OTHER_KEY.uri}, not {KEY.uri}"),
        ([account(), account()], T0, "each consumer may appear only once"),
        ([account()], T0.replace(tzinfo=None), "now must be timezone-aware"),
    ],
    ids=["another key", "twice", "naive now"],
)
def test_inconsistent_planner_inputs_are_refused(consumers: list[object], now: object, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        plan(key_state(), consumers, LedgerView(), target_version=None, now=now,  # type: ignore[arg-type]
             settings=DEFAULTS)


def test_retirement_reports_each_versions_evidence() -> None:
    consumers = (account("a", current=V3), account("b", pinned=V2, current=V2))
    usages = retirement(key_state(kv(V1, enabled=False), kv(V2), kv(V3)), consumers, {V2: 4},
                        {V2: T0 - timedelta(days=2)}, now=T0, window=WINDOW)
    v1, v2, v3 = usages
    assert (v1.version, v1.enabled, v1.created, v1.consumers, v1.blob_count, v1.last_unwrap) == (
        V1, False, CREATED[V1], (), 0, None)
    assert (v2.enabled, v2.consumers, v2.blob_count, v2.last_unwrap, v2.audit_available) == (
        True, (consumers[1].resource_id,), 4, T0 - timedelta(days=2), True)
    assert (v1.safe, v1.reason, v1.message) == (
        True, Reason.ALREADY_DISABLED, f"version {V1} is already disabled and nothing uses it")
    for usage, user in ((v2, consumers[1]), (v3, consumers[0])):
        assert (usage.safe, usage.reason, usage.message) == (
            False, Reason.IN_USE, f"version {usage.version} is used by {user.resource_id}")
    (newest,) = [u for u in retirement(key_state(), (), {}, {}, now=T0, window=WINDOW) if u.version == V3]
    assert (newest.safe, newest.reason, newest.message) == (
        False, Reason.CURRENT_VERSION, f"version {V3} is the newest usable version")


def test_retirement_with_versionless_consumers_reporting_no_version() -> None:
    silent = (account("quiet", current=None), account("mute", current=None))
    usages = {u.version: u for u in retirement(key_state(kv(V1, enabled=False), kv(V2), kv(V3)),
                                               silent, {}, {}, now=T0, window=WINDOW)}
    assert (usages[V2].safe, usages[V2].reason, usages[V2].message) == (
        False, Reason.CONSUMER_VERSION_UNKNOWN,
        f"versionless consumers report no current version: {silent[1].resource_id}, {silent[0].resource_id}")
    assert (usages[V1].safe, usages[V1].reason) == (True, Reason.ALREADY_DISABLED)


def test_retirement_lists_every_user_of_a_version() -> None:
    users = (account("b", pinned=V2, current=V2), account("a", current=V2), account("c", current=V3))
    (v2,) = [u for u in retirement(key_state(), users, {}, {}, now=T0, window=WINDOW) if u.version == V2]
    assert v2.message == f"version {V2} is used by {users[1].resource_id}, {users[0].resource_id}"


def test_retirement_counts_blobs_and_unwraps_per_version() -> None:
    usages = {u.version: u for u in retirement(key_state(), (account(current=V3),), {V1: 1}, {V2: T0},
                                               now=T0, window=WINDOW)}
    assert (usages[V1].reason, usages[V1].message) == (
        Reason.BLOBS_STILL_WRAPPED, f"1 blobs are still wrapped by version {V1}")
    assert (usages[V2].blob_count, usages[V2].last_unwrap, usages[V2].reason) == (0, T0, Reason.RECENT_UNWRAP)
    assert usages[V3].last_unwrap is None


def test_retirement_with_an_unreachable_vault_or_no_usable_version() -> None:
    (unreachable, *_) = retirement(key_state(reachable=False), (), {}, {}, now=T0, window=WINDOW)
    assert (unreachable.safe, unreachable.reason, unreachable.message) == (
        False, Reason.VAULT_UNREACHABLE, f"vault {KEY.vault} could not be read")
    (nothing,) = retirement(key_state(kv(V3, expires=T0)), (), {}, {}, now=T0, window=WINDOW)
    assert (nothing.safe, nothing.reason, nothing.message) == (
        False, Reason.NO_USABLE_VERSION, f"{KEY.uri} has no usable version to move to")


def test_identity_access_unknown_keeps_a_pinned_consumer_to_an_alert_when_the_policy_is_alert() -> None:
    decision = plan(key_state(), [account(pinned=V2, access=IdentityAccess.UNKNOWN)], LedgerView(),
                    target_version=None, now=T0, settings=DEFAULTS).decisions[0]
    assert (decision.action, decision.reason) == (Action.ALERT, Reason.PINNED_TO_OLD_VERSION)


def test_a_forced_pin_whose_consumer_reports_no_version_is_verified_again() -> None:
    decision = plan(key_state(), [account(pinned=V3, current=None)], LedgerView.of([intent(V3)]),
                    target_version=None, now=T0, settings=DEFAULTS).decisions[0]
    assert (decision.action, decision.recheck_at) == (Action.FORCE_ADOPTION, T0 + timedelta(minutes=1))
    assert decision.message == (f"account acct1: pinned to {V3} but currentVersionedKeyIdentifier is not reported; "
                                "verifying again")


def test_a_pin_of_the_users_whose_consumer_reports_no_version_is_verified_again() -> None:
    decision = plan(key_state(), [account(pinned=V3, current=None)], LedgerView(), target_version=None, now=T0,
                    settings=DEFAULTS).decisions[0]
    assert (decision.action, decision.recheck_at) == (Action.RECHECK, T0 + timedelta(minutes=1))
    assert decision.message.endswith("currentVersionedKeyIdentifier is not reported; verifying again")

"""controller.rotation: the conditions a plan records per consumer and per version.

They are what `cmkctl status` and the compliance rules read back from the ledger, so their status,
reason, message and observed version are pinned here, including when the key itself blocks the plan.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from controller.model import Condition, ConditionStatus, ForceAdoptionStep, IdentityAccess
from controller.rotation import MESSAGE_NAMES, Action, LedgerView, Plan, PlannerSettings, Reason, plan
from tests.unit.test_rotation import KEY, T0, V2, V3, V4, account, intent, key_state, kv, scope

pytestmark = pytest.mark.unit

KEY_URI = KEY.uri
VAULT = KEY.vault


def conditions_of(result: Plan, index: int = 0) -> dict[str, tuple[ConditionStatus, str, str, str | None]]:
    return {condition.type: (condition.status, condition.reason, condition.message, condition.observed_version)
            for condition in result.decisions[index].conditions}


def version_conditions(result: Plan, version: str) -> dict[str, tuple[ConditionStatus, str, str, str | None]]:
    (status,) = [status for status in result.versions if status.version == version]
    return {condition.type: (condition.status, condition.reason, condition.message, condition.observed_version)
            for condition in status.conditions}


def test_a_consumer_blocked_by_an_unreachable_vault_records_unknowns() -> None:
    result = plan(key_state(reachable=False), [account(pinned=V2)], LedgerView(), target_version=None, now=T0,
                  settings=PlannerSettings())
    blocked = f"vault {VAULT} could not be read: connection refused; nothing is changed"
    assert conditions_of(result) == {
        "Adopted": (ConditionStatus.UNKNOWN, Reason.VAULT_UNREACHABLE, blocked, None),
        "KeyAccessible": (ConditionStatus.UNKNOWN, Reason.VAULT_UNREACHABLE, f"vault {VAULT} could not be read", None),
        "PinnedCurrent": (ConditionStatus.UNKNOWN, Reason.VAULT_UNREACHABLE, blocked, None),
    }
    (decision,) = result.decisions
    assert (decision.consumer, decision.action, decision.target_version, decision.set_key, decision.recheck_at) == (
        account(pinned=V2), Action.BLOCKED, None, None, None)
    assert [condition.last_transition for condition in decision.conditions] == [T0, T0, T0]


def test_a_consumer_blocked_by_a_not_yet_valid_target_records_why_and_when() -> None:
    valid_from = T0 + timedelta(hours=2)
    key = key_state(kv(V3), kv(V4, not_before=valid_from))
    result = plan(key, [account(current=V3, access=IdentityAccess.DENIED)], LedgerView(), target_version=None,
                  now=T0, settings=PlannerSettings())
    blocked = f"target version {V4} is not valid before {valid_from.isoformat()}"
    assert conditions_of(result) == {
        "Adopted": (ConditionStatus.FALSE, Reason.TARGET_VERSION_NOT_YET_VALID, blocked, None),
        "KeyAccessible": (ConditionStatus.FALSE, Reason.IDENTITY_LACKS_ACCESS,
                          f"the encryption identity lacks get, wrapKey or unwrapKey on {KEY_URI}", None),
        "PinnedCurrent": (ConditionStatus.TRUE, Reason.VERSIONLESS,
                          "versionless key URI: automatic version updates are on", None),
    }
    assert result.decisions[0].recheck_at == valid_from
    assert result.next_check == valid_from
    assert result.target is None


def test_the_conditions_of_a_consumer_whose_access_is_unknown() -> None:
    result = plan(key_state(), [account(current=V3, access=IdentityAccess.UNKNOWN)], LedgerView(),
                  target_version=None, now=T0, settings=PlannerSettings())
    assert conditions_of(result) == {
        "Adopted": (ConditionStatus.TRUE, Reason.ADOPTED, f"currentVersionedKeyIdentifier is version {V3}", V3),
        "KeyAccessible": (ConditionStatus.UNKNOWN, Reason.ACCESS_NOT_EVALUATED,
                          f"the encryption identity's access to {KEY_URI} could not be evaluated", None),
        "PinnedCurrent": (ConditionStatus.TRUE, Reason.VERSIONLESS,
                          "versionless key URI: automatic version updates are on", V3),
    }


def test_the_conditions_of_a_consumer_pinned_to_the_target_or_to_an_older_version() -> None:
    result = plan(key_state(), [account("a", pinned=V3, current=V3), account("b", pinned=V2, current=V2)],
                  LedgerView(), target_version=None, now=T0, settings=PlannerSettings())
    on_target, pinned_old = conditions_of(result, 0), conditions_of(result, 1)
    assert on_target["PinnedCurrent"] == (ConditionStatus.TRUE, Reason.PINNED_TO_TARGET,
                                          f"pinned to the target version {V3}", V3)
    assert on_target["KeyAccessible"] == (ConditionStatus.TRUE, Reason.ACCESS_GRANTED,
                                          f"the encryption identity can get, wrapKey and unwrapKey {KEY_URI}", None)
    assert pinned_old["PinnedCurrent"] == (ConditionStatus.FALSE, Reason.PINNED_TO_OLD_VERSION,
                                           f"pinned to {V2}, older than the target {V3}", V3)
    decision = result.decisions[1]
    assert pinned_old["Adopted"] == (ConditionStatus.FALSE, Reason.PINNED_TO_OLD_VERSION, decision.message, V3)


def test_a_consumer_pinned_ahead_of_the_target_records_the_block_as_its_pin_condition() -> None:
    key = key_state(kv(V3), kv(V4, enabled=False))
    result = plan(key, [account(pinned=V4, current=V4)], LedgerView(), target_version=None, now=T0,
                  settings=PlannerSettings())
    decision = result.decisions[0]
    assert conditions_of(result)["PinnedCurrent"] == (
        ConditionStatus.FALSE, Reason.CONSUMER_AHEAD_OF_TARGET, decision.message, V3)


def test_the_target_versions_adopted_condition_counts_its_consumers() -> None:
    consumers = [account("a", current=V3), scope("a", current=V2), account("b", current=None)]
    result = plan(key_state(), consumers, LedgerView(), target_version=None, now=T0, settings=PlannerSettings())
    lagging = sorted([consumers[1].resource_id, consumers[2].resource_id])
    assert version_conditions(result, V3)["Adopted"] == (
        ConditionStatus.FALSE, Reason.ADOPTION_PENDING,
        f"1 of 3 consumers use it; not yet: {', '.join(lagging)}", V3)
    done = plan(key_state(), [account("a", current=V3), scope("a", current=V3)], LedgerView(),
                target_version=None, now=T0, settings=PlannerSettings())
    assert version_conditions(done, V3)["Adopted"] == (
        ConditionStatus.TRUE, Reason.ADOPTED, "all 2 consumers use it", V3)
    assert "Adopted" not in version_conditions(done, V2)


def test_every_version_records_its_usability() -> None:
    key = key_state(kv(V2, enabled=False), kv(V3, expires=T0), kv(V4, not_before=T0 + timedelta(seconds=1)))
    result = plan(key, [], LedgerView(), target_version=None, now=T0, settings=PlannerSettings())
    assert version_conditions(result, V2)["Usable"] == (
        ConditionStatus.FALSE, Reason.VERSION_DISABLED, f"version {V2} is disabled", V2)
    assert version_conditions(result, V3)["Usable"] == (
        ConditionStatus.FALSE, Reason.VERSION_EXPIRED, f"version {V3} expired at {T0.isoformat()}", V3)
    assert version_conditions(result, V4)["Usable"] == (
        ConditionStatus.FALSE, Reason.VERSION_NOT_YET_VALID,
        f"version {V4} is not valid before {(T0 + timedelta(seconds=1)).isoformat()}", V4)
    valid = plan(key_state(kv(V3, not_before=T0, expires=T0 + timedelta(seconds=1))), [], LedgerView(),
                 target_version=None, now=T0, settings=PlannerSettings())
    assert version_conditions(valid, V3)["Usable"] == (
        ConditionStatus.TRUE, Reason.VERSION_USABLE, f"version {V3} is enabled and valid", V3)
    (status,) = valid.versions
    assert [condition.last_transition for condition in status.conditions] == [T0, T0]  # Usable, Adopted


def test_a_version_condition_keeps_its_transition_time_while_its_status_holds() -> None:
    earlier = T0 - timedelta(days=1)
    previous = {V3: [Condition("Usable", ConditionStatus.TRUE, Reason.VERSION_USABLE, "old", earlier),
                     Condition("Adopted", ConditionStatus.FALSE, Reason.ADOPTION_PENDING, "old", earlier)]}
    result = plan(key_state(), [account(current=V3)], LedgerView.of(version_conditions=previous),
                  target_version=None, now=T0, settings=PlannerSettings())
    (status,) = [status for status in result.versions if status.version == V3]
    transitions = {condition.type: condition.last_transition for condition in status.conditions}
    assert transitions == {"Usable": earlier, "Adopted": T0}


def test_a_blocked_consumer_keeps_its_transition_times_while_the_status_holds() -> None:
    earlier = T0 - timedelta(days=1)
    previous = {account().id: [
        Condition("Adopted", ConditionStatus.UNKNOWN, Reason.VAULT_UNREACHABLE, "old", earlier),
        Condition("KeyAccessible", ConditionStatus.TRUE, Reason.ACCESS_GRANTED, "old", earlier),
        Condition("PinnedCurrent", ConditionStatus.TRUE, Reason.VERSIONLESS, "old", earlier),
    ]}
    result = plan(key_state(reachable=False), [account()], LedgerView.of(consumer_conditions=previous),
                  target_version=None, now=T0, settings=PlannerSettings())
    transitions = {condition.type: condition.last_transition for condition in result.decisions[0].conditions}
    assert transitions == {"Adopted": earlier, "KeyAccessible": T0, "PinnedCurrent": earlier}


def test_a_stale_intent_whose_consumer_is_on_the_target_is_abandoned() -> None:
    # Our intent pinned V2; the user pinned the consumer to the target V3 meanwhile: their pin, not ours.
    result = plan(key_state(), [account(pinned=V3, current=V3)], LedgerView.of([intent(V2)]), target_version=None,
                  now=T0, settings=PlannerSettings())
    (decision,) = result.decisions
    assert (decision.action, decision.reason, decision.set_key, decision.intent_before) == (
        Action.ADOPTED, Reason.ADOPTED, None, None)
    assert decision.intent_after == intent(V2, ForceAdoptionStep.ABANDONED)


def test_a_restored_consumer_completes_an_older_intent_too() -> None:
    # Versionless and on the target V3 while our intent still says V2 pinned: the record is completed.
    result = plan(key_state(), [account(current=V3)], LedgerView.of([intent(V2)]), target_version=None,
                  now=T0, settings=PlannerSettings())
    (decision,) = result.decisions
    assert (decision.action, decision.set_key) == (Action.ADOPTED, None)
    assert decision.intent_after == intent(V2, ForceAdoptionStep.RESTORED)


def test_a_stale_intent_of_a_versionless_consumer_is_replaced_by_a_new_forced_adoption() -> None:
    # The intent for V2 was written but never pinned; the target is now V3: a new intent, no abandon record.
    result = plan(key_state(), [account(current=V2)], LedgerView.of([intent(V2)]), target_version=None, now=T0,
                  settings=PlannerSettings(force_versionless_after=timedelta(0)))
    (decision,) = result.decisions
    assert decision.intent_before is not None and decision.intent_before.target_version == V3
    assert decision.intent_after is None
    assert decision.set_key == KEY.with_version(V3)


def test_a_plan_lists_its_decisions_by_consumer_and_finds_one_by_id() -> None:
    later, earlier = account("zeta"), account("alpha", current=V3)
    result = plan(key_state(), [later, earlier], LedgerView(), target_version=None, now=T0,
                  settings=PlannerSettings())
    assert [decision.consumer for decision in result.decisions] == sorted([later, earlier], key=lambda c: c.id)
    assert result.decision_for(later.id.upper()).consumer == later
    assert result.writes == ()



def test_the_version_condition_names_at_most_twenty_lagging_consumers() -> None:
    consumers = [account(f"st{index:03d}", current=V2) for index in range(MESSAGE_NAMES + 5)]
    result = plan(key_state(), consumers, LedgerView(), target_version=None, now=T0, settings=PlannerSettings())
    named = ", ".join(sorted(consumer.resource_id for consumer in consumers)[:MESSAGE_NAMES])
    assert version_conditions(result, V3)["Adopted"] == (
        ConditionStatus.FALSE, Reason.ADOPTION_PENDING,
        f"0 of {MESSAGE_NAMES + 5} consumers use it; not yet: {named} and 5 more", V3)

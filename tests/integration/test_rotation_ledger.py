"""TableRotationLedger against Azurite through the real azure-data-tables client."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from azure.data.tables import TableClient

from controller.adapters.rotation_ledger import TableRotationLedger
from controller.errors import TransientError
from controller.model import (
    Condition,
    ConditionStatus,
    ForceAdoptionIntent,
    ForceAdoptionStep,
    KeyRef,
    VaultOrigin,
)
from controller.reasons import Reason

pytestmark = pytest.mark.integration

KEY = KeyRef(VaultOrigin("https://contoso-cmk.vault.azure.net"), "storage-cmk")
OTHER = KeyRef(VaultOrigin("https://contoso-cmk.vault.azure.net"), "other-key")
CONSUMER = "/subscriptions/s/resourcegroups/rg/providers/microsoft.storage/storageaccounts/st1"
T0 = datetime(2026, 11, 30, 12, tzinfo=UTC)


@pytest.fixture
def table(azurite):
    client = TableClient.from_connection_string(azurite.connection_string, table_name=f"r{uuid.uuid4().hex[:12]}")
    yield client
    client.delete_table()


def condition(status: ConditionStatus, reason: str) -> Condition:
    return Condition("Adopted", status, Reason(reason), f"because {reason}", T0, observed_version="b" * 32)


def test_intents_and_conditions_round_trip_per_key(table):
    ledger = TableRotationLedger(table)
    assert ledger.load(KEY.with_version("b" * 32)).intents == ()
    intent = ForceAdoptionIntent(CONSUMER, "b" * 32, ForceAdoptionStep.PINNED, T0)
    ledger.save_intent(KEY, intent)
    ledger.save_conditions(KEY, {CONSUMER: (condition(ConditionStatus.FALSE, "ForcingAdoption"),)},
                           {"b" * 32: (condition(ConditionStatus.TRUE, "VersionUsable"),)})
    ledger.save_intent(KEY, ForceAdoptionIntent(CONSUMER, "b" * 32, ForceAdoptionStep.RESTORED, T0))

    record = TableRotationLedger(table).load(KEY)  # a fresh instance reads what was written
    assert record.intents == (ForceAdoptionIntent(CONSUMER, "b" * 32, ForceAdoptionStep.RESTORED, T0),)
    assert record.consumer_conditions == {CONSUMER: (condition(ConditionStatus.FALSE, "ForcingAdoption"),)}
    assert record.version_conditions == {"b" * 32: (condition(ConditionStatus.TRUE, "VersionUsable"),)}
    assert TableRotationLedger(table).load(OTHER).intents == ()


def test_a_concurrent_writer_makes_the_stale_one_retry_instead_of_overwriting(table):
    first, second = TableRotationLedger(table), TableRotationLedger(table)
    first.save_intent(KEY, ForceAdoptionIntent(CONSUMER, "b" * 32, ForceAdoptionStep.PINNED, T0))
    first.load(KEY)
    second.load(KEY)
    second.save_intent(KEY, ForceAdoptionIntent(CONSUMER, "b" * 32, ForceAdoptionStep.RESTORED, T0))
    with pytest.raises(TransientError):
        first.save_intent(KEY, ForceAdoptionIntent(CONSUMER, "c" * 32, ForceAdoptionStep.PINNED, T0))
    assert TableRotationLedger(table).load(KEY).intents[0].step is ForceAdoptionStep.RESTORED

    first.load(KEY)  # fresh state: now the write goes through
    later = ForceAdoptionIntent(CONSUMER, "c" * 32, ForceAdoptionStep.PINNED, T0 + timedelta(days=1))
    first.save_intent(KEY, later)
    assert TableRotationLedger(table).load(KEY).intents == (later,)


def test_two_instances_creating_the_same_record_cannot_both_win(table):
    first, second = TableRotationLedger(table), TableRotationLedger(table)
    first.save_intent(KEY, ForceAdoptionIntent(CONSUMER, "b" * 32, ForceAdoptionStep.PINNED, T0))
    with pytest.raises(TransientError):
        second.save_intent(KEY, ForceAdoptionIntent(CONSUMER, "c" * 32, ForceAdoptionStep.PINNED, T0))


def test_a_persisted_condition_this_version_cannot_read_is_dropped_not_fatal(table):
    """State written by another version of the controller (an unknown reason) is re-derived, not a crash."""
    ledger = TableRotationLedger(table)
    ledger.save_conditions(KEY, {CONSUMER: (condition(ConditionStatus.TRUE, "Adopted"),)}, {})
    [entity] = [row for row in table.list_entities() if row["Kind"] == "consumer"]
    assert '"reason": "Adopted"' in entity["Conditions"]
    entity["Conditions"] = entity["Conditions"].replace('"reason": "Adopted"', '"reason": "SomethingNewer"')
    table.upsert_entity(entity)
    assert TableRotationLedger(table).load(KEY).consumer_conditions == {CONSUMER: ()}


def test_an_instance_that_lost_the_race_to_save_conditions_merges_them_instead_of_failing(table):
    """Two instances reconciling one key both save the conditions they observed at the end of their runs:
    the second re-reads what the first saved and saves the merge (a transition keeps its first time;
    a later transition wins), instead of failing a run whose work is done."""
    first, second = TableRotationLedger(table), TableRotationLedger(table)
    first.load(KEY)
    second.load(KEY)
    later = T0 + timedelta(minutes=1)
    pinned = Condition("Adopted", ConditionStatus.FALSE, Reason("ForcingAdoption"), "pinning", T0)
    first.save_conditions(KEY, {CONSUMER: (condition(ConditionStatus.TRUE, "Adopted"),)},
                          {"b" * 32: (condition(ConditionStatus.TRUE, "VersionUsable"),)})
    second.save_conditions(KEY, {CONSUMER: (replace(condition(ConditionStatus.TRUE, "Adopted"), last_transition=later,
                                                    message="seen again"),)},
                           {"b" * 32: (pinned,)})
    record = TableRotationLedger(table).load(KEY)
    assert record.consumer_conditions == {
        CONSUMER: (replace(condition(ConditionStatus.TRUE, "Adopted"), message="seen again"),)}
    # Same time, different status: the instance that saved last observed last.
    assert record.version_conditions == {"b" * 32: (pinned,)}

    third = TableRotationLedger(table)
    third.load(KEY)
    first.save_conditions(KEY, {CONSUMER: (condition(ConditionStatus.TRUE, "Adopted"),)}, {})
    flipped = Condition("Adopted", ConditionStatus.FALSE, Reason("ForcingAdoption"), "new version", later)
    third.save_conditions(KEY, {CONSUMER: (flipped,)}, {})  # read before first's save: merged, the later wins
    second.save_conditions(KEY, {CONSUMER: (condition(ConditionStatus.TRUE, "Adopted"),)}, {})  # stale and older
    assert TableRotationLedger(table).load(KEY).consumer_conditions == {CONSUMER: (flipped,)}

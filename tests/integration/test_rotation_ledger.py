"""TableRotationLedger against Azurite through the real azure-data-tables client."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from azure.data.tables import TableClient

from controller.adapters.rotation_ledger import TableRotationLedger
from controller.errors import Conflict, TransientError
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


def test_conditions_saved_concurrently_are_refused_as_a_conflict_in_one_transaction(table):
    consumers = [f"{CONSUMER}{index}" for index in range(150)]  # two transactions of at most 100 rows
    first, second = TableRotationLedger(table), TableRotationLedger(table)
    first.save_conditions(KEY, {name: (condition(ConditionStatus.FALSE, "ForcingAdoption"),) for name in consumers}, {})
    first.load(KEY)
    second.load(KEY)
    second.save_conditions(KEY, {consumers[-1]: (condition(ConditionStatus.TRUE, "Adopted"),)}, {})
    with pytest.raises(Conflict):
        first.save_conditions(KEY, {name: (condition(ConditionStatus.TRUE, "Adopted"),) for name in consumers}, {})
    record = TableRotationLedger(table).load(KEY)
    # The first 100 rows were one transaction and went through; the refused one wrote nothing but its
    # row the other instance had changed keeps that instance's conditions.
    assert len(record.consumer_conditions) == 150
    assert record.consumer_conditions[consumers[-1]] == (condition(ConditionStatus.TRUE, "Adopted"),)
    first.load(KEY)  # re-read: the save goes through
    first.save_conditions(KEY, {consumers[0]: (condition(ConditionStatus.TRUE, "VersionUsable"),)}, {})


def test_a_write_claim_keeps_other_instances_off_until_it_lapses(table):
    first, second = TableRotationLedger(table), TableRotationLedger(table)
    until = T0 + timedelta(minutes=10)
    assert first.claim_write(KEY, CONSUMER, "pin", owner="a", now=T0, until=until)
    assert not second.claim_write(KEY, CONSUMER, "pin", owner="b", now=T0, until=until)
    assert first.claim_write(KEY, CONSUMER, "restore", owner="a", now=T0 + timedelta(seconds=5),
                             until=until + timedelta(seconds=5))  # its own live claim
    lapsed = until + timedelta(seconds=1)
    assert second.claim_write(KEY, CONSUMER, "pin", owner="b", now=lapsed, until=lapsed + timedelta(minutes=10))
    # The first instance's memory of its claim does not outlive the claim: the other holds it now.
    assert not first.claim_write(KEY, CONSUMER, "pin", owner="a", now=lapsed, until=lapsed + timedelta(minutes=10))


def test_a_released_claim_lets_another_instance_take_the_write_at_once(table):
    first, second = TableRotationLedger(table), TableRotationLedger(table)
    until = T0 + timedelta(minutes=10)
    assert first.claim_write(KEY, CONSUMER, "pin", owner="a", now=T0, until=until)
    second.release_write(KEY, CONSUMER, owner="b")  # not its claim: nothing changes
    assert not second.claim_write(KEY, CONSUMER, "pin", owner="b", now=T0, until=until)
    first.release_write(KEY, CONSUMER, owner="a")  # its write failed transiently: whoever retries may write
    assert second.claim_write(KEY, CONSUMER, "pin", owner="b", now=T0, until=until)
    assert not first.claim_write(KEY, CONSUMER, "pin", owner="a", now=T0, until=until)  # no stale memory of it
    first.release_write(KEY, CONSUMER, owner="a")  # released twice, or taken over since: nothing changes
    assert not first.claim_write(KEY, CONSUMER, "pin", owner="a", now=T0, until=until)


def test_two_runs_in_one_process_keep_each_other_off_a_consumer(table):
    ledger = TableRotationLedger(table)  # one process: one ledger, two runs of the same key
    until = T0 + timedelta(minutes=10)
    assert ledger.claim_write(KEY, CONSUMER, "pin", owner="host/run-1", now=T0, until=until)
    assert not ledger.claim_write(KEY, CONSUMER, "pin", owner="host/run-2", now=T0, until=until)
    ledger.release_write(KEY, CONSUMER, owner="host/run-2")  # not its claim: the first run keeps it
    assert not ledger.claim_write(KEY, CONSUMER, "pin", owner="host/run-2", now=T0, until=until)


def test_a_continuation_inherits_its_runs_claims_and_only_one_delivery_of_it_does(table):
    first, second, third = TableRotationLedger(table), TableRotationLedger(table), TableRotationLedger(table)
    until = T0 + timedelta(minutes=10)
    assert first.claim_write(KEY, CONSUMER, "pin", owner="run-1", now=T0, until=until)
    # The continuation of run-1, delivered twice (the queue delivers at least once) to two instances:
    later = T0 + timedelta(seconds=30)
    assert second.claim_write(KEY, CONSUMER, "restore", owner="run-2", now=later, until=later + timedelta(minutes=10),
                              inherits="run-1")
    assert not third.claim_write(KEY, CONSUMER, "restore", owner="run-3", now=later,
                                 until=later + timedelta(minutes=10), inherits="run-1")
    # ...and the run that deferred (ended before its continuation was queued) holds it no more.
    assert not TableRotationLedger(table).claim_write(KEY, CONSUMER, "pin", owner="run-1", now=later,
                                                      until=later + timedelta(minutes=1))
    # Inheriting names only that run: someone else's live claim stays theirs.
    assert not third.claim_write(KEY, CONSUMER, "restore", owner="run-3", now=later,
                                 until=later + timedelta(minutes=10), inherits="run-9")

"""TableRotationLedger against Azurite through the real azure-data-tables client."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from azure.data.tables import TableClient, UpdateMode

from controller.adapters.rotation_ledger import TableRotationLedger
from controller.errors import Conflict, TransientError
from controller.model import (
    Condition,
    ConditionStatus,
    Consumer,
    ConsumerKind,
    ForceAdoptionIntent,
    ForceAdoptionStep,
    IdentityAccess,
    KeyRef,
    VaultOrigin,
)
from controller.ports import RotationRecord, Worklist, WriteClaim
from controller.reasons import Reason
from emulators.faults import LOST_ANSWER, Fault, FaultInjector, FaultProfile
from emulators.storage_fault_proxy import StorageFaultProxy

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


def test_a_concurrent_writer_makes_the_stale_one_read_again_instead_of_overwriting(table):
    first, second = TableRotationLedger(table), TableRotationLedger(table)
    first.save_intent(KEY, ForceAdoptionIntent(CONSUMER, "b" * 32, ForceAdoptionStep.PINNED, T0))
    first.load(KEY)
    second.load(KEY)
    second.save_intent(KEY, ForceAdoptionIntent(CONSUMER, "b" * 32, ForceAdoptionStep.RESTORED, T0))
    with pytest.raises(Conflict):
        first.save_intent(KEY, ForceAdoptionIntent(CONSUMER, "c" * 32, ForceAdoptionStep.PINNED, T0))
    assert TableRotationLedger(table).load(KEY).intents[0].step is ForceAdoptionStep.RESTORED

    # The consumer's intent read again (not the whole record): what the other wrote, and the write goes through.
    assert first.load_intent(KEY, CONSUMER) == ForceAdoptionIntent(CONSUMER, "b" * 32, ForceAdoptionStep.RESTORED, T0)
    later = ForceAdoptionIntent(CONSUMER, "c" * 32, ForceAdoptionStep.PINNED, T0 + timedelta(days=1))
    first.save_intent(KEY, later)
    assert TableRotationLedger(table).load(KEY).intents == (later,)


def test_two_instances_creating_the_same_record_cannot_both_win(table):
    first, second = TableRotationLedger(table), TableRotationLedger(table)
    first.save_intent(KEY, ForceAdoptionIntent(CONSUMER, "b" * 32, ForceAdoptionStep.PINNED, T0))
    with pytest.raises(Conflict):
        second.save_intent(KEY, ForceAdoptionIntent(CONSUMER, "c" * 32, ForceAdoptionStep.PINNED, T0))
    assert second.load_intent(KEY, CONSUMER).target_version == "b" * 32
    assert second.load_intent(OTHER, CONSUMER) is None


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


CLAIMED, CHANGED, HELD = WriteClaim.CLAIMED, WriteClaim.CHANGED_SINCE_READ, WriteClaim.HELD_ELSEWHERE


def claim(ledger: TableRotationLedger, owner: str, now: datetime, *, read_at: datetime | None = None,
          read_state: str | None = None, inherits: str | None = None, minutes: int = 10) -> WriteClaim:
    return ledger.claim_write(KEY, CONSUMER, "pin", owner=owner, now=now, until=now + timedelta(minutes=minutes),
                              read_at=read_at or now, read_state=read_state, inherits=inherits)


def test_a_write_claim_keeps_other_runs_off_until_it_lapses(table):
    first, second = TableRotationLedger(table), TableRotationLedger(table)
    assert claim(first, "a", T0) is CLAIMED
    assert claim(second, "b", T0) is HELD
    assert claim(first, "a", T0 + timedelta(seconds=5)) is CLAIMED  # its own live claim
    lapsed = T0 + timedelta(minutes=10, seconds=1)  # "a" crashed: its claim lapses
    assert claim(second, "b", lapsed) is CLAIMED
    # The first ledger's memory of its claim does not outlive the claim: the other holds it now.
    assert claim(first, "a", lapsed) is HELD


def test_two_runs_in_one_process_keep_each_other_off_a_consumer(table):
    ledger = TableRotationLedger(table)  # one process: one ledger, two runs of the same key
    assert claim(ledger, "host/run-1", T0) is CLAIMED
    assert claim(ledger, "host/run-2", T0) is HELD
    ledger.release_writes(KEY, [CONSUMER], owner="host/run-2", now=T0)  # not its claim: the first run keeps it
    assert claim(ledger, "host/run-2", T0) is HELD


def test_an_ended_claim_frees_the_consumer_and_a_run_that_read_it_before_re_reads(table):
    first, second, third = TableRotationLedger(table), TableRotationLedger(table), TableRotationLedger(table)
    assert claim(first, "run-1", T0) is CLAIMED
    ended = T0 + timedelta(seconds=40)
    first.release_writes(KEY, [CONSUMER], owner="run-1", now=ended)  # run-1 is done with the consumer
    # run-2 read the consumer before run-1 was done with it: it may hold the state before run-1's write.
    assert claim(second, "run-2", ended + timedelta(seconds=1), read_at=T0) is CHANGED
    second.release_writes(KEY, [CONSUMER], owner="run-2", now=ended + timedelta(minutes=5))
    # run-3 read it well after: nothing to re-read.
    assert claim(third, "run-3", ended + timedelta(minutes=7), read_at=ended + timedelta(minutes=6)) is CLAIMED


def test_a_run_that_read_the_state_the_last_run_left_need_not_re_read(table):
    first, second, third = TableRotationLedger(table), TableRotationLedger(table), TableRotationLedger(table)
    left = "https://contoso-cmk.vault.azure.net/keys/storage-cmk https://contoso-cmk.vault.azure.net/keys/storage-cmk/b"
    assert claim(first, "run-1", T0) is CLAIMED
    first.release_writes(KEY, [CONSUMER], owner="run-1", now=T0 + timedelta(seconds=5), left={CONSUMER: left})
    # Read within the clock-skew allowance of run-1's end, but what was read is what run-1 left: no re-read.
    assert claim(second, "run-2", T0 + timedelta(seconds=6), read_at=T0 + timedelta(seconds=4),
                 read_state=left) is CLAIMED
    second.release_writes(KEY, [CONSUMER], owner="run-2", now=T0 + timedelta(seconds=8))  # its outcome unknown
    assert claim(third, "run-3", T0 + timedelta(seconds=9), read_state=left) is CHANGED
    third.release_writes(KEY, [CONSUMER], owner="run-3", now=T0 + timedelta(seconds=10), left={CONSUMER: left})
    assert claim(first, "run-4", T0 + timedelta(seconds=11), read_state=left + "-older") is CHANGED


def test_ending_many_claims_takes_one_request_per_hundred_and_spares_a_taken_over_one(table):
    consumers = [f"{CONSUMER}-{number}" for number in range(150)]
    first, second = TableRotationLedger(table), TableRotationLedger(table)
    for consumer in consumers:
        assert first.claim_write(KEY, consumer, "pin", owner="run-1", now=T0, until=T0 + timedelta(minutes=1),
                                 read_at=T0) is CLAIMED
    later = T0 + timedelta(minutes=2)  # run-1's claims lapsed; run-2 takes one over
    assert second.claim_write(KEY, consumers[7], "pin", owner="run-2", now=later,
                              until=later + timedelta(minutes=10), read_at=later) is CLAIMED
    first.release_writes(KEY, consumers, owner="run-1", now=later)
    third = TableRotationLedger(table)
    assert third.claim_write(KEY, consumers[7], "pin", owner="run-3", now=later, until=later + timedelta(minutes=10),
                             read_at=later) is HELD  # still run-2's
    assert all(third.claim_write(KEY, consumer, "pin", owner="run-3", now=later, until=later + timedelta(minutes=10),
                                 read_at=later - timedelta(minutes=5)) is CHANGED
               for consumer in consumers if consumer != consumers[7])


def test_a_continuation_inherits_its_runs_claims_and_only_one_delivery_of_it_does(table):
    first, second, third = TableRotationLedger(table), TableRotationLedger(table), TableRotationLedger(table)
    assert claim(first, "run-1", T0) is CLAIMED
    # The continuation of run-1, delivered twice (the queue delivers at least once) to two instances:
    later = T0 + timedelta(seconds=30)
    assert claim(second, "run-2", later, inherits="run-1") is CLAIMED
    assert claim(third, "run-3", later, inherits="run-1") is HELD
    # ...and the run that deferred (ended before its continuation was queued) holds it no more.
    assert claim(TableRotationLedger(table), "run-1", later) is HELD
    # Inheriting names only that run: someone else's live claim stays theirs.
    assert claim(third, "run-3", later, inherits="run-9") is HELD


def consumer(index: int, **changes: object) -> Consumer:
    name = f"st{index:05d}"
    key = KEY.with_version("a" * 32) if index % 2 else KEY
    made = Consumer(ConsumerKind.ACCOUNT, f"/subscriptions/s/resourceGroups/rg/providers/Microsoft.Storage/"
                    f"storageAccounts/{name}", name, key, KEY.with_version("a" * 32),
                    identity_access=IdentityAccess.GRANTED, tags=(("cmk-pinned-policy", "update"),))
    return replace(made, **changes)  # type: ignore[arg-type]


SCOPE = Consumer(ConsumerKind.SCOPE, "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/"
                 "st00000/encryptionScopes/docs", "st00000", KEY, None, scope_name="docs",
                 last_key_rotation=T0, identity_access=IdentityAccess.UNKNOWN)


def by_id(consumers: Sequence[Consumer]) -> dict[str, Consumer]:
    return {consumer.id: consumer for consumer in consumers}


def test_a_worklist_round_trips_page_by_page_and_apart_from_the_record(table):
    consumers = [consumer(index) for index in range(1050)] + [SCOPE]  # two pages of 1,000 rows; 11 transactions
    TableRotationLedger(table).start_worklist(KEY, "w1", consumers, now=T0)

    loaded = TableRotationLedger(table).load_worklist(KEY, "w1")  # a fresh instance (another invocation)
    assert loaded is not None
    assert (loaded.id, loaded.saved_at) == ("w1", T0)
    assert by_id(loaded.consumers) == by_id(consumers)
    assert TableRotationLedger(table).load(KEY) == RotationRecord()  # the record's partition does not hold it
    assert TableRotationLedger(table).load_worklist(KEY, "w0") is None
    assert TableRotationLedger(table).load_worklist(OTHER, "w1") is None


def test_a_worklist_is_believed_only_while_it_is_the_keys_and_whole(table):
    TableRotationLedger(table).start_worklist(KEY, "w1", [consumer(index) for index in range(3)], now=T0)
    # Another run's new worklist takes over a row before it records its head: w1 is no longer whole.
    [row] = [row for row in table.query_entities("Subject eq @subject", parameters={"subject": consumer(1).id})]
    table.update_entity({"PartitionKey": row["PartitionKey"], "RowKey": row["RowKey"], "Worklist": "w2"},
                        mode=UpdateMode.MERGE)
    assert TableRotationLedger(table).load_worklist(KEY, "w1") is None

    TableRotationLedger(table).start_worklist(KEY, "w2", [consumer(1)], now=T0 + timedelta(minutes=1))
    assert TableRotationLedger(table).load_worklist(KEY, "w1") is None
    assert TableRotationLedger(table).load_worklist(KEY, "w2") == Worklist("w2", T0 + timedelta(minutes=1),
                                                                           (consumer(1),))

    # A row this version cannot read (another version's, a damaged one): the worklist is not believed.
    table.update_entity({"PartitionKey": row["PartitionKey"], "RowKey": row["RowKey"], "State": '{"kind": "?"}'},
                        mode=UpdateMode.MERGE)
    assert TableRotationLedger(table).load_worklist(KEY, "w2") is None


def test_a_continuation_records_the_states_it_changed_each_unless_another_recorded_one_since(table):
    TableRotationLedger(table).start_worklist(KEY, "w1", [consumer(index) for index in range(150)], now=T0)
    first, second = TableRotationLedger(table), TableRotationLedger(table)
    assert first.load_worklist(KEY, "w1") is not None and second.load_worklist(KEY, "w1") is not None
    pinned = consumer(0, key=KEY.with_version("b" * 32), current_key=KEY.with_version("b" * 32))
    restored = consumer(0, current_key=KEY.with_version("b" * 32))
    # Two deliveries of one continuation: the second records consumer 0's state after the first did.
    first.update_worklist(KEY, "w1", {pinned.id: pinned, consumer(2).id: None}, now=T0 + timedelta(minutes=1))
    second.update_worklist(KEY, "w1", {restored.id: restored, consumer(4).id: None}, now=T0 + timedelta(minutes=2))

    loaded = TableRotationLedger(table).load_worklist(KEY, "w1")
    assert loaded is not None and loaded.saved_at == T0 + timedelta(minutes=2)  # saved last by the second
    states = by_id(loaded.consumers)
    assert states[pinned.id] == pinned  # the first's record stands: the second's was against a stale row
    assert consumer(2).id not in states and consumer(4).id not in states  # gone, whoever recorded it
    assert len(states) == 148

    first.update_worklist(KEY, "w1", {restored.id: restored}, now=T0 + timedelta(minutes=3))  # its own row: goes in
    assert by_id(TableRotationLedger(table).load_worklist(KEY, "w1").consumers)[restored.id] == restored


def test_recording_into_a_worklist_another_run_replaced_is_a_conflict(table):
    ledger = TableRotationLedger(table)
    ledger.start_worklist(KEY, "w1", [consumer(0)], now=T0)
    assert ledger.load_worklist(KEY, "w1") is not None
    TableRotationLedger(table).start_worklist(KEY, "w2", [consumer(0)], now=T0)
    with pytest.raises(Conflict):
        ledger.update_worklist(KEY, "w1", {consumer(0).id: None}, now=T0 + timedelta(minutes=1))
    assert TableRotationLedger(table).load_worklist(KEY, "w2") == Worklist("w2", T0, (consumer(0),))


# ---- lost answers (Azurite behind the storage fault proxy) ----------------------------------------------


class LoseAnswers(FaultInjector):
    """Lose the answer to ``writes`` write requests after the next ``skip`` (Table storage acts, the client
    sees a reset)."""

    def __init__(self, writes: int, *, skip: int = 0) -> None:
        super().__init__(FaultProfile("storage"))
        self.writes, self.skip = writes, skip

    def draw(self, *, write: bool) -> Fault | None:
        if write and self.skip > 0:
            self.skip -= 1
        elif write and self.writes > 0:
            self.writes -= 1
            return Fault(LOST_ANSWER, 1)
        return None


@pytest.fixture(scope="module")
def proxy(azurite) -> Iterator[StorageFaultProxy]:
    running = StorageFaultProxy(azurite.endpoints).start()
    yield running
    running.stop()


@pytest.fixture
def faulty_table(proxy: StorageFaultProxy) -> Iterator[TableClient]:
    client = TableClient.from_connection_string(proxy.endpoints.connection_string,
                                                table_name=f"r{uuid.uuid4().hex[:12]}")
    client.create_table()
    yield client
    proxy.injector = FaultInjector(FaultProfile("storage"))
    client.delete_table()


@pytest.mark.parametrize("taking_over", [False, True], ids=["create", "replace of a lapsed claim"])
def test_a_claim_whose_answer_was_lost_is_known_as_ours_and_ended_not_left_to_lapse(
        proxy: StorageFaultProxy, faulty_table: TableClient, taking_over: bool) -> None:
    """Found by the faults scenario at full size: the answer to a claim's write was lost (the row written),
    the run counted the claim as failed and never ended it, and every run after it was kept off that
    consumer for the claim's 10 minutes, again and again, with the account left pinned mid adoption."""
    run, other = TableRotationLedger(faulty_table), TableRotationLedger(faulty_table)
    now = T0
    if taking_over:
        assert claim(other, "crashed-run", T0) is CLAIMED  # a run that crashed: its claim lapses
        now = T0 + timedelta(minutes=10, seconds=1)
    run.release_writes(KEY, [], owner="run-1", now=now)  # (makes sure of its table: the lost answer is the claim's)
    # Taking a lapsed claim over is a create (refused: the row exists) and then a conditional replace.
    proxy.injector = LoseAnswers(writes=1, skip=1 if taking_over else 0)
    assert claim(run, "run-1", now) is CLAIMED
    assert proxy.injector.writes == 0  # the answer was lost
    proxy.injector = FaultInjector(FaultProfile("storage"))
    run.release_writes(KEY, [CONSUMER], owner="run-1", now=now + timedelta(seconds=1))
    assert claim(other, "run-2", now + timedelta(seconds=2), read_at=now + timedelta(minutes=1)) is CLAIMED


def test_a_refusal_whose_answer_was_lost_is_still_a_refusal(proxy: StorageFaultProxy,
                                                             faulty_table: TableClient) -> None:
    holder, run = TableRotationLedger(faulty_table), TableRotationLedger(faulty_table)
    assert claim(holder, "run-1", T0) is CLAIMED
    run.release_writes(KEY, [], owner="run-2", now=T0)  # (makes sure of its table)
    proxy.injector = LoseAnswers(writes=1)  # the create, refused with 409: its answer lost
    assert claim(run, "run-2", T0 + timedelta(seconds=1)) is HELD


def test_a_claim_whose_answer_was_lost_and_whose_row_cannot_be_read_is_a_transient_failure(
        proxy: StorageFaultProxy, faulty_table: TableClient) -> None:
    run = TableRotationLedger(faulty_table)
    run.release_writes(KEY, [], owner="run-1", now=T0)  # (makes sure of its table)
    proxy.injector = FaultInjector(FaultProfile("storage", {"lost-answer": 1.0}))  # the read back fails too
    with pytest.raises(TransientError):
        claim(run, "run-1", T0)

"""RotationLedger on Azure Table storage (the function app's own storage account, CMK_LEDGER_TABLE).

One partition per key (hashed versionless key URI) holds, per consumer, the latest forced-adoption
intent and the last recorded conditions, and per key version its conditions: ``load`` is one
partition query. Every write is ETag-conditional against what this instance last read or wrote, so
two instances reconciling the same key cannot silently overwrite each other: an intent's loser gets
Conflict, and the reconciler reads that intent again and the consumer from ARM and plans from them; a
conditions save's loser gets Conflict, and the reconciler re-reads the record and the consumers and
saves what it plans from them.

Write claims (one row per consumer: owner, the write, until when) keep two reconcile runs off the same
consumer while it is written (the owner is a run, not a process: two runs in one process exclude each
other too): a claim is created atomically, and taken over ETag-conditionally only when it has ended (its
run finished the consumer and noted when), has lapsed (its run crashed), or a continuation of its owner
inherits it. A run that takes over a claim which ended after it read the consumer re-reads it first, so it
never repeats a write from a read older than that write.

A key's worklist (what a run cut off by its time budget leaves its continuations: each consumer as it last
knew it) lives in a partition of its own, so that ``load`` does not read it: one row per consumer (its
state as JSON, the worklist's id) and a head row (the id, how many consumers, when saved). A new worklist
replaces the key's rows and head; a continuation loads the rows of its worklist (1,000 a page) and believes
them only when all are there (another run's worklist may have taken some over: then none, and the inventory
lists the consumers again), and records the states it changed, each ETag-conditional against what it loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from azure.core import MatchConditions
from azure.data.tables import TableClient, UpdateMode

from controller.adapters.azure_errors import translated
from controller.adapters.created_once import CreatedOnce
from controller.errors import Conflict, NotFound, TransientError
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

log = logging.getLogger("controller.adapters.rotation_ledger")

_INTENT = "intent"
_CONSUMER_CONDITIONS = "consumer"
_VERSION_CONDITIONS = "version"
_CLAIM = "claim"
_WORK = "work"
_WORKLIST = "worklist"
_WORKLIST_HEAD = "head"
#: Operations in one entity-group transaction: Azure Tables takes at most 100 (one partition, 4 MiB).
TRANSACTION_ROWS = 100


#: How far apart two instances' clocks may be: a claim that ended this long before a consumer was read may
#: still have been written after the read (the reader re-reads it: one read, only after such a race).
CLOCK_SKEW = timedelta(seconds=30)


@dataclass(frozen=True, slots=True)
class _HeldClaim:
    owner: str
    until: datetime
    etag: str | None


def _digest(text: str) -> str:
    return hashlib.sha256(text.lower().encode("utf-8")).hexdigest()[:40]


def _partition(key: KeyRef) -> str:
    return "rotation-" + _digest(key.versionless.uri)


def _row(kind: str, subject: str) -> str:
    return f"{kind}-{_digest(subject)}"


def _worklist_partition(key: KeyRef) -> str:
    return "worklist-" + _digest(key.versionless.uri)


def _key_json(key: KeyRef | None) -> dict[str, str | None] | None:
    return None if key is None else {"vault": key.vault.url, "name": key.name, "version": key.version}


def _key_from(item: Mapping[str, Any]) -> KeyRef:
    return KeyRef(VaultOrigin(item["vault"]), item["name"], item["version"])


def _consumer_json(consumer: Consumer) -> str:
    return json.dumps({
        "kind": consumer.kind.value, "resource_id": consumer.resource_id, "account_name": consumer.account_name,
        "key": _key_json(consumer.key), "current_key": _key_json(consumer.current_key),
        "scope_name": consumer.scope_name,
        "last_key_rotation": consumer.last_key_rotation.isoformat() if consumer.last_key_rotation else None,
        "identity_access": consumer.identity_access.value, "tags": [list(tag) for tag in consumer.tags],
    })


def _consumer_from(text: str) -> Consumer:
    item = json.loads(text)
    current, rotated = item["current_key"], item["last_key_rotation"]
    return Consumer(
        kind=ConsumerKind(item["kind"]), resource_id=item["resource_id"], account_name=item["account_name"],
        key=_key_from(item["key"]), current_key=_key_from(current) if current else None, scope_name=item["scope_name"],
        last_key_rotation=datetime.fromisoformat(rotated) if rotated else None,
        identity_access=IdentityAccess(item["identity_access"]),
        tags=tuple((name, value) for name, value in item["tags"]))


def _conditions_json(conditions: tuple[Condition, ...]) -> str:
    return json.dumps([
        {"type": condition.type, "status": condition.status.value, "reason": condition.reason.value,
         "message": condition.message, "last_transition": condition.last_transition.isoformat(),
         "observed_version": condition.observed_version}
        for condition in conditions
    ])


def _conditions_from(text: str) -> tuple[Condition, ...]:
    """Conditions as persisted; one that no longer parses (a reason this version does not know, a
    damaged row) is dropped: the planner then derives it afresh, with a new transition time."""
    conditions = []
    for item in json.loads(text):
        try:
            conditions.append(Condition(
                type=item["type"], status=ConditionStatus(item["status"]), reason=Reason(item["reason"]),
                message=item["message"], last_transition=datetime.fromisoformat(item["last_transition"]),
                observed_version=item.get("observed_version")))
        except (KeyError, TypeError, ValueError):
            log.warning("dropped an unreadable persisted condition of type %r", item.get("type"))
    return tuple(conditions)


class TableRotationLedger:
    def __init__(self, table: TableClient) -> None:
        self._table = table
        self._etags: dict[tuple[str, str], str] = {}
        #: The write claims this ledger made: (partition, row) -> its owner, until when, and the row's ETag.
        self._claims_held: dict[tuple[str, str], _HeldClaim] = {}
        self._ensure_table = CreatedOnce(table.create_table, f"table {table.table_name}")


    def load(self, key: KeyRef) -> RotationRecord:
        self._ensure_table()
        partition = _partition(key)
        intents: list[ForceAdoptionIntent] = []
        consumer_conditions: dict[str, tuple[Condition, ...]] = {}
        version_conditions: dict[str, tuple[Condition, ...]] = {}
        with translated(f"read the rotation record of {key.versionless.uri}"):
            entities = list(self._table.query_entities("PartitionKey eq @partition",
                                                       parameters={"partition": partition}))
        for entity in entities:
            etag = entity.metadata.get("etag")
            if etag:
                self._etags[(partition, entity["RowKey"])] = etag
            kind = entity.get("Kind")
            if kind == _INTENT:
                intents.append(_intent_from(entity))
            elif kind == _CONSUMER_CONDITIONS:
                consumer_conditions[entity["Subject"]] = _conditions_from(entity["Conditions"])
            elif kind == _VERSION_CONDITIONS:
                version_conditions[entity["Subject"]] = _conditions_from(entity["Conditions"])
        return RotationRecord(tuple(intents), consumer_conditions, version_conditions)

    def save_intent(self, key: KeyRef, intent: ForceAdoptionIntent) -> None:
        try:
            self._put(key, _INTENT, intent.consumer_id, {
                "TargetVersion": intent.target_version, "Step": intent.step.value, "StartedAt": intent.started_at,
            })
        except Conflict as err:
            raise Conflict(f"the forced-adoption record of {intent.consumer_id} changed concurrently") from err

    def load_intent(self, key: KeyRef, consumer_id: str) -> ForceAdoptionIntent | None:
        self._ensure_table()
        partition, row = _partition(key), _row(_INTENT, consumer_id)
        try:
            with translated(f"read the forced-adoption record of {consumer_id}"):
                entity = self._table.get_entity(partition, row)
        except NotFound:
            self._etags.pop((partition, row), None)
            return None
        etag = entity.metadata.get("etag")
        if etag:
            self._etags[(partition, row)] = etag
        return _intent_from(entity)

    def claim_write(self, key: KeyRef, consumer_id: str, write: str, *, owner: str, now: datetime,
                    until: datetime, read_at: datetime, read_state: str | None = None,
                    inherits: str | None = None) -> WriteClaim:
        self._ensure_table()
        partition, row = _partition(key), _row(_CLAIM, consumer_id)
        held_by = self._claims_held.get((partition, row))
        if held_by is not None and held_by.owner == owner and held_by.until - now >= (until - now) / 2:
            # The owner's own claim on the consumer (its previous write, e.g. a forced adoption's pin) still
            # keeps the others off for most of a claim's time: no round trip to renew it.
            return WriteClaim.CLAIMED
        entity = {"PartitionKey": partition, "RowKey": row, "Kind": _CLAIM, "Subject": consumer_id,
                  "Key": key.versionless.uri, "Write": write, "Owner": owner, "Until": until}
        what = f"claim a write of {consumer_id}"
        try:
            metadata = self._claim_row(lambda: self._table.create_entity(entity), partition, row, entity, what,
                                       ambiguous=(TransientError,))  # a 409 is someone's row: read below
        except Conflict:
            pass  # a claim exists: ours, inherited, ended, lapsed, or someone else's
        else:
            self._claims_held[(partition, row)] = _HeldClaim(owner, until, metadata.get("etag"))
            return WriteClaim.CLAIMED
        with translated(what):
            held = self._table.get_entity(partition, row)
        holder = held.get("Owner")
        ours = holder == owner or (inherits is not None and holder == inherits)
        if not ours and held.get("Until") is not None and held["Until"] > now:
            return WriteClaim.HELD_ELSEWHERE
        try:
            metadata = self._claim_row(lambda: self._table.update_entity(
                entity, mode=UpdateMode.REPLACE, etag=held.metadata["etag"],
                match_condition=MatchConditions.IfNotModified), partition, row, entity, what,
                ambiguous=(TransientError, Conflict))
        except Conflict:
            return WriteClaim.HELD_ELSEWHERE  # another run took the ended, lapsed or inherited claim first
        self._claims_held[(partition, row)] = _HeldClaim(owner, until, metadata.get("etag"))
        ended = held.get("Ended")
        if holder != owner and ended is not None and ended >= read_at - CLOCK_SKEW:
            left = held.get("Left")
            if read_state is None or not left or left != read_state:
                return WriteClaim.CHANGED_SINCE_READ
        return WriteClaim.CLAIMED

    def _claim_row(self, write: Callable[[], Mapping[str, Any]], partition: str, row: str, entity: Mapping[str, Any],
                   what: str, *, ambiguous: tuple[type[Exception], ...]) -> Mapping[str, Any]:
        """``write`` (the claim row's create or conditional replace) and its answer. When the answer is lost (a
        connection reset after Table storage acted, or the SDK's retry of a write that had landed refused as
        a conflict), the row is read back: holding this claim (``entity``'s owner and until), it is this run's
        and the read stands for the answer. Without that, the run believed it held nothing while every other
        run was kept off the consumer until the claim lapsed (10 minutes), a versionless account left pinned.
        An older claim of the same run is not proof; any other row stored answers as a refusal (Conflict)
        would have."""
        try:
            with translated(what):
                return write()
        except ambiguous as lost:
            try:
                with translated(what):
                    stored = self._table.get_entity(partition, row)
            except (TransientError, NotFound):
                raise lost from None
            if stored.get("Owner") != entity["Owner"] or stored.get("Until") != entity["Until"]:
                raise Conflict(f"{what}: the claim stored is not this one") from lost  # as if refused
            return {"etag": stored.metadata.get("etag")}

    def release_writes(self, key: KeyRef, consumer_ids: Sequence[str], *, owner: str, now: datetime,
                       left: Mapping[str, str] | None = None) -> None:
        """Each claim row still ``owner``'s (ETag-conditional) ends now: ``Until`` and ``Ended`` set to now,
        up to ``TRANSACTION_ROWS`` rows per entity-group transaction; a row taken over meanwhile stays."""
        self._ensure_table()
        partition = _partition(key)
        ended: list[tuple[str, dict[str, Any], str]] = []
        for consumer_id in consumer_ids:
            row = _row(_CLAIM, consumer_id)
            held_by = self._claims_held.get((partition, row))
            if held_by is None or held_by.owner != owner or held_by.etag is None:
                continue
            del self._claims_held[(partition, row)]
            ended.append((row, {"PartitionKey": partition, "RowKey": row, "Kind": _CLAIM, "Subject": consumer_id,
                                "Key": key.versionless.uri, "Write": "", "Owner": owner, "Until": now,
                                "Ended": now, "Left": (left or {}).get(consumer_id, "")}, held_by.etag))
        options = {"mode": UpdateMode.REPLACE, "match_condition": MatchConditions.IfNotModified}
        # A claim taken over meanwhile (it had lapsed) or gone is not ours to end: the others end all the same.
        self._submit_unless_changed(f"end the write claims of {key.versionless.uri}",
                                    [("update", entity, {**options, "etag": etag}) for _, entity, etag in ended])

    def _submit_unless_changed(self, what: str, operations: Sequence[Any]) -> list[Mapping[str, Any] | None]:
        """``operations`` (one partition's), ``TRANSACTION_ROWS`` per entity-group transaction; when one of a
        transaction's rows was changed or removed by someone else (Conflict, NotFound: the transaction wrote
        nothing) its operations are submitted one by one, and those refused are left out. Each operation's
        answer (None: left out)."""
        answers: list[Mapping[str, Any] | None] = []
        for start in range(0, len(operations), TRANSACTION_ROWS):
            batch = operations[start:start + TRANSACTION_ROWS]
            try:
                with translated(what):
                    answers.extend(self._table.submit_transaction(batch))
                continue
            except (Conflict, NotFound):
                pass
            for operation in batch:
                try:
                    with translated(what):
                        answers.extend(self._table.submit_transaction([operation]))
                except (Conflict, NotFound):
                    answers.append(None)
        return answers

    def save_conditions(
        self,
        key: KeyRef,
        consumer_conditions: Mapping[str, tuple[Condition, ...]],
        version_conditions: Mapping[str, tuple[Condition, ...]],
    ) -> None:
        """Up to ``TRANSACTION_ROWS`` rows per entity-group transaction (one request, not one per consumer),
        each ETag-conditional; Conflict when another instance changed one of them since this instance
        read or wrote it (that transaction wrote nothing: re-read, re-plan, save again)."""
        self._ensure_table()
        partition = _partition(key)
        rows = [(_CONSUMER_CONDITIONS, subject, conditions) for subject, conditions in consumer_conditions.items()]
        rows += [(_VERSION_CONDITIONS, subject, conditions) for subject, conditions in version_conditions.items()]
        for start in range(0, len(rows), TRANSACTION_ROWS):
            operations: list[Any] = []
            for kind, subject, conditions in rows[start:start + TRANSACTION_ROWS]:
                entity = self._entity(key, kind, subject, {"Conditions": _conditions_json(conditions)})
                etag = self._etags.get((partition, entity["RowKey"]))
                operations.append(("create", entity) if etag is None else (
                    "update", entity,
                    {"mode": UpdateMode.REPLACE, "etag": etag, "match_condition": MatchConditions.IfNotModified}))
            try:
                with translated(f"write the conditions of {key.versionless.uri}"):
                    answers = self._table.submit_transaction(operations)
            except Conflict as err:
                for operation in operations:
                    self._etags.pop((partition, operation[1]["RowKey"]), None)
                raise Conflict(f"the conditions of {key.versionless.uri} changed concurrently") from err
            for operation, answer in zip(operations, answers, strict=True):
                if answer.get("etag"):
                    self._etags[(partition, operation[1]["RowKey"])] = answer["etag"]

    def start_worklist(self, key: KeyRef, worklist_id: str, consumers: Sequence[Consumer], *, now: datetime) -> None:
        """The rows first (upserted: they take over the rows of the key's previous worklist), ``TRANSACTION_ROWS``
        per transaction, then the head: a continuation of the previous worklist finds the head another's, or
        (between the two) fewer of its rows than its head counts, and believes none of them."""
        self._ensure_table()
        partition = _worklist_partition(key)
        operations = [("upsert", self._work_row(key, worklist_id, consumer.id, consumer), {"mode": UpdateMode.REPLACE})
                      for consumer in consumers]
        for start in range(0, len(operations), TRANSACTION_ROWS):
            batch = operations[start:start + TRANSACTION_ROWS]
            with translated(f"record the worklist of {key.versionless.uri}"):
                answers = self._table.submit_transaction(batch)
            for (_, entity, _), answer in zip(batch, answers, strict=True):
                if answer.get("etag"):
                    self._etags[(partition, entity["RowKey"])] = answer["etag"]
        with translated(f"record the worklist of {key.versionless.uri}"):
            self._table.upsert_entity({"PartitionKey": partition, "RowKey": _WORKLIST_HEAD, "Kind": _WORKLIST,
                                       "Key": key.versionless.uri, "Worklist": worklist_id,
                                       "Consumers": len(consumers), "SavedAt": now}, mode=UpdateMode.REPLACE)

    def load_worklist(self, key: KeyRef, worklist_id: str) -> Worklist | None:
        self._ensure_table()
        partition = _worklist_partition(key)
        what = f"read the worklist of {key.versionless.uri}"
        head = self._worklist_head(partition, what)
        if head is None or head.get("Worklist") != worklist_id:
            return None
        with translated(what):
            rows = list(self._table.query_entities(
                "PartitionKey eq @partition and Kind eq @kind and Worklist eq @worklist",
                parameters={"partition": partition, "kind": _WORK, "worklist": worklist_id}))
        if len(rows) != head.get("Consumers"):
            log.info("worklist %s of %s is not whole: %d of its %s rows", worklist_id, key.versionless.uri,
                     len(rows), head.get("Consumers"))
            return None
        consumers = []
        for entity in rows:
            etag = entity.metadata.get("etag")
            if etag:
                self._etags[(partition, entity["RowKey"])] = etag
            if not entity.get("State"):
                continue
            try:
                consumers.append(_consumer_from(entity["State"]))
            except (KeyError, TypeError, ValueError):  # another version's row, or a damaged one: not believed
                log.warning("worklist %s of %s has an unreadable row", worklist_id, key.versionless.uri)
                return None
        return Worklist(worklist_id, head["SavedAt"], tuple(consumers))

    def _worklist_head(self, partition: str, what: str) -> Any | None:
        """The key's worklist head row (which worklist it has, how many rows, when saved); None: none."""
        try:
            with translated(what):
                return self._table.get_entity(partition, _WORKLIST_HEAD)
        except NotFound:
            return None

    def update_worklist(self, key: KeyRef, worklist_id: str, changed: Mapping[str, Consumer | None], *,
                        now: datetime) -> None:
        """The head is read first (Conflict when it names another worklist), the changed rows are replaced
        ETag-conditionally (those someone else replaced since they were loaded are left as they are), then
        the head's ``SavedAt``, conditional on the head read."""
        self._ensure_table()
        partition = _worklist_partition(key)
        what = f"record the worklist of {key.versionless.uri}"
        head = self._worklist_head(partition, what)
        if head is None:
            raise Conflict(f"the worklist of {key.versionless.uri} is gone")
        if head.get("Worklist") != worklist_id:
            raise Conflict(f"the worklist of {key.versionless.uri} was replaced by another run's")
        operations: list[Any] = []
        for consumer_id, consumer in changed.items():
            entity = self._work_row(key, worklist_id, consumer_id, consumer)
            etag = self._etags.get((partition, entity["RowKey"]))
            operations.append(("create", entity) if etag is None else (
                "update", entity,
                {"mode": UpdateMode.REPLACE, "etag": etag, "match_condition": MatchConditions.IfNotModified}))
        for operation, answer in zip(operations, self._submit_unless_changed(what, operations), strict=True):
            if answer is not None and answer.get("etag"):
                self._etags[(partition, operation[1]["RowKey"])] = answer["etag"]
        with translated(what):
            self._table.update_entity({"PartitionKey": partition, "RowKey": _WORKLIST_HEAD, "SavedAt": now},
                                      mode=UpdateMode.MERGE, etag=head.metadata["etag"],
                                      match_condition=MatchConditions.IfNotModified)

    def _work_row(self, key: KeyRef, worklist_id: str, consumer_id: str, consumer: Consumer | None) -> dict[str, Any]:
        """A worklist's row of one consumer (``State`` empty: no longer a consumer of the key)."""
        return {"PartitionKey": _worklist_partition(key), "RowKey": _row(_WORK, consumer_id), "Kind": _WORK,
                "Subject": consumer_id, "Worklist": worklist_id,
                "State": _consumer_json(consumer) if consumer is not None else ""}

    def _entity(self, key: KeyRef, kind: str, subject: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        return {"PartitionKey": _partition(key), "RowKey": _row(kind, subject), "Kind": kind, "Subject": subject,
                "Key": key.versionless.uri, **fields}

    def _put(self, key: KeyRef, kind: str, subject: str, fields: Mapping[str, Any]) -> None:
        """Create the row, or replace it if it is still as this instance last read or wrote it.

        Raises Conflict when another instance created or changed it first (the cached ETag is dropped).
        """
        self._ensure_table()
        entity = self._entity(key, kind, subject, fields)
        partition, row = entity["PartitionKey"], entity["RowKey"]
        etag = self._etags.get((partition, row))
        try:
            with translated(f"write the rotation record of {key.versionless.uri}"):
                if etag is None:
                    metadata = self._table.create_entity(entity)
                else:
                    metadata = self._table.update_entity(entity, mode=UpdateMode.REPLACE, etag=etag,
                                                         match_condition=MatchConditions.IfNotModified)
        except Conflict:  # a lost ETag race (update) or a row another instance created (create)
            self._etags.pop((partition, row), None)
            raise
        new_etag = metadata.get("etag")
        if new_etag:
            self._etags[(partition, row)] = new_etag


def _intent_from(entity: Mapping[str, Any]) -> ForceAdoptionIntent:
    return ForceAdoptionIntent(consumer_id=entity["Subject"], target_version=entity["TargetVersion"],
                               step=ForceAdoptionStep(entity["Step"]), started_at=entity["StartedAt"])

"""AlertLedger on Azure Table storage (the function app's own storage account, CMK_LEDGER_TABLE).

Alert states: one partition per scope (hashed), one row per fingerprint; every write is conditional
on the ETag this instance read (or on the row not existing), so two instances cannot both record the
same transition: the loser gets Conflict and the desk decides again on what the winner wrote.
The outbox: one partition, one row per delivery (channel + notice), created once and marked when
delivered, so the same notice decided twice (two instances, a retried invocation) is owed once; an
instance claims a row (ETag-conditional, moving its next attempt a lease ahead) before delivering it,
so two instances dispatching at once deliver it once.
The ETags are remembered per thread: the Functions host runs invocations on threads that share the
process's ledger, and each must save against what it read itself (with one shared memory, a save
would carry the ETag another invocation's save left, and overwrite that change without a Conflict).
A row this version cannot read (written by a newer controller, or damaged) is logged and skipped:
for a state the desk then treats the alert as new (one extra notice, nothing lost).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from azure.core import MatchConditions
from azure.data.tables import TableClient, UpdateMode

from controller.adapters.azure_errors import translated
from controller.adapters.created_once import CreatedOnce
from controller.alerts import (
    AlertState,
    AlertStatus,
    ChannelKind,
    Delivery,
    Notice,
    Transition,
    alert_from_json,
    alert_to_json,
)
from controller.errors import Conflict, NotFound

log = logging.getLogger("controller.adapters.alert_ledger")

_STATE_PREFIX = "alert-"
_OUTBOX = "alert-outbox"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:40]


def _state_keys(scope: str, fingerprint: str) -> tuple[str, str]:
    return _STATE_PREFIX + _digest(scope.lower()), _digest(fingerprint)


class TableAlertLedger:
    def __init__(self, table: TableClient) -> None:
        self._table = table
        self._reads = threading.local()
        self._ensure_table = CreatedOnce(table.create_table, f"table {table.table_name}")

    @property
    def _etags(self) -> dict[tuple[str, str], str]:
        """Per state row: the ETag this thread last read or wrote."""
        etags: dict[tuple[str, str], str] | None = getattr(self._reads, "states", None)
        if etags is None:
            etags = self._reads.states = {}
        return etags

    @property
    def _outbox_etags(self) -> dict[str, str]:
        """Per outbox row: the ETag this thread's ``due`` read, for ``claim``."""
        etags: dict[str, str] | None = getattr(self._reads, "outbox", None)
        if etags is None:
            etags = self._reads.outbox = {}
        return etags

    # ---- states ---------------------------------------------------------------------------------------
    def load_scope(self, scope: str) -> list[AlertState]:
        self._ensure_table()
        partition = _STATE_PREFIX + _digest(scope.lower())
        with translated(f"read the alerts of {scope}"):
            entities = list(self._table.query_entities("PartitionKey eq @p", parameters={"p": partition}))
        states = []
        for entity in entities:
            state = self._remember(entity)
            if state is not None:
                states.append(state)
        return states

    def load(self, scope: str, fingerprint: str) -> AlertState | None:
        self._ensure_table()
        partition, row = _state_keys(scope, fingerprint)
        try:
            with translated(f"read alert {fingerprint}"):
                entity = self._table.get_entity(partition, row)
        except NotFound:
            self._etags.pop((partition, row), None)
            return None
        return self._remember(entity)

    def save(self, states: Sequence[AlertState], deliveries: Sequence[Delivery]) -> None:
        self._ensure_table()
        for delivery in deliveries:  # the outbox first: a crash before the states re-sends, never loses
            try:
                with translated("write the alert outbox"):
                    self._table.create_entity({**_delivery_fields(delivery), "Delivered": False})
            except Conflict:
                pass  # owed or made already (another instance decided the same transition)
        for state in states:
            partition, row = _state_keys(state.scope, state.fingerprint)
            entity = {"PartitionKey": partition, "RowKey": row, **_state_fields(state)}
            etag = self._etags.get((partition, row))
            with translated(f"record alert {state.fingerprint}"):
                if etag is None:
                    metadata = self._table.create_entity(entity)
                else:
                    metadata = self._table.update_entity(entity, mode=UpdateMode.REPLACE, etag=etag,
                                                         match_condition=MatchConditions.IfNotModified)
            self._etags[(partition, row)] = metadata["etag"]

    def _remember(self, entity: Any) -> AlertState | None:
        key = (str(entity["PartitionKey"]), str(entity["RowKey"]))
        self._etags[key] = entity.metadata["etag"]
        try:
            return _state_from(entity)
        except (KeyError, TypeError, ValueError):
            log.warning("skipped an unreadable alert state (row %s)", key[1])
            return None

    # ---- outbox ---------------------------------------------------------------------------------------
    def due(self, now: datetime, *, limit: int) -> list[Delivery]:
        self._ensure_table()
        with translated("read the alert outbox"):
            entities = self._table.query_entities(
                "PartitionKey eq @p and Delivered eq false and NextAttempt le @now",
                parameters={"p": _OUTBOX, "now": now})
            rows = []
            for entity in entities:
                rows.append(entity)
                if len(rows) >= limit * 4:  # bounded read; ordering below picks the oldest of these
                    break
        deliveries = []
        for entity in rows:
            try:
                deliveries.append(_delivery_from(entity))
            except (KeyError, TypeError, ValueError):
                log.warning("skipped an unreadable alert delivery (row %s)", entity["RowKey"])
                continue
            self._outbox_etags[str(entity["RowKey"])] = str(entity.metadata["etag"])
        deliveries.sort(key=lambda delivery: (delivery.next_attempt or now, delivery.key))
        return deliveries[:limit]

    def claim(self, delivery: Delivery, until: datetime) -> bool:
        row = _digest(delivery.key)
        etag = self._outbox_etags.pop(row, None)
        if etag is None:
            return False  # not read by this instance's ``due``: nothing to claim against
        try:
            with translated("claim an alert delivery"):
                self._table.update_entity({"PartitionKey": _OUTBOX, "RowKey": row, "NextAttempt": until},
                                          mode=UpdateMode.MERGE, etag=etag,
                                          match_condition=MatchConditions.IfNotModified)
        except (Conflict, NotFound):
            return False  # another instance took it (or delivered it) first
        return True

    def delivered(self, delivery: Delivery) -> None:
        # Kept, marked: a late duplicate decision of the same transition finds it and owes nothing.
        with translated("mark an alert delivered"):
            self._table.update_entity({"PartitionKey": _OUTBOX, "RowKey": _digest(delivery.key), "Delivered": True},
                                      mode=UpdateMode.MERGE)

    def reschedule(self, delivery: Delivery) -> None:
        fields = {key: value for key, value in _delivery_fields(delivery).items() if key != "Notice"}
        with translated("reschedule an alert delivery"):
            self._table.update_entity(fields, mode=UpdateMode.MERGE)


def _delivery_fields(delivery: Delivery) -> dict[str, object]:
    return {"PartitionKey": _OUTBOX, "RowKey": _digest(delivery.key), "Channel": delivery.channel.value,
            "Notice": json.dumps(_notice_json(delivery.notice)), "Attempts": delivery.attempts,
            "NextAttempt": delivery.next_attempt or delivery.notice.at, "LastError": delivery.last_error}


def _state_fields(state: AlertState) -> dict[str, object]:
    return {"Scope": state.scope, "Status": state.status.value, "Alert": json.dumps(alert_to_json(state.alert)),
            "OpenedAt": state.opened_at, "LastNotifiedAt": state.last_notified_at,
            "Notifications": state.notifications, "ResolvedAt": state.resolved_at}


def _state_from(entity: Any) -> AlertState:
    resolved = entity.get("ResolvedAt")
    return AlertState(scope=str(entity["Scope"]), alert=alert_from_json(json.loads(entity["Alert"])),
                      status=AlertStatus(entity["Status"]), opened_at=_moment(entity["OpenedAt"]),
                      last_notified_at=_moment(entity["LastNotifiedAt"]),
                      notifications=int(entity["Notifications"]),
                      resolved_at=_moment(resolved) if resolved is not None else None)


def _notice_json(notice: Notice) -> dict[str, object]:
    return {"transition": notice.transition.value, "alert": alert_to_json(notice.alert), "scope": notice.scope,
            "openedAt": notice.opened_at.isoformat(), "at": notice.at.isoformat(),
            "notifications": notice.notifications}


def _delivery_from(entity: Any) -> Delivery:
    document = json.loads(entity["Notice"])
    notice = Notice(transition=Transition(document["transition"]), alert=alert_from_json(document["alert"]),
                    scope=str(document["scope"]), opened_at=datetime.fromisoformat(document["openedAt"]),
                    at=datetime.fromisoformat(document["at"]), notifications=int(document["notifications"]))
    return Delivery(channel=ChannelKind(entity["Channel"]), notice=notice, attempts=int(entity["Attempts"]),
                    next_attempt=_moment(entity["NextAttempt"]), last_error=str(entity.get("LastError") or ""))


def _moment(value: object) -> datetime:
    if isinstance(value, datetime):
        return value
    raise TypeError(f"expected a date-time, got {type(value).__name__}")


if TYPE_CHECKING:  # mypy proves the adapter satisfies its port
    from controller.ports import AlertLedger

    def _implements_port(adapter: TableAlertLedger) -> AlertLedger:
        return adapter

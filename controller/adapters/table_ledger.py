"""EventLedger on Azure Table storage (the function app's own storage account).

One entity per processed event id. Claims are atomic: create_entity fails if another instance
claimed the id first; an expired claim is taken over with an ETag-conditional replace, so two
instances racing for it cannot both win.
"""

from __future__ import annotations

import contextlib
import hashlib
from datetime import datetime, timedelta

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

from controller.adapters.azure_errors import translated
from controller.adapters.created_once import CreatedOnce
from controller.errors import Conflict

_EVENT_PARTITION_PREFIX = "event-"
_PURGE_BATCH = 1000


def _keys(event_id: str) -> tuple[str, str]:
    # Event ids are chosen by the sender: hash them so no character can break a RowKey, and spread
    # the claims over 256 partitions.
    digest = hashlib.sha256(event_id.encode("utf-8")).hexdigest()
    return _EVENT_PARTITION_PREFIX + digest[:2], digest


class TableEventLedger:
    def __init__(self, table: TableClient) -> None:
        self._table = table
        self._ensure_table = CreatedOnce(table.create_table, f"table {table.table_name}")


    def claim_event(self, event_id: str, *, now: datetime, ttl: timedelta) -> bool:
        self._ensure_table()
        partition, row = _keys(event_id)
        entity = {
            "PartitionKey": partition,
            "RowKey": row,
            "EventId": event_id[:1024],
            "ClaimedAt": now,
            "ExpiresAt": now + ttl,
        }
        try:
            with translated("claim event"):
                self._table.create_entity(entity)
        except Conflict:
            pass
        else:
            return True
        with translated("read event claim"):
            try:
                existing = self._table.get_entity(partition, row)
            except ResourceNotFoundError:
                existing = None
        if existing is None:  # released between our create and read: try once more
            return self._create_or_lose(entity)
        expires = existing.get("ExpiresAt")
        if isinstance(expires, datetime) and expires > now:
            return False
        with translated("take over expired event claim"):
            try:
                self._table.update_entity(
                    entity,
                    mode=UpdateMode.REPLACE,
                    etag=existing.metadata["etag"],
                    match_condition=MatchConditions.IfNotModified,
                )
            except ResourceModifiedError:
                return False
        return True

    def _create_or_lose(self, entity: dict[str, object]) -> bool:
        with translated("claim event"):
            try:
                self._table.create_entity(entity)
            except ResourceExistsError:
                return False
        return True

    def release_event(self, event_id: str) -> None:
        partition, row = _keys(event_id)
        with translated("release event claim"), contextlib.suppress(ResourceNotFoundError):
            self._table.delete_entity(partition, row)

    def purge_expired(self, *, now: datetime) -> int:
        """Delete up to one batch of expired claims; return how many were deleted."""
        self._ensure_table()
        deleted = 0
        with translated("purge expired event claims"):
            expired = self._table.query_entities(
                "ExpiresAt lt @now", parameters={"now": now}, select=["PartitionKey", "RowKey"]
            )
            for entity in expired:
                if not str(entity["PartitionKey"]).startswith(_EVENT_PARTITION_PREFIX):
                    continue
                try:
                    self._table.delete_entity(
                        entity["PartitionKey"], entity["RowKey"],
                        etag=entity.metadata["etag"], match_condition=MatchConditions.IfNotModified,
                    )
                except (ResourceNotFoundError, ResourceModifiedError):
                    continue  # released or re-claimed meanwhile: not ours to delete
                deleted += 1
                if deleted >= _PURGE_BATCH:
                    break
        return deleted

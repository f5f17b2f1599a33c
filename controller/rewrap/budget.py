"""The time budget of one work item: a deadline, and a BlobStore that stops between pages once it passed."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from controller.ports import BlobItem, BlobPage, BlobStore, Clock


class BudgetExhausted(Exception):
    """The item's time budget is spent; the run stopped between two pages (progress is checkpointed)."""


class TimeBudget:
    """A deadline on the injected clock."""

    def __init__(self, clock: Clock, seconds: float) -> None:
        if seconds <= 0:
            raise ValueError("a time budget must be positive")
        self._clock = clock
        self._deadline: datetime = clock.now() + timedelta(seconds=seconds)

    def expired(self) -> bool:
        return self._clock.now() >= self._deadline


class BudgetedBlobStore:
    """A BlobStore that refuses to start another page once the budget is spent.

    The first page is always listed, so every slice makes progress. The walker saves its checkpoint
    after each completed page, before it asks for the next one: stopping here loses nothing.
    """

    def __init__(self, store: BlobStore, budget: TimeBudget) -> None:
        self._store = store
        self._budget = budget
        self.pages = 0

    def list_blobs(self, container: str, *, prefix: str | None, marker: str | None) -> BlobPage:
        if self.pages and self._budget.expired():
            raise BudgetExhausted
        page = self._store.list_blobs(container, prefix=prefix, marker=marker)
        self.pages += 1
        return page

    def get_properties(self, container: str, name: str) -> BlobItem:
        return self._store.get_properties(container, name)

    def set_metadata(self, container: str, name: str, metadata: Mapping[str, str], *, if_match: str) -> str:
        return self._store.set_metadata(container, name, metadata, if_match=if_match)

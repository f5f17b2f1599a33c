"""Small hand-written fakes of the ports, for unit tests of the pure core and the function entry points."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from controller.errors import TransientError


@dataclass
class FakeClock:
    moment: datetime = field(default_factory=lambda: datetime(2026, 11, 30, 12, 0, tzinfo=UTC))

    def now(self) -> datetime:
        return self.moment

    def advance(self, delta: timedelta) -> None:
        self.moment += delta


@dataclass
class FakeLedger:
    """Event claims in a dict; can be told to fail transiently to exercise retry paths."""

    claims: dict[str, datetime] = field(default_factory=dict)
    fail_with: TransientError | None = None
    released: list[str] = field(default_factory=list)

    def claim_event(self, event_id: str, *, now: datetime, ttl: timedelta) -> bool:
        if self.fail_with is not None:
            raise self.fail_with
        expires = self.claims.get(event_id)
        if expires is not None and expires > now:
            return False
        self.claims[event_id] = now + ttl
        return True

    def release_event(self, event_id: str) -> None:
        self.claims.pop(event_id, None)
        self.released.append(event_id)

    def purge_expired(self, *, now: datetime) -> int:
        expired = [event_id for event_id, expires in self.claims.items() if expires <= now]
        for event_id in expired:
            del self.claims[event_id]
        return len(expired)

"""The sandbox clock: real time plus an offset that tests and the demo advance through admin APIs.

Everything time-driven in the sandbox (key expiry and not-before, purge dates, rotation policies,
Event Grid retry schedules, storage's daily key polling) reads this clock, so a test can move a
day forward in a millisecond and see the same behaviour Azure shows after a day.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta


class SandboxClock:
    def __init__(self, offset: timedelta = timedelta(0)) -> None:
        self._offset = offset
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            offset = self._offset
        return datetime.now(UTC) + offset

    @property
    def offset(self) -> timedelta:
        with self._lock:
            return self._offset

    def advance(self, delta: timedelta) -> datetime:
        """Move sandbox time forward (never backward: time-driven state must not un-happen)."""
        if delta < timedelta(0):
            raise ValueError("the sandbox clock only moves forward")
        with self._lock:
            self._offset += delta
        return self.now()

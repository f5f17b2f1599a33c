"""The sandbox clock: real time plus an offset that tests and the demo advance through admin APIs.

Everything time-driven in the sandbox (key expiry and not-before, purge dates, rotation policies,
Event Grid retry schedules, storage's daily key polling, ARM's throttling buckets) reads this clock,
so a test can move a day forward in a millisecond and see the same behaviour Azure shows after a day.

``rate`` makes sandbox time run faster than real time (``rate=10``: ten sandbox seconds per real
second) so that a large run under Azure's ARM limits fits in minutes while every ratio between
latency, refill rate and elapsed time stays what it is in Azure (emulators/arm/throttling.py).
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta


class SandboxClock:
    def __init__(self, offset: timedelta = timedelta(0), *, rate: float = 1.0) -> None:
        if rate <= 0:
            raise ValueError("the sandbox clock's rate must be positive")
        self._offset = offset
        self._rate = rate
        self._anchor_wall = datetime.now(UTC)
        self._anchor_monotonic = time.monotonic()
        self._lock = threading.Lock()

    @property
    def rate(self) -> float:
        """Sandbox seconds per real second (1.0 unless the sandbox runs scaled)."""
        return self._rate

    def now(self) -> datetime:
        with self._lock:
            offset = self._offset
        if self._rate == 1.0:
            return datetime.now(UTC) + offset
        elapsed = (time.monotonic() - self._anchor_monotonic) * self._rate
        return self._anchor_wall + timedelta(seconds=elapsed) + offset

    def real_seconds(self, sandbox_seconds: float) -> float:
        """How long ``sandbox_seconds`` of sandbox time take in real time."""
        return sandbox_seconds / self._rate

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

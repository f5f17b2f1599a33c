"""Pacing ARM requests by the budget ARM reports, so that a large adoption runs at ARM's rate, not into it.

Azure Resource Manager throttles each subscription (and tenant) per region with token buckets per
operation kind (reads, writes, deletes) and reports what is left on every answer
(``x-ms-ratelimit-remaining-subscription-writes``, ``-tenant-writes``, ...); an empty bucket answers
429 with Retry-After. ``ArmPacer`` is an azure-core pipeline policy placed after the retry policy, so
through ``policy()`` it sees every attempt of every management client built from one ``ArmConnection``:

* while the reported budget is above ``reserve``, requests go at once (the burst is used);
* at or below it, requests of that subscription and kind are spaced ``interval`` apart, and the
  interval adapts to what the headers say: wider while the budget is below a quarter of the
  reserve and falling, narrower while it is above the reserve, unchanged in between. A bucket kept
  between empty and full is refilled at exactly its refill rate and loses nothing, so the achieved
  rate is ARM's refill rate, whatever it is (a budget that rises a little under the reserve is spent
  later, not lost: narrowing it back as soon as it rose, or widening while it merely stays low, made
  the rate saw-tooth below the refill rate);
* a 429 holds every request of that subscription and kind until its Retry-After has passed and
  widens the interval to at least the Retry-After (for an empty bucket, the time one token takes:
  exactly the refill rate), then lets them out one interval apart: no retry storm. The throttled
  request itself is sent again by the pacer when its turn comes, however many 429s it meets, for up
  to ``max_throttled_wait`` seconds of Retry-After in all: a 429 means ARM did not act, so sending again is
  safe, and under a shared budget (another client, the tenant's bucket, Resource Graph) a request can
  meet more 429s than azure-core's few retries allow: one listing failed for good made the whole
  inventory of a large estate fail and start again. Past that bound the 429 goes up to azure-core's
  RetryPolicy (which honours the same Retry-After) and then to the caller.

The counters (``stats``) let benchmarks and ``cmkctl`` report attempts, throttled answers and waits.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import HTTPPolicy

_SUBSCRIPTION = re.compile(r"/subscriptions/([^/?]+)", re.IGNORECASE)
_RESOURCE_GRAPH = "/providers/microsoft.resourcegraph/"
_REMAINING = "x-ms-ratelimit-remaining-{scope}-{kind}"
_RETRY_HEADERS = (("retry-after-ms", 0.001), ("x-ms-retry-after-ms", 0.001), ("retry-after", 1.0))

#: Budget (tokens) below which requests are spaced rather than sent at once.
DEFAULT_RESERVE = 20
#: Seconds of Retry-After one request is held through (sent again after each 429) before its 429 is
#: handed up: ARM's Retry-After is seconds for an emptied bucket, so this rides out minutes of contention.
DEFAULT_MAX_THROTTLED_WAIT = 120.0
#: How much the spacing grows (while the budget keeps falling) or shrinks (while it is plenty) per answer.
_WIDEN, _NARROW, _STEP = 1.1, 0.8, 0.001
_MAX_INTERVAL = 30.0


def operation_kind(method: str, url: str) -> str:
    """ARM's bucket for a request: reads (GET, HEAD, Resource Graph queries), deletes, writes."""
    method = method.upper()
    if method in ("GET", "HEAD") or _RESOURCE_GRAPH in url.lower():
        return "reads"
    return "deletes" if method == "DELETE" else "writes"


def retry_after(headers: Any) -> float | None:
    for header, scale in _RETRY_HEADERS:
        value = headers.get(header)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            continue
    return None


@dataclass
class _Lane:
    """One subscription's (or the tenant's) bucket of one kind, as this process observes it."""

    remaining: int | None = None  # the last reported budget, less the requests sent since
    reported: int | None = None  # the last budget ARM reported
    interval: float = 0.0
    next_slot: float = 0.0
    blocked_until: float = 0.0


@dataclass
class PacerStats:
    attempts: int = 0
    throttled: int = 0
    #: Attempts that repeated a request after a throttled or failed answer (azure-core's retries).
    retries: int = 0
    waited_seconds: float = 0.0
    by_kind: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, object]:
        return {"attempts": self.attempts, "throttled": self.throttled, "retries": self.retries,
                "waited_seconds": round(self.waited_seconds, 3), "by_kind": dict(self.by_kind)}


class ArmPacer:
    """See the module docstring. Thread-safe: one pacer serves every worker and client of a connection,
    each client through its own ``policy()`` (a pipeline policy belongs to exactly one pipeline)."""

    def __init__(self, *, reserve: int = DEFAULT_RESERVE,
                 max_throttled_wait: float = DEFAULT_MAX_THROTTLED_WAIT) -> None:
        if reserve < 1:
            raise ValueError("the pacer's reserve must be at least 1")
        if max_throttled_wait < 0:
            raise ValueError("the pacer's max_throttled_wait must be >= 0 seconds")
        self.reserve = reserve
        self.max_throttled_wait = max_throttled_wait
        self._lanes: dict[tuple[str, str], _Lane] = {}
        self._lock = threading.Lock()
        self.stats = PacerStats()

    def policy(self) -> PacingPolicy:
        """A pipeline policy for one client, pacing through this pacer."""
        return PacingPolicy(self)

    def wait_for_slot(self, lane_key: tuple[str, str], *, repeated: bool) -> None:
        with self._lock:
            lane = self._lanes.setdefault(lane_key, _Lane())
            now = time.monotonic()
            start = max(now, lane.blocked_until)
            if lane.remaining is not None:
                if lane.remaining <= self.reserve:
                    start = max(start, lane.next_slot)
                    lane.next_slot = start + lane.interval
                # This request takes a token before an answer says so: concurrent workers see it.
                lane.remaining = max(0, lane.remaining - 1)
            self.stats.attempts += 1
            self.stats.retries += int(repeated)
            self.stats.by_kind[lane_key[1]] = self.stats.by_kind.get(lane_key[1], 0) + 1
            self.stats.waited_seconds += start - now
        if start > now:
            time.sleep(start - now)

    def observe(self, lane_key: tuple[str, str], status: int, headers: Any) -> None:
        """Take in an answer's budget headers; a 429 holds the lane for its Retry-After."""
        kind = lane_key[1]
        reported = [headers.get(_REMAINING.format(scope=scope, kind=kind)) for scope in ("subscription", "tenant")]
        budgets = [int(value) for value in reported if value is not None and value.isdigit()]
        with self._lock:
            lane = self._lanes.setdefault(lane_key, _Lane())
            if status == 429:
                wait = retry_after(headers) or 1.0
                now = time.monotonic()
                self.stats.throttled += 1
                lane.blocked_until = max(lane.blocked_until, now + wait)
                lane.next_slot = max(lane.next_slot, lane.blocked_until)
                # The bucket is empty, and its Retry-After is the time one token takes: spacing requests
                # that far apart takes tokens exactly as fast as they come back.
                lane.interval = min(_MAX_INTERVAL, max(lane.interval, wait))
                lane.remaining = lane.reported = 0
                return
            if not budgets:
                return
            budget, previous = min(budgets), lane.reported
            lane.remaining = lane.reported = budget
            falling = previous is not None and budget < previous
            if budget > self.reserve:
                lane.interval *= _NARROW  # plenty: speed up
            elif budget < self.reserve / 4 and falling:
                lane.interval = min(_MAX_INTERVAL, lane.interval * _WIDEN + _STEP)

class PacingPolicy(HTTPPolicy):  # type: ignore[type-arg]  # azure-core's generic policy, sync transport
    """Placed after the retry policy: every attempt waits for its slot and reports what ARM answered."""

    def __init__(self, pacer: ArmPacer) -> None:
        super().__init__()
        self._pacer = pacer

    def send(self, request: PipelineRequest) -> PipelineResponse:  # type: ignore[type-arg]
        http = request.http_request
        kind = operation_kind(http.method, http.url)
        match = _SUBSCRIPTION.search(http.url)
        lane_key = ((match.group(1).lower() if match else ""), kind)
        repeated = bool(request.context.get("arm_pacer_sent"))
        request.context["arm_pacer_sent"] = True
        # Counted over the request's whole life, azure-core's retries included: one bound per request.
        held = float(request.context.get("arm_pacer_held", 0.0))
        while True:
            self._pacer.wait_for_slot(lane_key, repeated=repeated)
            response: PipelineResponse = self.next.send(request)  # type: ignore[type-arg]
            status, headers = response.http_response.status_code, response.http_response.headers
            self._pacer.observe(lane_key, status, headers)
            if status != 429 or not _resendable(http):
                return response
            held += retry_after(headers) or 1.0
            request.context["arm_pacer_held"] = held
            if held > self._pacer.max_throttled_wait:
                return response  # azure-core's RetryPolicy, then the caller, decide
            repeated = True  # wait_for_slot holds it until the lane's Retry-After has passed


def _resendable(http: Any) -> bool:
    """A request whose body can be sent again as it is (no stream or file the first send consumed)."""
    if getattr(http, "files", None) is not None:
        return False
    body = getattr(http, "body", None)
    return body is None or isinstance(body, (bytes, bytearray, str))

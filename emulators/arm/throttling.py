"""Azure Resource Manager's request throttling and latency, for the emulated ARM (off unless asked for).

Azure throttles ARM requests with token buckets per subscription and region and per tenant and
region, one bucket per operation kind (published limits: reads 250 refilled at 25 per second, writes
200 at 10 per second, deletes 200 at 10 per second; the tenant-level buckets the same). A request
takes one token from its subscription's bucket (when its path names a subscription) and one from its
tenant's; when either is empty ARM answers 429 with ``Retry-After`` (whole seconds until a token is
back) and takes nothing. Every answer carries the remaining tokens:
``x-ms-ratelimit-remaining-subscription-reads`` / ``-writes`` / ``-deletes`` and
``x-ms-ratelimit-remaining-tenant-reads`` / ``-writes`` / ``-deletes``.

Operation kinds: GET and HEAD are reads, DELETE a delete, everything else (PUT, PATCH, POST actions
such as listKeys) a write; a Resource Graph query (a POST) is a read. The sandbox has one ARM region
(``region``), so in practice the subscription buckets are per subscription.

Latency: each answer is delayed by the operation's latency (sandbox seconds), so concurrent callers
overlap as they do in Azure. Defaults (``DEFAULT_LATENCY``): a storage account or encryption scope
write 1 s (Azure answers a CMK update after about a second: it validates the key against the vault),
any other write 0.3 s, a delete 0.5 s, a read 0.03 s.

Scaling: buckets refill on the sandbox clock and latencies are sandbox seconds, so a sandbox clock
running at ``rate`` 10 (``SandboxClock(rate=10)``) makes everything ten times faster in real time
while every ratio stays Azure's. Retry-After is given in real seconds (rounded up, as Azure sends
whole seconds) and, exactly, in ``x-ms-retry-after-ms``.

Switching it on: ``ArmEmulator(throttling=ArmThrottling(...))``, or for the whole sandbox the
``SANDBOX_ARM_LIMITS`` environment variable read by ``python -m emulators up`` (docs/SANDBOX.md):
``azure`` (Azure's limits and default latency), ``azure,scale=10`` (and the sandbox clock ten times
faster), ``latency=off``, ``latency.storage-write=2``, ``writes=200/10`` (capacity/refill per second),
``region=northeurope``. Unset or ``off``: no limits and no added latency (the unit, integration and
end-to-end tests that do not ask for them).
"""

from __future__ import annotations

import enum
import math
import re
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from emulators.clock import SandboxClock

LIMITS_ENV = "SANDBOX_ARM_LIMITS"


class OperationKind(enum.StrEnum):
    READS = "reads"
    WRITES = "writes"
    DELETES = "deletes"


@dataclass(frozen=True, slots=True)
class BucketLimit:
    capacity: int
    refill_per_second: float

    def __post_init__(self) -> None:
        if self.capacity < 1 or self.refill_per_second <= 0:
            raise ValueError("a bucket needs a capacity of at least 1 and a positive refill rate")


#: Azure's published ARM limits (per subscription and region; the tenant-level buckets are the same).
AZURE_LIMITS: Mapping[OperationKind, BucketLimit] = {
    OperationKind.READS: BucketLimit(250, 25.0),
    OperationKind.WRITES: BucketLimit(200, 10.0),
    OperationKind.DELETES: BucketLimit(200, 10.0),
}

#: Operation -> latency in sandbox seconds (see the module docstring).
DEFAULT_LATENCY: Mapping[str, float] = {
    "storage-write": 1.0,
    "write": 0.3,
    "delete": 0.5,
    "read": 0.03,
}

_STORAGE_WRITE = re.compile(r"/providers/microsoft\.storage/storageaccounts/[^/]+(/encryptionscopes/[^/]+)?$",
                            re.IGNORECASE)
_SUBSCRIPTION = re.compile(r"^/subscriptions/([^/]+)", re.IGNORECASE)
_RESOURCE_GRAPH = "/providers/microsoft.resourcegraph/"


def operation_kind(method: str, path: str) -> OperationKind:
    method = method.upper()
    if method in ("GET", "HEAD") or path.lower().startswith(_RESOURCE_GRAPH):
        return OperationKind.READS
    if method == "DELETE":
        return OperationKind.DELETES
    return OperationKind.WRITES


def latency_operation(kind: OperationKind, path: str) -> str:
    """The DEFAULT_LATENCY entry a request is delayed by."""
    if kind is OperationKind.READS:
        return "read"
    if kind is OperationKind.DELETES:
        return "delete"
    return "storage-write" if _STORAGE_WRITE.search(path.rstrip("/")) else "write"


@dataclass(frozen=True, slots=True)
class LimitsSettings:
    """What ``ArmThrottling`` enforces; ``parse`` reads the ``SANDBOX_ARM_LIMITS`` text."""

    limits: Mapping[OperationKind, BucketLimit] = field(default_factory=lambda: dict(AZURE_LIMITS))
    latency: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_LATENCY))
    scale: float = 1.0
    region: str = "westeurope"

    @classmethod
    def parse(cls, text: str) -> LimitsSettings | None:
        """None for "" or "off"; otherwise ``azure`` followed by overrides (module docstring)."""
        items = [item.strip() for item in text.split(",") if item.strip()]
        if not items or items == ["off"]:
            return None
        if items[0] != "azure":
            raise ValueError(f"{LIMITS_ENV} must be 'off' or start with 'azure' (got {text[:80]!r})")
        settings = cls()
        for item in items[1:]:
            name, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"{LIMITS_ENV}: {item[:40]!r} is not name=value")
            settings = settings._with(name.strip(), value.strip())
        return settings

    def _with(self, name: str, value: str) -> LimitsSettings:
        if name == "scale":
            return replace(self, scale=_number(name, value, positive=True))
        if name == "region":
            return replace(self, region=value.lower())
        if name == "latency":
            if value not in ("off", "default"):
                raise ValueError(f"{LIMITS_ENV}: latency is 'off' or 'default' (got {value[:40]!r})")
            off = dict.fromkeys(DEFAULT_LATENCY, 0.0)
            return replace(self, latency=off if value == "off" else dict(DEFAULT_LATENCY))
        if name.startswith("latency."):
            operation = name.removeprefix("latency.")
            if operation not in DEFAULT_LATENCY:
                raise ValueError(f"{LIMITS_ENV}: {name!r}: the operations are {', '.join(DEFAULT_LATENCY)}")
            return replace(self, latency={**self.latency, operation: _number(name, value, positive=False)})
        if name not in {kind.value for kind in OperationKind}:
            raise ValueError(f"{LIMITS_ENV}: unknown setting {name[:40]!r}")
        capacity, _, refill = value.partition("/")
        limit = BucketLimit(int(_number(name, capacity, positive=True)), _number(name, refill, positive=True))
        return replace(self, limits={**self.limits, OperationKind(name): limit})


def _number(name: str, value: str, *, positive: bool) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (number > 0 if positive else number >= 0):
        raise ValueError(f"{LIMITS_ENV}: {name}={value[:40]!r} is not a {'positive' if positive else 'non-negative'} "
                         "number")
    return number


@dataclass(frozen=True, slots=True)
class Admission:
    """What the throttle decided for one request."""

    kind: OperationKind
    headers: dict[str, str]
    #: Real seconds to delay the answer by (the operation's latency), 0 when throttled.
    delay: float = 0.0
    #: Real seconds until the request could succeed; None when it was admitted.
    retry_after: float | None = None
    scope: str = ""

    @property
    def throttled(self) -> bool:
        return self.retry_after is not None

    def throttled_headers(self) -> dict[str, str]:
        wait = self.retry_after or 0.0
        return {**self.headers, "Retry-After": str(max(1, math.ceil(wait))),
                "x-ms-retry-after-ms": str(max(1, math.ceil(wait * 1000)))}

    def throttled_body(self) -> dict[str, object]:
        return {"error": {
            "code": "SubscriptionRequestsThrottled" if self.scope == "subscription" else "TenantRequestsThrottled",
            "message": f"Number of '{self.kind.value.rstrip('s')}' requests for this {self.scope} exceeded. "
                       f"Please try again after '{max(1, math.ceil(self.retry_after or 0))}' seconds.",
        }}


class _Bucket:
    def __init__(self, limit: BucketLimit, now: float) -> None:
        self.limit = limit
        self.tokens = float(limit.capacity)
        self.updated = now

    def refill(self, now: float) -> None:
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(float(self.limit.capacity), self.tokens + elapsed * self.limit.refill_per_second)
        self.updated = now

    def wait_for_token(self) -> float:
        """Sandbox seconds until one whole token is back."""
        return max(0.0, (1.0 - self.tokens) / self.limit.refill_per_second)


class ArmThrottling:
    """Token buckets per (subscription, region, kind) and (tenant, region, kind), and the latencies.

    Thread-safe; ``admit`` is called once per request by the ARM emulator's middleware.
    """

    def __init__(self, settings: LimitsSettings, clock: SandboxClock) -> None:
        self.settings = settings
        self._clock = clock
        self._buckets: dict[tuple[str, str, str, OperationKind], _Bucket] = {}
        self._lock = threading.Lock()
        #: 429s answered by operation kind (reads, writes, deletes), for benchmarks and tests.
        self.throttled_by_kind: Counter[str] = Counter()
        #: Every admitted request: (sandbox time, kind, method, lower-case path), for benchmarks and tests.
        self.admitted: list[tuple[float, OperationKind, str, str]] = []

    def _now(self) -> float:
        return self._clock.now().timestamp()

    def _bucket(self, scope: str, owner: str, kind: OperationKind, now: float) -> _Bucket:
        key = (scope, owner.lower(), self.settings.region, kind)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(self.settings.limits[kind], now)
        bucket.refill(now)
        return bucket

    def admit(self, method: str, path: str, tenant: str) -> Admission:
        kind = operation_kind(method, path)
        match = _SUBSCRIPTION.match(path)
        with self._lock:
            now = self._now()
            scoped = [("tenant", self._bucket("tenant", tenant, kind, now))]
            if match is not None:
                scoped.insert(0, ("subscription", self._bucket("subscription", match.group(1), kind, now)))
            empty = [(scope, bucket) for scope, bucket in scoped if bucket.tokens < 1.0]
            if not empty:
                for _, bucket in scoped:
                    bucket.tokens -= 1.0
                self.admitted.append((now, kind, method.upper(), path.lower().rstrip("/")))
            else:
                self.throttled_by_kind[kind.value] += 1
            headers = {f"x-ms-ratelimit-remaining-{scope}-{kind.value}": str(max(0, int(bucket.tokens)))
                       for scope, bucket in scoped}
        if empty:
            wait = max(bucket.wait_for_token() for _, bucket in empty)
            return Admission(kind, headers, retry_after=self._clock.real_seconds(wait), scope=empty[0][0])
        latency = self.settings.latency.get(latency_operation(kind, path), 0.0)
        return Admission(kind, headers, delay=self._clock.real_seconds(latency))

    @property
    def throttled(self) -> int:
        """429s answered, all kinds."""
        with self._lock:
            return sum(self.throttled_by_kind.values())

    def writes_per_resource(self) -> Counter[str]:
        """Admitted writes (PUT, PATCH, POST) per lower-case resource path."""
        with self._lock:
            return Counter(path for _, kind, _, path in self.admitted if kind is OperationKind.WRITES)

    def drain(self, subscription: str, kind: OperationKind, *, for_seconds: float = 0.0) -> None:
        """Empty one subscription bucket, as another client using up the budget would (tests, benches):
        with ``for_seconds`` (sandbox seconds) it stays empty that long, as if that client kept taking
        every token refilled meanwhile."""
        with self._lock:
            bucket = self._bucket("subscription", subscription, kind, self._now())
            bucket.tokens = -for_seconds * bucket.limit.refill_per_second

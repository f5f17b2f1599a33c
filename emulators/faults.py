"""Service faults for the sandbox's emulators: seeded, per service, off unless asked for.

Azure's services fail in a few recognisable ways, and a client has to ride through each: throttling
(429, or 503 ServerBusy from Storage, with ``Retry-After``), server errors (500, 503), conflicts on
writes (ARM's 409 and 412), a connection dropped before the service acted, and one dropped after it
acted (the answer is lost: the client cannot tell whether its write happened). Plus added latency.

One ``FaultInjector`` per service draws, for each request, at most one fault from its ``FaultProfile``
with its own seeded generator (a run with the same seed and the same request order meets the same
faults) and counts what it injected. Each emulator renders a fault in its service's own shape: the
emulated Key Vault (``keyvault/server.py``: ``{"error": {"code", "message"}}``), the emulated ARM
(``arm/emulator.py``: ARM's ``{"error": {"code", "message"}}``) and Azurite behind the storage fault proxy
(``storage_fault_proxy.py``: the Storage services' XML or JSON errors).

Switching it on: for a whole sandbox, the ``SANDBOX_FAULTS`` environment variable read by
``python -m emulators up`` (docs/SANDBOX.md); set, it also puts Azurite behind the storage fault proxy,
and the control API (``PUT /_sandbox/faults``) changes the profiles while the sandbox runs. The text is
comma-separated ``<service>.<fault>=<rate>`` items (rates are shares of the service's requests, at most
1 in total per service) and ``<service>.latency=<seconds>`` (added to each request, +-50% jitter),
``<service>.retry-after=<seconds>`` (default 1) and ``seed=<n>``::

    vault.429=0.3,vault.500=0.05,vault.reset=0.02,vault.latency=0.01,arm.409=0.05,arm.503=0.05,storage.503=0.05,seed=14

``standby`` starts the proxy with no fault (switched on later); unset or ``off``: no fault machinery at all.
Services and the faults each can inject (``FAULTS``): ``vault``: 429, 500, 503, reset, lost-answer;
``arm``: 409, 412 (writes only), 429, 500, 503; ``storage``: 500, 503, reset, lost-answer.
"""

from __future__ import annotations

import math
import random
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

FAULTS_ENV = "SANDBOX_FAULTS"
STANDBY = "standby"

RESET = "reset"  # the connection is dropped before the service acts on the request
LOST_ANSWER = "lost-answer"  # the service acts, then the connection is dropped before its answer
#: The faults each service can inject, in the order a draw considers them.
FAULTS: Mapping[str, tuple[str, ...]] = {
    "vault": ("429", "500", "503", RESET, LOST_ANSWER),
    "arm": ("409", "412", "429", "500", "503"),
    "storage": ("500", "503", RESET, LOST_ANSWER),
}
#: Faults that only a write can meet (a read has no precondition to fail and nothing to conflict with).
WRITE_ONLY = frozenset({"409", "412"})
#: Faults whose answer tells the client when to come back.
WITH_RETRY_AFTER = frozenset({"429", "503"})


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected fault: ``kind`` is a status ("429") or RESET / LOST_ANSWER."""

    kind: str
    retry_after: int

    @property
    def status(self) -> int | None:
        return int(self.kind) if self.kind.isdigit() else None

    def retry_after_headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.kind in WITH_RETRY_AFTER else {}


@dataclass(frozen=True, slots=True)
class FaultProfile:
    """What one service injects: a rate per fault kind, added latency, the Retry-After it asks for."""

    service: str
    rates: Mapping[str, float] = field(default_factory=dict)
    latency_seconds: float = 0.0
    retry_after_seconds: int = 1

    def __post_init__(self) -> None:
        known = FAULTS.get(self.service)
        if known is None:
            raise ValueError(f"{FAULTS_ENV}: unknown service {self.service!r} (the services are {', '.join(FAULTS)})")
        for kind, rate in self.rates.items():
            if kind not in known:
                raise ValueError(f"{FAULTS_ENV}: {self.service} cannot inject {kind!r} (it can: {', '.join(known)})")
            if not 0 <= rate <= 1:
                raise ValueError(f"{FAULTS_ENV}: {self.service}.{kind}={rate} is not a rate in [0, 1]")
        if sum(self.rates.values()) > 1 + 1e-9:
            raise ValueError(f"{FAULTS_ENV}: {self.service}'s fault rates add up to more than 1")
        if self.latency_seconds < 0 or self.retry_after_seconds < 1:
            raise ValueError(f"{FAULTS_ENV}: {self.service}'s latency must be >= 0 and retry-after >= 1")

    @property
    def active(self) -> bool:
        return self.latency_seconds > 0 or any(rate > 0 for rate in self.rates.values())

    def to_json(self) -> dict[str, object]:
        return {"rates": dict(self.rates), "latencySeconds": self.latency_seconds,
                "retryAfterSeconds": self.retry_after_seconds}


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """Every service's profile and the seed: what ``SANDBOX_FAULTS`` (or the control API) says."""

    profiles: Mapping[str, FaultProfile]
    seed: int = 0

    @classmethod
    def parse(cls, text: str) -> FaultPlan | None:
        """None for "" or "off"; an empty plan for "standby"; otherwise the items (module docstring)."""
        items = [item.strip() for item in text.split(",") if item.strip()]
        if not items or items == ["off"]:
            return None
        if items == [STANDBY]:
            return cls(profiles={})
        seed = 0
        settings: dict[str, dict[str, float]] = {}
        for item in items:
            name, sep, value = item.partition("=")
            number = _number(item, value) if sep else math.nan
            if math.isnan(number):
                raise ValueError(f"{FAULTS_ENV}: {item[:40]!r} is not <service>.<fault>=<number> or seed=<n>")
            if name.strip() == "seed":
                seed = int(number)
                continue
            service, _, kind = name.strip().partition(".")
            settings.setdefault(service, {})[kind] = number
        profiles = {}
        for service, values in settings.items():
            latency = values.pop("latency", 0.0)
            retry_after = values.pop("retry-after", 1.0)
            profiles[service] = FaultProfile(service, values, latency, int(retry_after))
        return cls(profiles=profiles, seed=seed)

    def profile(self, service: str) -> FaultProfile:
        return self.profiles.get(service) or FaultProfile(service)

    def injectors(self) -> dict[str, FaultInjector]:
        """One injector per service, each seeded from the plan's seed and its service's name."""
        return {service: FaultInjector(self.profile(service), seed=f"{self.seed}/{service}") for service in FAULTS}


def _number(item: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        return math.nan
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{FAULTS_ENV}: {item[:40]!r}: the value must be a non-negative number")
    return number


class FaultInjector:
    """Draws one service's faults, request by request, and counts them (thread-safe)."""

    def __init__(self, profile: FaultProfile, *, seed: int | str = 0) -> None:
        self.profile = profile
        self._random = random.Random(seed)  # fault injection, not cryptography
        self._lock = threading.Lock()
        self.requests = 0
        self.injected: Counter[str] = Counter()

    def draw(self, *, write: bool) -> Fault | None:
        """The fault this request meets, or None; ``write`` says whether it may change anything."""
        profile = self.profile
        with self._lock:
            self.requests += 1
            point = self._random.random()
            for kind in FAULTS[profile.service]:
                rate = profile.rates.get(kind, 0.0)
                if kind in WRITE_ONLY and not write:
                    continue
                if point < rate:
                    self.injected[kind] += 1
                    return Fault(kind, profile.retry_after_seconds)
                point -= rate
        return None

    def latency(self) -> float:
        """Seconds to hold this request (the profile's latency, +-50%), 0 when none is set."""
        if self.profile.latency_seconds <= 0:
            return 0.0
        with self._lock:
            return self.profile.latency_seconds * (0.5 + self._random.random())

    def report(self) -> dict[str, object]:
        with self._lock:
            return {**self.profile.to_json(), "requests": self.requests, "injected": dict(self.injected)}

"""Load: key events at a sustained rate through Event Grid to the local Functions host.

100 keys of their own in the managed vault (20 at CI size) get new versions at 1,000 a minute (one every
60 ms, paced from a fixed start so that a slow call does not lower the rate), for 5 minutes at full size
and 6 seconds at CI size (the same rate; CI's time allows no more: the local host works the events off
at a few a second on this 2-core machine, so the drain takes longer than the sending). The vault
publishes each one and Event Grid delivers it to the host's webhook, as in Azure.

Promise: every event is accepted exactly once (none lost, none processed twice) and handled; figures:
end-to-end latency (from the new version's creation returning to the end of its handling, from the
host's log) median and p99, and the resident memory of the host's worker processes once warm (after
the keys' creation events) and at the end, which may not grow by more than 10%.
"""

from __future__ import annotations

import json
import re
import statistics
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from tests.reliability.conftest import Estate, Size, host_rss_bytes

pytestmark = pytest.mark.reliability

#: The load's own keys: each creation is an event the host handles before the load starts.
KEYS = {"ci": 20, "full": 100}
EVENTS_PER_MINUTE = 1000
SECONDS = {"ci": 6, "full": 300}
#: How long the host may take to work off what it was sent.
DRAIN_SECONDS = {"ci": 300, "full": 3600}
_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+ \w+ (key event accepted|handled key event) (\{.*\})$")


def load_key(index: int) -> str:
    return f"rel-load-{index:03d}"


def host_log_events(estate: Estate, offset: int) -> dict[str, list[tuple[float, dict[str, Any]]]]:
    """The host log's key-event lines since ``offset``: accepted and handled, with their wall times."""
    found: dict[str, list[tuple[float, dict[str, Any]]]] = {"accepted": [], "handled": []}
    for line in estate.host_log_since(offset).splitlines():
        match = _LINE.match(line)
        if match:
            stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()  # the host logs local time
            found["accepted" if match.group(2) == "key event accepted" else "handled"].append(
                (stamp, json.loads(match.group(3))))
    return found


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def wait_until(condition: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.5)


def test_a_thousand_key_events_a_minute_are_each_handled_once_without_memory_growth(
        estate: Estate, size: Size, report_figures):
    keys = estate.clients.key_client(estate.vault_uri)
    names = [load_key(index) for index in range(KEYS[size.name])]
    offset = estate.host_log_size()
    for name in names:
        keys.create_ec_key(name, curve="P-256")  # new versions at this rate: RSA key generation would be the load

    def handled_keys(names_wanted: set[str]) -> set[str]:
        return {fields["key"].rsplit("/", 2)[-2] for _, fields in host_log_events(estate, offset)["handled"]
                if fields.get("key")} & names_wanted

    wait_until(lambda: handled_keys(set(names)) == set(names), "the keys' creation events were not handled",
               DRAIN_SECONDS[size.name])
    rss_warm = host_rss_bytes(estate)  # warm: imports, pools and caches after the creation events
    offset = estate.host_log_size()

    interval = 60 / EVENTS_PER_MINUTE
    total = int(SECONDS[size.name] / interval)
    published: dict[str, float] = {}  # key version -> when its creation returned (wall time)
    started = time.monotonic()
    for index in range(total):
        delay = started + index * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        version = keys.rotate_key(names[index % len(names)]).properties.version
        published[version] = time.time()
    publishing_seconds = time.monotonic() - started

    def handled_versions() -> set[str]:
        return {fields["key"].rsplit("/", 1)[-1] for _, fields in host_log_events(estate, offset)["handled"]
                if fields.get("key")} & set(published)

    backlog = len(published) - len(handled_versions())  # what the host had still to handle when the sending ended
    wait_until(lambda: handled_versions() == set(published), "not every event was handled", DRAIN_SECONDS[size.name])
    drained_seconds = time.monotonic() - started
    rss_end = host_rss_bytes(estate)
    lines = host_log_events(estate, offset)
    ours = set(published)

    def version(fields: dict[str, Any]) -> str:
        return str(fields.get("key") or "").rsplit("/", 1)[-1]

    accepted = Counter(fields["event_id"] for _, fields in lines["accepted"] if version(fields) in ours)
    events_of = {version(fields): fields["event_id"] for _, fields in lines["accepted"] if version(fields) in ours}
    finished = {}
    for stamp, fields in lines["handled"]:
        if version(fields) in ours and fields["outcome"] == "accepted":
            finished.setdefault(version(fields), stamp)
    latencies = [finished[version] - published[version] for version in published]
    duplicates = Counter(fields["event_id"] for _, fields in lines["handled"]
                         if version(fields) in ours and fields["outcome"] == "duplicate")
    report_figures({
        "keys": len(names), "events": total, "events_per_minute_target": EVENTS_PER_MINUTE,
        "events_per_minute_published": round(total / publishing_seconds * 60),
        "backlog_at_end_of_sending": backlog, "events_handled_per_second": round(total / drained_seconds, 2),
        "seconds": SECONDS[size.name], "accepted": len(accepted),
        "accepted_more_than_once": sum(1 for count in accepted.values() if count > 1),
        "redeliveries_dropped": sum(duplicates.values()),
        "latency_seconds_median": round(statistics.median(latencies), 3),
        "latency_seconds_p99": round(percentile(latencies, 0.99), 3),
        "latency_seconds_max": round(max(latencies), 3),
        "host_rss_mib_warm": round(rss_warm / 2**20, 1), "host_rss_mib_end": round(rss_end / 2**20, 1),
        "host_rss_growth": round(rss_end / rss_warm - 1, 3),
    })
    assert set(events_of) == ours  # none lost
    assert [event for event, count in accepted.items() if count > 1] == []  # none processed twice
    assert rss_end <= rss_warm * 1.10

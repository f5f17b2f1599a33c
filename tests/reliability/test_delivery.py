"""Delivery: every key's new versions reach the controller many times over, in any order, and it converges.

The managed keys each get ``versions_per_key`` new versions while the Functions host is frozen (SIGSTOP:
a busy host; Event Grid's first deliveries wait for it), so the first event handled already finds the
newest version in the vault. Then each event is delivered ``deliveries_per_event - 1`` more times,
shuffled, through the Event Grid webhook one at a time and in batches, through the ``events`` function,
and as dead-letter replays on the work queue. A poller watches every consumer meanwhile.

Promise: every consumer ends on its key's latest version (pinned ones pinned to it, versionless ones
versionless again); no consumer is ever seen moving to an older version; each event is accepted once
(every other delivery is a duplicate), or again only after an attempt that failed and released it;
every ARM write the controller made is in its log, targets the key's latest version (or restores
versionless), and the distinct writes are exactly the minimum (one per pinned consumer; pin and
restore, two, per versionless consumer with forced adoption). Repeats of the same write by two
reconcilers racing on one pinned consumer are counted (``arm_writes_repeated``): Azure Storage offers
no ETag on accounts, and pinned updates are not yet claimed in the ledger.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.reliability.conftest import RESOURCE_GROUP, VAULT, Estate, Size, key_name, post

pytestmark = pytest.mark.reliability

NEW_VERSION = "Microsoft.KeyVault.KeyNewVersionCreated"
CHANNELS = ("webhook", "webhook batch", "events function", "dead-letter replay")
BATCH = 5
#: How long the deliveries and the convergence may take: the host answers a delivery once it has handled its
#: events, behind the backlog of everything delivered before it (at full size, a thousand deliveries).
CONVERGE_SECONDS = {"ci": 180, "full": 1800}


def version_of(identifier: str | None) -> str:
    return (identifier or "").rstrip("/").rsplit("/", 1)[-1]


def eventgrid_records(estate: Estate) -> list[dict[str, Any]]:
    url = f"{estate.state['endpoints']['eventGridAdmin']}/deliveries?subscription={VAULT}-on-key-event"
    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - the sandbox's loopback admin API
        return list(json.loads(response.read()))


def key_event(estate: Estate, record: dict[str, Any], key: str, version: str) -> dict[str, Any]:
    """The event Key Vault published for this rotation, as Event Grid delivers it."""
    now = int(datetime.now(UTC).timestamp())
    return {
        "id": record["event_id"], "topic": estate.seeded["vaults"][VAULT]["id"], "subject": key,
        "eventType": NEW_VERSION, "eventTime": record["published_at"], "dataVersion": "1", "metadataVersion": "1",
        "data": {"Id": f"{estate.vault_origin}/keys/{key}/{version}", "VaultName": VAULT, "ObjectType": "Key",
                 "ObjectName": key, "Version": version, "NBF": now, "EXP": now + 365 * 86400},
    }


def dead_lettered(event: dict[str, Any]) -> dict[str, Any]:
    return {**event, "deadLetterReason": "MaxDeliveryAttemptsExceeded", "deliveryAttempts": 30,
            "lastDeliveryOutcome": "TimedOut", "publishTime": event["eventTime"],
            "lastDeliveryAttemptTime": event["eventTime"]}


class ConsumerWatch:
    """Samples every consumer's version while the deliveries run; any step back is recorded."""

    def __init__(self, estate: Estate, order: dict[str, list[str]], accounts: dict[str, str]) -> None:
        self.estate, self.order, self.accounts = estate, order, accounts
        self.seen: dict[str, list[int]] = {account: [] for account in accounts}
        self.backwards: list[str] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> dict[str, Any]:
        found = {}
        for account in self.estate.clients.storage.storage_accounts.list_by_resource_group(RESOURCE_GROUP):
            if account.name not in self.accounts:
                continue
            properties = account.encryption.key_vault_properties
            found[account.name] = properties
            order = self.order[self.accounts[account.name]]
            current = version_of(properties.current_versioned_key_identifier)
            index = order.index(current) if current in order else -1
            history = self.seen[account.name]
            if history and index < history[-1]:
                self.backwards.append(f"{account.name}: {order[history[-1]]} -> {current}")
            if not history or index != history[-1]:
                history.append(index)
        self.samples += 1
        return found

    def _run(self) -> None:
        while not self._stop.wait(0.3):
            self.sample()

    def __enter__(self) -> ConsumerWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def test_duplicated_shuffled_batched_and_replayed_events_converge_with_the_minimum_of_writes(
        estate: Estate, size: Size, report_figures):
    chooser = random.Random(1401)
    keys = estate.clients.key_client(estate.vault_uri)
    names = [key_name(index) for index in range(size.keys)]
    accounts = {spec["name"]: spec["cmk"]["key"] for spec in estate.spec["storageAccounts"]}
    pinned = {spec["name"] for spec in estate.spec["storageAccounts"] if spec["cmk"]["pinned"]}
    order = {name: [keys.get_key(name).properties.version] for name in names}
    known = {record["event_id"] for record in eventgrid_records(estate)}
    writes_before = estate.controller_arm_writes()
    log_offset = estate.host_log_size()
    host = int(estate.state["children"]["functions"])
    started = time.perf_counter()

    with ConsumerWatch(estate, order, accounts) as watch:
        os.kill(host, signal.SIGSTOP)  # a busy host: every version exists before the first event is handled
        try:
            rotations = []
            for _ in range(size.versions_per_key):
                for name in names:
                    version = keys.rotate_key(name).properties.version
                    order[name].append(version)
                    rotations.append((name, version))
        finally:
            os.kill(host, signal.SIGCONT)
        records = [record for record in eventgrid_records(estate)
                   if record["event_id"] not in known and record["event_type"] == NEW_VERSION]
        assert len(records) == len(rotations)  # published in rotation order: the nth record is the nth rotation
        events = [key_event(estate, record, name, version)
                  for record, (name, version) in zip(records, rotations, strict=True)]

        extra = [(CHANNELS[(index + copy) % len(CHANNELS)], event)
                 for index, event in enumerate(events) for copy in range(size.deliveries_per_event - 1)]
        chooser.shuffle(extra)
        requests: list[tuple[str, list[dict[str, Any]]]] = []
        batch: list[dict[str, Any]] = []
        for channel, event in extra:
            if channel == "webhook batch":
                batch.append(event)
                if len(batch) == BATCH:
                    requests.append((channel, batch))
                    batch = []
            else:
                requests.append((channel, [event]))
        if batch:
            requests.append(("webhook batch", batch))

        deadline = time.monotonic() + CONVERGE_SECONDS[size.name]

        def deliver(request: tuple[str, list[dict[str, Any]]]) -> int:
            channel, delivery = request
            if channel == "dead-letter replay":
                estate.send_work(json.dumps({"kind": "key_event",
                                             "delivery": [dead_lettered(event) for event in delivery]}).encode())
                return 202
            url = estate.events_url if channel == "events function" else estate.eventgrid_webhook()
            return post(url, json.dumps(delivery).encode(), {"aeg-event-type": "Notification"},
                        timeout=max(1.0, deadline - time.monotonic()))[0]

        with ThreadPoolExecutor(max_workers=4) as pool:
            statuses = Counter(pool.map(deliver, requests))

        def converged() -> bool:
            found = watch.sample()
            for account, key in accounts.items():
                properties, latest = found[account], order[key][-1]
                if version_of(properties.current_versioned_key_identifier) != latest:
                    return False
                if (properties.key_version or "") != (latest if account in pinned else ""):
                    return False
            return True

        while not converged():
            assert time.monotonic() < deadline, "the consumers did not converge in time"
            time.sleep(0.5)
        seconds = time.perf_counter() - started

    arm_writes = estate.controller_arm_writes() - writes_before
    minimum = len(pinned) + 2 * (len(accounts) - len(pinned))
    log = estate.host_log_since(log_offset)
    logged_writes = [json.loads(line[line.index("{"):]) for line in log.splitlines()
                     if "consumer key updated {" in line]
    distinct = {(write["resource"].rsplit("/", 1)[-1], write["key"]) for write in logged_writes}
    wrong_target = [f"{account} -> {key}" for account, key in distinct
                    if key.rstrip("/").rsplit("/", 1)[-1] not in (order[accounts[account]][-1], accounts[account])]
    failed_attempts = log.count("Executed 'Functions.on_key_event' (Failed") + log.count("failed on attempt") + \
        log.count("delivery failed transiently")
    ids = {event["id"] for event in events}
    accepted = Counter(match for match in re.findall(r'key event accepted \{"event_id": "([^"]+)"', log)
                       if match in ids)
    duplicates = sum(1 for match in re.findall(r'key event duplicate \{"event_id": "([^"]+)"', log) if match in ids)
    report_figures({
        "keys": size.keys, "consumers": len(accounts), "events": len(events),
        "deliveries": len(events) + len(extra), "requests_by_channel": dict(Counter(c for c, _ in requests)),
        "statuses": dict(statuses), "accepted_once": sum(1 for count in accepted.values() if count == 1),
        "accepted_more_than_once": sum(1 for count in accepted.values() if count > 1), "duplicates": duplicates,
        "arm_writes": arm_writes, "arm_writes_minimum": minimum, "arm_writes_distinct": len(distinct),
        "arm_writes_repeated": len(logged_writes) - len(distinct), "failed_attempts": failed_attempts,
        "backward_moves": len(watch.backwards),
        "consumer_samples": watch.samples, "seconds_to_converge": round(seconds, 1),
    })
    assert set(statuses) <= {200, 202}, statuses
    assert watch.backwards == []
    assert set(accepted) == ids, accepted
    assert sum(count - 1 for count in accepted.values()) <= failed_attempts, accepted
    assert arm_writes == len(logged_writes)  # every write the controller made is accounted for in its log
    assert wrong_target == []
    assert len(distinct) == minimum, sorted(distinct)

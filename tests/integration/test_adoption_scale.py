"""Adoption at scale: one key's consumers adopted under ARM's throttling and latency, scaled.

The emulated ARM applies Azure's token buckets and latencies on a sandbox clock running SCALE times
faster (emulators/arm/throttling.py); the write bucket is smaller than Azure's (WRITE_BUCKET tokens,
WRITE_REFILL per second) so that a CI-sized estate (CONSUMERS accounts on one key, half versionless,
half pinned with the update policy) exhausts its burst and runs at the refill rate within seconds.
The full sizes with Azure's own limits are bench/adoption_scale.py. Each test rotates the key and
adopts the new version with the controller's real adapters (tests/support/adoption.py).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from controller import reconciler, service
from controller.errors import TransientError
from controller.settings import load_settings
from emulators.adoption_estate import AdoptionEstate
from emulators.arm import ArmEmulator
from emulators.arm.throttling import BucketLimit, LimitsSettings, OperationKind
from tests.support.adoption import (
    CONTROLLER,
    azure_limits,
    build,
    continuations,
    instance,
    key_of,
    new_names,
    scaled_arm,
)
from tests.unit.fakes import fake_dependencies

pytestmark = pytest.mark.integration

SCALE = 5.0
CONSUMERS = 40
#: The issue's own size, with Azure's published limits (a write bucket of 200 refilled at 10/s) and
#: latencies, the clock ten times faster: 1,500 writes, most of them at the refill rate.
THOUSAND, THOUSAND_SCALE = 1_000, 10.0
WRITE_BUCKET, WRITE_REFILL = 40, 2.0


@dataclass
class Storm:
    """Another client taking the subscription's whole write budget for a while, once armed."""

    arm: ArmEmulator | None = None
    subscription: str = ""
    armed: bool = False
    fired: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        # Runs after the emulator admitted the request: the first admitted write of the run empties the
        # bucket for the next three sandbox seconds, so the writes behind it are answered 429.
        with self.lock:
            fire = self.armed and request.method == "PATCH" and self.arm is not None and self.arm.throttling
            if fire:
                self.armed = False
                self.fired += 1
        if fire and self.arm is not None and self.arm.throttling is not None:
            self.arm.throttling.drain(self.subscription, OperationKind.WRITES, for_seconds=3.0)
        response: web.StreamResponse = await handler(request)
        return response


@dataclass
class OutsideChange:
    """Someone else switching one account to Microsoft-managed keys right after the controller's first
    listing of the subscription's accounts (between its read and its write of that account), once armed."""

    arm: ArmEmulator | None = None
    account_path: str = ""
    armed: bool = False
    done: int = 0

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        response: web.StreamResponse = await handler(request)
        if self.armed and request.method == "GET" and request.path.lower().endswith("/storageaccounts"):
            self.armed = False
            arm, change = self.arm, {"properties": {"encryption": {"keySource": "Microsoft.Storage"}}}
            assert arm is not None
            await asyncio.get_running_loop().run_in_executor(
                None, arm.dispatch_json, "PATCH", self.account_path, change)
            self.done += 1
        return response


@dataclass
class ListingThrottle:
    """Another client spending the read budget just before each attempt of one encryption-scope listing:
    once armed, the first listing's first ``times`` attempts are answered 429 (Retry-After 50 ms), more
    than azure-core's retries (3) would ride out."""

    times: int = 0
    answered: int = 0
    target: str | None = None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.times and request.method == "GET" and request.path.lower().endswith("/encryptionscopes"):
            self.target = self.target or request.path
            if request.path == self.target:
                self.times -= 1
                self.answered += 1
                return web.json_response(
                    {"error": {"code": "TooManyRequests", "message": "The request is being throttled."}},
                    status=429, headers={"Retry-After": "1", "x-ms-retry-after-ms": "50"})
        response: web.StreamResponse = await handler(request)
        return response


@dataclass
class World:
    arm: ArmEmulator
    estate: AdoptionEstate
    connection_string: str
    storm: Storm
    outside: OutsideChange
    listing_throttle: ListingThrottle


@pytest.fixture(scope="module")
def world(azurite: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    storm, outside, listing_throttle = Storm(), OutsideChange(), ListingThrottle()
    with scaled_arm(Path(tmp_path_factory.mktemp("adoption")), scale=SCALE,
                    middlewares=[storm.middleware, outside.middleware, listing_throttle.middleware]) as arm:
        estate = build(arm, consumers=CONSUMERS, controller_oid=CONTROLLER)
        storm.arm, storm.subscription = arm, estate.subscription
        outside.arm = arm
        yield World(arm, estate, azurite.connection_string, storm, outside, listing_throttle)


@pytest.fixture(scope="module")
def thousand(azurite: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """THOUSAND consumers on one key under Azure's own limits and latencies, the clock THOUSAND_SCALE x."""
    with scaled_arm(Path(tmp_path_factory.mktemp("adoption-1000")), scale=THOUSAND_SCALE) as arm:
        estate = build(arm, consumers=THOUSAND, controller_oid=CONTROLLER)
        yield World(arm, estate, azurite.connection_string, Storm(), OutsideChange(), ListingThrottle())


def ci_limits(arm: ArmEmulator) -> LimitsSettings:
    azure = azure_limits(arm)
    limits = {**azure.limits, OperationKind.WRITES: BucketLimit(WRITE_BUCKET, WRITE_REFILL)}
    return LimitsSettings(limits, azure.latency, azure.scale, azure.region)


def rotated(world: World) -> str:
    """A new key version, and fresh buckets (what earlier tests spent does not carry over)."""
    version = world.estate.rotate()
    world.arm.set_limits(ci_limits(world.arm))
    return version


def writes_per_account(world: World) -> dict[str, int]:
    throttling = world.arm.throttling
    assert throttling is not None
    return {path.rsplit("/", 1)[-1]: count for path, count in throttling.writes_per_resource().items()
            if "/storageaccounts/" in path}


def assert_each_written_once_per_step(world: World) -> None:
    """A pinned consumer takes one write (the pin), a versionless one two (pin, restore): never more."""
    writes = writes_per_account(world)
    assert {name: writes.get(name, 0) for name in world.estate.pinned} == dict.fromkeys(world.estate.pinned, 1)
    assert {name: writes.get(name, 0) for name in world.estate.versionless} == dict.fromkeys(
        world.estate.versionless, 2)


def account_reads(world: World) -> int:
    """GETs of single storage accounts: verification reads that the write answers make unnecessary."""
    throttling = world.arm.throttling
    assert throttling is not None
    single = re.compile(r"/storageaccounts/[a-z0-9]+$")
    return sum(1 for _, kind, method, path in throttling.admitted if method == "GET" and single.search(path))


def inventory_reads(world: World) -> int:
    """Requests that find a key's consumers: Resource Graph pages and encryption-scope listings (one per account)."""
    throttling = world.arm.throttling
    assert throttling is not None
    return sum(1 for _, kind, method, path in throttling.admitted
               if "resourcegraph" in path or path.endswith("/encryptionscopes"))


def test_every_consumer_adopts_at_the_pace_arm_allows(world: World) -> None:
    version = rotated(world)
    table, queue = new_names()
    controller = instance(world.estate, world.connection_string, table=table, queue=queue, owner="a")
    try:
        result = reconciler.reconcile_key(key_of(world.estate), controller.deps)
    finally:
        controller.close()

    assert world.estate.adoption(version).complete
    assert result.failures == []
    assert result.progress() == {"done": CONSUMERS, "pending": 0, "blocked": 0}
    assert_each_written_once_per_step(world)
    assert account_reads(world) == 0  # verified from the writes' answers and one listing
    # More writes than the bucket holds: the run went on at the refill rate, paced, not failed.
    assert CONSUMERS * 3 // 2 > WRITE_BUCKET


def test_a_run_cut_off_by_its_time_budget_continues_from_the_queue(world: World) -> None:
    version = rotated(world)
    table, queue = new_names()
    # Eight sandbox seconds: about half of what the writes take, four at a time, a second each.
    controller = instance(world.estate, world.connection_string, table=table, queue=queue, owner="a",
                          concurrency=4, time_budget=timedelta(seconds=8))
    deps = fake_dependencies(load_settings({"CMK_VAULTS": key_of(world.estate).vault.url}),
                             reconcile=controller.deps)
    try:
        first = reconciler.reconcile_key(key_of(world.estate), controller.deps)
        assert first.deferred > 0
        assert not world.estate.adoption(version).complete
        listed = inventory_reads(world)
        assert listed >= CONSUMERS  # the first run found the consumers: a scope listing per account
        invocations = 1
        while items := [item for item in continuations(world.connection_string, queue) if item.get("continuation")]:
            assert [item["kind"] for item in items] == ["reconcile"]
            service.process_work(json.dumps(items[0]), deps)  # as the queue trigger runs it
            invocations += 1
            assert invocations < CONSUMERS * 2, "the continuations made no progress"
    finally:
        controller.close()

    assert world.estate.adoption(version).complete
    assert invocations > 1
    assert_each_written_once_per_step(world)
    # The continuations carried on from the worklist the first run left in the ledger: the estate was not
    # listed again (only each chunk's verification listing of the accounts about to be written).
    assert inventory_reads(world) == listed


def test_two_instances_on_one_key_never_write_a_consumer_twice(world: World) -> None:
    version = rotated(world)
    table, queue = new_names()
    instances = [instance(world.estate, world.connection_string, table=table, queue=queue, owner=owner)
                 for owner in ("instance-a", "instance-b")]
    results: list[object] = []

    def run(index: int) -> None:
        try:
            results.append(reconciler.reconcile_key(key_of(world.estate), instances[index].deps))
        except Exception as err:  # recorded and asserted below: neither run may fail
            results.append(err)

    try:
        threads = [threading.Thread(target=run, args=(index,)) for index in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # What an instance left to the other (its claims) is done; a retried run finds nothing to write.
        again = reconciler.reconcile_key(key_of(world.estate), instances[0].deps)
        record = instances[1].deps.ledger.load(key_of(world.estate))
    finally:
        for controller in instances:
            controller.close()

    # Neither run failed, the loser of the conditions save included: it re-read and merged.
    assert [type(result) for result in results] == [reconciler.ReconcileResult] * 2
    assert world.estate.adoption(version).complete
    # The record both saved says what ARM holds: every consumer adopted.
    adopted = [dict((c.type, c.status.value) for c in conditions).get("Adopted")
               for conditions in record.consumer_conditions.values()]
    assert adopted == ["True"] * CONSUMERS
    assert again.writes == []
    assert_each_written_once_per_step(world)


def test_a_429_storm_is_ridden_out(world: World) -> None:
    version = rotated(world)
    table, queue = new_names()
    controller = instance(world.estate, world.connection_string, table=table, queue=queue, owner="a")
    world.storm.armed = True
    try:
        result = reconciler.reconcile_key(key_of(world.estate), controller.deps)
    finally:
        world.storm.armed = False
        controller.close()

    assert world.storm.fired == 1
    stats = controller.connection.pacer.stats
    assert stats.throttled > 0  # the storm was felt ...
    assert result.failures == []  # ... and no request failed for good
    assert world.estate.adoption(version).complete
    assert_each_written_once_per_step(world)
    # No retry storm: held back until Retry-After, the writes behind the storm were throttled at most
    # once per worker, not once per retry of every write.
    assert stats.throttled <= controller.deps.limits.concurrency


def test_a_listing_throttled_past_the_sdks_retries_waits_its_turn_and_the_inventory_completes(
        world: World) -> None:
    version = rotated(world)
    table, queue = new_names()
    controller = instance(world.estate, world.connection_string, table=table, queue=queue, owner="a")
    world.listing_throttle.times, world.listing_throttle.answered = 6, 0
    try:
        result = reconciler.reconcile_key(key_of(world.estate), controller.deps)
    finally:
        world.listing_throttle.times = 0
        controller.close()

    assert world.listing_throttle.answered == 6  # one listing met six 429s in a row ...
    assert controller.connection.pacer.stats.throttled >= 6
    assert result.failures == []  # ... and the inventory did not fail: the listing waited its turn
    assert world.estate.adoption(version).complete
    assert_each_written_once_per_step(world)


def test_a_listing_throttled_without_end_is_given_up_after_a_bounded_wait(world: World) -> None:
    rotated(world)
    table, queue = new_names()
    controller = instance(world.estate, world.connection_string, table=table, queue=queue, owner="a")
    controller.connection.pacer.max_throttled_wait = 0.1  # two 50-ms Retry-Afters per send, then hand it up
    world.listing_throttle.times, world.listing_throttle.answered = 1_000, 0
    try:
        with pytest.raises(TransientError, match="HTTP 429"):  # the host retries the invocation later
            reconciler.reconcile_key(key_of(world.estate), controller.deps)
    finally:
        world.listing_throttle.times = 0
        controller.close()

    # One bound per request, azure-core's 3 retries included: a handful of 429s, not one bound per retry.
    assert 4 <= world.listing_throttle.answered <= 8
    assert controller.connection.pacer.stats.throttled == world.listing_throttle.answered


def test_a_change_made_after_the_listing_and_before_the_write_is_not_overwritten(world: World) -> None:
    version = rotated(world)
    changed = world.estate.versionless[-1]  # the last consumer in the plan's order: in the last chunk
    world.outside.account_path = world.estate.account_id(changed)
    world.outside.armed = True
    table, queue = new_names()
    controller = instance(world.estate, world.connection_string, table=table, queue=queue, owner="a",
                          refresh_every=CONSUMERS // 4)
    try:
        result = reconciler.reconcile_key(key_of(world.estate), controller.deps)
    finally:
        world.outside.armed = False
        controller.close()

    assert world.outside.done == 1
    # Its owner's change stands: the account was re-read with its chunk, no longer uses the key, and
    # was not written.
    assert world.arm.accounts[changed].key_source == "Microsoft.Storage"
    assert changed not in writes_per_account(world)
    assert result.failures == []
    others = world.estate.adoption(version)
    assert (others.adopted, others.total) == (CONSUMERS - 1, CONSUMERS)
    # Back on the key for the other tests (its owner's doing: no write of the controller's).
    world.arm.dispatch_json("PATCH", world.estate.account_id(changed), {"properties": {"encryption": {
        "keySource": "Microsoft.Keyvault",
        "keyvaultproperties": {"keyname": world.estate.key_name, "keyversion": "",
                               "keyvaulturi": world.estate.vault_uri}}}})


def test_a_thousand_consumers_adopt_under_azures_own_limits_each_written_once(thousand: World) -> None:
    version = thousand.estate.rotate()
    thousand.arm.set_limits(azure_limits(thousand.arm))
    table, queue = new_names()
    controller = instance(thousand.estate, thousand.connection_string, table=table, queue=queue, owner="a",
                          concurrency=32)
    try:
        result = reconciler.reconcile_key(key_of(thousand.estate), controller.deps)
    finally:
        controller.close()

    assert thousand.estate.adoption(version).complete
    assert result.failures == []  # no request failed for good ...
    assert result.progress() == {"done": THOUSAND, "pending": 0, "blocked": 0}
    assert_each_written_once_per_step(thousand)  # ... and no consumer was written twice
    assert account_reads(thousand) == 0
    # Reads O(pages) for the inventory's Resource Graph side: 1,000 accounts are one page (plus the
    # subscription query); one encryption-scope listing per account.
    throttling = thousand.arm.throttling
    assert throttling is not None
    graph_pages = sum(1 for _, _, _, path in throttling.admitted if "resourcegraph" in path)
    scope_listings = sum(1 for _, _, _, path in throttling.admitted if path.endswith("/encryptionscopes"))
    assert graph_pages <= 3
    assert scope_listings == THOUSAND
    # 1,500 writes against a bucket of 200: past the burst the pacer spaced them at the refill rate.
    assert controller.connection.pacer.stats.waited_seconds > 0


"""Re-wrap fan-out over the Azurite work queue: split, budgeted slices, continuations, poison alerts.

Work items travel through a real Azure Storage queue (base64 text, as the Functions host reads them)
and are handled by the process_work queue function, with the real adapters behind the service.
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import json
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import azure.functions as func
import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.queue import QueueClient

from controller import bootstrap, service
from controller.adapters.work_queue import StorageWorkQueue, work_queue_client
from controller.model import Severity
from controller.reasons import Reason
from controller.rewrap.work import RewrapMode, RewrapWorkItem, split_job
from controller.service import Dependencies, RewrapItemStatus
from controller.settings import load_settings
from tests.integration.test_rewrap_adapters import Sandbox, assert_all_on, populate
from tests.integration.test_rewrap_adapters import sandbox as sandbox  # noqa: PLC0414 - the fixture
from tests.unit.fakes import fake_dependencies

pytestmark = pytest.mark.integration

ACCOUNT = "devstoreaccount1"


class TickingClock:
    """Every reading is one second after the previous: a budget of N seconds lasts N-1 page checks."""

    def __init__(self) -> None:
        self.current = datetime(2026, 11, 30, 12, tzinfo=UTC)

    def now(self) -> datetime:
        self.current += timedelta(seconds=1)
        return self.current


@dataclass
class FanOut:
    world: Sandbox
    queue: QueueClient
    deps: Dependencies

    def drain(self, *, limit: int = 100) -> list[dict[str, Any]]:
        """Run process_work on every visible message until the queue is empty; return the reports."""
        reports: list[dict[str, Any]] = []
        for _ in range(limit):
            messages = list(self.queue.receive_messages(max_messages=32, visibility_timeout=60))
            if not messages:
                return reports
            for message in messages:
                reports.append(service.process_work(message.content, self.deps).as_json())
                self.queue.delete_message(message)
        raise AssertionError("the queue never drained")


@pytest.fixture
def fan_out(sandbox: Sandbox) -> Iterator[FanOut]:
    queue_name = f"work-{uuid.uuid4().hex[:12]}"
    queue = work_queue_client(sandbox.connection_string, queue_name)
    backend = sandbox.backend(page_size=3)
    settings = load_settings({"CMK_VAULTS": sandbox.origin, "CMK_WORK_QUEUE": queue_name})
    deps = fake_dependencies(
        settings,
        clock=TickingClock(),
        rewrap=backend,
        work_queue=StorageWorkQueue(queue),
        rewrap_budget_seconds=2.5,  # three pages per slice with the ticking clock
    )
    yield FanOut(sandbox, queue, deps)
    with contextlib.suppress(ResourceNotFoundError):
        queue.delete_queue()


def test_a_job_fans_out_runs_in_budgeted_slices_and_completes(fan_out: FanOut) -> None:
    world = fan_out.world
    written = populate(world, 40)
    items = split_job(
        targets=[(ACCOUNT, world.container)],
        key_id=world.new_key_id,
        prefixes=["doc/000", "doc/001", "doc/002", "doc/003"],
        concurrency=4,
    )
    assert len(items) == 4
    world.reset_counters()
    service.enqueue_rewrap(items, fan_out.deps)

    reports = fan_out.drain()

    statuses = [report["status"] for report in reports]
    # Each prefix holds 10 blobs: 4 pages of 3, so one continuation per item.
    assert statuses.count(RewrapItemStatus.CONTINUED.value) == 4
    assert statuses.count(RewrapItemStatus.COMPLETE.value) == 4
    final = [report for report in reports if report["status"] == "complete"]
    assert sum(report["counts"]["rewrapped"] for report in final) == 40
    assert all(report["problems"] == 0 for report in final)
    counters = world.counters()["byOperation"]
    assert counters["KeyUnwrap"] == 40
    assert counters["KeyGet"] == 2  # the target once and the old version once, for the whole process
    assert_all_on(world, written, world.new_key_id)


def test_a_redelivered_continuation_of_a_completed_job_is_dropped(fan_out: FanOut) -> None:
    world = fan_out.world
    populate(world, 10)  # four pages of three
    item = split_job(targets=[(ACCOUNT, world.container)], key_id=world.new_key_id)[0]
    service.enqueue_rewrap([item], fan_out.deps)
    assert [report["status"] for report in fan_out.drain()] == ["continued", "complete"]
    world.reset_counters()
    stale = item.continuation()
    report = service.process_work(json.dumps(stale.to_message()), fan_out.deps)
    assert report.rewrap is not None
    assert report.rewrap.status is RewrapItemStatus.DUPLICATE
    assert world.counters()["total"] == 0


def test_work_items_are_base64_text_and_delays_hide_them(fan_out: FanOut) -> None:
    message = {"kind": "rewrap", "account": ACCOUNT, "container": "c-x", "key_id": "k"}
    fan_out.deps.work_queue.enqueue(message, delay=timedelta(seconds=1))  # type: ignore[union-attr]
    raw = QueueClient.from_connection_string(fan_out.world.connection_string, fan_out.queue.queue_name)
    assert list(raw.peek_messages()) == []
    time.sleep(1.5)
    peeked = list(raw.peek_messages())
    assert len(peeked) == 1
    assert json.loads(base64.b64decode(peeked[0].content)) == message


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch, fan_out: FanOut) -> Iterator[Any]:
    monkeypatch.setenv("CMK_VAULTS", fan_out.world.origin)
    sys.modules.pop("function_app", None)
    module = importlib.import_module("function_app")
    bootstrap.override(fan_out.deps)
    yield module.app
    bootstrap.override(None)


class Out:
    def __init__(self) -> None:
        self.value: str | None = None

    def set(self, value: str) -> None:
        self.value = value


def invoke(app: Any, body: str, poison: Out) -> None:
    function = next(f for f in app.get_functions() if f.get_function_name() == "process_work")
    function.get_user_function()(func.QueueMessage(id="m1", body=body.encode(), pop_receipt="p"), poison)


@pytest.mark.parametrize(
    "message",
    [
        {"kind": "rewrap", "account": ACCOUNT, "container": "c-x", "key_id": "https://evil.example/keys/k/" + "a" * 32},
        {"kind": "rewrap", "account": "Not An Account", "container": "c-x", "key_id": "x"},
        {"kind": "rewrap", "account": ACCOUNT, "container": "c-x", "key_id": "x", "concurrency": 10_000},
        {"kind": "rewrap", "account": ACCOUNT, "container": "c-x", "key_id": "x", "surprise": 1},
    ],
)
def test_poison_items_are_parked_with_an_alert(app: Any, fan_out: FanOut, message: dict[str, object]) -> None:
    poison = Out()
    invoke(app, json.dumps(message), poison)
    assert poison.value is not None
    reason = json.loads(poison.value)["reason"]
    [alert] = fan_out.deps.notifier.alerts
    assert (alert.severity, alert.reason, alert.message) == (Severity.HIGH, Reason.WORK_ITEM_POISONED, reason)


def test_an_unversioned_target_key_is_refused(fan_out: FanOut) -> None:
    versionless = fan_out.world.new_key_id.rsplit("/", 1)[0]
    item = RewrapWorkItem(account=ACCOUNT, container=fan_out.world.container, prefix=None, key_id=versionless)
    with pytest.raises(service.InvalidWorkItem, match="version"):
        service.process_work(json.dumps(item.to_message()), fan_out.deps)


def test_blobs_left_on_old_versions_raise_an_alert(fan_out: FanOut) -> None:
    world = fan_out.world
    populate(world, 2)
    world.container_client().upload_blob("broken", b"x", metadata={"encryptiondata": "{"})
    item = split_job(targets=[(ACCOUNT, world.container)], key_id=world.new_key_id)[0]
    report = service.process_work(json.dumps(item.to_message()), fan_out.deps)
    assert report.rewrap is not None
    assert report.rewrap.status is RewrapItemStatus.COMPLETE
    [alert] = fan_out.deps.notifier.alerts
    assert (alert.severity, alert.reason) == (Severity.HIGH, Reason.REWRAP_INCOMPLETE)
    assert alert.resource == f"{ACCOUNT}/{world.container}"
    assert (alert.details["failed"], alert.details["skipped"]) == (0, 1)


def test_a_rewrite_item_runs_through_the_queue(fan_out: FanOut) -> None:
    world = fan_out.world
    written = populate(world, 5)
    item = split_job(targets=[(ACCOUNT, world.container)], key_id=world.new_key_id, mode=RewrapMode.REWRITE)[0]
    service.enqueue_rewrap([item], fan_out.deps)
    reports = fan_out.drain()
    assert reports[-1]["status"] == "complete"
    assert sum(report["counts"].get("rewritten", 0) for report in reports) == 5
    assert_all_on(world, written, world.new_key_id)

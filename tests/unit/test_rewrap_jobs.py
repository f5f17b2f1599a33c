"""The re-wrap work-item model, job splitting, the time budget, and process_work's ``rewrap`` kind,
over the engine's hand-written fakes (tests/unit/test_rewrap_engine.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import timedelta

import pytest

from controller.errors import Conflict, InvalidInput, TransientError
from controller.model import KeyRef
from controller.ports import RewrapPorts, RewrapProgress
from controller.rewrap.budget import BudgetedBlobStore, BudgetExhausted, TimeBudget
from controller.rewrap.walker import RewrapOptions
from controller.rewrap.work import RewrapMode, RewrapWorkItem, parse_work_item, split_job
from controller.rewrap.wrapping import RsaPublicKeyWrapper
from controller.service import (
    Dependencies,
    InvalidWorkItem,
    RewrapItemStatus,
    plan_rewrap,
    process_work,
    run_rewrap_item,
)
from controller.settings import load_settings
from controller.vault_policy import VaultNotAllowed, VaultPolicy
from tests.unit.fakes import FakeClock, NotExpected, fake_dependencies
from tests.unit.test_envelope import NEW_KEY_ID, OLD_KEY_ID, VAULT, new_kek, old_kek
from tests.unit.test_rewrap_engine import CONTAINER, FakeBlobStore, FakeCheckpoint, FakeUnwrapper

pytestmark = pytest.mark.unit

ACCOUNT = "contosodata"
POLICY = VaultPolicy.of([VAULT])


def message(**overrides: object) -> dict[str, object]:
    return {"kind": "rewrap", "account": ACCOUNT, "container": CONTAINER, "key_id": NEW_KEY_ID, **overrides}


def test_a_work_item_round_trips_through_its_message() -> None:
    item = RewrapWorkItem(ACCOUNT, CONTAINER, "2026/", NEW_KEY_ID, RewrapMode.REWRITE, 4, True, 3)
    assert parse_work_item(item.to_message(), policy=POLICY) == item
    assert "encryption_scope" not in item.to_message()
    assert item.continuation().sequence == 4
    assert item.continuation().prefix == "2026/"
    scoped = RewrapWorkItem(ACCOUNT, CONTAINER, None, NEW_KEY_ID, RewrapMode.REWRITE, encryption_scope="scope-1")
    assert parse_work_item(scoped.to_message(), policy=POLICY) == scoped
    assert scoped.continuation().encryption_scope == "scope-1"


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({"account": "Bad_Account"}, "account"),
        ({"container": "x"}, "container"),
        ({"prefix": ""}, "prefix"),
        ({"key_id": "https://elsewhere.vault.azure.net/keys/k/" + "a" * 32}, "CMK_VAULTS"),
        ({"key_id": NEW_KEY_ID.rsplit("/", 1)[0]}, "version"),
        ({"mode": "shred"}, "mode"),
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": True}, "concurrency"),
        ({"dry_run": "yes"}, "dry_run"),
        ({"sequence": -1}, "sequence"),
        ({"marker": "x"}, "unknown field"),
        ({"mode": "rewrite", "encryption_scope": "a"}, "encryption_scope"),
        ({"encryption_scope": "scope-1"}, "needs mode rewrite"),
    ],
)
def test_invalid_work_items_are_refused_with_the_field(overrides: dict[str, object], complaint: str) -> None:
    with pytest.raises(InvalidInput, match=complaint):
        parse_work_item(message(**overrides), policy=POLICY)


def test_split_job_gives_one_item_per_container_and_prefix() -> None:
    items = split_job(
        targets=[(ACCOUNT, "a1"), (ACCOUNT, "b2"), (ACCOUNT, "a1")], key_id=NEW_KEY_ID, prefixes=["y/", "x/"]
    )
    assert [(item.container, item.prefix) for item in items] == [("a1", "x/"), ("a1", "y/"), ("b2", "x/"), ("b2", "y/")]
    assert split_job(targets=[(ACCOUNT, "a1")], key_id=NEW_KEY_ID)[0].prefix is None


@pytest.mark.parametrize("prefixes", [["a/", "a/b"], ["", "x"]])
def test_overlapping_prefixes_are_refused(prefixes: list[str]) -> None:
    with pytest.raises(InvalidInput, match="overlap"):
        split_job(targets=[(ACCOUNT, "a1")], key_id=NEW_KEY_ID, prefixes=prefixes)


def test_the_budgeted_store_always_lists_one_page_then_stops_once_spent() -> None:
    clock = FakeClock()
    store = FakeBlobStore(page_size=1)
    store.put("a", {})
    store.put("b", {})
    budgeted = BudgetedBlobStore(store, TimeBudget(clock, 10))
    clock.advance(timedelta(seconds=11))
    assert [item.name for item in budgeted.list_blobs(CONTAINER, prefix=None, marker=None).items] == ["a"]
    with pytest.raises(BudgetExhausted):
        budgeted.list_blobs(CONTAINER, prefix=None, marker="a")


@dataclass
class FakeQueue:
    sent: list[dict[str, object]] = field(default_factory=list)

    def enqueue(self, message: dict[str, object], *, delay: timedelta | None = None) -> None:
        self.sent.append(message)


class TickingClock(FakeClock):
    def now(self):  # type: ignore[no-untyped-def]
        self.advance(timedelta(seconds=1))
        return super().now()


@dataclass
class FakeBackend:
    store: FakeBlobStore
    checkpoint: FakeCheckpoint = field(default_factory=FakeCheckpoint)
    unwrapper: FakeUnwrapper = field(default_factory=lambda: FakeUnwrapper(keys={OLD_KEY_ID: old_kek()}))

    def open(self, item: RewrapWorkItem) -> RewrapPorts:
        target = new_kek()
        wrapper = RsaPublicKeyWrapper(target.kid, target.private_key.public_key())
        return RewrapPorts(store=self.store, unwrapper=self.unwrapper, wrapper=wrapper, checkpoint=self.checkpoint)

    def target_version(self, key: KeyRef) -> KeyRef:
        return key if key.is_versioned else POLICY.parse_key_id(NEW_KEY_ID)


def deps(backend: FakeBackend | None, queue: FakeQueue | None, *, budget: float | None = 300.0) -> Dependencies:
    return fake_dependencies(
        load_settings({"CMK_VAULTS": VAULT}),
        clock=TickingClock(),
        rewrap=backend or NotExpected("rewrap"),
        work_queue=queue or NotExpected("work_queue"),
        rewrap_budget_seconds=budget,
    )


def encrypted_store(count: int, page_size: int = 2) -> FakeBlobStore:
    store = FakeBlobStore(page_size=page_size)
    for index in range(count):
        store.put_encrypted(f"b{index:02d}", b"data %d" % index, old_kek(), "2.0")
    return store


def test_process_work_runs_a_slice_and_enqueues_the_continuation_until_done() -> None:
    store = encrypted_store(9)  # five pages of two
    backend = FakeBackend(store)
    queue = FakeQueue()
    context = deps(backend, queue, budget=1.5)  # two pages per slice with the ticking clock
    body = json.dumps(message())
    statuses = []
    while body:
        report = process_work(body, context)
        assert report.rewrap is not None
        statuses.append(report.rewrap.status)
        body = json.dumps(queue.sent.pop()) if queue.sent else ""
    assert statuses == [RewrapItemStatus.CONTINUED, RewrapItemStatus.CONTINUED, RewrapItemStatus.COMPLETE]
    assert all(store.key_id(name) == NEW_KEY_ID for name in store.blobs)
    assert backend.unwrapper.calls == 9
    # A late redelivery of a continuation of the finished job does nothing.
    late = process_work(json.dumps(message(sequence=1)), context)
    assert late.rewrap is not None
    assert late.rewrap.status is RewrapItemStatus.DUPLICATE
    assert backend.unwrapper.calls == 9


def test_a_checkpoint_conflict_means_another_worker_owns_the_job() -> None:
    backend = FakeBackend(encrypted_store(2))

    def lose(job_id: str, progress: object) -> None:
        raise Conflict("checkpoint ETag")

    backend.checkpoint.save = lose  # type: ignore[method-assign,assignment]
    report = process_work(json.dumps(message()), deps(backend, FakeQueue()))
    assert report.rewrap is not None
    assert report.rewrap.status is RewrapItemStatus.SUPERSEDED


def test_rewrap_items_with_bad_fields_fail_permanently_before_anything_is_opened() -> None:
    with pytest.raises(InvalidWorkItem, match="concurrency"):
        process_work(json.dumps(message(concurrency=999)), deps(None, None))


@dataclass
class PageRecorder:
    pages: list[tuple[int, int]] = field(default_factory=list)

    def page_done(self, listed: int, progress: RewrapProgress) -> None:
        self.pages.append((listed, sum(progress.counts.values())))


def test_without_a_budget_an_item_runs_to_the_end_and_the_observer_sees_every_page() -> None:
    backend = FakeBackend(encrypted_store(5))  # three pages: 2, 2, 1
    queue = FakeQueue()
    observer = PageRecorder()
    [item] = split_job(targets=[(ACCOUNT, CONTAINER)], key_id=NEW_KEY_ID)
    result = run_rewrap_item(item, deps(backend, queue, budget=None), observer=observer)
    assert result.status is RewrapItemStatus.COMPLETE and queue.sent == []
    assert observer.pages == [(2, 2), (2, 4), (1, 5)]
    assert result.report is not None and result.report.counts["rewrapped"] == 5 and not result.report.incomplete
    assert result.report.as_json()["mode"] == "rewrap"


def test_plan_rewrap_targets_the_current_version_and_refuses_other_vaults() -> None:
    context = deps(FakeBackend(encrypted_store(0)), FakeQueue())
    versionless = POLICY.parse_key_id(NEW_KEY_ID).versionless
    [item] = plan_rewrap(context, targets=[(ACCOUNT, CONTAINER)], key=versionless, mode=RewrapMode.REWRITE,
                         encryption_scope="scope-1")
    assert (item.key_id, item.mode, item.encryption_scope) == (NEW_KEY_ID, RewrapMode.REWRITE, "scope-1")
    other = POLICY.parse_key_id("https://elsewhere.vault.azure.net/keys/k")
    with pytest.raises(VaultNotAllowed, match=f"allowed: {VAULT}"):
        plan_rewrap(context, targets=[(ACCOUNT, CONTAINER)], key=other)


def test_blobs_still_throttled_past_the_walkers_budget_send_the_item_back_to_the_queue_not_to_an_alert() -> None:
    """The walker retries each blob a bounded number of times; a blob throttled past that is not done, so
    the queue delivers the item again (bounded by its dequeue count, then the poison queue) instead of the
    item completing with the blob left behind."""
    backend = FakeBackend(encrypted_store(1))
    budget = RewrapOptions().max_transient_attempts
    backend.unwrapper.faults = [TransientError("unwrap: HTTP 429", retry_after=0.0) for _ in range(budget)]
    context = deps(backend, FakeQueue())
    with pytest.raises(TransientError, match="throttled"):
        process_work(json.dumps(message()), context)
    assert context.notifier.alerts == []  # type: ignore[attr-defined]
    report = process_work(json.dumps(message()), context)  # the queue's next delivery: the vault answers again
    assert report.rewrap is not None and report.rewrap.status is RewrapItemStatus.COMPLETE
    assert backend.store.key_id("b00") == NEW_KEY_ID


def test_a_redelivered_continuation_whose_job_left_blobs_throttled_runs_the_job_again() -> None:
    backend = FakeBackend(encrypted_store(3))  # two pages
    budget = RewrapOptions().max_transient_attempts
    context = deps(backend, FakeQueue(), budget=None)
    backend.unwrapper.faults = [TransientError("unwrap: HTTP 429", retry_after=0.0) for _ in range(budget)]
    with pytest.raises(TransientError, match="throttled"):
        process_work(json.dumps(message(sequence=1)), context)
    report = process_work(json.dumps(message(sequence=1)), context)
    assert report.rewrap is not None and report.rewrap.status is RewrapItemStatus.COMPLETE
    assert all(backend.store.key_id(name) == NEW_KEY_ID for name in backend.store.blobs)

"""Many workers, one container: a lister turns the listing into page items on the Azurite work queue,
several process_work workers re-wrap the pages at once (one of them killed mid-page), and the job's
progress and its one report live in the ledger table.

Everything runs through the real adapters (queue, table, blob store, vault) over HTTP(S).
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import json
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.functions.queue import QueueMessage
from azure.storage.queue import QueueClient

from controller import bootstrap, service
from controller.adapters.rewrap_backend import AzureRewrapBackend
from controller.adapters.rewrap_jobs import TableRewrapJobLedger
from controller.adapters.work_queue import StorageWorkQueue, work_queue_client
from controller.bootstrap import SystemClock
from controller.errors import TransientError, Unreachable
from controller.ports import BlobItem, BlobPage, BlobStore, KeyUnwrapper, RewrapPorts
from controller.reasons import Reason
from controller.rewrap.pages import PAGE_WORK_KIND, JobProgress, job_id_of
from controller.rewrap.work import RewrapMode, RewrapWorkItem, split_job
from controller.service import Dependencies, RewrapItemStatus
from controller.settings import load_settings
from tests.integration.test_rewrap_adapters import Sandbox, assert_all_on, populate
from tests.integration.test_rewrap_adapters import sandbox as sandbox  # noqa: PLC0414 - the fixture
from tests.unit.fakes import fake_dependencies

pytestmark = pytest.mark.integration

ACCOUNT = "devstoreaccount1"
#: The killed worker's message comes back after this; its page's lease has run out by then.
KILLED_VISIBILITY_SECONDS = 2
LEASE_SECONDS = 1.0


class WorkerKilled(BaseException):
    """The worker process dies: nothing it does afterwards happens (not an error it could handle)."""


@dataclass
class WriteLog:
    """Every conditional metadata write that landed, by blob name, across all workers."""

    writes: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class Death:
    """A doomed worker dies at its write after ``after`` landed ones (its content key unwrapped, in
    vain): nothing it would do afterwards happens."""

    after: int | None = None
    writes: int = 0
    dead: bool = False

    def check(self) -> None:
        if self.dead:
            raise WorkerKilled

    def before_write(self) -> None:
        self.check()
        if self.after is not None and self.writes >= self.after:
            self.dead = True
            raise WorkerKilled
        self.writes += 1


class LoggedStore:
    """The real store, counting landed writes (and dying with its worker)."""

    def __init__(self, store: BlobStore, log: WriteLog, death: Death) -> None:
        self._store = store
        self._log = log
        self._death = death

    def _check_alive(self) -> None:
        with self._log.lock:
            self._death.check()

    def list_blobs(self, container: str, *, prefix: str | None, marker: str | None) -> BlobPage:
        self._check_alive()
        return self._store.list_blobs(container, prefix=prefix, marker=marker)

    def get_properties(self, container: str, name: str) -> BlobItem:
        self._check_alive()
        return self._store.get_properties(container, name)

    def set_metadata(self, container: str, name: str, metadata: Mapping[str, str], *, if_match: str) -> str:
        with self._log.lock:
            self._death.before_write()
        etag = self._store.set_metadata(container, name, metadata, if_match=if_match)
        with self._log.lock:
            self._log.writes[name] += 1
        return etag


class MortalUnwrapper:
    """The real unwrapper, which stops with its worker: a dead process calls no vault."""

    def __init__(self, unwrapper: KeyUnwrapper, log: WriteLog, death: Death) -> None:
        self._unwrapper = unwrapper
        self._log = log
        self._death = death

    def unwrap(self, key_id: str, algorithm: str, wrapped: bytes) -> bytes:
        with self._log.lock:
            self._death.check()
        return self._unwrapper.unwrap(key_id, algorithm, wrapped)


class LoggedBackend:
    """The real backend whose stores log writes (and, for the doomed worker, die mid-page)."""

    def __init__(self, inner: AzureRewrapBackend, log: WriteLog, *, die_after: int | None = None) -> None:
        self._inner = inner
        self._log = log
        self._death = Death(after=die_after)

    def open(self, item: RewrapWorkItem) -> RewrapPorts:
        ports = self._inner.open(item)
        return replace(ports, store=LoggedStore(ports.store, self._log, self._death),
                       unwrapper=MortalUnwrapper(ports.unwrapper, self._log, self._death))

    def target_version(self, key: Any) -> Any:
        return self._inner.target_version(key)


@dataclass
class ScaleOut:
    world: Sandbox
    queue: QueueClient
    deps: Dependencies
    backend: AzureRewrapBackend
    log: WriteLog

    def worker_deps(self, *, die_after: int | None = None) -> Dependencies:
        return replace(self.deps, rewrap=LoggedBackend(self.backend, self.log, die_after=die_after))

    def job_id(self, item: RewrapWorkItem) -> str:
        return job_id_of(item)

    def run_workers(self, item: RewrapWorkItem, workers: int, *, doomed: bool = False) -> list[dict[str, Any]]:
        """``workers`` threads each take one message at a time until the job is finished. With
        ``doomed``, one more worker takes the first page item and dies after two writes of it."""
        reports: list[dict[str, Any]] = []
        lock = threading.Lock()
        if doomed:
            message = self._first_page_message(reports)
            with pytest.raises(WorkerKilled):
                service.process_work(message.content, self.worker_deps(die_after=2))
            # Not deleted: the queue hands the message out again when its visibility runs out.
        deps = self.worker_deps()
        job_id = self.job_id(item)

        def work() -> None:
            for _ in range(1000):
                messages = list(self.queue.receive_messages(max_messages=1, visibility_timeout=60))
                for message in messages:
                    report = service.process_work(message.content, deps).as_json()
                    self.queue.delete_message(message)
                    with lock:
                        reports.append(report)
                if not messages:
                    if self.deps.rewrap_jobs.progress(job_id).listing.finished:
                        return
                    threading.Event().wait(0.1)  # an idle worker polls, as the queue trigger does
            raise AssertionError("the job never finished")

        threads = [threading.Thread(target=work) for _ in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return reports

    def _first_page_message(self, reports: list[dict[str, Any]]) -> Any:
        for _ in range(100):
            for message in self.queue.receive_messages(max_messages=1, visibility_timeout=KILLED_VISIBILITY_SECONDS):
                if json.loads(message.content)["kind"] == PAGE_WORK_KIND:
                    return message
                # The lister's own message: list now, so pages appear.
                reports.append(service.process_work(message.content, self.worker_deps()).as_json())
                self.queue.delete_message(message)
        raise AssertionError("no page item was enqueued")


@pytest.fixture
def scale_out(sandbox: Sandbox) -> Iterator[ScaleOut]:
    queue_name = f"work-{uuid.uuid4().hex[:12]}"
    queue = work_queue_client(sandbox.connection_string, queue_name)
    backend = sandbox.backend(page_size=16)
    settings = load_settings({"CMK_VAULTS": sandbox.origin, "CMK_WORK_QUEUE": queue_name})
    deps = fake_dependencies(
        settings,
        clock=SystemClock(),
        rewrap=backend,
        rewrap_jobs=TableRewrapJobLedger(sandbox.table, clock=SystemClock()),
        work_queue=StorageWorkQueue(queue),
        rewrap_page_lease_seconds=LEASE_SECONDS,
    )
    yield ScaleOut(sandbox, queue, deps, backend, WriteLog())
    with contextlib.suppress(ResourceNotFoundError):
        queue.delete_queue()


def job_report(reports: list[dict[str, Any]]) -> dict[str, Any]:
    [finished] = [report["job_report"] for report in reports if "job_report" in report]
    return dict(finished)


def test_several_workers_and_a_killed_one_put_every_blob_on_the_target_exactly_once(scale_out: ScaleOut) -> None:
    world = scale_out.world
    written = populate(world, 100)
    [item] = split_job(targets=[(ACCOUNT, world.container)], key_id=world.new_key_id, concurrency=1, scale_out=True)
    service.enqueue_rewrap([item], scale_out.deps)
    world.reset_counters()

    reports = scale_out.run_workers(item, workers=3, doomed=True)

    statuses = Counter(report["status"] for report in reports)
    assert statuses[RewrapItemStatus.LISTED.value] == 1
    report = job_report(reports)
    # 100 blobs in pages of 16: 7 pages, each recorded once; the killed worker's page was taken over.
    assert (report["pages_listed"], report["pages_done"], report["pages_failed"]) == (7, 7, 0)
    assert report["takeovers"] == 1
    assert report["finished"] and report["listing_complete"]
    counts = report["counts"]
    # The counts add up to the listing: what the killed worker re-wrapped is already current when
    # its page is worked again.
    assert report["blobs"] == 100
    assert counts["rewrapped"] + counts.get("already_current", 0) == 100
    assert counts.get("already_current", 0) == 2
    assert counts.get("failed", 0) == 0 and report["problems"] == []
    # Every blob was written exactly once, across all workers.
    assert set(scale_out.log.writes) == set(written)
    assert set(scale_out.log.writes.values()) == {1}
    # Key Vault: one unwrap per blob, plus the one the killed worker made for the write it died at.
    unwraps = world.counters()["byOperation"]["KeyUnwrap"]
    assert unwraps == 101
    assert unwraps / 100 <= 1.01
    assert report["unwrap_calls"] == 98  # the dead worker's page result was never recorded
    assert_all_on(world, written, world.new_key_id)


def test_page_items_carry_blob_names_and_etags_only(scale_out: ScaleOut) -> None:
    world = scale_out.world
    populate(world, 40)
    blobs = {blob.name: blob for blob in world.container_client().list_blobs(include=["metadata"])}
    [item] = split_job(targets=[(ACCOUNT, world.container)], key_id=world.new_key_id, scale_out=True)
    lister = service.process_work(json.dumps(item.to_message()), scale_out.deps)
    assert lister.rewrap is not None and lister.rewrap.status is RewrapItemStatus.LISTED

    raw = QueueClient.from_connection_string(world.connection_string, scale_out.queue.queue_name)
    messages = [json.loads(base64.b64decode(message.content)) for message in raw.peek_messages(max_messages=32)]

    assert [message["page"] for message in messages] == [0, 1, 2]
    assert all(set(message) == {"kind", "job", "page", "marker", "blobs"} for message in messages)
    listed = [name for message in messages for name, _ in message["blobs"]]
    assert listed == sorted(blobs)
    for message in messages:
        for name, etag in message["blobs"]:
            assert etag.strip('"') == str(blobs[name].etag).strip('"')
        text = json.dumps(message)
        assert "encryptiondata" not in text.lower()
        assert "EncryptedKey" not in text
        for name, _ in message["blobs"]:
            envelope = json.loads(blobs[name].metadata["encryptiondata"])
            assert envelope["WrappedContentKey"]["EncryptedKey"] not in text


def test_a_redelivered_page_is_dropped_and_progress_shows_every_page(scale_out: ScaleOut) -> None:
    world = scale_out.world
    populate(world, 20)
    [item] = split_job(targets=[(ACCOUNT, world.container)], key_id=world.new_key_id, scale_out=True)
    service.enqueue_rewrap([item], scale_out.deps)
    reports = scale_out.run_workers(item, workers=2)
    assert job_report(reports)["counts"] == {"rewrapped": 20}
    page = next(report for report in reports if report["status"] == RewrapItemStatus.PAGE_DONE.value)
    progress: JobProgress = service.rewrap_job_progress(item, scale_out.deps)
    assert (progress.listing.pages_listed, progress.pages_done, progress.blobs) == (2, 2, 20)

    world.reset_counters()
    again = {"kind": PAGE_WORK_KIND, "job": item.as_json(), "page": page["page"], "marker": None,
             "blobs": [["doc/0000.txt", '"0x1"']]}
    redelivered = service.process_work(json.dumps(again), scale_out.deps)
    assert redelivered.rewrap is not None and redelivered.rewrap.status is RewrapItemStatus.DUPLICATE
    assert world.counters()["total"] == 0
    assert service.rewrap_job_progress(item, scale_out.deps).blobs == 20


class DiesBeforeFinishing:
    """The job ledger of a worker killed right after it recorded its page, before it finished the job."""

    def __init__(self, ledger: TableRewrapJobLedger) -> None:
        self._ledger = ledger

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)

    def progress(self, job_id: str) -> JobProgress:
        raise WorkerKilled


def test_a_worker_killed_between_recording_its_page_and_finishing_the_job_leaves_it_to_the_redelivery(
        scale_out: ScaleOut) -> None:
    world = scale_out.world
    populate(world, 5)
    [item] = split_job(targets=[(ACCOUNT, world.container)], key_id=world.new_key_id, scale_out=True)
    service.enqueue_rewrap([item], scale_out.deps)
    message = scale_out._first_page_message([])
    doomed = replace(scale_out.worker_deps(), rewrap_jobs=DiesBeforeFinishing(scale_out.deps.rewrap_jobs))
    with pytest.raises(WorkerKilled):
        service.process_work(message.content, doomed)
    assert not service.rewrap_job_progress(item, scale_out.deps).listing.finished  # recorded, not finished

    redelivered = service.process_work(message.content, scale_out.worker_deps())
    assert redelivered.rewrap is not None and redelivered.rewrap.status is RewrapItemStatus.DUPLICATE
    assert redelivered.rewrap.job_report is not None  # the redelivery finishes the job, with its one report
    assert redelivered.rewrap.job_report.as_json()["counts"] == {"rewrapped": 5}
    assert service.rewrap_job_progress(item, scale_out.deps).listing.finished


class SlowWritesBackend:
    """The real backend whose blob writes each take ``seconds`` longer (a throttled account)."""

    def __init__(self, inner: AzureRewrapBackend, seconds: float) -> None:
        self._inner = inner
        self._seconds = seconds
        self.writing = threading.Event()

    def open(self, item: RewrapWorkItem) -> RewrapPorts:
        ports = self._inner.open(item)
        return replace(ports, store=SlowWritesStore(ports.store, self._seconds, self.writing))

    def target_version(self, key: Any) -> Any:
        return self._inner.target_version(key)


class SlowWritesStore:
    def __init__(self, store: BlobStore, seconds: float, writing: threading.Event) -> None:
        self._store = store
        self._seconds = seconds
        self._writing = writing

    def list_blobs(self, container: str, *, prefix: str | None, marker: str | None) -> BlobPage:
        return self._store.list_blobs(container, prefix=prefix, marker=marker)

    def get_properties(self, container: str, name: str) -> BlobItem:
        return self._store.get_properties(container, name)

    def set_metadata(self, container: str, name: str, metadata: Mapping[str, str], *, if_match: str) -> str:
        self._writing.set()
        threading.Event().wait(self._seconds)
        return self._store.set_metadata(container, name, metadata, if_match=if_match)


def test_a_page_worked_for_longer_than_its_lease_stays_with_its_worker(scale_out: ScaleOut) -> None:
    """Its lease is renewed while it is worked: no other worker takes the page over (which would work it a
    second time and drop the first worker's result as superseded)."""
    world = scale_out.world
    populate(world, 6)  # one page
    [item] = split_job(targets=[(ACCOUNT, world.container)], key_id=world.new_key_id, concurrency=1, scale_out=True)
    service.enqueue_rewrap([item], scale_out.deps)
    message = scale_out._first_page_message([])
    lease = 2.0
    backend = SlowWritesBackend(scale_out.backend, 0.7)
    slow = replace(scale_out.deps, rewrap=backend, rewrap_page_lease_seconds=lease)
    outcome: list[Any] = []
    worker = threading.Thread(target=lambda: outcome.append(service.process_work(message.content, slow)))
    worker.start()
    assert backend.writing.wait(30)  # the page is claimed and being worked
    claims: Counter[str] = Counter()
    while worker.is_alive():  # another worker, given the page item again, every half second
        claim = scale_out.deps.rewrap_jobs.claim_page(job_id_of(item), json.loads(message.content)["page"],
                                                      worker="another", lease_seconds=lease)
        claims[claim.outcome.value] += 1
        worker.join(0.5)
    [result] = outcome
    assert result.rewrap is not None and result.rewrap.status is RewrapItemStatus.PAGE_DONE  # not superseded
    # Never taken over while worked (4.2 s: over two leases); "finished" once it was recorded.
    assert claims["claimed"] == 0 and claims["held"] >= 6
    report = result.rewrap.job_report.as_json()
    assert report["counts"] == {"rewrapped": 6} and report["takeovers"] == 0


def test_deliveries_of_one_page_claiming_it_at_once_get_one_claim_and_the_others_wait(scale_out: ScaleOut) -> None:
    job_id, start = f"job-{uuid.uuid4().hex[:8]}", threading.Barrier(8)
    ledgers = [TableRewrapJobLedger(scale_out.world.table, clock=SystemClock()) for _ in range(8)]  # 8 instances

    def claim(index: int) -> str:
        ledgers[index].progress(job_id)  # the table is there and the connection open: the claims start together
        start.wait()
        return ledgers[index].claim_page(job_id, 0, worker=f"worker-{index}", lease_seconds=60).outcome.value

    with ThreadPoolExecutor(8) as pool:
        outcomes = Counter(pool.map(claim, range(8)))
    assert outcomes == {"claimed": 1, "held": 7}


def test_a_scale_out_rewrite_job(scale_out: ScaleOut) -> None:
    world = scale_out.world
    written = populate(world, 6)
    [item] = split_job(targets=[(ACCOUNT, world.container)], key_id=world.new_key_id, mode=RewrapMode.REWRITE,
                       scale_out=True)
    service.enqueue_rewrap([item], scale_out.deps)
    report = job_report(scale_out.run_workers(item, workers=2))
    assert report["counts"] == {"rewritten": 6}
    assert_all_on(world, written, world.new_key_id)


def test_an_empty_container_job_finishes_with_an_empty_report(scale_out: ScaleOut) -> None:
    [item] = split_job(targets=[(ACCOUNT, scale_out.world.container)], key_id=scale_out.world.new_key_id,
                       scale_out=True)
    lister = service.process_work(json.dumps(item.to_message()), scale_out.deps)
    assert lister.rewrap is not None and lister.rewrap.status is RewrapItemStatus.LISTED
    assert lister.rewrap.job_report is not None
    report = lister.rewrap.job_report.as_json()
    assert (report["finished"], report["pages_listed"], report["pages_done"], report["blobs"]) == (True, 0, 0, 0)
    assert service.rewrap_job_progress(item, scale_out.deps).listing.finished


# --- pages that fail: a transient error, and an item that ends on the poison queue -----------------------

#: host.json extensions.queues.maxDequeueCount, as the Functions host applies it.
MAX_DEQUEUE_COUNT = 5


class UnreachablePageBackend:
    """The real backend, except that listing the page holding ``blob`` fails as an unreachable
    endpoint would, ``times`` times (None: always)."""

    def __init__(self, inner: AzureRewrapBackend, blob: str, *, times: int | None = None) -> None:
        self._inner = inner
        self._blob = blob
        self.left = times

    def open(self, item: RewrapWorkItem) -> RewrapPorts:
        ports = self._inner.open(item)
        return replace(ports, store=UnreachablePageStore(ports.store, self))

    def target_version(self, key: Any) -> Any:
        return self._inner.target_version(key)

    def fails_now(self, page: BlobPage) -> bool:
        if self._blob not in {item.name for item in page.items} or self.left == 0:
            return False
        if self.left is not None:
            self.left -= 1
        return True


class UnreachablePageStore:
    def __init__(self, store: BlobStore, backend: UnreachablePageBackend) -> None:
        self._store = store
        self._backend = backend

    def list_blobs(self, container: str, *, prefix: str | None, marker: str | None) -> BlobPage:
        page = self._store.list_blobs(container, prefix=prefix, marker=marker)
        if self._backend.fails_now(page):
            raise Unreachable(f"blob endpoint unreachable listing {container}")
        return page

    def get_properties(self, container: str, name: str) -> BlobItem:
        return self._store.get_properties(container, name)

    def set_metadata(self, container: str, name: str, metadata: Mapping[str, str], *, if_match: str) -> str:
        return self._store.set_metadata(container, name, metadata, if_match=if_match)


class PoisonOut:
    def __init__(self) -> None:
        self.value: str | None = None

    def set(self, value: str) -> None:
        self.value = value


@pytest.fixture
def queue_trigger(monkeypatch: pytest.MonkeyPatch, scale_out: ScaleOut) -> Iterator[Any]:
    """function_app's process_work, as the Functions host calls it."""
    monkeypatch.setenv("CMK_VAULTS", scale_out.world.origin)
    sys.modules.pop("function_app", None)
    app = importlib.import_module("function_app").app
    function = next(f for f in app.get_functions() if f.get_function_name() == "process_work")
    yield function.get_user_function()
    bootstrap.override(None)


def run_as_the_host(scale_out: ScaleOut, trigger: Any, deps: Dependencies) -> tuple[list[str], list[str]]:
    """Deliver the work queue's messages to the queue trigger as the Functions host does: a message
    whose invocation raised is delivered again (here at once) until its dequeue count reaches
    maxDequeueCount, when it is moved to the poison queue. The statuses of the items processed, and
    the bodies moved to the poison queue."""
    bootstrap.override(deps)
    statuses: list[str] = []
    poisoned: list[str] = []
    for _ in range(200):
        messages = list(scale_out.queue.receive_messages(max_messages=1, visibility_timeout=60))
        if not messages:
            return statuses, poisoned
        [message] = messages
        body = message.content
        delivery = QueueMessage(id=message.id, body=body.encode(), dequeue_count=message.dequeue_count,
                                pop_receipt=message.pop_receipt)
        poison = PoisonOut()
        try:
            trigger(delivery, poison)
        except TransientError:
            if message.dequeue_count >= MAX_DEQUEUE_COUNT:
                poisoned.append(body)
                scale_out.queue.delete_message(message)
            else:
                scale_out.queue.update_message(message, visibility_timeout=0)
            continue
        if poison.value is not None:
            poisoned.append(body)
        scale_out.queue.delete_message(message)
        statuses.append(json.loads(body)["kind"])
    raise AssertionError("the work queue never emptied")


def list_the_job(scale_out: ScaleOut, item: RewrapWorkItem) -> None:
    lister = service.process_work(json.dumps(item.to_message()), scale_out.deps)
    assert lister.rewrap is not None and lister.rewrap.status is RewrapItemStatus.LISTED


def test_a_page_whose_item_is_poisoned_is_failed_in_the_job_which_ends_and_says_so(
    scale_out: ScaleOut, queue_trigger: Any
) -> None:
    world = scale_out.world
    written = populate(world, 40)  # pages of 16: 0000-0015, 0016-0031, 0032-0039
    [item] = split_job(targets=[(ACCOUNT, world.container)], key_id=world.new_key_id, scale_out=True)
    list_the_job(scale_out, item)
    broken = UnreachablePageBackend(scale_out.backend, "doc/0016.txt")
    deps = replace(scale_out.deps, rewrap=broken, rewrap_page_lease_seconds=600.0)

    statuses, poisoned = run_as_the_host(scale_out, queue_trigger, deps)

    assert statuses == [PAGE_WORK_KIND, PAGE_WORK_KIND]
    assert [json.loads(body)["page"] for body in poisoned] == [1]
    progress = service.rewrap_job_progress(item, scale_out.deps)
    report = progress.as_json()
    assert report["finished"]
    assert (report["pages_listed"], report["pages_done"], report["pages_failed"]) == (3, 2, 1)
    # Every retry took the page up at once: its lease was released, never waited out nor taken over.
    assert report["takeovers"] == 0
    assert report["counts"] == {"failed": 16, "rewrapped": 24}
    assert report["blobs"] == 40 == len(written)
    failed = {f"doc/{index:04d}.txt" for index in range(16, 32)}
    assert {problem["name"] for problem in report["problems"]} == failed
    assert {problem["reason"] for problem in report["problems"]} == {"page_failed"}
    assert all(f"still failing after {MAX_DEQUEUE_COUNT} attempts" in problem["detail"]
               and "unreachable" in problem["detail"] for problem in report["problems"])
    reasons = [alert.reason for alert in deps.notifier.alerts]  # type: ignore[attr-defined]
    assert reasons.count(Reason.WORK_ITEM_POISONED) == 1 and reasons.count(Reason.REWRAP_INCOMPLETE) == 1
    assert_all_on(world, {name: data for name, data in written.items() if name not in failed}, world.new_key_id)

    # Given up again (a second copy of the item reaching the poison queue), nothing changes.
    assert service.give_up_work(poisoned[0], "again", deps) is None
    assert service.rewrap_job_progress(item, scale_out.deps).as_json() == report


def test_a_transient_error_releases_the_page_which_is_taken_up_again_at_once(scale_out: ScaleOut) -> None:
    world = scale_out.world
    written = populate(world, 20)
    [item] = split_job(targets=[(ACCOUNT, world.container)], key_id=world.new_key_id, scale_out=True)
    list_the_job(scale_out, item)
    # The walker tries a listing three times before it says the endpoint is unreachable: one delivery fails.
    flaky = UnreachablePageBackend(scale_out.backend, "doc/0000.txt", times=3)
    deps = replace(scale_out.deps, rewrap=flaky, rewrap_page_lease_seconds=600.0)
    first = None
    for message in scale_out.queue.receive_messages(max_messages=2, visibility_timeout=60):
        if json.loads(message.content)["page"] == 0:
            first = message
        else:
            scale_out.queue.update_message(message, visibility_timeout=0)  # back for the workers below
    assert first is not None

    with pytest.raises(Unreachable):
        service.process_work(first.content, deps)
    # The queue's redelivery of the same item (here at once) works the page instead of finding it
    # held for the 10 minutes of its lease.
    again = service.process_work(first.content, deps)

    assert again.rewrap is not None and again.rewrap.status is RewrapItemStatus.PAGE_DONE
    assert again.rewrap.progress is not None and again.rewrap.progress.counts == {"rewrapped": 16}
    scale_out.run_workers(item, workers=1)  # the other page
    report = service.rewrap_job_progress(item, scale_out.deps).as_json()
    assert (report["finished"], report["pages_done"], report["takeovers"]) == (True, 2, 0)
    assert report["counts"] == {"rewrapped": 20}
    assert_all_on(world, written, world.new_key_id)



def run_as_a_crashing_host(scale_out: ScaleOut, trigger: Any, deps: Dependencies, doomed: Dependencies,
                           item: RewrapWorkItem, *, page: int) -> list[str]:
    """Deliver the work queue's messages to the queue trigger as the Functions host does, except that
    the host dies on every delivery of ``page`` (``doomed``'s worker is killed mid-page): no code of
    ours runs after it, the message comes back when its visibility runs out, and after maxDequeueCount
    deliveries the host moves it to the poison queue without calling the trigger. Until the job is
    finished; the bodies moved to the poison queue."""
    poisoned: list[str] = []
    job_id = job_id_of(item)
    for _ in range(400):
        messages = list(scale_out.queue.receive_messages(max_messages=1, visibility_timeout=60))
        if not messages:
            if scale_out.deps.rewrap_jobs.listing(job_id).finished:
                return poisoned
            threading.Event().wait(0.2)  # a delayed item is not visible yet
            continue
        [message] = messages
        if message.dequeue_count > MAX_DEQUEUE_COUNT:
            poisoned.append(message.content)  # moved to <queue>-poison; the trigger is not called
            scale_out.queue.delete_message(message)
            continue
        body = message.content
        delivery = QueueMessage(id=message.id, body=body.encode(), dequeue_count=message.dequeue_count,
                                pop_receipt=message.pop_receipt)
        killed = json.loads(body).get("page") == page
        bootstrap.override(doomed if killed else deps)
        try:
            trigger(delivery, PoisonOut())
        except WorkerKilled:
            # The host died with the message: it is delivered again once its visibility runs out (here
            # just after the page's lease).
            scale_out.queue.update_message(message, visibility_timeout=1)
            continue
        scale_out.queue.delete_message(message)
    raise AssertionError("the job never finished")


def test_a_page_whose_worker_dies_on_every_delivery_is_failed_in_the_job_which_ends(
    scale_out: ScaleOut, queue_trigger: Any
) -> None:
    world = scale_out.world
    written = populate(world, 20)  # pages of 16: 0000-0015, 0016-0019
    [item] = split_job(targets=[(ACCOUNT, world.container)], key_id=world.new_key_id, scale_out=True)
    list_the_job(scale_out, item)
    deps = replace(scale_out.deps, rewrap_page_lease_seconds=0.5)
    doomed = replace(scale_out.worker_deps(die_after=0), rewrap_page_lease_seconds=0.5)  # dies at its first write

    poisoned = run_as_a_crashing_host(scale_out, queue_trigger, deps, doomed, item, page=0)

    # The item ends on the poison queue after its last delivery died, as the host puts it there, and
    # the job still ends: the page is failed, by name, each of its blobs counted once.
    assert [json.loads(body)["page"] for body in poisoned] == [0]
    report = service.rewrap_job_progress(item, scale_out.deps).as_json()
    assert report["finished"]
    assert (report["pages_listed"], report["pages_done"], report["pages_failed"]) == (2, 1, 1)
    # Each delivery took the page over from the last one's worker, and the copy of its last delivery
    # (see run_rewrap_page) took it over from that one's: five workers died with it.
    assert report["takeovers"] == MAX_DEQUEUE_COUNT
    assert report["counts"] == {"failed": 16, "rewrapped": 4}
    assert report["blobs"] == 20 == len(written)
    failed = {f"doc/{index:04d}.txt" for index in range(16)}
    assert {problem["name"] for problem in report["problems"]} == failed
    assert {problem["reason"] for problem in report["problems"]} == {"page_failed"}
    assert all(f"died on {MAX_DEQUEUE_COUNT} attempts" in problem["detail"] for problem in report["problems"])
    reasons = [alert.reason for alert in scale_out.deps.notifier.alerts]  # type: ignore[attr-defined]
    assert reasons.count(Reason.REWRAP_INCOMPLETE) == 1
    assert_all_on(world, {name: data for name, data in written.items() if name not in failed}, world.new_key_id)

"""Many workers, one container: a lister turns the listing into page items on the Azurite work queue,
several process_work workers re-wrap the pages at once (one of them killed mid-page), and the job's
progress and its one report live in the ledger table.

Everything runs through the real adapters (queue, table, blob store, vault) over HTTP(S).
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.queue import QueueClient

from controller import service
from controller.adapters.rewrap_backend import AzureRewrapBackend
from controller.adapters.rewrap_jobs import TableRewrapJobLedger
from controller.adapters.work_queue import StorageWorkQueue, work_queue_client
from controller.bootstrap import SystemClock
from controller.ports import BlobItem, BlobPage, BlobStore, KeyUnwrapper, RewrapPorts
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

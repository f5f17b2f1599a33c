"""Rewrite mode against Azurite and the sandbox vault: a fresh content key per blob, verified before it
is swapped in, never a missing or unreadable blob, never data replaced by an unverified copy."""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Any

import pytest
from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceModifiedError, ServiceResponseError
from azure.core.pipeline.policies import HTTPPolicy
from azure.storage.blob import BlobClient, BlobServiceClient, ContentSettings

from controller.adapters.blob_store import AzureBlobRewriter, AzureBlobStore, blob_service_client
from controller.adapters.key_vault_crypto import (
    VaultKeyEncryptionKey,
    VaultKeyUnwrapper,
    fetch_public_wrapper,
    key_resolver,
)
from controller.adapters.rewrap_checkpoint import TableRewrapCheckpoint
from controller.ports import BlobPage
from controller.rewrap.strategies import STAGING_PREFIX, RewriteStrategy
from controller.rewrap.walker import ContainerWalker, RewrapOptions
from tests.integration.test_rewrap_adapters import (
    VAULT,
    KillAfterPages,
    Killed,
    Sandbox,
    assert_all_on,
    content,
    populate,
)
from tests.integration.test_rewrap_adapters import sandbox as sandbox  # noqa: PLC0414 - the fixture

pytestmark = pytest.mark.integration


def rewriter(world: Sandbox, *, kek: Any = None, scope: str | None = None) -> AzureBlobRewriter:
    clients = world.vault_clients()
    unwrapper = VaultKeyUnwrapper(clients)
    target = kek or VaultKeyEncryptionKey(
        world.new_key_id, unwrapper, wrapper=fetch_public_wrapper(clients, world.new_key_id)
    )
    return AzureBlobRewriter(
        blob_service_client(connection_string=world.connection_string),
        target_kek=target,
        key_resolver=key_resolver(unwrapper),
        encryption_scope=scope,
    )


def rewrite_strategy(world: Sandbox, rewriter: AzureBlobRewriter) -> RewriteStrategy:
    return RewriteStrategy(rewriter=rewriter, unwrapper=VaultKeyUnwrapper(world.vault_clients()),
                           target_key_id=world.new_key_id, policy=world.policy)


def runner(
    world: Sandbox, *, store: Any = None, kek: Any = None, workers: int = 4, scope: str | None = None
) -> ContainerWalker:
    return ContainerWalker(
        store=store or world.store(page_size=10),
        checkpoint=TableRewrapCheckpoint(world.table),
        strategy=rewrite_strategy(world, rewriter(world, kek=kek, scope=scope)),
        options=RewrapOptions(max_workers=workers, initial_backoff=0.05),
    )


def envelopes(world: Sandbox) -> dict[str, dict[str, Any]]:
    return {
        blob.name: json.loads(blob.metadata["encryptiondata"])
        for blob in world.container_client().list_blobs(include=["metadata"])
        if "encryptiondata" in blob.metadata
    }


def test_rewrite_gives_every_blob_a_new_content_key_under_the_target_version(sandbox: Sandbox) -> None:
    written = populate(sandbox, 12)
    sandbox.container_client().get_blob_client("doc/0000.txt").set_http_headers(
        ContentSettings(content_type="text/plain", content_language="en")
    )
    before = envelopes(sandbox)
    sandbox.reset_counters()

    progress = runner(sandbox).run(sandbox.container).progress

    # One unwrap to read each blob and one to verify its new copy; wrapping is local.
    assert sandbox.counters()["byOperation"]["KeyUnwrap"] == 24
    assert progress.complete
    assert progress.counts == {"rewritten": 12}, progress.problems
    assert progress.problems == ()
    after = envelopes(sandbox)
    assert set(after) == set(written)  # no staging blob left behind
    for name, envelope in after.items():
        assert envelope["EncryptionAgent"]["Protocol"] == "2.0"  # v1 blobs are upgraded
        assert envelope["WrappedContentKey"]["EncryptedKey"] != before[name]["WrappedContentKey"]["EncryptedKey"]
    assert_all_on(sandbox, written, sandbox.new_key_id)
    blob = sandbox.container_client().get_blob_client("doc/0000.txt").get_blob_properties()
    assert blob.metadata["owner"] == "team0"
    assert blob.content_settings.content_type == "text/plain"
    assert blob.content_settings.content_language == "en"


def test_a_throttled_unwrap_under_client_side_decryption_is_throttling_not_a_failed_rewrite(sandbox: Sandbox) -> None:
    """azure-storage-blob reports any failure of the key resolver while it decrypts (reading the blob, or
    verifying the new copy) as "Decryption failed.": a throttled unwrap under it is still throttling, to be
    retried (and, past the budget, reported as throttled), never a failed rewrite."""
    written = populate(sandbox, 1)
    walker = ContainerWalker(
        store=sandbox.store(page_size=10), checkpoint=TableRewrapCheckpoint(sandbox.table),
        strategy=rewrite_strategy(sandbox, rewriter(sandbox)),
        options=RewrapOptions(max_workers=1, initial_backoff=0.05, max_transient_attempts=2),
    )
    throttled_unwraps = {"errorRate": 1.0, "errorStatus": 429, "operations": ["KeyUnwrap"]}
    sandbox.admin.ok("PUT", f"/vaults/{VAULT}/faults", throttled_unwraps)
    try:
        progress = walker.run(sandbox.container).progress
    finally:
        sandbox.admin.ok("PUT", f"/vaults/{VAULT}/faults", {})
    assert {problem.reason for problem in progress.problems} == {"throttled"}, progress.problems
    for name, data in written.items():
        assert sandbox.read(name, key_id=sandbox.old_key_id) == data


def test_a_copy_that_fails_verification_is_never_swapped_in(sandbox: Sandbox) -> None:
    written = populate(sandbox, 3)
    etags = {b.name: b.etag for b in sandbox.container_client().list_blobs()}
    clients = sandbox.vault_clients()
    honest = VaultKeyEncryptionKey(
        sandbox.new_key_id, VaultKeyUnwrapper(clients), wrapper=fetch_public_wrapper(clients, sandbox.new_key_id)
    )

    class LyingKek:
        """Wraps a different content key than the one the data was encrypted with: a broken writer
        whose copy cannot decrypt (verification reads through the vault, not through this KEK)."""

        def wrap_key(self, key: bytes) -> bytes:
            return honest.wrap_key(key[:-1] + bytes([key[-1] ^ 1]))

        def unwrap_key(self, key: bytes, algorithm: str) -> bytes:
            return honest.unwrap_key(key, algorithm)

        def get_kid(self) -> str:
            return honest.get_kid()

        def get_key_wrap_algorithm(self) -> str:
            return honest.get_key_wrap_algorithm()

    progress = runner(sandbox, kek=LyingKek()).run(sandbox.container).progress

    assert progress.counts == {"failed": 3}
    assert {problem.reason for problem in progress.problems} == {"rewrite_failed"}
    assert {b.name: b.etag for b in sandbox.container_client().list_blobs()} == etags  # nothing replaced
    for name, data in written.items():
        assert sandbox.read(name, key_id=sandbox.old_key_id) == data


def test_blobs_are_never_missing_or_unreadable_during_a_rewrite(sandbox: Sandbox) -> None:
    """Readers see the old or the new blob, never a missing one.

    The unmodified library reads an encrypted blob with two requests (Get Blob Properties for the
    envelope, then Get Blob) without pinning the ETag between them: a read that straddles ANY
    overwrite, the swap included, fails to decrypt once ("Decryption failed"); read again, it
    succeeds. Re-wrap has no such window (the content key does not change). The reader here retries
    a failed decryption once; anything else, or a second failure, is a failure.
    """
    written = populate(sandbox, 20)
    failures: list[str] = []
    straddled = 0
    reads = 0
    stop = threading.Event()
    resolver = key_resolver(VaultKeyUnwrapper(sandbox.vault_clients()))
    readers = {}
    for name in written:
        client = sandbox.container_client().get_blob_client(name)
        client.key_resolver_function = resolver
        client.require_encryption = True
        readers[name] = client

    def read(name: str) -> bytes:
        nonlocal straddled
        try:
            return readers[name].download_blob().readall()
        except HttpResponseError as err:
            if "ecrypt" not in str(err.message):
                raise
            straddled += 1
            return readers[name].download_blob().readall()

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            for name, data in written.items():
                try:
                    if read(name) != data:
                        failures.append(f"{name}: wrong data")
                except Exception as err:  # a missing or unreadable blob
                    failures.append(f"{name}: {type(err).__name__} {err}"[:200])
                reads += 1

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        progress = runner(sandbox, workers=1).run(sandbox.container).progress
    finally:
        stop.set()
        thread.join()
    assert progress.counts == {"rewritten": 20}
    assert failures == []
    assert reads >= 20  # at least one whole pass ran while blobs were being swapped
    assert straddled <= reads


class WriterAfterListing(AzureBlobStore):
    """After each page is listed, an application rewrites two of its blobs (new data, old version)."""

    def __init__(self, world: Sandbox) -> None:
        super().__init__(blob_service_client(connection_string=world.connection_string), page_size=5)
        self.world = world
        self.updated: dict[str, bytes] = {}

    def list_blobs(self, container: str, *, prefix: str | None, marker: str | None) -> BlobPage:
        page = super().list_blobs(container, prefix=prefix, marker=marker)
        for item in page.items[:2]:
            data = b"newer data from the application for " + item.name.encode()
            self.world.writer(item.name).upload_blob(data, overwrite=True, metadata={"owner": "app"})
            self.updated[item.name] = data
        return page


def test_a_concurrent_writer_loses_no_update_during_a_rewrite(sandbox: Sandbox) -> None:
    written = populate(sandbox, 10)
    store = WriterAfterListing(sandbox)
    progress = runner(sandbox, store=store).run(sandbox.container).progress
    assert progress.counts == {"rewritten": 10}
    assert progress.conflicts == 4
    expected = {**written, **store.updated}
    assert_all_on(sandbox, expected, sandbox.new_key_id)
    for name in store.updated:
        assert sandbox.container_client().get_blob_client(name).get_blob_properties().metadata["owner"] == "app"


class AppWritesRightAfterTheSwap(BlobServiceClient):
    """The rewriter's service, whose swaps are each followed at once by the application writing the blob
    again (new data, new metadata), before the rewriter has looked at what the swap left."""

    world: Sandbox
    updated: dict[str, bytes]

    def get_blob_client(self, container: Any, blob: Any, snapshot: Any = None, *, version_id: Any = None) -> BlobClient:
        service = self

        class Destination(BlobClient):
            def start_copy_from_url(self, source_url: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
                copied = super().start_copy_from_url(source_url, *args, **kwargs)
                if self.blob_name not in service.updated:
                    data = b"written by the application just after the swap: " + self.blob_name.encode()
                    app = service.world.writer(self.blob_name, key_id=service.world.new_key_id)
                    app.upload_blob(data, overwrite=True, metadata={"owner": "app"})
                    service.updated[self.blob_name] = data
                return copied

        return Destination.from_connection_string(self.world.connection_string, container, blob)


def test_a_write_just_after_the_swap_is_the_writers_and_the_rewrite_still_counts(sandbox: Sandbox) -> None:
    """The swap landed (verified data, conditional on the listed ETag); a write right after it is the
    application's, not a failed swap: the blob counts as rewritten and the application's data stands."""
    written = populate(sandbox, 3)
    service = AppWritesRightAfterTheSwap.from_connection_string(sandbox.connection_string)
    service.world, service.updated = sandbox, {}
    clients = sandbox.vault_clients()
    unwrapper = VaultKeyUnwrapper(clients)
    racing = AzureBlobRewriter(
        service,
        target_kek=VaultKeyEncryptionKey(sandbox.new_key_id, unwrapper,
                                         wrapper=fetch_public_wrapper(clients, sandbox.new_key_id)),
        key_resolver=key_resolver(unwrapper),
    )
    walker = ContainerWalker(
        store=sandbox.store(page_size=10), checkpoint=TableRewrapCheckpoint(sandbox.table),
        strategy=rewrite_strategy(sandbox, racing),
        options=RewrapOptions(max_workers=1, initial_backoff=0.05),
    )
    progress = walker.run(sandbox.container).progress
    assert progress.counts == {"rewritten": 3}, progress.problems
    assert set(service.updated) == set(written)
    assert_all_on(sandbox, service.updated, sandbox.new_key_id)


def test_a_killed_rewrite_resumes_and_leaves_everything_readable(sandbox: Sandbox) -> None:
    written = populate(sandbox, 15)
    with pytest.raises(Killed):
        runner(sandbox, store=KillAfterPages(sandbox, 2, page_size=5)).run(sandbox.container)
    for name, data in written.items():
        assert sandbox.read_any(name) == data
    progress = runner(sandbox, store=sandbox.store(page_size=5)).run(sandbox.container).progress
    assert progress.complete
    assert progress.counts == {"rewritten": 15}  # the 10 of the first run and the 5 of this one
    assert_all_on(sandbox, written, sandbox.new_key_id)
    assert not [b for b in sandbox.container_client().list_blobs(name_starts_with=STAGING_PREFIX)]


def test_malformed_and_foreign_blobs_are_left_untouched(sandbox: Sandbox) -> None:
    populate(sandbox, 2)
    container = sandbox.container_client()
    container.upload_blob("bad", b"x", metadata={"encryptiondata": "{"})
    container.upload_blob("plain", content(3))
    etags = {name: container.get_blob_client(name).get_blob_properties().etag for name in ("bad", "plain")}
    progress = runner(sandbox).run(sandbox.container).progress
    assert progress.counts == {"rewritten": 2, "skipped_malformed": 1, "not_encrypted": 1}
    assert {name: container.get_blob_client(name).get_blob_properties().etag for name in etags} == etags


def test_an_encryption_scope_move_takes_the_synchronous_copy_path(sandbox: Sandbox) -> None:
    """Azurite accepts encryption scopes but does not record them: this checks the synchronous,
    scope-carrying swap (Copy Blob From URL) end to end, not that the scope was applied."""
    written = populate(sandbox, 4)
    progress = runner(sandbox, scope="cmk-scope").run(sandbox.container).progress
    assert progress.counts == {"rewritten": 4}
    assert_all_on(sandbox, written, sandbox.new_key_id)


class DropFirstDelete(HTTPPolicy):  # type: ignore[type-arg]
    """The first Delete Blob meets a dropped connection (as under Storage's faults); the rest go through."""

    def __init__(self) -> None:
        super().__init__()
        self.dropped = 0

    def send(self, request: Any) -> Any:
        if request.http_request.method == "DELETE" and not self.dropped:
            self.dropped += 1
            raise ServiceResponseError("Connection reset by peer")
        return self.next.send(request)


def test_a_failed_delete_of_the_staging_copy_is_retried_and_leaves_no_copy_behind(sandbox: Sandbox) -> None:
    written = populate(sandbox, 1)
    drop = DropFirstDelete()
    clients = sandbox.vault_clients()
    unwrapper = VaultKeyUnwrapper(clients)
    flaky = AzureBlobRewriter(
        blob_service_client(connection_string=sandbox.connection_string, _additional_pipeline_policies=[drop]),
        target_kek=VaultKeyEncryptionKey(sandbox.new_key_id, unwrapper,
                                         wrapper=fetch_public_wrapper(clients, sandbox.new_key_id)),
        key_resolver=key_resolver(unwrapper),
    )
    walker = ContainerWalker(
        store=sandbox.store(page_size=10), checkpoint=TableRewrapCheckpoint(sandbox.table),
        strategy=rewrite_strategy(sandbox, flaky),
        options=RewrapOptions(max_workers=1, initial_backoff=0.05),
    )
    progress = walker.run(sandbox.container).progress
    assert drop.dropped == 1
    assert progress.counts == {"rewritten": 1}, progress.problems
    assert [blob.name for blob in sandbox.container_client().list_blobs()] == list(written)  # no staging copy
    assert_all_on(sandbox, written, sandbox.new_key_id)


class HotBlobApp:
    """A customer's app on a thread of its own, writing one blob through the SDK: new content under the
    target version (``upload``), or metadata read, merged and written back under the ETag read (a careful
    app). It writes faster than a rewrite takes, every time: each swap of that blob by the rewrite
    (``inside_window``) waits until the app has written it once more, for ``windows`` swaps; then the app
    pauses, as an app writing in bursts does."""

    def __init__(self, world: Sandbox, name: str, *, upload: bool, windows: int) -> None:
        self.world, self.name, self.upload, self.windows = world, name, upload, windows
        self.writes = 0
        self.last_upload = b""
        self.errors: list[str] = []
        self._changed = threading.Condition()
        self._asked = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HotBlobApp:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._changed:
            self._stop = True
            self._changed.notify_all()
        self._thread.join(timeout=60)
        assert self.errors == []

    def _run(self) -> None:
        client = self.world.writer(self.name, key_id=self.world.new_key_id)
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._stop or self._asked > self.writes)
                if self._stop:
                    return
            try:
                self._write(client)
            except Exception as err:  # reported on exit
                self.errors.append(f"{type(err).__name__}: {err}"[:300])
                return
            finally:
                with self._changed:
                    self.writes += 1
                    self._changed.notify_all()

    def _write(self, client: BlobClient) -> None:
        sequence = str(self.writes + 1)
        if self.upload:
            data = f"{self.name}: the app's upload {sequence}".encode()
            client.upload_blob(data, overwrite=True, metadata={"seq": sequence})
            self.last_upload = data
            return
        while True:
            properties = client.get_blob_properties()
            try:
                client.set_blob_metadata({**properties.metadata, "seq": sequence}, etag=properties.etag,
                                         match_condition=MatchConditions.IfNotModified)
            except ResourceModifiedError:
                continue  # read again and merge again
            return

    def inside_window(self, name: str) -> None:
        if name != self.name or self.windows == 0:
            return
        self.windows -= 1
        with self._changed:
            self._asked += 1
            self._changed.notify_all()
            assert self._changed.wait_for(lambda: self.writes >= self._asked, timeout=60)


class BeforeTheSwap(BlobServiceClient):
    """The rewriter's service, whose swap of a blob first lets ``app`` write it (inside the rewrite's window)."""

    world: Sandbox
    app: HotBlobApp

    def get_blob_client(self, container: Any, blob: Any, snapshot: Any = None, *, version_id: Any = None) -> BlobClient:
        service = self

        class Destination(BlobClient):
            def start_copy_from_url(self, source_url: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
                service.app.inside_window(self.blob_name)
                return super().start_copy_from_url(source_url, *args, **kwargs)

        return Destination.from_connection_string(self.world.connection_string, container, blob)


def rewrite_with(world: Sandbox, app: HotBlobApp) -> Any:
    service = BeforeTheSwap.from_connection_string(world.connection_string)
    service.world, service.app = world, app
    clients = world.vault_clients()
    unwrapper = VaultKeyUnwrapper(clients)
    racing = AzureBlobRewriter(
        service,
        target_kek=VaultKeyEncryptionKey(world.new_key_id, unwrapper,
                                         wrapper=fetch_public_wrapper(clients, world.new_key_id)),
        key_resolver=key_resolver(unwrapper),
    )
    walker = ContainerWalker(
        store=world.store(page_size=10), checkpoint=TableRewrapCheckpoint(world.table),
        strategy=rewrite_strategy(world, racing), options=RewrapOptions(max_workers=1, initial_backoff=0.05),
    )
    return walker.run(world.container).progress


def test_a_blob_its_app_uploads_faster_than_a_rewrite_takes_is_superseded_by_the_apps_upload(sandbox: Sandbox) -> None:
    """The app uploads the blob anew under the target version inside every rewrite window: no swap of it
    could ever land. Read again after the first lost race, the blob holds a content key other than the
    one it was listed with, wrapped by the target version -- what the rewrite is for: counted
    ``superseded``, nothing failed, nothing of the app's replaced."""
    written = populate(sandbox, 2)
    hot = "doc/0001.txt"
    with HotBlobApp(sandbox, hot, upload=True, windows=100) as app:
        progress = rewrite_with(sandbox, app)
    assert progress.counts == {"rewritten": 1, "superseded": 1}, progress.problems
    assert progress.problems == () and progress.conflicts == 1
    assert app.windows == 99  # one window was enough
    assert sandbox.read(hot, key_id=sandbox.new_key_id) == app.last_upload
    assert_all_on(sandbox, {name: data for name, data in written.items() if name != hot}, sandbox.new_key_id)
    assert [blob.name for blob in sandbox.container_client().list_blobs()] == list(written)  # no staging copy


def test_a_blob_its_app_writes_in_a_burst_is_rewritten_at_the_end_of_its_page(sandbox: Sandbox) -> None:
    """The app changes the blob's metadata inside each of the first six rewrite windows (every attempt of
    one round), then pauses: the blob comes back after the rest of its page, read afresh, and is
    rewritten with the app's last metadata kept."""
    written = populate(sandbox, 2)
    hot = "doc/0000.txt"
    with HotBlobApp(sandbox, hot, upload=False, windows=RewrapOptions().max_conflict_retries + 1) as app:
        progress = rewrite_with(sandbox, app)
    assert progress.counts == {"rewritten": 2}, progress.problems
    assert progress.problems == () and progress.conflicts == 6 and app.windows == 0
    metadata = sandbox.container_client().get_blob_client(hot).get_blob_properties().metadata
    assert metadata["seq"] == str(app.writes) and metadata["owner"] == "team0"
    assert_all_on(sandbox, written, sandbox.new_key_id)


class AnotherWorkerDeletesTheStagingCopy:
    """Another worker rewriting the same blob at the same time (a scale-out page taken over while its first
    worker still runs): it shares the staging name, and deletes the copy just before our first swap."""

    def __init__(self, world: Sandbox, name: str) -> None:
        self.world, self.name, self.deleted = world, name, 0

    def inside_window(self, name: str) -> None:
        if name == self.name and not self.deleted:
            staging = STAGING_PREFIX + hashlib.sha256(name.encode("utf-8")).hexdigest()
            self.world.container_client().get_blob_client(staging).delete_blob()
            self.deleted += 1


def test_a_staging_copy_taken_by_another_worker_is_a_lost_race_not_a_vanished_blob(sandbox: Sandbox) -> None:
    written = populate(sandbox, 1)
    [name] = written
    other = AnotherWorkerDeletesTheStagingCopy(sandbox, name)
    progress = rewrite_with(sandbox, other)  # type: ignore[arg-type]
    assert other.deleted == 1
    assert progress.counts == {"rewritten": 1}, progress.problems
    assert progress.conflicts == 1
    assert_all_on(sandbox, written, sandbox.new_key_id)
    assert [blob.name for blob in sandbox.container_client().list_blobs()] == list(written)

"""Re-wrap of client-side-encrypted blobs against Azurite and the sandbox vault, through the real adapters.

Blobs are written and read by the unmodified azure-storage-blob client (encryption 1.0 and 2.0) with a
KEK backed by the emulated vault; the engine re-wraps them with the real BlobStore, KeyUnwrapper,
public-key wrapper and Table checkpoint.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from azure.data.tables import TableClient
from azure.keyvault.keys import KeyClient
from azure.storage.blob import BlobClient, ContainerClient

from controller.adapters.blob_store import AzureBlobStore, blob_service_client
from controller.adapters.key_vault_crypto import (
    VaultClients,
    VaultKeyEncryptionKey,
    VaultKeyUnwrapper,
    fetch_public_wrapper,
    key_resolver,
)
from controller.adapters.rewrap_backend import AzureRewrapBackend, emulator_blob_services
from controller.adapters.rewrap_checkpoint import TableRewrapCheckpoint
from controller.errors import Conflict, NotFound
from controller.ports import BlobItem, BlobPage, BlobProblem, RewrapPorts, RewrapProgress
from controller.rewrap.outcomes import RewrapReport
from controller.rewrap.strategies import walker_for
from controller.rewrap.walker import ContainerWalker, RewrapOptions
from controller.rewrap.work import RewrapMode
from controller.vault_policy import VaultPolicy
from emulators.faults import FaultInjector, FaultProfile
from emulators.keyvault import KeyVaultEmulator
from tests.support.keyvault import Admin, client_kwargs

pytestmark = pytest.mark.integration

CONTROLLER = "c0000000-0000-0000-0000-00000000c0de"
VAULT = "kv-rewrap"


@dataclass
class Sandbox:
    """One test's world: a container, a key with two versions, clients and counters."""

    kv: KeyVaultEmulator
    connection_string: str
    container: str
    key_name: str
    old_key_id: str
    new_key_id: str
    table: TableClient
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def admin(self) -> Admin:
        return Admin(self.kv)

    @property
    def origin(self) -> str:
        return self.kv.vault(VAULT).origin

    @property
    def policy(self) -> VaultPolicy:
        return VaultPolicy.of([self.origin])

    def vault_clients(self) -> VaultClients:
        return VaultClients(self.kv.credential(CONTROLLER), policy=self.policy, **client_kwargs(self.kv))

    def backend(self, page_size: int) -> AzureRewrapBackend:
        """The function app's re-wrap adapters against this sandbox, listing ``page_size`` blobs a page."""
        return AzureRewrapBackend(vault_clients=self.vault_clients(),
                                  blob_service=emulator_blob_services(self.connection_string),
                                  checkpoint=TableRewrapCheckpoint(self.table), page_size=page_size)

    def key_client(self) -> KeyClient:
        return KeyClient(self.kv.vault(VAULT).uri, self.kv.credential(CONTROLLER), **client_kwargs(self.kv))

    def container_client(self) -> ContainerClient:
        return ContainerClient.from_connection_string(self.connection_string, self.container)

    def kek(self, key_id: str) -> VaultKeyEncryptionKey:
        clients = self.vault_clients()
        return VaultKeyEncryptionKey(
            key_id, VaultKeyUnwrapper(clients), wrapper=fetch_public_wrapper(clients, key_id)
        )

    def writer(self, name: str, *, version: str = "2.0", key_id: str | None = None) -> BlobClient:
        kek = self.extra.setdefault(("kek", key_id or self.old_key_id), self.kek(key_id or self.old_key_id))
        return BlobClient.from_connection_string(
            self.connection_string,
            self.container,
            name,
            key_encryption_key=kek,
            encryption_version=version,
            require_encryption=True,
        )

    def read(self, name: str, *, key_id: str | None = None) -> bytes:
        """Decrypt with the library, with the KEK of ``key_id`` (default: the new version) only."""
        kek = VaultKeyEncryptionKey(key_id or self.new_key_id, VaultKeyUnwrapper(self.vault_clients()))
        client = BlobClient.from_connection_string(
            self.connection_string, self.container, name, key_encryption_key=kek, require_encryption=True
        )
        return client.download_blob().readall()

    def read_any(self, name: str) -> bytes:
        client = BlobClient.from_connection_string(
            self.connection_string,
            self.container,
            name,
            key_resolver_function=key_resolver(VaultKeyUnwrapper(self.vault_clients())),
            require_encryption=True,
        )
        return client.download_blob().readall()

    def key_id_of(self, name: str) -> str:
        metadata = self.container_client().get_blob_client(name).get_blob_properties().metadata
        return str(json.loads(metadata["encryptiondata"])["WrappedContentKey"]["KeyId"])

    def store(self, *, page_size: int = 25) -> AzureBlobStore:
        return AzureBlobStore(blob_service_client(connection_string=self.connection_string), page_size=page_size)

    def engine(self, *, store: Any = None, workers: int = 8, dry_run: bool = False) -> ContainerWalker:
        clients = self.vault_clients()
        ports = RewrapPorts(
            store=store or self.store(),
            unwrapper=VaultKeyUnwrapper(clients),
            wrapper=fetch_public_wrapper(clients, self.new_key_id),
            checkpoint=TableRewrapCheckpoint(self.table),
        )
        options = RewrapOptions(max_workers=workers, dry_run=dry_run, initial_backoff=0.05, max_backoff=2.0)
        return walker_for(RewrapMode.REWRAP, ports, policy=self.policy, options=options)

    def counters(self) -> dict[str, Any]:
        result: dict[str, Any] = self.admin.ok("GET", f"/vaults/{VAULT}/counters")
        return result

    def reset_counters(self) -> None:
        self.admin.ok("DELETE", f"/vaults/{VAULT}/counters")


@pytest.fixture
def sandbox(azurite: Any, rewrap_keyvault: KeyVaultEmulator) -> Iterator[Sandbox]:
    suffix = uuid.uuid4().hex[:10]
    key_name = f"blob-kek-{suffix}"
    keys = KeyClient(
        rewrap_keyvault.vault(VAULT).uri, rewrap_keyvault.credential(CONTROLLER), **client_kwargs(rewrap_keyvault)
    )
    old = keys.create_rsa_key(key_name, size=2048)
    new = keys.create_rsa_key(key_name, size=2048)
    container = ContainerClient.from_connection_string(azurite.connection_string, f"rewrap-{suffix}")
    container.create_container()
    table = TableClient.from_connection_string(azurite.connection_string, table_name=f"rw{suffix}")
    assert old.id is not None
    assert new.id is not None
    world = Sandbox(
        rewrap_keyvault, azurite.connection_string, container.container_name, key_name, old.id, new.id, table
    )
    yield world
    world.admin.ok("PUT", f"/vaults/{VAULT}/throttling", {"enabled": False})
    world.admin.ok("PUT", f"/vaults/{VAULT}/faults", {})
    container.delete_container()
    table.delete_table()


def content(index: int) -> bytes:
    return f"blob {index} ".encode() * (1 + index % 7)


def populate(world: Sandbox, count: int, *, start: int = 0) -> dict[str, bytes]:
    """``count`` blobs, alternately encryption 1.0 and 2.0, each with an application metadata entry."""
    written: dict[str, bytes] = {}
    for index in range(start, start + count):
        name = f"doc/{index:04d}.txt"
        data = content(index)
        world.writer(name, version="1.0" if index % 2 else "2.0").upload_blob(data, metadata={"owner": f"team{index}"})
        written[name] = data
    return written


def assert_all_on(world: Sandbox, written: dict[str, bytes], key_id: str) -> None:
    for name, data in written.items():
        assert world.key_id_of(name) == key_id, name
        assert world.read(name, key_id=key_id) == data, name


# --- the happy path -----------------------------------------------------------------------------------


def test_v1_and_v2_blobs_are_rewrapped_with_one_unwrap_each_and_still_decrypt(sandbox: Sandbox) -> None:
    written = populate(sandbox, 40)
    before = {b.name: b.metadata for b in sandbox.container_client().list_blobs(include=["metadata"])}
    sandbox.reset_counters()

    report = sandbox.engine().run(sandbox.container)

    assert report.progress.complete
    assert report.counts["rewrapped"] == 40
    assert report.progress.problems == ()
    counters = sandbox.counters()
    # One unwrapKey per blob, one get of the old version (its public key for the client), one of the target.
    assert counters["byOperation"].get("KeyUnwrap") == 40
    assert counters["byOperation"].get("KeyGet") == 2
    assert "KeyWrap" not in counters["byOperation"]
    assert_all_on(sandbox, written, sandbox.new_key_id)
    after = {b.name: b.metadata for b in sandbox.container_client().list_blobs(include=["metadata"])}
    for name, metadata in after.items():
        assert metadata["owner"] == before[name]["owner"]
        assert set(metadata) == set(before[name])
        old_envelope = json.loads(before[name]["encryptiondata"])
        new_envelope = json.loads(metadata["encryptiondata"])
        assert list(new_envelope) == list(old_envelope)  # fields and order kept; only the wrapped key changes
        assert {k: v for k, v in new_envelope.items() if k != "WrappedContentKey"} == {
            k: v for k, v in old_envelope.items() if k != "WrappedContentKey"
        }

    sandbox.reset_counters()
    again = sandbox.engine().run(sandbox.container)
    assert again.counts["already_current"] == 40
    assert sandbox.counters()["byOperation"].get("KeyUnwrap") is None


def test_blobs_read_after_the_old_version_is_disabled(sandbox: Sandbox) -> None:
    written = populate(sandbox, 12)
    sandbox.engine().run(sandbox.container)
    old_version = sandbox.old_key_id.rsplit("/", 1)[1]
    sandbox.key_client().update_key_properties(sandbox.key_name, old_version, enabled=False)
    for name, data in written.items():
        assert sandbox.read(name) == data
        assert sandbox.read_any(name) == data


def test_dry_run_changes_nothing_and_calls_no_vault_crypto(sandbox: Sandbox) -> None:
    populate(sandbox, 6)
    etags = {b.name: b.etag for b in sandbox.container_client().list_blobs()}
    sandbox.reset_counters()
    report = sandbox.engine(dry_run=True).run(sandbox.container)
    assert report.counts["rewrapped"] == 6
    assert len(report.planned) == 6
    assert "KeyUnwrap" not in sandbox.counters()["byOperation"]
    assert {b.name: b.etag for b in sandbox.container_client().list_blobs()} == etags


def test_prefix_limits_the_run(sandbox: Sandbox) -> None:
    written = populate(sandbox, 4)
    other = sandbox.writer("other/x.txt")
    other.upload_blob(b"elsewhere")
    report = sandbox.engine().run(sandbox.container, prefix="doc/")
    assert report.blobs == 4
    assert_all_on(sandbox, written, sandbox.new_key_id)
    assert sandbox.key_id_of("other/x.txt") == sandbox.old_key_id


# --- malformed and foreign envelopes ----------------------------------------------------------------


def test_malformed_and_foreign_metadata_is_left_untouched_and_reported(sandbox: Sandbox) -> None:
    populate(sandbox, 3)
    container = sandbox.container_client()
    container.upload_blob("bad/not-json", b"x", metadata={"encryptiondata": "{not json", "owner": "a"})
    good = json.loads(container.get_blob_client("doc/0000.txt").get_blob_properties().metadata["encryptiondata"])
    good["EncryptionAgent"]["Protocol"] = "9.9"
    container.upload_blob("bad/protocol", b"x", metadata={"encryptiondata": json.dumps(good)})
    good["EncryptionAgent"]["Protocol"] = "2.0"
    good["WrappedContentKey"]["KeyId"] = "https://elsewhere.vault.azure.net/keys/k/" + "a" * 32
    container.upload_blob("bad/foreign", b"x", metadata={"encryptiondata": json.dumps(good)})
    container.upload_blob("plain", b"not encrypted")
    before = {b.name: (b.etag, b.metadata) for b in container.list_blobs(include=["metadata"]) if b.name != "doc"}

    report = sandbox.engine().run(sandbox.container)

    reasons = {problem.name: (problem.reason, problem.detail) for problem in report.progress.problems}
    assert reasons == {
        "bad/not-json": ("malformed_envelope", "invalid_json"),
        "bad/protocol": ("malformed_envelope", "unsupported_protocol"),
        "bad/foreign": ("unknown_key", "other_key"),
    }
    assert report.counts["not_encrypted"] == 1
    assert report.counts["rewrapped"] == 3
    after = {b.name: (b.etag, b.metadata) for b in container.list_blobs(include=["metadata"])}
    for name in ("bad/not-json", "bad/protocol", "bad/foreign", "plain"):
        assert after[name] == before[name]


# --- concurrent writers -----------------------------------------------------------------------------


class RacingStore(AzureBlobStore):
    """Before each of the first writes to a blob, another writer changes that blob: metadata-only
    updates for even blobs, a whole new encrypted upload (new content key, old version) for odd ones."""

    def __init__(self, world: Sandbox, **kwargs: Any) -> None:
        super().__init__(blob_service_client(connection_string=world.connection_string), **kwargs)
        self.world = world
        self.raced: set[str] = set()
        self.expected: dict[str, tuple[bytes, str]] = {}

    def set_metadata(self, container: str, name: str, metadata: Any, *, if_match: str) -> str:
        if name not in self.raced:
            self.raced.add(name)
            index = int(name.split("/")[1].split(".", maxsplit=1)[0])
            if index % 2 == 0:
                blob = self.world.container_client().get_blob_client(name)
                current = blob.get_blob_properties().metadata
                blob.set_blob_metadata({**current, "reviewed": "yes"})
                self.expected[name] = (content(index), "reviewed")
            else:
                data = b"rewritten by the application " + name.encode()
                self.world.writer(name, version="2.0").upload_blob(
                    data, overwrite=True, metadata={"owner": "app", "edited": "yes"}
                )
                self.expected[name] = (data, "edited")
        return super().set_metadata(container, name, metadata, if_match=if_match)


def test_a_concurrent_writer_loses_no_update(sandbox: Sandbox) -> None:
    populate(sandbox, 16)
    store = RacingStore(sandbox, page_size=8)
    report = sandbox.engine(store=store, workers=4).run(sandbox.container)
    assert report.counts["rewrapped"] == 16
    assert report.progress.conflicts >= 16
    assert report.progress.problems == ()
    for name, (data, marker_key) in store.expected.items():
        metadata = sandbox.container_client().get_blob_client(name).get_blob_properties().metadata
        assert metadata[marker_key] == "yes", name  # the other writer's update survived
        assert sandbox.key_id_of(name) == sandbox.new_key_id
        assert sandbox.read(name) == data


# --- interrupted and resumed --------------------------------------------------------------------------


class Killed(BaseException):
    """Stops a run dead, as a killed worker would (not an Exception: nothing may catch it)."""


class KillAfterPages(AzureBlobStore):
    def __init__(self, world: Sandbox, pages: int, **kwargs: Any) -> None:
        super().__init__(blob_service_client(connection_string=world.connection_string), **kwargs)
        self.remaining = pages

    def list_blobs(self, container: str, *, prefix: str | None, marker: str | None) -> BlobPage:
        if self.remaining == 0:
            raise Killed
        self.remaining -= 1
        return super().list_blobs(container, prefix=prefix, marker=marker)


def test_a_run_killed_mid_way_resumes_from_the_checkpoint(sandbox: Sandbox) -> None:
    written = populate(sandbox, 50)
    with pytest.raises(Killed):
        sandbox.engine(store=KillAfterPages(sandbox, 2, page_size=10)).run(sandbox.container)
    on_new = [name for name in written if sandbox.key_id_of(name) == sandbox.new_key_id]
    assert len(on_new) == 20
    for name, data in written.items():  # every blob readable mid-way, whichever version wraps it
        assert sandbox.read_any(name) == data

    sandbox.reset_counters()
    report = sandbox.engine(store=sandbox.store(page_size=10)).run(sandbox.container)
    assert report.progress.complete
    assert report.progress.pages == 5
    assert report.counts["rewrapped"] == 50
    assert sandbox.counters()["byOperation"]["KeyUnwrap"] == 30  # the first 20 were not unwrapped again
    assert_all_on(sandbox, written, sandbox.new_key_id)


# --- throttling and faults --------------------------------------------------------------------------


def test_throttling_is_survived_with_back_off(sandbox: Sandbox) -> None:
    written = populate(sandbox, 60)
    profile = {"enabled": True, "windowSeconds": 1, "limits": {"RSA-2048": {"software": 15}}}
    sandbox.admin.ok("PUT", f"/vaults/{VAULT}/throttling", profile)
    sandbox.reset_counters()
    started = time.monotonic()
    report = sandbox.engine().run(sandbox.container)
    elapsed = time.monotonic() - started
    sandbox.admin.ok("PUT", f"/vaults/{VAULT}/throttling", {"enabled": False})

    assert report.progress.problems == ()
    assert report.counts["rewrapped"] == 60
    counters = sandbox.counters()
    assert counters["throttled"] > 0, counters
    assert report.progress.throttled == counters["throttled"]
    assert elapsed < 20
    assert_all_on(sandbox, written, sandbox.new_key_id)


def test_injected_faults_are_survived_with_nothing_corrupted(sandbox: Sandbox) -> None:
    written = populate(sandbox, 30)
    sandbox.admin.ok(
        "PUT", f"/vaults/{VAULT}/faults",
        {"seed": 7, "errorRate": 0.1, "errorStatus": 503, "resetRate": 0.05, "operations": ["KeyUnwrap", "KeyGet"]},
    )
    sandbox.reset_counters()
    report = sandbox.engine().run(sandbox.container)
    sandbox.admin.ok("PUT", f"/vaults/{VAULT}/faults", {})

    assert report.progress.problems == ()
    assert report.counts["rewrapped"] == 30
    counters = sandbox.counters()
    assert counters["byStatus"].get("503", 0) + counters["byStatus"].get("0", 0) > 0, counters
    assert report.progress.throttled > 0
    assert_all_on(sandbox, written, sandbox.new_key_id)


def test_a_disabled_old_version_is_reported_and_the_blob_left_alone(sandbox: Sandbox) -> None:
    written = populate(sandbox, 4)
    old_version = sandbox.old_key_id.rsplit("/", 1)[1]
    sandbox.key_client().update_key_properties(sandbox.key_name, old_version, enabled=False)
    etags = {b.name: b.etag for b in sandbox.container_client().list_blobs()}
    report = sandbox.engine().run(sandbox.container)
    assert {problem.reason for problem in report.progress.problems} == {"key_forbidden"}
    assert report.counts["failed"] == 4
    assert {b.name: b.etag for b in sandbox.container_client().list_blobs()} == etags
    sandbox.key_client().update_key_properties(sandbox.key_name, old_version, enabled=True)
    for name, data in written.items():
        assert sandbox.read(name, key_id=sandbox.old_key_id) == data


# --- the adapters on their own ----------------------------------------------------------------------


def test_blob_store_conditional_write_and_paging(sandbox: Sandbox) -> None:
    container = sandbox.container_client()
    for index in range(7):
        container.upload_blob(f"p/{index}", b"x", metadata={"a": str(index)})
    store = sandbox.store(page_size=3)
    names: list[str] = []
    marker: str | None = None
    pages = 0
    while True:
        page = store.list_blobs(sandbox.container, prefix="p/", marker=marker)
        pages += 1
        names.extend(item.name for item in page.items)
        assert all(item.metadata["a"] == item.name[2:] for item in page.items)
        marker = page.next_marker
        if marker is None:
            break
    assert pages == 3
    assert names == [f"p/{index}" for index in range(7)]

    item = store.get_properties(sandbox.container, "p/0")
    assert isinstance(item, BlobItem)
    new_etag = store.set_metadata(sandbox.container, "p/0", {"a": "0", "b": "1"}, if_match=item.etag)
    assert new_etag != item.etag
    with pytest.raises(Conflict):
        store.set_metadata(sandbox.container, "p/0", {"a": "lost"}, if_match=item.etag)
    assert store.get_properties(sandbox.container, "p/0").metadata == {"a": "0", "b": "1"}
    with pytest.raises(NotFound):
        store.get_properties(sandbox.container, "missing")


def test_table_checkpoint_round_trip_and_etag_guard(sandbox: Sandbox) -> None:
    first = TableRewrapCheckpoint(sandbox.table)
    assert first.load("job") is None
    problems = tuple(
        BlobProblem(f"blob-{i:05d}-" + "n" * 60, "malformed_envelope", "invalid_json") for i in range(1000)
    )
    progress = RewrapProgress(
        marker="m1", pages=3, counts={"rewrapped": 5}, unwrap_calls=5, writes=5, problems=problems
    )
    first.save("job", progress)
    second = TableRewrapCheckpoint(sandbox.table)
    assert second.load("job") == progress
    first.save("job", RewrapProgress(marker="m2", pages=4))  # first still holds the current ETag
    with pytest.raises(Conflict):  # second's ETag is stale: it must not overwrite first's progress
        second.save("job", RewrapProgress(marker="stale"))
    loaded = second.load("job")
    assert loaded is not None
    assert loaded.marker == "m2"
    second.save("job", RewrapProgress(marker=None, complete=True))
    assert TableRewrapCheckpoint(sandbox.table).load("job") == RewrapProgress(marker=None, complete=True)


def test_table_checkpoint_ignores_an_invalid_entity(sandbox: Sandbox) -> None:
    checkpoint = TableRewrapCheckpoint(sandbox.table)
    checkpoint.save("job", RewrapProgress(marker="m"))
    entity = dict(next(iter(sandbox.table.list_entities())))
    entity["Counts"] = "not json"
    sandbox.table.upsert_entity(entity)
    assert checkpoint.load("job") is None
    checkpoint.save("job", RewrapProgress(marker="fresh"))  # the invalid entity is replaced
    loaded = checkpoint.load("job")
    assert loaded is not None
    assert loaded.marker == "fresh"


def test_report_json_is_serialisable(sandbox: Sandbox) -> None:
    populate(sandbox, 2)
    report: RewrapReport = sandbox.engine().run(sandbox.container)
    assert json.loads(json.dumps(report.as_json()))["counts"]["rewrapped"] == 2


def test_the_store_lists_names_etags_and_metadata_as_the_sdk_does(sandbox: Sandbox) -> None:
    container = sandbox.container_client()
    for name in ("a space.txt", "ünï/cødé.txt", "amp&lt<gt>'quote\".txt", "plain", "z/deep/er", "%2F+plus=eq?"):
        container.upload_blob(name, b"x", metadata={"owner": "r&d <team>", "Mixed": "Case"})
    expected = {
        blob.name: (f'"{blob.etag.strip(chr(34))}"', dict(blob.metadata))
        for blob in container.list_blobs(include=["metadata"])
    }
    store = sandbox.store(page_size=2)

    listed: dict[str, tuple[str, dict[str, str]]] = {}
    markers: list[str | None] = [None]
    while True:
        page = store.list_blobs(sandbox.container, prefix=None, marker=markers[-1])
        listed.update({item.name: (item.etag, dict(item.metadata)) for item in page.items})
        if page.next_marker is None:
            break
        markers.append(page.next_marker)

    assert listed == expected
    assert len(markers) == 3  # pages of two
    assert [item.name for item in store.list_blobs(sandbox.container, prefix="z/", marker=None).items] == ["z/deep/er"]
    assert [item.name for item in store.list_blobs(sandbox.container, prefix="ünï/", marker=None).items] == [
        "ünï/cødé.txt"
    ]


def test_the_target_versions_public_key_is_read_through_throttling(sandbox: Sandbox) -> None:
    """One read per work item, outside the walker's shared back-off: a throttled answer is retried after
    its Retry-After (a work item failed for one 429 waits out the queue's visibility timeout)."""
    sandbox.kv.faults = FaultInjector(FaultProfile("vault", {"429": 0.5}), seed=7)  # throttled twice, then answered
    try:
        wrapper = fetch_public_wrapper(sandbox.vault_clients(), sandbox.new_key_id)
        throttled = sandbox.kv.faults.injected["429"]
    finally:
        sandbox.kv.faults = None
    assert throttled == 2
    assert wrapper.key_id == sandbox.new_key_id

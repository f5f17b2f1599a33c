"""The re-wrap engine over hand-written fakes: a blob store with ETags, a Key Vault-like unwrapper over
real RSA keys, a checkpoint in a dict and a fake clock whose sleep returns at once.

Blob contents and envelopes are written by azure-storage-blob's own encryption code and read back
with its own decryption code after the re-wrap (helpers in test_envelope).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.envelope import find_envelope, parse_envelope
from controller.errors import Conflict, ConnectionLost, Forbidden, InvalidKeyId, NotFound, TransientError, Unreachable
from controller.ports import BlobItem, BlobPage, RewrapPorts, RewrapProgress
from controller.rewrap.outcomes import ProblemReason, RewrapReport
from controller.rewrap.strategies import walker_for
from controller.rewrap.walker import ContainerWalker, RewrapOptions
from controller.rewrap.work import RewrapMode
from controller.rewrap.wrapping import RsaPublicKeyWrapper
from controller.vault_policy import VaultPolicy
from tests.unit.test_envelope import (
    NEW_KEY_ID,
    OLD_KEY_ID,
    VAULT,
    RsaKek,
    jose_padding,
    library_decrypt,
    library_encrypt,
    new_kek,
    old_kek,
    rsa_key,
)

pytestmark = pytest.mark.unit

POLICY = VaultPolicy.of([VAULT])

CONTAINER = "invoices"
OLDER_KEY_ID = f"{VAULT}/keys/blob-kek/{'0' * 32}"


class Killed(BaseException):
    """Raised by the fake store to stop a run dead, as a killed worker would."""


@dataclass
class StoredBlob:
    etag: str
    metadata: dict[str, str]
    content: bytes
    plaintext: bytes


@dataclass
class FakeBlobStore:
    """Blobs with metadata and ETags. Faults are queued per blob name and raised before a write."""

    page_size: int = 3
    blobs: dict[str, StoredBlob] = field(default_factory=dict)
    write_faults: dict[str, list[Exception]] = field(default_factory=dict)
    read_faults: dict[str, list[Exception]] = field(default_factory=dict)
    list_faults: list[Exception] = field(default_factory=list)
    #: Runs inside set_metadata before the ETag check: a concurrent writer getting there first.
    before_write: Callable[[str], None] | None = None
    kill_after_writes: int | None = None
    writes: list[str] = field(default_factory=list)
    list_markers: list[str | None] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    _etags: int = 0
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def put(self, name: str, metadata: Mapping[str, str], content: bytes = b"", plaintext: bytes = b"") -> None:
        with self._lock:
            self._etags += 1
            self.blobs[name] = StoredBlob(f'"0x{self._etags:04d}"', dict(metadata), content, plaintext)

    def put_encrypted(
        self, name: str, plaintext: bytes, kek: RsaKek, protocol: str, extra: Mapping[str, str] | None = None
    ) -> None:
        value, content = library_encrypt(plaintext, kek, protocol)
        self.put(name, {**(extra or {}), "encryptiondata": value}, content, plaintext)

    def list_blobs(self, container: str, *, prefix: str | None, marker: str | None) -> BlobPage:
        assert container == CONTAINER
        with self._lock:
            self.list_markers.append(marker)
            self.events.append(f"list {marker}")
            if self.list_faults:
                raise self.list_faults.pop(0)
            names = sorted(name for name in self.blobs if name.startswith(prefix or "") and name > (marker or ""))
            chosen = names[: self.page_size]
            items = tuple(self._item(name) for name in chosen)
            next_marker = chosen[-1] if len(names) > self.page_size else None
            return BlobPage(items=items, next_marker=next_marker)

    def get_properties(self, container: str, name: str) -> BlobItem:
        assert container == CONTAINER
        with self._lock:
            faults = self.read_faults.get(name)
            if faults:
                raise faults.pop(0)
            if name not in self.blobs:
                raise NotFound(f"blob {name}")
            return self._item(name)

    def set_metadata(self, container: str, name: str, metadata: Mapping[str, str], *, if_match: str) -> str:
        assert container == CONTAINER
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            with self._lock:
                faults = self.write_faults.get(name)
                if faults:
                    raise faults.pop(0)
            if self.before_write is not None:
                self.before_write(name)
            with self._lock:
                if self.kill_after_writes is not None and len(self.writes) >= self.kill_after_writes:
                    self.kill_after_writes = None
                    raise Killed
                blob = self.blobs.get(name)
                if blob is None:
                    raise NotFound(f"blob {name}")
                if blob.etag != if_match:
                    raise Conflict(f"blob {name}: ETag mismatch")
                self.writes.append(name)
                self.events.append(f"write {name}")
                self.put(name, metadata, blob.content, blob.plaintext)
                return self.blobs[name].etag
        finally:
            with self._lock:
                self.in_flight -= 1

    def _item(self, name: str) -> BlobItem:
        blob = self.blobs[name]
        return BlobItem(name=name, etag=blob.etag, metadata=dict(blob.metadata))

    def envelope_value(self, name: str) -> str:
        entry = find_envelope(self.blobs[name].metadata)
        assert entry is not None
        return entry[1]

    def key_id(self, name: str) -> str:
        return parse_envelope(self.envelope_value(name)).wrapped_key.key_id

    def decrypts_with(self, name: str, kek: RsaKek) -> bool:
        blob = self.blobs[name]
        return library_decrypt(self.envelope_value(name), blob.content, kek, len(blob.plaintext)) == blob.plaintext


@dataclass
class FakeUnwrapper:
    """Key Vault's unwrapKey over real private keys: one call per unwrap, counted."""

    keys: dict[str, RsaKek] = field(default_factory=dict)
    faults: list[Exception] = field(default_factory=list)
    #: Wrapped keys whose unwrap Key Vault refuses (403: permission, disabled or expired version).
    refuse: set[bytes] = field(default_factory=set)
    calls: int = 0
    payloads: list[bytes] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def unwrap(self, key_id: str, algorithm: str, wrapped: bytes) -> bytes:
        with self._lock:
            self.calls += 1
            if self.faults:
                raise self.faults.pop(0)
        if wrapped in self.refuse:
            raise Forbidden(f"unwrapKey on {key_id}")
        kek = self.keys.get(key_id)
        if kek is None:
            raise NotFound(f"key {key_id}")
        payload = kek.private_key.decrypt(wrapped, jose_padding(algorithm))
        with self._lock:
            self.payloads.append(payload)
        return payload


@dataclass
class FakeCheckpoint:
    saved: dict[str, RewrapProgress] = field(default_factory=dict)
    saves: int = 0

    def load(self, job_id: str) -> RewrapProgress | None:
        return self.saved.get(job_id)

    def save(self, job_id: str, progress: RewrapProgress) -> None:
        self.saves += 1
        self.saved[job_id] = progress


@dataclass
class FakeTime:
    now: float = 1000.0
    sleeps: list[float] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def monotonic(self) -> float:
        with self._lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.now += seconds


@dataclass
class World:
    store: FakeBlobStore = field(default_factory=FakeBlobStore)
    unwrapper: FakeUnwrapper = field(
        default_factory=lambda: FakeUnwrapper(keys={OLD_KEY_ID: old_kek(), OLDER_KEY_ID: older_kek()})
    )
    checkpoint: FakeCheckpoint = field(default_factory=FakeCheckpoint)
    time: FakeTime = field(default_factory=FakeTime)

    def engine(self, **options: object) -> ContainerWalker:
        return self.walker(RsaPublicKeyWrapper(NEW_KEY_ID, rsa_key("new").public_key()), POLICY, **options)

    def walker(self, wrapper: RsaPublicKeyWrapper, policy: VaultPolicy, **options: object) -> ContainerWalker:
        return walker_for(
            RewrapMode.REWRAP,
            RewrapPorts(store=self.store, unwrapper=self.unwrapper, wrapper=wrapper, checkpoint=self.checkpoint),
            policy=policy,
            options=RewrapOptions(**options),  # type: ignore[arg-type]
            sleep=self.time.sleep,
            monotonic=self.time.monotonic,
        )

    def run(self, **options: object) -> RewrapReport:
        return self.engine(**options).run(CONTAINER)


def older_kek() -> RsaKek:
    return RsaKek(OLDER_KEY_ID, rsa_key("older"), "RSA-OAEP-256")


def problems(report: RewrapReport) -> dict[str, str]:
    return {problem.name: problem.reason for problem in report.progress.problems}


def counts(report: RewrapReport) -> dict[str, int]:
    return {name: count for name, count in report.counts.items() if count}


# -- the happy path ------------------------------------------------------------------------------------


def test_rewraps_v1_v2_and_v2_1_blobs_which_still_decrypt_with_the_new_version_only() -> None:
    world = World()
    for index, protocol in enumerate(["1.0", "2.0", "2.1"] * 3):
        world.store.put_encrypted(
            f"blob-{index}",
            f"plaintext {index} ".encode() * 50,
            old_kek(),
            protocol,
            {"owner": f"team-{index}", "Content_Class": "invoice"},
        )
    world.store.put_encrypted("older-version", b"from two rotations ago", older_kek(), "2.0")
    before = {name: dict(blob.metadata) for name, blob in world.store.blobs.items()}

    report = world.run(max_workers=4)

    assert counts(report) == {"rewrapped": 10}
    assert report.progress.complete and report.progress.writes == 10
    assert report.progress.unwrap_calls == 10 and report.unwrap_calls_per_blob == 1.0
    for name, blob in world.store.blobs.items():
        assert world.store.key_id(name) == NEW_KEY_ID
        assert world.store.decrypts_with(name, new_kek())
        with pytest.raises(ValueError, match="does not match the id"):
            world.store.decrypts_with(name, old_kek())
        # every other metadata entry is exactly as it was
        assert {k: v for k, v in blob.metadata.items() if k != "encryptiondata"} == {
            k: v for k, v in before[name].items() if k != "encryptiondata"
        }
        # and the envelope changed in its wrapped key only
        old, new = json.loads(before[name]["encryptiondata"]), json.loads(blob.metadata["encryptiondata"])
        assert list(old) == list(new)
        assert {k: v for k, v in old.items() if k != "WrappedContentKey"} == {
            k: v for k, v in new.items() if k != "WrappedContentKey"
        }


def test_second_run_finds_everything_current_and_makes_no_key_vault_call() -> None:
    world = World()
    for index in range(5):
        world.store.put_encrypted(f"blob-{index}", b"data", old_kek(), "2.0")
    world.run()
    calls = world.unwrapper.calls

    report = world.run()

    assert counts(report) == {"already_current": 5}
    assert world.unwrapper.calls == calls
    assert report.progress.writes == 0 and report.progress.complete


def test_keeps_each_blobs_wrap_algorithm_and_upgrades_rsa1_5() -> None:
    world = World()
    for algorithm in ("RSA-OAEP", "RSA-OAEP-256", "RSA1_5"):
        world.store.put_encrypted(algorithm, b"data " + algorithm.encode(), old_kek(algorithm), "2.0")

    world.run()

    recorded = {
        name: parse_envelope(world.store.envelope_value(name)).wrapped_key.algorithm for name in world.store.blobs
    }
    assert recorded == {"RSA-OAEP": "RSA-OAEP", "RSA-OAEP-256": "RSA-OAEP-256", "RSA1_5": "RSA-OAEP-256"}
    for name in world.store.blobs:
        # the reader's KEK unwraps with the algorithm the envelope records
        assert world.store.decrypts_with(name, new_kek())


def test_configured_wrap_algorithm_applies_to_every_blob() -> None:
    world = World()
    world.store.put_encrypted("a", b"data", old_kek("RSA-OAEP"), "1.0")

    world.run(wrap_algorithm="RSA-OAEP-256")

    assert parse_envelope(world.store.envelope_value("a")).wrapped_key.algorithm == "RSA-OAEP-256"
    assert world.store.decrypts_with("a", new_kek())


# -- what is skipped ---------------------------------------------------------------------------------------


def test_skips_blobs_it_must_not_touch_and_says_why() -> None:
    world = World()
    world.store.put_encrypted("current", b"data", new_kek(), "2.0")
    world.store.put("plain", {"owner": "a"}, b"not encrypted")
    world.store.put_encrypted("other-key", b"d", RsaKek(f"{VAULT}/keys/other/{'3' * 32}", rsa_key("old")), "2.0")
    world.store.put_encrypted(
        "other-vault", b"d", RsaKek(f"https://fabrikam.vault.azure.net/keys/blob-kek/{'1' * 32}", rsa_key("old")), "2.0"
    )
    world.store.put_encrypted("local-kek", b"d", RsaKek("local-key-1", rsa_key("old")), "1.0")
    world.store.put_encrypted("aes-kw", b"d", RsaKek(OLD_KEY_ID, rsa_key("old")), "2.0")
    aes_kw = json.loads(world.store.blobs["aes-kw"].metadata["encryptiondata"])
    aes_kw["WrappedContentKey"]["Algorithm"] = "A256KW"
    world.store.blobs["aes-kw"].metadata["encryptiondata"] = json.dumps(aes_kw)
    world.store.put("malformed", {"encryptiondata": '{"WrappedContentKey": '})

    report = world.run()

    assert counts(report) == {
        "already_current": 1,
        "not_encrypted": 1,
        "skipped_unknown_key": 4,
        "skipped_malformed": 1,
    }
    assert problems(report) == {
        "other-key": ProblemReason.UNKNOWN_KEY,
        "other-vault": ProblemReason.UNKNOWN_KEY,
        "local-kek": ProblemReason.UNKNOWN_KEY,
        "aes-kw": ProblemReason.UNSUPPORTED_WRAP_ALGORITHM,
        "malformed": ProblemReason.MALFORMED_ENVELOPE,
    }
    assert {problem.name: problem.detail for problem in report.progress.problems} == {
        "other-key": "other_key",
        "other-vault": "other_key",
        "local-kek": "not_key_vault_key",
        "aes-kw": "A256KW",
        "malformed": "invalid_json",
    }
    assert world.store.writes == [] and world.unwrapper.calls == 0


def test_payload_that_does_not_match_the_protocol_is_not_rewrapped() -> None:
    world = World()
    world.store.put_encrypted("tampered", b"data", old_kek(), "2.0")
    document = json.loads(world.store.blobs["tampered"].metadata["encryptiondata"])
    document["EncryptionAgent"]["Protocol"] = "2.1"  # still valid JSON, but the payload says 2.0
    world.store.blobs["tampered"].metadata["encryptiondata"] = json.dumps(document)

    report = world.run()

    assert counts(report) == {"skipped_malformed": 1}
    assert report.progress.problems[0].detail == "payload_mismatch"
    assert world.store.writes == []


def test_sandbox_vault_origins_are_recognised_when_configured() -> None:
    world = World()
    sandbox = "https://127.0.0.7:8443"
    sandbox_old, sandbox_new = f"{sandbox}/keys/blob-kek/{'1' * 32}", f"{sandbox}/keys/blob-kek/{'2' * 32}"
    world.store.put_encrypted("a", b"data", RsaKek(sandbox_old, rsa_key("old")), "2.0")
    world.unwrapper.keys[sandbox_old] = RsaKek(sandbox_old, rsa_key("old"))
    engine = world.walker(RsaPublicKeyWrapper(sandbox_new, rsa_key("new").public_key()), VaultPolicy.of([sandbox]))

    assert counts(engine.run(CONTAINER)) == {"rewrapped": 1}
    assert world.store.decrypts_with("a", RsaKek(sandbox_new, rsa_key("new")))


def test_target_must_be_a_key_version() -> None:
    world = World()
    with pytest.raises(InvalidKeyId, match="must name a key version"):
        world.walker(RsaPublicKeyWrapper(f"{VAULT}/keys/blob-kek", rsa_key("new").public_key()), POLICY)


@pytest.mark.parametrize(
    "options",
    [{"max_workers": 0}, {"max_transient_attempts": 0}, {"max_conflict_retries": -1}, {"conflict_rounds": 0},
     {"wrap_algorithm": "RSA1_5"}],
)
def test_options_are_validated(options: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must"):
        RewrapOptions(**options)  # type: ignore[arg-type]


def test_report_as_json_names_every_count_and_no_key_material() -> None:
    world = World()
    world.store.put_encrypted("a", b"data", old_kek(), "2.0")
    world.store.put("b", {"encryptiondata": "[]"})

    document = world.run().as_json()

    assert document["counts"] == {
        "rewrapped": 1,
        "already_current": 0,
        "not_encrypted": 0,
        "skipped_unknown_key": 0,
        "skipped_malformed": 1,
        "failed": 0,
        "vanished": 0,
    }
    assert document["problems"] == [{"name": "b", "reason": "malformed_envelope", "detail": "not_an_object"}]
    assert document["target_key_id"] == NEW_KEY_ID and document["complete"] is True
    assert document["unwrap_calls"] == 1 and document["writes"] == 1 and document["blobs"] == 2
    json.dumps(document)


# -- dry run -----------------------------------------------------------------------------------------------


def test_dry_run_writes_nothing_unwraps_nothing_and_reports_the_plan() -> None:
    world = World()
    for index in range(4):
        world.store.put_encrypted(f"old-{index}", b"data", old_kek(), "2.0")
    world.store.put_encrypted("current", b"data", new_kek(), "1.0")
    world.store.put("malformed", {"encryptiondata": "{}"})
    before = {name: (blob.etag, dict(blob.metadata)) for name, blob in world.store.blobs.items()}

    report = world.run(dry_run=True)

    assert report.dry_run
    assert counts(report) == {"rewrapped": 4, "already_current": 1, "skipped_malformed": 1}
    assert report.planned == ("old-0", "old-1", "old-2", "old-3")
    assert problems(report) == {"malformed": ProblemReason.MALFORMED_ENVELOPE}
    assert world.store.writes == [] and world.unwrapper.calls == 0 and world.checkpoint.saves == 0
    assert {name: (blob.etag, blob.metadata) for name, blob in world.store.blobs.items()} == before


# -- concurrent writers --------------------------------------------------------------------------------------


def test_concurrent_metadata_change_is_kept_and_costs_no_second_unwrap() -> None:
    world = World()
    world.store.put_encrypted("contended", b"data", old_kek(), "2.0", {"owner": "a"})
    world.store.put_encrypted("quiet", b"data", old_kek(), "1.0")

    def other_writer(name: str) -> None:
        if name == "contended" and world.store.blobs[name].metadata.get("owner") == "a":
            blob = world.store.blobs[name]
            world.store.put(name, {**blob.metadata, "owner": "b", "reviewed": "yes"}, blob.content, blob.plaintext)

    world.store.before_write = other_writer
    report = world.run()

    assert counts(report) == {"rewrapped": 2}
    assert report.progress.conflicts == 1
    assert world.unwrapper.calls == 2  # the lost race reused the payload it had unwrapped
    metadata = world.store.blobs["contended"].metadata
    assert metadata["owner"] == "b" and metadata["reviewed"] == "yes"
    assert world.store.key_id("contended") == NEW_KEY_ID
    assert world.store.decrypts_with("contended", new_kek())


def test_concurrent_reupload_is_rewrapped_from_its_new_envelope() -> None:
    world = World()
    world.store.put_encrypted("contended", b"first version", old_kek(), "1.0")
    uploaded: list[str] = []

    def other_writer(name: str) -> None:
        if not uploaded:
            uploaded.append(name)
            world.store.put_encrypted(name, b"second version, new content key", old_kek(), "2.0", {"v": "2"})

    world.store.before_write = other_writer
    report = world.run()

    assert counts(report) == {"rewrapped": 1}
    assert world.unwrapper.calls == 2  # a new wrapped key needs its own unwrap
    blob = world.store.blobs["contended"]
    assert blob.plaintext == b"second version, new content key" and blob.metadata["v"] == "2"
    assert world.store.decrypts_with("contended", new_kek())


def test_concurrent_reupload_already_on_the_target_is_left_alone() -> None:
    world = World()
    world.store.put_encrypted("contended", b"first", old_kek(), "2.0")

    def other_writer(name: str) -> None:
        if world.store.key_id(name) == OLD_KEY_ID:
            world.store.put_encrypted(name, b"written by an app that has the new key", new_kek(), "2.0")

    world.store.before_write = other_writer
    report = world.run()

    assert counts(report) == {"already_current": 1}
    assert world.store.writes == []
    assert world.store.decrypts_with("contended", new_kek())


def test_endless_contention_gives_up_without_overwriting_anyone() -> None:
    world = World()
    world.store.put_encrypted("hot", b"data", old_kek(), "2.0", {"n": "0"})
    world.store.put_encrypted("calm", b"data", old_kek(), "2.0")

    def other_writer(name: str) -> None:
        if name == "hot":
            blob = world.store.blobs[name]
            world.store.put(
                name, {**blob.metadata, "n": str(int(blob.metadata["n"]) + 1)}, blob.content, blob.plaintext
            )

    world.store.before_write = other_writer
    report = world.run(max_conflict_retries=3)

    assert problems(report) == {"hot": ProblemReason.CONFLICTS_EXHAUSTED}
    assert counts(report) == {"rewrapped": 1, "failed": 1}
    # Two rounds of four attempts (the second at the end of the page): all eight updates stand.
    assert world.store.blobs["hot"].metadata["n"] == "8"
    assert report.progress.conflicts == 8
    assert world.store.key_id("hot") == OLD_KEY_ID
    # calm's unwrap, and hot's once per round (its content key is not kept past a round).
    assert world.unwrapper.calls == 3


def test_a_blob_written_in_a_burst_comes_back_at_the_end_of_its_page() -> None:
    """An application writes one blob before each of the first six write attempts (more than one round
    of attempts), then pauses: the blob loses its first round, comes back after the rest of its page with
    a fresh read, and is re-wrapped with every one of the application's updates kept."""
    world = World()
    world.store.put_encrypted("hot", b"data", old_kek(), "2.0", {"n": "0"})
    for index in range(2):
        world.store.put_encrypted(f"pag-{index}", b"data", old_kek(), "2.0")

    def burst(name: str) -> None:
        blob = world.store.blobs[name]
        if name == "hot" and blob.metadata["n"] != "6":
            world.store.put(name, {**blob.metadata, "n": str(int(blob.metadata["n"]) + 1)}, blob.content,
                            blob.plaintext)

    world.store.before_write = burst
    report = world.run(max_workers=1)

    assert counts(report) == {"rewrapped": 3} and report.progress.problems == ()
    assert report.progress.conflicts == 6
    assert world.store.blobs["hot"].metadata["n"] == "6"
    assert world.store.decrypts_with("hot", new_kek())
    # The page's other blobs were done before the hot blob's second round.
    assert world.store.writes == ["pag-0", "pag-1", "hot"]


def test_one_round_of_conflicts_can_be_all_there_is() -> None:
    world = World()
    world.store.put_encrypted("hot", b"data", old_kek(), "2.0", {"n": "0"})

    def always(name: str) -> None:
        blob = world.store.blobs[name]
        world.store.put(name, {**blob.metadata, "n": str(int(blob.metadata["n"]) + 1)}, blob.content, blob.plaintext)

    world.store.before_write = always
    report = world.run(max_conflict_retries=1, conflict_rounds=1)
    assert problems(report) == {"hot": ProblemReason.CONFLICTS_EXHAUSTED}
    assert world.store.blobs["hot"].metadata["n"] == "2"


def test_blob_deleted_under_the_run_is_counted_as_vanished() -> None:
    world = World()
    world.store.put_encrypted("deleted-before-write", b"data", old_kek(), "2.0")
    world.store.put_encrypted("deleted-before-reread", b"data", old_kek(), "2.0")

    def other_writer(name: str) -> None:
        if name == "deleted-before-write":
            del world.store.blobs[name]
        else:  # change it, so the write conflicts; then it is gone when the engine reads it again
            blob = world.store.blobs[name]
            world.store.put(name, {**blob.metadata, "x": "1"}, blob.content, blob.plaintext)
            world.store.read_faults[name] = [NotFound(f"blob {name}")]

    world.store.before_write = other_writer
    report = world.run()

    assert counts(report) == {"vanished": 2}
    assert report.progress.problems == () and world.store.writes == []


# -- throttling and failures -------------------------------------------------------------------------------


def test_write_throttled_with_retry_after_waits_exactly_that_long() -> None:
    world = World()
    world.store.put_encrypted("a", b"data", old_kek(), "2.0")
    world.store.write_faults["a"] = [TransientError("429", retry_after=7.5)]

    report = world.run()

    assert counts(report) == {"rewrapped": 1}
    assert world.time.sleeps == [7.5]
    assert report.progress.throttled == 1 and world.unwrapper.calls == 1


def test_throttling_without_retry_after_backs_off_exponentially_then_resets() -> None:
    world = World()
    world.store.put_encrypted("a", b"data", old_kek(), "2.0")
    world.store.put_encrypted("b", b"data", old_kek(), "2.0")
    world.store.write_faults["a"] = [TransientError("503"), TransientError("503"), TransientError("503")]
    world.store.write_faults["b"] = [TransientError("503")]

    report = world.run(max_workers=1, initial_backoff=0.5, max_backoff=1.5)

    assert counts(report) == {"rewrapped": 2}
    assert world.time.sleeps == [0.5, 1.0, 1.5, 0.5]  # capped at max_backoff, reset after a success


def test_a_connection_dropped_again_and_again_is_retried_after_short_pauses_not_failing_the_item() -> None:
    """Found by the faults scenario at full size (2-3% of requests reset): a blob whose connection dropped
    three times in a row failed its whole work item (three quick tries), until the item was poisoned."""
    world = World()
    world.store.put_encrypted("a", b"data", old_kek(), "2.0")
    world.store.write_faults["a"] = [ConnectionLost("write a: the connection was reset") for _ in range(5)]

    report = world.run(max_workers=1, max_backoff=1.0)

    assert counts(report) == {"rewrapped": 1}
    assert world.time.sleeps == [0.2, 0.4, 0.8, 1.0, 1.0]  # its own pauses, doubling, capped
    assert report.progress.throttled == 0  # not throttling


def test_a_service_that_cannot_be_reached_is_reported_after_three_quick_tries() -> None:
    world = World()
    world.store.put_encrypted("a", b"data", old_kek(), "2.0")
    world.store.write_faults["a"] = [Unreachable("write a: connection refused: nothing listens there")] * 5

    with pytest.raises(Unreachable, match="connection refused"):
        world.run(max_workers=1)
    assert world.time.sleeps == [] and world.store.write_faults["a"] == [world.store.write_faults["a"][0]] * 2


def test_throttled_unwrap_is_retried_and_every_attempt_counted() -> None:
    world = World()
    world.store.put_encrypted("a", b"data", old_kek(), "1.0")
    world.unwrapper.faults = [TransientError("429", retry_after=2), TransientError("429", retry_after=2)]

    report = world.run()

    assert counts(report) == {"rewrapped": 1}
    assert report.progress.unwrap_calls == 3 == world.unwrapper.calls
    assert world.time.sleeps == [2, 2]


def test_one_blob_outlasting_the_retry_budget_fails_alone() -> None:
    world = World()
    for name in ("a", "b", "c"):
        world.store.put_encrypted(name, b"data", old_kek(), "2.0")
    world.store.write_faults["b"] = [TransientError("503", retry_after=1) for _ in range(10)]

    report = world.run(max_transient_attempts=4)

    assert problems(report) == {"b": ProblemReason.THROTTLED}
    assert counts(report) == {"rewrapped": 2, "failed": 1}
    assert world.store.key_id("b") == OLD_KEY_ID


def test_unwrap_refusals_fail_the_blob_not_the_run() -> None:
    world = World()
    world.store.put_encrypted("forbidden", b"data", old_kek(), "2.0")
    world.store.put_encrypted("purged", b"data", older_kek(), "2.0")
    world.store.put_encrypted("fine", b"data", old_kek(), "1.0")
    world.unwrapper.keys.pop(OLDER_KEY_ID)
    world.unwrapper.refuse.add(parse_envelope(world.store.envelope_value("forbidden")).wrapped_key.encrypted_key)

    report = world.run()

    assert problems(report) == {"forbidden": ProblemReason.KEY_FORBIDDEN, "purged": ProblemReason.KEY_NOT_FOUND}
    assert counts(report) == {"rewrapped": 1, "failed": 2}
    assert report.progress.unwrap_calls == 3 == world.unwrapper.calls


def test_write_refused_is_recorded() -> None:
    world = World()
    world.store.put_encrypted("a", b"data", old_kek(), "2.0")
    world.store.write_faults["a"] = [Forbidden("403 AuthorizationPermissionMismatch")]

    report = world.run()

    assert problems(report) == {"a": ProblemReason.WRITE_FORBIDDEN}
    assert world.store.key_id("a") == OLD_KEY_ID


# -- checkpoints ----------------------------------------------------------------------------------------------


def test_killed_mid_run_and_resumed_leaves_every_blob_on_the_target() -> None:
    world = World(store=FakeBlobStore(page_size=4))
    for index in range(14):
        world.store.put_encrypted(
            f"blob-{index:02d}", f"content {index}".encode(), old_kek(), ["1.0", "2.0"][index % 2]
        )
    world.store.kill_after_writes = 6  # dies during the second page

    with pytest.raises(Killed):
        world.run(max_workers=2)

    job = world.engine().job_id(CONTAINER)
    saved = world.checkpoint.saved[job]
    assert not saved.complete and saved.pages == 1 and saved.marker == "blob-03"
    assert saved.counts == {"rewrapped": 4}

    report = world.run(max_workers=2)

    # the resumed run started at the killed page, not over (the killed run had listed the page after
    # it while working on it; nothing of that page was done)
    assert world.store.list_markers == [None, "blob-03", "blob-07", "blob-03", "blob-07", "blob-11"]
    assert report.progress.complete and report.progress.pages == 4
    assert sum(report.counts.values()) == 14
    assert report.counts["rewrapped"] + report.counts["already_current"] == 14
    for name in world.store.blobs:
        assert world.store.key_id(name) == NEW_KEY_ID
        assert world.store.decrypts_with(name, new_kek())
    assert world.unwrapper.calls <= 14 + 2  # at most the in-flight blobs of the killed page twice


def test_completed_checkpoint_starts_a_fresh_pass() -> None:
    world = World()
    world.store.put_encrypted("a", b"data", old_kek(), "2.0")
    world.run()
    world.store.put_encrypted("b", b"written later with the old version", old_kek(), "2.0")

    report = world.run()

    assert counts(report) == {"rewrapped": 1, "already_current": 1}
    assert world.store.key_id("b") == NEW_KEY_ID


def test_listing_throttled_past_the_budget_raises_transient_and_keeps_the_checkpoint() -> None:
    world = World(store=FakeBlobStore(page_size=2))
    for index in range(5):
        world.store.put_encrypted(f"blob-{index}", b"data", old_kek(), "2.0")
    engine = world.engine(max_transient_attempts=3)
    original_list = world.store.list_blobs
    pages = 0

    def flaky_list(container: str, *, prefix: str | None, marker: str | None) -> BlobPage:
        nonlocal pages
        if pages >= 1:
            raise TransientError("503", retry_after=1)
        pages += 1
        return original_list(container, prefix=prefix, marker=marker)

    world.store.list_blobs = flaky_list  # type: ignore[method-assign]
    with pytest.raises(TransientError, match="resume from the checkpoint"):
        engine.run(CONTAINER)
    saved = world.checkpoint.saved[engine.job_id(CONTAINER)]
    assert saved.marker == "blob-1" and saved.counts == {"rewrapped": 2}

    world.store.list_blobs = original_list  # type: ignore[method-assign]
    report = engine.run(CONTAINER)
    assert report.counts["rewrapped"] == 5 and report.progress.complete


def test_throttled_listing_is_retried_after_the_delay() -> None:
    world = World()
    world.store.put_encrypted("a", b"data", old_kek(), "2.0")
    world.store.list_faults = [TransientError("503", retry_after=2)]

    report = world.run()

    assert counts(report) == {"rewrapped": 1}
    assert report.progress.throttled == 1 and world.time.sleeps == [2]


# -- bounds -----------------------------------------------------------------------------------------------------


def test_concurrency_is_bounded_and_pages_are_processed_one_at_a_time() -> None:
    world = World(store=FakeBlobStore(page_size=10))
    for index in range(30):
        world.store.put_encrypted(f"blob-{index:02d}", b"data", old_kek(), "2.0")
    gate = threading.Barrier(3, timeout=5)

    def slow_writer(name: str) -> None:
        # hold three writers in flight together so the pool's width shows in max_in_flight
        if name in ("blob-00", "blob-01", "blob-02"):
            gate.wait()

    world.store.before_write = slow_writer
    report = world.run(max_workers=3)

    assert report.counts["rewrapped"] == 30
    assert world.store.max_in_flight == 3
    # pages are worked one at a time: no write of a page before every write of the page before it;
    # the next page is listed while one is worked on, never two pages ahead
    events = world.store.events
    lists = [index for index, event in enumerate(events) if event.startswith("list")]
    writes = [(index, int(event[-2:]) // 10) for index, event in enumerate(events) if event.startswith("write")]
    assert len(lists) == 3
    assert [page for _, page in writes] == sorted(page for _, page in writes)
    first_write = {page: min(index for index, of in writes if of == page) for page in range(3)}
    last_write = {page: max(index for index, of in writes if of == page) for page in range(3)}
    assert all(lists[page] < first_write[page] for page in range(3))
    assert lists[2] > last_write[0]


def test_problems_kept_are_capped_and_the_rest_counted() -> None:
    world = World(store=FakeBlobStore(page_size=5))
    for index in range(12):
        world.store.put(f"bad-{index:02d}", {"encryptiondata": "nope"})

    report = world.run(max_problems=5)

    assert len(report.progress.problems) == 5 and report.progress.problems_dropped == 7
    assert report.counts["skipped_malformed"] == 12


def test_unwrap_calls_per_blob_stay_within_the_budget_under_contention() -> None:
    world = World(store=FakeBlobStore(page_size=25))
    for index in range(100):
        world.store.put_encrypted(f"blob-{index:03d}", b"data", old_kek(), "2.0", {"n": "0"})
    touched: set[str] = set()

    def other_writer(name: str) -> None:
        # every fifth blob has its metadata changed once under the engine's feet
        if int(name[-3:]) % 5 == 0 and name not in touched:
            touched.add(name)
            blob = world.store.blobs[name]
            world.store.put(name, {**blob.metadata, "n": "1"}, blob.content, blob.plaintext)

    world.store.before_write = other_writer
    report = world.run(max_workers=8)

    assert report.counts["rewrapped"] == 100 and report.progress.conflicts == 20
    assert report.unwrap_calls_per_blob <= 1.01
    assert all(
        blob.metadata["n"] == ("1" if int(name[-3:]) % 5 == 0 else "0") for name, blob in world.store.blobs.items()
    )


# -- secrets ------------------------------------------------------------------------------------------------------


def test_no_content_key_or_plaintext_reaches_logs_errors_or_the_report(caplog: pytest.LogCaptureFixture) -> None:
    world = World()
    world.store.put_encrypted("good", b"PLAINTEXT-MARKER good", old_kek(), "2.0")
    world.store.put_encrypted("v1", b"PLAINTEXT-MARKER v1", old_kek(), "1.0")
    world.store.put_encrypted("tampered", b"PLAINTEXT-MARKER t", old_kek(), "2.0")
    document = json.loads(world.store.blobs["tampered"].metadata["encryptiondata"])
    document["EncryptionAgent"]["Protocol"] = "2.1"
    world.store.blobs["tampered"].metadata["encryptiondata"] = json.dumps(document)
    world.store.write_faults["v1"] = [Forbidden("403")]

    with caplog.at_level(logging.DEBUG):
        report = world.run()

    emitted = caplog.text + json.dumps(report.as_json()) + repr(report)
    assert len(world.unwrapper.payloads) == 3
    for payload in world.unwrapper.payloads:
        content_key = payload[-32:]
        for form in (content_key.hex(), base64.b64encode(content_key).decode(), repr(content_key)[2:-1]):
            assert form not in emitted
    assert "PLAINTEXT-MARKER" not in emitted
    assert "blob not re-wrapped" in caplog.text and "re-wrap finished" in caplog.text


# -- property: malformed metadata is reported, never written -----------------------------------------------------

_BASES = {protocol: library_encrypt(b"x", old_kek(), protocol)[0] for protocol in ("1.0", "2.0", "2.1")}
_REQUIRED = {
    "1.0": [
        ("WrappedContentKey",),
        ("WrappedContentKey", "KeyId"),
        ("WrappedContentKey", "EncryptedKey"),
        ("WrappedContentKey", "Algorithm"),
        ("EncryptionAgent",),
        ("EncryptionAgent", "Protocol"),
        ("EncryptionAgent", "EncryptionAlgorithm"),
        ("ContentEncryptionIV",),
    ],
    "2.0": [
        ("WrappedContentKey",),
        ("WrappedContentKey", "KeyId"),
        ("WrappedContentKey", "EncryptedKey"),
        ("WrappedContentKey", "Algorithm"),
        ("EncryptionAgent",),
        ("EncryptionAgent", "Protocol"),
        ("EncryptionAgent", "EncryptionAlgorithm"),
        ("EncryptedRegionInfo",),
        ("EncryptedRegionInfo", "DataLength"),
        ("EncryptedRegionInfo", "NonceLength"),
    ],
}
_REQUIRED["2.1"] = _REQUIRED["2.0"]
_WRONG_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.just(""),
    st.just(-1),
    st.just(0),
)


@st.composite
def malformed_envelopes(draw: st.DrawFn) -> str:
    protocol = draw(st.sampled_from(sorted(_BASES)))
    base = _BASES[protocol]
    mutation = draw(st.sampled_from(["truncate", "drop", "wrong_type", "protocol", "base64", "garbage", "duplicate"]))
    if mutation == "truncate":
        return base[: draw(st.integers(min_value=0, max_value=len(base) - 1))]
    if mutation == "garbage":
        return draw(st.text(max_size=60).filter(lambda text: not text.lstrip().startswith("{")))
    document = json.loads(base)
    path = draw(st.sampled_from(_REQUIRED[protocol]))
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    if mutation == "drop":
        del parent[path[-1]]
    elif mutation == "wrong_type":
        parent[path[-1]] = draw(_WRONG_VALUES)
    elif mutation == "protocol":
        document["EncryptionAgent"]["Protocol"] = draw(
            st.text(max_size=5).filter(lambda text: text not in ("1.0", "2.0", "2.1"))
        )
    elif mutation == "base64":
        field_path = draw(st.sampled_from(["EncryptedKey", "IV"] if protocol == "1.0" else ["EncryptedKey"]))
        broken = draw(st.text(alphabet="!@#$%^&*() ", min_size=1, max_size=5))
        if field_path == "IV":
            document["ContentEncryptionIV"] = broken + document["ContentEncryptionIV"]
        else:
            document["WrappedContentKey"]["EncryptedKey"] += broken
    elif mutation == "duplicate":
        text = json.dumps(document)
        return text.replace('"Protocol": ', '"Protocol": "2.0", "Protocol": ', 1)
    return json.dumps(document)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(malformed_envelopes(), min_size=1, max_size=6), extra=st.booleans())
def test_malformed_or_mutated_envelopes_are_reported_and_never_written(values: list[str], extra: bool) -> None:
    world = World(store=FakeBlobStore(page_size=4))
    for index, value in enumerate(values):
        world.store.put(f"blob-{index}", {"encryptiondata": value, **({"owner": "a"} if extra else {})})
    before = {name: (blob.etag, dict(blob.metadata)) for name, blob in world.store.blobs.items()}

    report = world.run(max_workers=2)

    assert report.counts["skipped_malformed"] == len(values)
    assert set(problems(report).values()) == {ProblemReason.MALFORMED_ENVELOPE}
    assert world.store.writes == [] and world.unwrapper.calls == 0
    assert {name: (blob.etag, blob.metadata) for name, blob in world.store.blobs.items()} == before

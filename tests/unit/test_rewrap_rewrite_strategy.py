"""The rewrite strategy on the shared walker, over the re-wrap engine's hand-written fakes: which blobs
it rewrites, skips or leaves to a concurrent writer, and that the report has re-wrap's shape."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from controller.envelope import WrappedContentKey, parse_envelope
from controller.errors import Conflict, PermanentError, TransientError
from controller.ports import BlobItem, RewrapPorts
from controller.rewrap.outcomes import RewrapReport
from controller.rewrap.strategies import STAGING_PREFIX, walker_for
from controller.rewrap.walker import RewrapOptions
from controller.rewrap.work import RewrapMode
from controller.rewrap.wrapping import RsaPublicKeyWrapper
from tests.unit.test_envelope import NEW_KEY_ID, OLD_KEY_ID, jose_padding, new_kek, old_kek
from tests.unit.test_rewrap_engine import (
    CONTAINER,
    POLICY,
    FakeBlobStore,
    FakeCheckpoint,
    FakeTime,
    FakeUnwrapper,
    RsaKek,
    rsa_key,
)

pytestmark = pytest.mark.unit


@dataclass
class FakeRewriter:
    """Rewrites in place by bumping the blob's ETag (conditional on the listed one), like Copy Blob does."""

    store: FakeBlobStore
    faults: dict[str, list[Exception]] = field(default_factory=dict)
    rewritten: list[str] = field(default_factory=list)
    #: Runs before the swap's ETag check: the application writing the blob inside the rewrite's window.
    before_swap: Callable[[str], None] | None = None

    def rewrite(self, container: str, item: BlobItem) -> None:
        faults = self.faults.get(item.name)
        if faults:
            raise faults.pop(0)
        if self.before_swap is not None:
            self.before_swap(item.name)
        blob = self.store.blobs[item.name]
        if blob.etag != item.etag:
            raise Conflict(f"blob {item.name}: ETag mismatch")
        self.store.put(item.name, blob.metadata, blob.content, blob.plaintext)
        self.rewritten.append(item.name)


def run(store: FakeBlobStore, rewriter: FakeRewriter, *, dry_run: bool = False,
        unwrapper: FakeUnwrapper | None = None) -> RewrapReport:
    wrapper = RsaPublicKeyWrapper(NEW_KEY_ID, rsa_key("new").public_key())
    ports = RewrapPorts(store, unwrapper or FakeUnwrapper(), wrapper, FakeCheckpoint(), rewriter=rewriter)
    time = FakeTime()
    walker = walker_for(RewrapMode.REWRITE, ports, policy=POLICY, options=RewrapOptions(dry_run=dry_run),
                        sleep=time.sleep, monotonic=time.monotonic)
    return walker.run(CONTAINER)


def test_rewrites_every_version_of_the_key_and_skips_the_rest() -> None:
    store = FakeBlobStore()
    store.put_encrypted("old", b"a", old_kek(), "2.0")
    store.put_encrypted("current", b"b", RsaKek(NEW_KEY_ID, rsa_key("new")), "2.0")
    store.put_encrypted("other-key", b"c", RsaKek(OLD_KEY_ID.replace("blob-kek", "other"), rsa_key("o")), "2.0")
    store.put("plain", {"owner": "app"})
    store.put("broken", {"encryptiondata": "[]"})
    store.put_encrypted(f"{STAGING_PREFIX}old", b"a", old_kek(), "2.0")
    rewriter = FakeRewriter(store)

    report = run(store, rewriter)

    assert sorted(rewriter.rewritten) == ["current", "old"]  # a suspected content key: every version
    assert report.counts == {"rewritten": 2, "superseded": 0, "not_encrypted": 1, "skipped_unknown_key": 1,
                             "skipped_malformed": 1, "failed": 0, "vanished": 0}
    assert report.blobs == 5 and report.progress.writes == 2 and report.incomplete  # the malformed one
    assert report.job_id == f"rewrite|{CONTAINER}||{NEW_KEY_ID}"


def test_a_concurrent_writer_is_read_again_and_transient_failures_are_retried() -> None:
    store = FakeBlobStore()
    store.put_encrypted("raced", b"a", old_kek(), "2.0")
    store.put_encrypted("throttled", b"b", old_kek(), "2.0")
    store.put_encrypted("refused", b"c", old_kek(), "2.0")
    rewriter = FakeRewriter(store, faults={
        "throttled": [TransientError("429", retry_after=1.0)],
        "refused": [PermanentError("verification failed")],
    })
    rewriter.faults["raced"] = [Conflict("an application wrote it first")]

    report = run(store, rewriter)

    assert sorted(rewriter.rewritten) == ["raced", "throttled"]
    assert report.progress.conflicts == 1 and report.progress.throttled == 1
    assert [(p.name, p.reason, p.detail) for p in report.progress.problems] == [
        ("refused", "rewrite_failed", "PermanentError")
    ]


def test_a_dry_run_plans_without_rewriting() -> None:
    store = FakeBlobStore()
    store.put_encrypted("old", b"a", old_kek(), "2.0")
    rewriter = FakeRewriter(store)
    report = run(store, rewriter, dry_run=True)
    assert rewriter.rewritten == [] and report.planned == ("old",) and report.counts["rewritten"] == 1


def both_versions() -> FakeUnwrapper:
    return FakeUnwrapper(keys={OLD_KEY_ID: old_kek(), NEW_KEY_ID: new_kek()})


def test_a_blob_its_app_uploads_anew_under_the_target_in_every_window_is_superseded() -> None:
    """The application uploads the blob (a fresh content key, wrapped by the target version) before each
    of the rewrite's swaps: every swap would lose. Read again after the first lost race, the blob holds
    what the rewrite is for, and counts as done without a write; the application's data stands."""
    store = FakeBlobStore()
    store.put_encrypted("hot", b"listed data", old_kek(), "2.0", {"owner": "app"})
    store.put_encrypted("calm", b"calm data", old_kek(), "2.0")
    uploads: list[bytes] = []

    def app_uploads(name: str) -> None:
        if name == "hot":
            uploads.append(f"the app's upload {len(uploads)}".encode())
            store.put_encrypted(name, uploads[-1], new_kek(), "2.0", {"owner": "app"})

    rewriter = FakeRewriter(store, before_swap=app_uploads)
    unwrapper = both_versions()
    report = run(store, rewriter, unwrapper=unwrapper)

    assert {name: count for name, count in report.counts.items() if count} == {"rewritten": 1, "superseded": 1}
    assert rewriter.rewritten == ["calm"] and len(uploads) == 1
    assert report.progress.conflicts == 1 and report.progress.problems == () and not report.incomplete
    assert report.progress.unwrap_calls == 2  # the listed content key and the uploaded one, compared
    assert store.blobs["hot"].plaintext == uploads[-1] and store.decrypts_with("hot", new_kek())


def test_a_blob_re_wrapped_onto_the_target_under_the_run_keeps_its_content_key_and_is_still_rewritten() -> None:
    """A re-wrap onto the target version (another job, an operator) changes the wrapped key, not the
    content key: that blob is not what the rewrite is for, and is rewritten."""
    store = FakeBlobStore()
    store.put_encrypted("rewrapped", b"data", old_kek(), "2.0")

    def someone_rewraps(name: str) -> None:
        blob = store.blobs[name]
        envelope = parse_envelope(blob.metadata["encryptiondata"])
        if envelope.wrapped_key.key_id != OLD_KEY_ID:
            return
        payload = old_kek().private_key.decrypt(envelope.wrapped_key.encrypted_key,
                                                jose_padding(envelope.wrapped_key.algorithm))
        wrapped = new_kek().private_key.public_key().encrypt(payload, jose_padding("RSA-OAEP"))
        moved = envelope.with_wrapped_key(WrappedContentKey(NEW_KEY_ID, wrapped, "RSA-OAEP"))
        store.put(name, {"encryptiondata": moved.to_metadata_value()}, blob.content, blob.plaintext)

    rewriter = FakeRewriter(store, before_swap=someone_rewraps)
    report = run(store, rewriter, unwrapper=both_versions())

    assert {name: count for name, count in report.counts.items() if count} == {"rewritten": 1}
    assert rewriter.rewritten == ["rewrapped"] and report.progress.conflicts == 1
    assert report.progress.unwrap_calls == 2  # compared: the same content key


def test_a_blob_its_app_uploads_under_an_old_version_is_rewritten() -> None:
    store = FakeBlobStore()
    store.put_encrypted("hot", b"listed data", old_kek(), "2.0")
    uploaded: list[str] = []

    def app_uploads_once(name: str) -> None:
        if not uploaded:
            uploaded.append(name)
            store.put_encrypted(name, b"an app that has not moved to the new version", old_kek(), "2.0")

    rewriter = FakeRewriter(store, before_swap=app_uploads_once)
    report = run(store, rewriter, unwrapper=both_versions())

    assert {name: count for name, count in report.counts.items() if count} == {"rewritten": 1}
    assert report.progress.unwrap_calls == 0  # nothing to compare: not on the target version

"""The rewrite strategy on the shared walker, over the re-wrap engine's hand-written fakes: which blobs
it rewrites, skips or leaves to a concurrent writer, and that the report has re-wrap's shape."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from controller.errors import Conflict, PermanentError, TransientError
from controller.ports import BlobItem, RewrapPorts
from controller.rewrap.outcomes import RewrapReport
from controller.rewrap.strategies import STAGING_PREFIX, walker_for
from controller.rewrap.walker import RewrapOptions
from controller.rewrap.work import RewrapMode
from controller.rewrap.wrapping import RsaPublicKeyWrapper
from tests.unit.test_envelope import NEW_KEY_ID, OLD_KEY_ID, old_kek
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

    def rewrite(self, container: str, item: BlobItem) -> None:
        faults = self.faults.get(item.name)
        if faults:
            raise faults.pop(0)
        blob = self.store.blobs[item.name]
        if blob.etag != item.etag:
            raise Conflict(f"blob {item.name}: ETag mismatch")
        self.store.put(item.name, blob.metadata, blob.content, blob.plaintext)
        self.rewritten.append(item.name)


def run(store: FakeBlobStore, rewriter: FakeRewriter, *, dry_run: bool = False) -> RewrapReport:
    wrapper = RsaPublicKeyWrapper(NEW_KEY_ID, rsa_key("new").public_key())
    ports = RewrapPorts(store, FakeUnwrapper(), wrapper, FakeCheckpoint(), rewriter=rewriter)
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
    assert report.counts == {"rewritten": 2, "not_encrypted": 1, "skipped_unknown_key": 1, "skipped_malformed": 1,
                             "failed": 0, "vanished": 0}
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

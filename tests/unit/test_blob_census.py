"""Which key versions wrap the blobs' content keys, counted from real library envelopes."""

import pytest

from controller.blob_census import wrapping_versions
from controller.model import parse_key_id
from controller.vault_policy import VaultPolicy
from tests.unit.test_envelope import VAULT
from tests.unit.test_rewrap_engine import (
    CONTAINER,
    NEW_KEY_ID,
    OLD_KEY_ID,
    FakeBlobStore,
    RsaKek,
    old_kek,
    older_kek,
    rsa_key,
)

pytestmark = pytest.mark.unit


def test_counts_blobs_per_version_of_the_key_over_every_page():
    store = FakeBlobStore(page_size=2)
    for index in range(3):
        store.put_encrypted(f"old-{index}", b"x", old_kek(), "2.0")
    store.put_encrypted("older", b"x", older_kek(), "1.0")
    store.put_encrypted("new", b"x", RsaKek(NEW_KEY_ID, rsa_key("new"), "RSA-OAEP"), "2.0")
    store.put("plain", {"owner": "someone"})
    store.put("broken", {"encryptiondata": "{not json"})
    store.put_encrypted("other-key", b"x", RsaKek(OLD_KEY_ID.replace("blob-kek", "other-kek"), rsa_key("o"),
                                                  "RSA-OAEP"), "2.0")
    counts = wrapping_versions(store, [CONTAINER], parse_key_id(OLD_KEY_ID).versionless,
                               policy=VaultPolicy.of([VAULT]))
    assert dict(counts) == {"1" * 32: 3, "0" * 32: 1, "2" * 32: 1}  # other keys, plain and broken: not counted
    assert len(store.list_markers) == 4  # 8 blobs, 2 per page

"""Which key versions wrap the content keys of a container's client-side-encrypted blobs.

Counted from the blobs themselves (each blob's ``encryptiondata`` envelope names the key version that
wraps its content key), page by page: this is the evidence a version is still needed by data, and it
is never stale, unlike a record of what a past re-wrap run did.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from controller.envelope import find_envelope, parse_envelope
from controller.errors import InvalidKeyId, MalformedEnvelope
from controller.model import KeyRef
from controller.ports import BlobStore
from controller.vault_policy import VaultPolicy


def wrapping_versions(
    store: BlobStore, containers: Iterable[str], key: KeyRef, *, policy: VaultPolicy
) -> Counter[str]:
    """Blobs per version of ``key`` wrapping their content key, over ``containers`` of one account.

    Blobs without an envelope, wrapped by another key, or whose envelope cannot be read are not
    counted here (the re-wrap report lists the unreadable ones).
    """
    counts: Counter[str] = Counter()
    for container in containers:
        marker: str | None = None
        while True:
            page = store.list_blobs(container, prefix=None, marker=marker)
            for item in page.items:
                try:
                    found = find_envelope(item.metadata)
                    if found is None:
                        continue
                    wrapped_by = policy.parse_key_id(parse_envelope(found[1]).wrapped_key.key_id)
                except (MalformedEnvelope, InvalidKeyId):
                    continue
                if wrapped_by.same_key(key) and wrapped_by.version:
                    counts[wrapped_by.version] += 1
            if page.next_marker is None:
                break
            marker = page.next_marker
    return counts

"""Faults: forced adoption, a re-wrap and a rewrite complete while the services fail as Azure's do.

A sandbox of its own, started with ``SANDBOX_FAULTS`` (emulators/faults.py: Azurite behind the storage
fault proxy): one key, its consumers (alternately versionless and pinned with the update policy) and a
container of client-side-encrypted blobs registered for re-wrap (the account's ``cmk-rewrap-containers``
tag). The same work runs twice, fault-free first, then under the issue's faults:

* the key gets a new version and a rewrite of the container onto it is put on the work queue (the
  Functions host frozen meanwhile, so all the work happens under the round's conditions); the key's
  event drives forced adoption of every consumer and the re-wrap of the container through the work
  queue, while the rewrite runs (the two race on the same blobs, as ETags allow);
* the faults: the vault answers 30% of its requests 429 (``Retry-After``), 5% 500, drops 3% of its
  connections (before or after acting) and adds latency; ARM answers writes 409 and 412 and any request
  5xx; Azurite's blob, queue and table answers are 503 ServerBusy, 500, or dropped.

Promise: the round completes (bounded: within the deadline, with no work item poisoned); every consumer
ends on the key's latest version (pinned ones pinned to it, versionless ones versionless); every blob
decrypts to its original plaintext (checksums taken before the first round), wrapped by the latest
version, and the rewrite gave each a new content key; no staging copy is left; the work queue is empty.
Figures: the faults injected per service and kind (each one a request its client repeated), the function
invocations that failed and were retried, and each round's wall time (fault-free and faulted, measured in
this test, on a shared machine).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import pytest
from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.storage.blob import ContainerClient

from controller.rewrap.strategies import STAGING_PREFIX
from controller.rewrap.work import RewrapMode, RewrapWorkItem
from emulators import sandbox
from emulators.faults import FAULTS_ENV, STANDBY
from emulators.seed import Seeder
from tests.reliability.conftest import (
    RESOURCE_GROUP,
    REWRAP_ACCOUNT,
    REWRAP_CONTAINER,
    Estate,
    Size,
    key_name,
    reliability_scenario,
)

pytestmark = pytest.mark.reliability

#: The issue's faults (vault 30% 429, 5% 500, resets and latency; ARM 409/412 and 5xx; Azurite behind the
#: fault proxy), seeded.
FAULTS = ",".join([
    "vault.429=0.3", "vault.500=0.05", "vault.reset=0.02", "vault.lost-answer=0.01", "vault.latency=0.02",
    "arm.409=0.05", "arm.412=0.05", "arm.500=0.03", "arm.503=0.03", "arm.latency=0.01",
    "storage.503=0.05", "storage.500=0.02", "storage.reset=0.02", "storage.lost-answer=0.01",
    "seed=1403",
])
#: Consumers of the key and blobs in the container, per size.
SCALE = {"ci": (2, 3), "full": (20, 60)}
KEY = key_name(0)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Round:
    seconds: float
    faults: dict[str, Any]
    failed_invocations: int
    #: Blobs whose content key the rewrite did not replace.
    not_rewritten: list[str]
    #: Each blob's content key at the round's end: the next round's starting point (read once for both).
    content_keys: dict[str, bytes]


@pytest.fixture(scope="module")
def faulty_estate(size: Size, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Estate]:
    consumers, blobs = SCALE[size.name]
    spec = reliability_scenario(replace(size, keys=1, consumers=consumers, encrypted_blobs=blobs))
    directory = tmp_path_factory.mktemp("faults-sandbox")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(FAULTS_ENV, STANDBY)  # the proxy in front of Azurite; the faults come on per round
        started = sandbox.start_detached(directory, timeout=180)
    try:
        seeded = Seeder(directory, spec, log=lambda _text: None).run()
        yield Estate(directory, sandbox.read_state(directory) or started, spec, seeded)
    finally:
        sandbox.stop(directory)


def patiently(read: Callable[[], T]) -> T | None:
    """The observer's own read: under faults it may fail past its client's retries; then it saw nothing."""
    try:
        return read()
    except AzureError:
        return None


def version_of(identifier: str | None) -> str:
    return (identifier or "").rstrip("/").rsplit("/", 1)[-1]


def envelopes(container: ContainerClient) -> dict[str, dict[str, Any]]:
    return {blob.name: json.loads(blob.metadata["encryptiondata"])["WrappedContentKey"]
            for blob in container.list_blobs(include=["metadata"]) if "encryptiondata" in (blob.metadata or {})}


def plaintexts(estate: Estate, container: ContainerClient) -> dict[str, str]:
    """Every blob decrypted client-side (its content key unwrapped by the vault): name -> sha256 of the plaintext."""
    container.require_encryption = True
    container.key_resolver_function = estate.clients.key_wrapper
    return {blob.name: hashlib.sha256(container.download_blob(blob.name).readall()).hexdigest()
            for blob in container.list_blobs()}


def consumers_converged(estate: Estate, latest: str) -> bool:
    pinned = {spec["name"] for spec in estate.spec["storageAccounts"] if spec["cmk"]["pinned"]}
    names = {spec["name"] for spec in estate.spec["storageAccounts"]}
    accounts = patiently(lambda: list(estate.clients.storage.storage_accounts.list_by_resource_group(RESOURCE_GROUP)))
    if accounts is None:
        return False
    found = {account.name: account.encryption.key_vault_properties for account in accounts if account.name in names}
    return len(found) == len(names) and all(
        version_of(properties.current_versioned_key_identifier) == latest
        and (properties.key_version or "") == (latest if name in pinned else "")
        for name, properties in found.items())


#: How often the observer looks (each look is one listing of the accounts, or of the blobs, or the queue's
#: properties): often enough that a round's wall time is the controller's, not the observer's.
POLL_SECONDS = 0.2


def wait_for(what: str, done: Callable[[], bool], deadline: float, seen: Callable[[], object] = lambda: None) -> None:
    while not done():
        assert time.monotonic() < deadline, f"{what}: not done in time (last seen: {seen()})"
        time.sleep(POLL_SECONDS)


def failed_invocations(log: str) -> int:
    return log.count("' (Failed, ")


def content_keys(estate: Estate, found: dict[str, dict[str, Any]]) -> dict[str, bytes]:
    """Each blob's content key, unwrapped by the vault (the test's own reads, with the faults off)."""
    return {name: estate.clients.crypto_client(wrapped["KeyId"]).unwrap_key(
        wrapped["Algorithm"], base64.b64decode(wrapped["EncryptedKey"])).key for name, wrapped in found.items()}


def run_round(estate: Estate, container: ContainerClient, old: dict[str, bytes], faults: str | None,
              deadline_seconds: float) -> Round:
    """Rotate the key and put a rewrite of the container on the work queue (the host frozen), switch the
    round's faults on, and wait until every consumer adopted the new version, every blob is wrapped by it
    and the work queue is empty; then check that the rewrite gave every blob a new content key (``old``:
    each blob's content key before the round)."""
    keys = estate.clients.key_client(estate.vault_uri)
    host = int(estate.state["children"]["functions"])
    log_offset = estate.host_log_size()
    blobs = set(old)
    os.kill(host, signal.SIGSTOP)
    try:
        latest = keys.rotate_key(KEY).properties.version
        key_id = f"{estate.vault_origin}/keys/{KEY}/{latest}"
        rewrite = RewrapWorkItem(REWRAP_ACCOUNT, REWRAP_CONTAINER, None, key_id, mode=RewrapMode.REWRITE)
        estate.send_work(json.dumps(rewrite.to_message()).encode())
        if faults is not None:
            estate.control("PUT", "/_sandbox/faults", {"faults": faults})
    finally:
        os.kill(host, signal.SIGCONT)
    started = time.perf_counter()
    deadline = time.monotonic() + deadline_seconds

    last: dict[str, str] = {}

    def all_wrapped_by_latest() -> bool:
        found = patiently(lambda: envelopes(container))
        if found is not None:
            last.clear()
            last.update({name: version_of(wrapped["KeyId"]) for name, wrapped in found.items()})
        return found is not None and set(found) == blobs and all(
            version_of(wrapped["KeyId"]) == latest for wrapped in found.values())

    wait_for("forced adoption", lambda: consumers_converged(estate, latest), deadline)
    wait_for("the re-wrap fan-out", lambda: "re-wrap fanned out" in estate.host_log_since(log_offset), deadline)
    wait_for("re-wrap and rewrite", all_wrapped_by_latest, deadline, lambda: (latest, last))
    wait_for("the work queue to drain",
             lambda: patiently(lambda: estate.queue().get_queue_properties().approximate_message_count) == 0, deadline)
    seconds = time.perf_counter() - started
    report = estate.control("GET", "/_sandbox/faults")["services"]
    if faults is not None:
        estate.control("PUT", "/_sandbox/faults", {"faults": "off"})
    new = content_keys(estate, envelopes(container))
    return Round(seconds, report, failed_invocations(estate.host_log_since(log_offset)),
                 not_rewritten=sorted(name for name in blobs if old[name] == new[name]), content_keys=new)


def test_adoption_rewrap_and_rewrite_complete_under_service_faults_losing_nothing(
        faulty_estate: Estate, size: Size, report_figures):
    estate = faulty_estate
    container = estate.clients.blob_service(RESOURCE_GROUP, REWRAP_ACCOUNT).get_container_client(REWRAP_CONTAINER)
    checksums = plaintexts(estate, container)
    deadline = 120 if size.name == "ci" else 1800

    seeded = content_keys(estate, envelopes(container))
    assert set(seeded) == set(checksums)
    fault_free = run_round(estate, container, seeded, None, deadline)
    faulted = run_round(estate, container, fault_free.content_keys, FAULTS, deadline)

    latest = estate.clients.key_client(estate.vault_uri).get_key(KEY).properties.version
    after = plaintexts(estate, container)
    names = {blob.name for blob in container.list_blobs()}
    try:
        poisoned = estate.poison_queue().get_queue_properties().approximate_message_count
    except ResourceNotFoundError:  # nothing was ever poisoned
        poisoned = 0
    lost = sorted(set(checksums) - set(after))
    corrupted = sorted(name for name in set(checksums) & set(after) if after[name] != checksums[name])
    injected = {service: report["injected"] for service, report in faulted.faults.items() if report["injected"]}
    report_figures({
        "consumers": len(estate.spec["storageAccounts"]), "blobs": len(checksums), "faults": FAULTS,
        "requests_seen": {service: report["requests"] for service, report in faulted.faults.items()},
        "faults_injected": injected, "retries": sum(sum(kinds.values()) for kinds in injected.values()),
        "failed_invocations_retried": faulted.failed_invocations,
        "failed_invocations_fault_free": fault_free.failed_invocations,
        "seconds_fault_free": round(fault_free.seconds, 1), "seconds_faulted": round(faulted.seconds, 1),
        "wall_time_ratio": round(faulted.seconds / fault_free.seconds, 2),
        "poisoned": poisoned, "lost": len(lost), "corrupted": len(corrupted),
        "not_rewritten": len(fault_free.not_rewritten) + len(faulted.not_rewritten),
        "staging_left": len([name for name in names if name.startswith(STAGING_PREFIX)]),
    })
    assert sum(sum(kinds.values()) for kinds in injected.values()) > 0, "no fault was injected: nothing was proven"
    assert lost == [] and corrupted == []
    assert fault_free.not_rewritten == [] and faulted.not_rewritten == []
    assert consumers_converged(estate, latest)
    assert names == set(checksums)  # no staging copy or stray blob left
    assert poisoned == 0

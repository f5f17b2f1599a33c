"""Crashes: the Functions host and ``cmkctl rewrap`` are SIGKILLed at seeded random instants, and the
controller picks up where they died.

Three kinds of trial, each on a fresh key version:

* **adoption**: a key of the estate gets a new version; the host is killed while Event Grid's delivery
  is being handled (forced adoption: versionless accounts pinned, verified, restored; pinned ones
  updated). The sandbox restarts the host, as Azure restarts a crashed worker.
* **cmkctl**: ``cmkctl rewrap`` (re-wrap or rewrite mode) is killed once a random number of a container's
  client-side-encrypted blobs are on the new version, then run again.
* **scale-out**: ``cmkctl rewrap --scale-out`` hands the job to the host's workers, which are killed
  once a random number of blobs are done; the restarted host finishes the job.

Promise, after each trial: every consumer of the key converged (pinned ones on the new version,
versionless ones versionless again: none left pinned by the crash); every blob decrypts to the
plaintext it was written with (checksums taken before any trial) and is wrapped by the new version;
no rewrite staging copy is left; no work item was lost: a scale-out job lists and finishes every page
and counts every blob once, and nothing went to the poison queue.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import ContainerClient

from controller.rewrap.strategies import STAGING_PREFIX
from emulators import sandbox
from tests.reliability.conftest import (
    RESOURCE_GROUP,
    Estate,
    Size,
    account_name,
    key_name,
    kill_host,
    wait_for_host_restart,
)

pytestmark = pytest.mark.reliability

PROJECT_ROOT = Path(__file__).resolve().parents[2]
#: Trials of each kind.
TRIALS = {"ci": {"adoption": 1, "cmkctl": 1, "scale_out": 1}, "full": {"adoption": 20, "cmkctl": 20, "scale_out": 20}}
#: Client-side-encrypted blobs in the crash scenario's own container.
BLOBS = {"ci": 12, "full": 40}
CONTAINER = "crashdocs"
#: ARM's latency (seconds per request, +-50%) while the host is killed during forced adoption: the
#: emulated ARM answers in milliseconds, so a versionless account is pinned for well under a second
#: between its pin and its restore and the kills never met one. Azure takes about a second per storage
#: account write; this makes the window between a pin and its restore seconds long, as it is there.
ADOPTION_ARM_LATENCY_SECONDS = 0.6
#: The host is killed this long (uniformly drawn) after the new version is created: Event Grid delivers at
#: once and a forced adoption of a handful of accounts takes a few seconds at that latency.
ADOPTION_KILL_WINDOW_SECONDS = 4.0
CONVERGE_SECONDS = 180


def version_of(identifier: str | None) -> str:
    return (identifier or "").rstrip("/").rsplit("/", 1)[-1]


class Consumers:
    """The storage accounts of one key, as ARM holds them."""

    def __init__(self, estate: Estate, key: str) -> None:
        self.estate = estate
        self.pinned = {spec["name"]: spec["cmk"]["pinned"] for spec in estate.spec["storageAccounts"]
                       if spec["cmk"]["key"] == key}

    def read(self) -> dict[str, Any]:
        return {account.name: account.encryption.key_vault_properties
                for account in self.estate.clients.storage.storage_accounts.list_by_resource_group(RESOURCE_GROUP)
                if account.name in self.pinned}

    def converged(self, latest: str) -> bool:
        return all(version_of(properties.current_versioned_key_identifier) == latest
                   and (properties.key_version or "") == (latest if self.pinned[name] else "")
                   for name, properties in self.read().items())

    def pinned_by_accident(self) -> list[str]:
        return sorted(name for name, properties in self.read().items()
                      if not self.pinned[name] and properties.key_version)


class CrashContainer:
    """The scenario's container of client-side-encrypted blobs and the checksums of their plaintexts."""

    def __init__(self, estate: Estate, account: str, key: str, count: int, chooser: random.Random) -> None:
        self.estate, self.account, self.key = estate, account, key
        self.client: ContainerClient = estate.clients.blob_service(RESOURCE_GROUP, account).get_container_client(
            CONTAINER)
        self.client.create_container()
        current = estate.clients.key_client(estate.vault_uri).get_key(key).id
        self.client.require_encryption = True
        self.client.key_encryption_key = estate.clients.key_wrapper(current)
        self.client.encryption_version = "2.0"
        self.client.key_resolver_function = estate.clients.key_wrapper
        self.checksums: dict[str, str] = {}
        for index in range(count):
            body = chooser.randbytes(chooser.randint(200, 5000))
            name = f"doc-{index:03d}.bin"
            self.client.upload_blob(name, body, overwrite=True)
            self.checksums[name] = hashlib.sha256(body).hexdigest()

    def wrapping_versions(self) -> dict[str, str]:
        """Blob name -> the key version wrapping its content key; staging copies included."""
        found = {}
        for blob in self.client.list_blobs(include=["metadata"]):
            envelope = (blob.metadata or {}).get("encryptiondata")
            found[blob.name] = version_of(json.loads(envelope)["WrappedContentKey"]["KeyId"]) if envelope else ""
        return found

    def on(self, version: str) -> int:
        return sum(1 for name, wrapped in self.wrapping_versions().items()
                   if wrapped == version and name in self.checksums)

    def check(self, version: str) -> int:
        """Every blob decrypts to its original plaintext and is wrapped by ``version``; no staging copy left."""
        wrapped = self.wrapping_versions()
        assert [name for name in wrapped if name.startswith(STAGING_PREFIX)] == []
        assert set(wrapped) == set(self.checksums)
        assert {name for name, on in wrapped.items() if on != version} == set()
        for name, checksum in self.checksums.items():
            assert hashlib.sha256(self.client.download_blob(name).readall()).hexdigest() == checksum, name
        return len(self.checksums)

    def cmkctl(self, *extra: str) -> list[str]:
        endpoint = self.estate.seeded["storageAccounts"][self.account]["blobEndpoint"]
        return [sys.executable, "-m", "controller.cli", "rewrap", "--account", self.account, "--container", CONTAINER,
                "--key", f"{self.estate.vault_origin}/{self.key}", "--blob-endpoint", endpoint, "--no-progress",
                *extra]


def wait_until(condition: Callable[[], bool], what: str, timeout: float = CONVERGE_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,  # noqa: S603
                          timeout=CONVERGE_SECONDS, check=False)


def host_restarts(estate: Estate) -> int:
    return int((sandbox.read_state(estate.directory) or {}).get("functionsRestarts", 0))


def test_killed_hosts_and_cli_runs_leave_nothing_pinned_unreadable_or_lost(estate: Estate, size: Size,
                                                                           report_figures):
    chooser = random.Random(1402)
    trials = TRIALS[size.name]
    keys = estate.clients.key_client(estate.vault_uri)
    env = dict(os.environ) | estate.values
    # The estate's key with the most consumers is forced-adopted; the last key wraps the container's blobs.
    adopted_key, wrapping_key = key_name(0), key_name(size.keys - 1)
    container = CrashContainer(estate, account_name(1), wrapping_key, BLOBS[size.name], chooser)
    consumers = Consumers(estate, adopted_key)
    poison_before = estate.poison_queue().get_queue_properties().approximate_message_count
    log_offset = estate.host_log_size()
    figures: dict[str, dict[str, Any]] = {}

    def restart_after_kill() -> tuple[float, int]:
        killed_at = time.monotonic()
        killed = kill_host(estate)
        wait_for_host_restart(estate, killed)
        return killed_at, killed

    # -- the host, during forced adoption ---------------------------------------------------------------
    adoption: dict[str, list[Any]] = {"kill_instants": [], "recovery_seconds": [], "pinned_at_kill": []}
    estate.control("PUT", "/_sandbox/faults", {"faults": f"arm.latency={ADOPTION_ARM_LATENCY_SECONDS},seed=1402"})
    try:
        for trial in range(trials["adoption"]):
            # Every other trial waits for a versionless account to be seen pinned (mid forced adoption), then
            # kills at once; the others kill at a random instant.
            mid_adoption = trial % 2 == 0
            instant = chooser.uniform(0.0, ADOPTION_KILL_WINDOW_SECONDS)
            rotated = time.monotonic()
            latest = keys.rotate_key(adopted_key).properties.version
            while (mid_adoption and not consumers.pinned_by_accident()
                   and time.monotonic() - rotated < CONVERGE_SECONDS):
                time.sleep(0.02)
            if not mid_adoption:
                time.sleep(max(0.0, instant - (time.monotonic() - rotated)))
            killed_at = time.monotonic()
            killed = kill_host(estate)
            # What the dead host left: versionless accounts still pinned, read before anything restarts.
            adoption["pinned_at_kill"].append(len(consumers.pinned_by_accident()))
            wait_for_host_restart(estate, killed)
            adoption["kill_instants"].append(round(killed_at - rotated, 2))
            wait_until(lambda latest=latest: consumers.converged(latest), "the consumers did not converge")
            adoption["recovery_seconds"].append(round(time.monotonic() - killed_at, 1))
            assert consumers.pinned_by_accident() == []
    finally:
        estate.control("PUT", "/_sandbox/faults", {"faults": "off"})
    figures["adoption"] = {"trials": trials["adoption"], "consumers": len(consumers.pinned),
                           "arm_latency_seconds": ADOPTION_ARM_LATENCY_SECONDS, **adoption}
    # The scenario proves recovery from a kill between a pin and its restore only if kills met such pins.
    if size.name == "full":
        assert sum(1 for pinned in adoption["pinned_at_kill"] if pinned) >= trials["adoption"] // 4, adoption

    # -- cmkctl rewrap / rewrite, killed and run again ----------------------------------------------------
    cli: dict[str, list[Any]] = {"modes": [], "kill_instants": [], "blobs_done_at_kill": [], "recovery_seconds": []}
    blobs_checked = 0
    for trial in range(trials["cmkctl"]):
        mode = ("rewrap", "rewrite")[trial % 2]
        latest = keys.rotate_key(wrapping_key).properties.version
        target = chooser.randint(1, len(container.checksums) - 1)
        started = time.monotonic()
        process = subprocess.Popen(container.cmkctl("--mode", mode), cwd=PROJECT_ROOT, env=env,  # noqa: S603
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        while process.poll() is None and container.on(latest) < target:
            time.sleep(0.05)
        killed_mid_run = process.poll() is None
        if killed_mid_run:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        cli["modes"].append(mode)
        cli["kill_instants"].append(round(time.monotonic() - started, 2) if killed_mid_run else None)
        cli["blobs_done_at_kill"].append(container.on(latest))
        again = time.monotonic()
        rerun = run(container.cmkctl("--mode", mode), env)
        cli["recovery_seconds"].append(round(time.monotonic() - again, 1))
        assert rerun.returncode == 0, rerun.stderr[-2000:] + rerun.stdout[-2000:]
        blobs_checked += container.check(latest)
    figures["cmkctl"] = {"trials": trials["cmkctl"], "blobs": len(container.checksums), **cli}

    # -- the host's scale-out workers ----------------------------------------------------------------------
    scale: dict[str, list[Any]] = {"modes": [], "kill_instants": [], "blobs_done_at_kill": [], "recovery_seconds": [],
                                   "takeovers": []}
    for trial in range(trials["scale_out"]):
        mode = ("rewrite", "rewrap")[trial % 2]
        latest = keys.rotate_key(wrapping_key).properties.version
        target = chooser.randint(1, len(container.checksums) - 1)
        started = time.monotonic()
        enqueued = run(container.cmkctl("--mode", mode, "--scale-out"), env)
        assert enqueued.returncode == 0, enqueued.stderr[-2000:]
        while container.on(latest) < target and time.monotonic() - started < CONVERGE_SECONDS:
            time.sleep(0.05)
        killed_at, _ = restart_after_kill()
        scale["modes"].append(mode)
        scale["kill_instants"].append(round(killed_at - started, 2))
        scale["blobs_done_at_kill"].append(container.on(latest))
        followed = run(container.cmkctl("--mode", mode, "--scale-out", "--follow", "--interval", "0.5"), env)
        scale["recovery_seconds"].append(round(time.monotonic() - killed_at, 1))
        assert followed.returncode == 0, followed.stderr[-2000:] + followed.stdout[-2000:]
        [job] = json.loads(followed.stdout)
        assert job["finished"] and job["pages_done"] == job["pages_listed"] and job["pages_failed"] == 0, job
        assert sum(job["counts"].values()) == len(container.checksums), job  # every blob counted once
        scale["takeovers"].append(job["takeovers"])
        blobs_checked += container.check(latest)
    figures["scale_out"] = {"trials": trials["scale_out"], **scale}

    log = estate.host_log_since(log_offset)
    poison_after = estate.poison_queue().get_queue_properties().approximate_message_count
    recoveries = adoption["recovery_seconds"] + cli["recovery_seconds"] + scale["recovery_seconds"]
    report_figures({
        **figures, "blobs_checked": blobs_checked, "items_requeued": log.count("delivered again (attempt"),
        "poisoned": poison_after - poison_before, "host_restarts": host_restarts(estate),
        "recovery_seconds_median": round(statistics.median(recoveries), 1),
        "recovery_seconds_max": max(recoveries),
    })
    assert poison_after == poison_before

"""Re-wrap benchmark: throughput against same-run baselines, Key Vault calls per blob, throttling, memory.

    .venv/bin/python bench/rewrap_bench.py [--quick] [--concurrency N]

Starts its own Azurite (in memory) and emulated Key Vault (a separate process, so the vault's crypto
does not share this process's GIL with the clients). Blobs are written by the unmodified
azure-storage-blob client (encryption 2.0) with a KEK backed by the emulated vault. Every figure is a
median of repeated runs, and every ratio compares two measurements taken in this same run on this
same machine:

* rewrap_vs_floor: re-wrap throughput (list + unwrap + local wrap + conditional Set Blob Metadata)
  over the floor: the same number of plain set_blob_metadata calls at the same concurrency.
* rewrap_vs_naive_rewrite_1mib: re-wrap throughput of 1 MiB blobs over the naive rewrite (download,
  decrypt, re-encrypt with a new content key, upload) of 1 MiB blobs.
* kv_calls_per_blob: every request the vault counted during the re-wrap runs, over blobs re-wrapped.
* throttled: the vault throttled to Azure's RSA-2048 software limit (4,000 / 10 s), then to a
  scaled-down limit (the 2 shared cores here cannot push 400 unwraps/s): unwraps per second in whole
  windows over the limit, and failed blobs.
* memory: tracemalloc peak of the engine over 2,000 and 20,000 synthesized blobs (a fake BlobStore
  that builds pages of 1,000 blobs on demand, a fake unwrapper; the real engine, envelope parsing
  and RSA wrapping). Uploading 20,000 blobs to Azurite would dominate the run and measure Azurite.

Prints progress to stderr and ONE JSON line to stdout at the end.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import urllib.request
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ssl  # noqa: E402

from azure.core import MatchConditions  # noqa: E402
from azure.core.exceptions import ServiceRequestError, ServiceResponseError  # noqa: E402
from azure.keyvault.keys import KeyClient  # noqa: E402
from azure.storage.blob import BlobServiceClient, ContainerClient  # noqa: E402

from controller.adapters.blob_store import AzureBlobStore, blob_service_client  # noqa: E402
from controller.adapters.http_transport import pooled_transport  # noqa: E402
from controller.adapters.key_vault_crypto import (  # noqa: E402
    VaultClients,
    VaultKeyEncryptionKey,
    VaultKeyUnwrapper,
    fetch_public_wrapper,
    key_resolver,
)
from controller.envelope import WrappedContentKey, parse_envelope  # noqa: E402
from controller.errors import Unreachable  # noqa: E402
from controller.ports import BlobItem, BlobPage, KeyUnwrapper, RewrapPorts, RewrapProgress  # noqa: E402
from controller.rewrap.outcomes import RewrapReport  # noqa: E402
from controller.rewrap.strategies import walker_for  # noqa: E402
from controller.rewrap.walker import ContainerWalker, RewrapOptions  # noqa: E402
from controller.rewrap.work import RewrapMode  # noqa: E402
from controller.rewrap.wrapping import RsaPublicKeyWrapper  # noqa: E402
from controller.vault_policy import VaultPolicy  # noqa: E402
from emulators.azurite import Azurite  # noqa: E402
from emulators.keyvault import SandboxCredential  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
import rewrap_scale_out  # noqa: E402

OID = "b0000000-0000-0000-0000-00000000be4c"
VAULT = "kv-bench"
KEY = "bench-kek"
REPEATS = 3
AZURE_RSA2048_LIMIT = 4000  # per vault per 10 s, software keys
#: The throttle's window in the scale-out runs (several whole windows per run).
SCALE_WINDOW = 5.0
#: Azurite's start-up on the shared machine at a load average of 40 takes longer than its default 30 s.
AZURITE_STARTUP_S = 120.0


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the emulated vault in its own process ---------------------------------------------------------


@dataclass
class Vault:
    process: subprocess.Popen[str]
    ca_path: str
    admin_url: str
    uri: str

    @property
    def origin(self) -> str:
        return self.uri.rstrip("/")

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(  # noqa: S310 - the local admin origin
            self.admin_url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        context = ssl.create_default_context(cafile=self.ca_path)
        with urllib.request.urlopen(request, context=context, timeout=30) as response:  # noqa: S310
            raw = response.read()
        return json.loads(raw) if raw else None

    def counters(self) -> dict[str, Any]:
        result: dict[str, Any] = self.admin("GET", f"/vaults/{VAULT}/counters")
        return result

    def reset_counters(self) -> None:
        self.admin("DELETE", f"/vaults/{VAULT}/counters")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_vault(directory: Path) -> Vault:
    config = {
        "directory": str(directory),
        "vaults": [
            {"name": VAULT, "properties": {"accessPolicies": [{"objectId": OID, "permissions": {"keys": ["all"]}}]}}
        ],
    }
    config_path = directory / "config.json"
    config_path.write_text(json.dumps(config), encoding="utf-8")
    process = subprocess.Popen(  # noqa: S603 - our own module
        [sys.executable, "-m", "emulators.keyvault", str(config_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    summary = json.loads(process.stdout.readline())
    return Vault(process, summary["caPath"], summary["adminUrl"], summary["vaults"][VAULT]["uri"])


# --- the world ------------------------------------------------------------------------------------


@dataclass
class World:
    vault: Vault
    connection_string: str
    concurrency: int

    def vault_clients(self) -> VaultClients:
        return VaultClients(
            SandboxCredential(OID),
            policy=VaultPolicy.of([self.vault.origin]),
            verify_challenge_resource=False,
            transport=pooled_transport(self.concurrency, connection_verify=self.vault.ca_path),
        )

    def key_client(self) -> KeyClient:
        return KeyClient(
            self.vault.uri,
            SandboxCredential(OID),
            verify_challenge_resource=False,
            connection_verify=self.vault.ca_path,
        )

    def new_version(self) -> str:
        key = self.key_client().create_rsa_key(KEY, size=2048)
        assert key.id is not None
        return key.id

    def service(self) -> BlobServiceClient:
        return blob_service_client(connection_string=self.connection_string, connections=self.concurrency)

    def engine(self, target_key_id: str, *, unwrapper: Any = None, page_size: int = 5000) -> ContainerWalker:
        clients = self.vault_clients()
        ports = RewrapPorts(
            store=AzureBlobStore(self.service(), page_size=page_size),
            unwrapper=unwrapper or VaultKeyUnwrapper(clients),
            wrapper=fetch_public_wrapper(clients, target_key_id),
            checkpoint=MemoryCheckpoint(),
        )
        return rewrap_walker(ports, self.vault.origin, self.concurrency)

    def kek(self, key_id: str) -> VaultKeyEncryptionKey:
        clients = self.vault_clients()
        return VaultKeyEncryptionKey(key_id, VaultKeyUnwrapper(clients), wrapper=fetch_public_wrapper(clients, key_id))


class MemoryCheckpoint:
    def __init__(self) -> None:
        self.saved: dict[str, RewrapProgress] = {}

    def load(self, job_id: str) -> RewrapProgress | None:
        return self.saved.get(job_id)

    def save(self, job_id: str, progress: RewrapProgress) -> None:
        self.saved[job_id] = progress


def upload(world: World, container: str, count: int, size: int, key_id: str) -> None:
    kek = world.kek(key_id)
    client = world.service().get_container_client(container)
    client.create_container()
    client.key_encryption_key = kek
    client.encryption_version = "2.0"
    client.require_encryption = True
    body = os.urandom(size)

    def put(index: int) -> None:
        client.get_blob_client(f"b/{index:06d}").upload_blob(body, metadata={"owner": f"app{index % 7}"})

    with ThreadPoolExecutor(world.concurrency) as pool:
        list(pool.map(put, range(count)))


def process_cpu_seconds(pid: int | None) -> float:
    """User + system CPU of a process and its children (Linux /proc), 0 when unknown."""
    if pid is None:
        return 0.0
    total = 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except (OSError, IndexError, ValueError):
        return total
    return total + sum(process_cpu_seconds(int(child)) for child in children)


@dataclass
class CpuMeter:
    """CPU seconds spent by this process, the vault process and Azurite over a measured run."""

    vault_pid: int
    azurite_pid: int | None

    def snapshot(self) -> tuple[float, float, float]:
        return time.process_time(), process_cpu_seconds(self.vault_pid), process_cpu_seconds(self.azurite_pid)

    def per_blob_ms(self, before: tuple[float, float, float], blobs: int) -> dict[str, float]:
        after = self.snapshot()
        names = ("client", "vault", "azurite")
        return {name: round(1000 * (b - a) / blobs, 2) for name, a, b in zip(names, before, after, strict=True)}


CPU: CpuMeter | None = None
CPU_PER_BLOB: dict[str, dict[str, float]] = {}


def timed(run: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = run()
    return time.perf_counter() - started, result


# --- measurements ---------------------------------------------------------------------------------


def once_more_if_dropped(call: Callable[[], Any]) -> None:
    """A floor call, tried once more when the loaded machine drops its connection (as the engine does)."""
    try:
        call()
    except (Unreachable, ServiceRequestError, ServiceResponseError):
        call()


def floor_set_metadata_once(world: World, container: str) -> float:
    """Blobs per second of plain set_blob_metadata calls (the current metadata written back)."""
    client = world.service().get_container_client(container)
    blobs = [(b.name, dict(b.metadata)) for b in client.list_blobs(include=["metadata"])]

    def write(entry: tuple[str, dict[str, str]]) -> None:
        once_more_if_dropped(lambda: client.get_blob_client(entry[0]).set_blob_metadata(entry[1]))

    before = CPU.snapshot() if CPU else None
    with ThreadPoolExecutor(world.concurrency) as pool:
        elapsed, _ = timed(lambda: list(pool.map(write, blobs)))
    if CPU and before:
        CPU_PER_BLOB["floor"] = CPU.per_blob_ms(before, len(blobs))
    return len(blobs) / elapsed


def two_call_floor_once(world: World, container: str) -> float:
    """Blobs per second of the two calls a re-wrap cannot avoid, and nothing else: one unwrap_key
    through the engine's own Key Vault client (VaultKeyUnwrapper) and one set_blob_metadata (the
    current metadata written back). Listing and envelope parsing happen before the clock starts."""
    client = world.service().get_container_client(container)
    blobs = []
    for blob in client.list_blobs(include=["metadata"]):
        wrapped = parse_envelope(blob.metadata["encryptiondata"]).wrapped_key
        blobs.append((blob.name, dict(blob.metadata), wrapped))
    unwrapper = VaultKeyUnwrapper(world.vault_clients())
    unwrapper.unwrap(blobs[0][2].key_id, blobs[0][2].algorithm, blobs[0][2].encrypted_key)  # key fetched once

    def both(entry: tuple[str, dict[str, str], WrappedContentKey]) -> None:
        name, metadata, wrapped = entry
        once_more_if_dropped(lambda: unwrapper.unwrap(wrapped.key_id, wrapped.algorithm, wrapped.encrypted_key))
        once_more_if_dropped(lambda: client.get_blob_client(name).set_blob_metadata(metadata))

    before = CPU.snapshot() if CPU else None
    with ThreadPoolExecutor(world.concurrency) as pool:
        elapsed, _ = timed(lambda: list(pool.map(both, blobs)))
    if CPU and before:
        CPU_PER_BLOB["two_call_floor"] = CPU.per_blob_ms(before, len(blobs))
    return len(blobs) / elapsed


def rewrap_once(world: World, container: str) -> tuple[float, float, RewrapReport]:
    """Blobs/s of one re-wrap onto a fresh version, and the vault's requests per blob."""
    target = world.new_version()
    engine = world.engine(target)  # fetches the target's public key: once per job, not counted
    world.vault.reset_counters()
    before = CPU.snapshot() if CPU else None
    elapsed, report = timed(lambda: engine.run(container))
    if CPU and before:
        CPU_PER_BLOB[f"rewrap_{container}"] = CPU.per_blob_ms(before, report.blobs)
    counters = world.vault.counters()
    rewrapped = report.counts["rewrapped"]
    assert rewrapped == report.blobs and not report.progress.problems, report.as_json()
    return rewrapped / elapsed, counters["total"] / rewrapped, report


def floors_and_rewrap(world: World, container: str) -> dict[str, float]:
    """One-call floor, two-call floor and the engine, interleaved run by run (the machine is shared:
    a load spike then hits all three alike); medians."""
    one_call, two_call, engine, calls = [], [], [], []
    for _ in range(REPEATS):
        one_call.append(floor_set_metadata_once(world, container))
        two_call.append(two_call_floor_once(world, container))
        rate, per_blob, _ = rewrap_once(world, container)
        engine.append(rate)
        calls.append(per_blob)
    return {
        "one_call": statistics.median(one_call),
        "two_call": statistics.median(two_call),
        "engine": statistics.median(engine),
        "engine_vs_two_call_each_run": [round(e / t, 3) for e, t in zip(engine, two_call, strict=True)],
        "kv_calls_per_blob": max(calls),
    }


def rewrap_runs(world: World, container: str) -> float:
    """Median blobs/s of re-wraps onto fresh versions."""
    return statistics.median(rewrap_once(world, container)[0] for _ in range(REPEATS))


def naive_rewrite_runs(world: World, container: str, count: int) -> float:
    """Median blobs/s of download + decrypt + re-encrypt (new content key) + conditional upload."""
    rates = []
    clients = world.vault_clients()
    resolver = key_resolver(VaultKeyUnwrapper(clients))
    for _ in range(REPEATS):
        target = world.new_version()
        kek = VaultKeyEncryptionKey(
            target, VaultKeyUnwrapper(clients), wrapper=fetch_public_wrapper(clients, target)
        )
        reader = world.service().get_container_client(container)
        reader.key_resolver_function = resolver
        reader.require_encryption = True
        writer = world.service().get_container_client(container)
        writer.key_encryption_key = kek
        writer.encryption_version = "2.0"
        writer.require_encryption = True
        names = [f"b/{index:06d}" for index in range(count)]

        def rewrite(name: str, reader: ContainerClient = reader, writer: ContainerClient = writer) -> None:
            once_more_if_dropped(lambda: rewrite_once(name, reader, writer))

        def rewrite_once(name: str, reader: ContainerClient, writer: ContainerClient) -> None:
            downloader = reader.get_blob_client(name).download_blob()
            data = downloader.readall()
            properties = downloader.properties
            writer.get_blob_client(name).upload_blob(
                data,
                overwrite=True,
                metadata={k: v for k, v in properties.metadata.items() if k != "encryptiondata"},
                etag=properties.etag,
                match_condition=MatchConditions.IfNotModified,
            )

        before = CPU.snapshot() if CPU else None
        with ThreadPoolExecutor(world.concurrency) as pool:
            elapsed, _ = timed(lambda pool=pool, rewrite=rewrite, names=names: list(pool.map(rewrite, names)))
        if CPU and before:
            CPU_PER_BLOB[f"naive_rewrite_{container}"] = CPU.per_blob_ms(before, count)
        rates.append(count / elapsed)
    return statistics.median(rates)


class TimedUnwrapper:
    """Records when each successful unwrap returned (for rates over whole throttling windows)."""

    def __init__(self, inner: VaultKeyUnwrapper) -> None:
        self._inner = inner
        self.times: list[float] = []
        self._lock = threading.Lock()

    def unwrap(self, key_id: str, algorithm: str, wrapped: bytes) -> bytes:
        payload = self._inner.unwrap(key_id, algorithm, wrapped)
        with self._lock:
            self.times.append(time.monotonic())
        return payload


def throttled_run(world: World, container: str, *, limit: int, window: float) -> dict[str, Any]:
    world.vault.admin(
        "PUT",
        f"/vaults/{VAULT}/throttling",
        {"enabled": True, "windowSeconds": window, "limits": {"RSA-2048": {"software": limit}}},
    )
    try:
        target = world.new_version()
        unwrapper = TimedUnwrapper(VaultKeyUnwrapper(world.vault_clients()))
        engine = world.engine(target, unwrapper=unwrapper)
        world.vault.reset_counters()
        started = time.monotonic()
        elapsed, report = timed(lambda: engine.run(container))
        counters = world.vault.counters()
    finally:
        world.vault.admin("PUT", f"/vaults/{VAULT}/throttling", {"enabled": False})
    limit_rate = limit / window
    whole_windows = int(elapsed // window)
    if whole_windows >= 1:
        # Rate over whole windows from the start: the burst the limit allows at the start of each
        # window is counted once per window, as it is in the service.
        span = whole_windows * window
        in_span = sum(1 for t in unwrapper.times if t - started < span)
        achieved = in_span / span
    else:
        achieved = len(unwrapper.times) / elapsed
    busiest = max(
        (sum(1 for u in unwrapper.times if t <= u < t + window) for t in unwrapper.times), default=0
    )
    failed = report.counts["failed"] + report.counts["skipped_malformed"] + report.counts["skipped_unknown_key"]
    return {
        "limit_per_10s" if window == 10 else f"limit_per_{window:g}s": limit,
        "limit_per_s": round(limit_rate, 1),
        "blobs": report.blobs,
        "elapsed_s": round(elapsed, 2),
        "achieved_per_s": round(achieved, 1),
        "achieved_vs_limit": round(achieved / limit_rate, 3),
        "busiest_window_unwraps": busiest,
        "throttled_responses": counters["throttled"],
        "failed_blobs": failed,
    }


# --- memory with synthesized pages -----------------------------------------------------------------


class SynthesizedStore:
    """Pages of blobs built on demand: each envelope wraps a content key with the old version."""

    def __init__(self, total: int, page_size: int, old_key_id: str) -> None:
        self.total = total
        self.page_size = page_size
        self.old_key_id = old_key_id

    def _item(self, index: int) -> BlobItem:
        envelope = {
            "WrappedContentKey": {
                "KeyId": self.old_key_id,
                "EncryptedKey": base64.b64encode(index.to_bytes(4, "big") * 64).decode(),
                "Algorithm": "RSA-OAEP-256",
            },
            "EncryptionAgent": {"Protocol": "2.0", "EncryptionAlgorithm": "AES_GCM_256"},
            "EncryptedRegionInfo": {"DataLength": 4194304, "NonceLength": 12},
            "KeyWrappingMetadata": {"EncryptionLibrary": "Python 12.31.1"},
            "EncryptionMode": "FullBlob",
        }
        return BlobItem(
            name=f"b/{index:08d}", etag=f'"0x{index:016X}"', metadata={"encryptiondata": json.dumps(envelope)}
        )

    def list_blobs(self, container: str, *, prefix: str | None, marker: str | None) -> BlobPage:
        start = int(marker or 0)
        end = min(self.total, start + self.page_size)
        items = tuple(self._item(index) for index in range(start, end))
        return BlobPage(items=items, next_marker=str(end) if end < self.total else None)

    def get_properties(self, container: str, name: str) -> BlobItem:
        return self._item(int(name[2:]))

    def set_metadata(self, container: str, name: str, metadata: Mapping[str, str], *, if_match: str) -> str:
        return '"0x1"'


class FakeUnwrapper:
    def unwrap(self, key_id: str, algorithm: str, wrapped: bytes) -> bytes:
        return b"2.0".ljust(8, b"\0") + wrapped[:32]


def rewrap_walker(ports: RewrapPorts, origin: str, workers: int) -> ContainerWalker:
    return walker_for(
        RewrapMode.REWRAP, ports, policy=VaultPolicy.of([origin]), options=RewrapOptions(max_workers=workers)
    )


def memory_peak(total: int, wrapper: RsaPublicKeyWrapper, old_key_id: str, origin: str, workers: int) -> int:
    unwrapper: KeyUnwrapper = FakeUnwrapper()
    ports = RewrapPorts(SynthesizedStore(total, 1000, old_key_id), unwrapper, wrapper, MemoryCheckpoint())
    engine = rewrap_walker(ports, origin, workers)
    tracemalloc.start()
    try:
        report = engine.run("synthetic")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.counts["rewrapped"] == total, report.as_json()
    return peak


# --- main -------------------------------------------------------------------------------------------


def scale_out_targets(scale_out: dict[str, Any]) -> dict[str, bool]:
    return {
        # Against the limit where this machine can reach it; else against its own N-worker ceiling.
        "scale_out_achieved_vs_min_limit_ceiling>=0.9": scale_out["achieved_vs_min_limit_ceiling"] >= 0.9,
        "scale_out_machine_reaches_limit": scale_out["machine_reaches_limit"],
        "scale_out_zero_failed_blobs": scale_out["failed_blobs"] == 0,
        "scale_out_counts_add_up": scale_out["counts_add_up_to_listing"],
        "scale_out_kv_unwraps_per_blob<=1.01": scale_out["kv_unwraps_per_blob_max"] <= 1.01,
    }


def scale_out_only(args: argparse.Namespace) -> int:
    """Just the scale-out run, with its own vault and Azurite: one JSON line."""
    blobs, window = (args.scale_out_blobs, SCALE_WINDOW) if not args.quick else (300, 2.0)
    results: dict[str, Any] = {"bench": "rewrap_scale_out", "quick": args.quick, "cpu_cores": os.cpu_count(),
                               "load_average_1m_at_start": round(os.getloadavg()[0], 1)}
    with (
        tempfile.TemporaryDirectory(prefix="rewrap-bench-") as tmp,
        Azurite(in_memory=True, startup_timeout=AZURITE_STARTUP_S) as azurite,
    ):
        vault = start_vault(Path(tmp))
        try:
            world = World(vault, azurite.connection_string, args.concurrency)
            global CPU  # noqa: PLW0603 - one meter for the whole run
            CPU = CpuMeter(vault.process.pid, azurite.pid)
            upload(world, "scale", blobs, 4096, world.new_version())
            log(f"scale-out: 1 worker, {args.workers} unthrottled, then {args.workers} against 2.5x one's pace")
            results["scale_out"] = rewrap_scale_out.scale_out(
                sys.modules[__name__], world, "scale", workers=args.workers, concurrency=args.worker_concurrency,
                page_size=args.page_size, window=window, latency_ms=args.vault_latency_ms, timeout_s=900,
            )
        finally:
            vault.stop()
    results["load_average_1m_at_end"] = round(os.getloadavg()[0], 1)
    results["targets"] = scale_out_targets(results["scale_out"])
    print(json.dumps(results, separators=(",", ":")))
    return 0



def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller figures (a smoke run, ~1 minute)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=4, help="worker processes of the scale-out run")
    # A scale-out worker's pace is bounded by its round trips, as in Azure where each runs on a machine of
    # its own: one blob in flight against a 300 ms unwrap, so that N workers need little of the 2 shared
    # cores at the limit (the run's own ceiling measurement says whether they got it).
    parser.add_argument("--worker-concurrency", type=int, default=1, help="blobs in flight per scale-out worker")
    parser.add_argument("--vault-latency-ms", type=int, default=300, help="unwrap latency in the scale-out run")
    parser.add_argument("--scale-out-blobs", type=int, default=600, help="blobs of the scale-out runs")
    parser.add_argument("--page-size", type=int, default=25, help="blobs per page of the scale-out job")
    parser.add_argument("--scale-out-only", action="store_true", help="only the scale-out run (a few minutes)")
    args = parser.parse_args()
    if args.scale_out_only:
        return scale_out_only(args)
    # The naive rewrite runs over the same 1 MiB blobs as the re-wrap it is compared with (a short run of a
    # few waves of workers would charge it ramp-up and tail effects the longer re-wrap run amortizes).
    small, large = (2000, 200) if not args.quick else (300, 30)
    rewrite_subset = large
    throttle_blobs, scaled_limit, scaled_window = (600, 200, 10.0) if not args.quick else (150, 40, 2.0)
    # Both sizes span several pages: the walker holds the page it works on and the next one it lists.
    memory_sizes = (2000, 20000) if not args.quick else (2000, 10000)
    scale_blobs, scale_window = (args.scale_out_blobs, SCALE_WINDOW) if not args.quick else (300, 2.0)

    results: dict[str, Any] = {"bench": "rewrap", "quick": args.quick, "concurrency": args.concurrency}
    with (
        tempfile.TemporaryDirectory(prefix="rewrap-bench-") as tmp,
        Azurite(in_memory=True, startup_timeout=AZURITE_STARTUP_S) as azurite,
    ):
        vault = start_vault(Path(tmp))
        try:
            world = World(vault, azurite.connection_string, args.concurrency)
            global CPU  # noqa: PLW0603 - one meter for the whole run
            CPU = CpuMeter(vault.process.pid, azurite.pid)
            old = world.new_version()
            log(f"uploading {small} x 4 KiB, {large} x 1 MiB and {throttle_blobs} x 4 KiB encrypted blobs")
            upload_time, _ = timed(lambda: upload(world, "small", small, 4096, old))
            upload(world, "large", large, 1024 * 1024, old)
            upload(world, "throttle", throttle_blobs, 4096, old)
            upload(world, "scale", scale_blobs, 4096, old)
            results["upload_4kib_per_s"] = round(small / upload_time, 1)

            log("one-call floor, two-call floor and re-wrap of 4 KiB blobs, interleaved")
            measured = floors_and_rewrap(world, "small")
            rewrap_rate = measured["engine"]
            log("re-wrap of 1 MiB blobs")
            rewrap_large = rewrap_runs(world, "large")
            log("naive rewrite of 1 MiB blobs")
            naive = naive_rewrite_runs(world, "large", rewrite_subset)
            results.update(
                {
                    "blobs_4kib": small,
                    "blobs_1mib": large,
                    "one_call_floor_per_s": round(measured["one_call"], 1),
                    "two_call_floor_per_s": round(measured["two_call"], 1),
                    "rewrap_4kib_per_s": round(rewrap_rate, 1),
                    "rewrap_vs_one_call_floor": round(rewrap_rate / measured["one_call"], 3),
                    "rewrap_vs_two_call_floor": round(rewrap_rate / measured["two_call"], 3),
                    "rewrap_vs_two_call_floor_each_run": measured["engine_vs_two_call_each_run"],
                    "rewrap_1mib_per_s": round(rewrap_large, 1),
                    "naive_rewrite_1mib_per_s": round(naive, 2),
                    "naive_rewrite_blobs_per_run": rewrite_subset,
                    "rewrap_vs_naive_rewrite_1mib": round(rewrap_large / naive, 2),
                    "kv_calls_per_blob": round(measured["kv_calls_per_blob"], 4),
                    "cpu_ms_per_blob": dict(CPU_PER_BLOB),
                    "cpu_cores": os.cpu_count(),
                }
            )
            log("throttled to Azure's RSA-2048 limit (4,000 / 10 s)")
            results["throttled_azure_limit"] = throttled_run(world, "small", limit=AZURE_RSA2048_LIMIT, window=10.0)
            # The same container re-wrapped without throttling, earlier in this run: when the machine
            # cannot reach the limit, this ceiling (not the back-off) bounds achieved_vs_limit.
            results["throttled_azure_limit"].update(
                unthrottled_rewrap_per_s=round(rewrap_rate, 1),
                unthrottled_vs_limit=round(rewrap_rate / (AZURE_RSA2048_LIMIT / 10), 3),
            )
            log(f"throttled to a scaled-down limit ({scaled_limit} / {scaled_window:g} s)")
            results["throttled_scaled_limit"] = throttled_run(
                world, "throttle", limit=scaled_limit, window=scaled_window
            )
            log(f"scale-out: 1 worker, then {args.workers} workers against the vault throttled to 2.5x its pace")
            results["scale_out"] = rewrap_scale_out.scale_out(
                sys.modules[__name__], world, "scale", workers=args.workers, concurrency=args.worker_concurrency,
                page_size=args.page_size, window=scale_window, latency_ms=args.vault_latency_ms, timeout_s=900,
            )
            log("memory with synthesized pages")
            wrapper = fetch_public_wrapper(world.vault_clients(), old)
            other_version = old[:-32] + "0" * 32
            peaks = [memory_peak(n, wrapper, other_version, vault.origin, args.concurrency) for n in memory_sizes]
            results["memory"] = {
                "method": "tracemalloc peak of the engine over synthesized pages of 1,000 blobs (fake store)",
                f"peak_bytes_{memory_sizes[0]}": peaks[0],
                f"peak_bytes_{memory_sizes[1]}": peaks[1],
                "ratio": round(peaks[1] / peaks[0], 3),
            }
        finally:
            vault.stop()
    throttled_full = results["throttled_azure_limit"]
    results["targets"] = {
        "rewrap_vs_two_call_floor>=0.85": results["rewrap_vs_two_call_floor"] >= 0.85,
        "rewrap_vs_naive_rewrite_1mib>=10": results["rewrap_vs_naive_rewrite_1mib"] >= 10,
        "kv_calls_per_blob<=1.01": results["kv_calls_per_blob"] <= 1.01,
        "azure_limit_achieved>=0.9": throttled_full["achieved_vs_limit"] >= 0.9,
        "scaled_limit_achieved>=0.9": results["throttled_scaled_limit"]["achieved_vs_limit"] >= 0.9,
        "zero_failed_blobs_throttled": throttled_full["failed_blobs"] == 0
        and results["throttled_scaled_limit"]["failed_blobs"] == 0,
        "memory_ratio<=1.2": results["memory"]["ratio"] <= 1.2,
        **scale_out_targets(results["scale_out"]),
    }
    print(json.dumps(results, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

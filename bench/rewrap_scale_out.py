"""The re-wrap bench's scale-out run: N worker processes re-wrap one container against a throttled vault.

    (run by bench/rewrap_bench.py; ``python bench/rewrap_scale_out.py worker CONFIG_JSON`` is one worker)

A scale-out job (``scale_out`` work item) goes on an Azurite work queue; each worker process takes one
message at a time and hands it to ``service.process_work`` with the real adapters (queue, ledger table,
blob store, vault), exactly as the function app's queue trigger does, until the job is finished.
The vault answers each unwrap after ``latency_ms`` (a Key Vault round trip, 100 ms by default), so a
worker's pace is bounded by its blobs in flight, as it is in Azure where workers run on machines of
their own, and not by this shared machine's two cores. First one worker alone sets the pace (unwraps
per second while it works, unthrottled); then the vault is throttled to 2.5 times that pace and N
workers re-wrap the container onto a fresh version. Reported: the achieved
rate of successful unwraps over whole throttling windows against the limit, throttled responses,
failed blobs, and the job report's counts against the listing.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from azure.data.tables import TableClient  # noqa: E402

from controller import service  # noqa: E402
from controller.adapters.blob_store import pooled_transport  # noqa: E402
from controller.adapters.key_vault_crypto import VaultClients  # noqa: E402
from controller.adapters.rewrap_backend import AzureRewrapBackend, emulator_blob_services  # noqa: E402
from controller.adapters.rewrap_checkpoint import TableRewrapCheckpoint  # noqa: E402
from controller.adapters.rewrap_jobs import TableRewrapJobLedger  # noqa: E402
from controller.adapters.work_queue import StorageWorkQueue, work_queue_client  # noqa: E402
from controller.bootstrap import SystemClock  # noqa: E402
from controller.rewrap.pages import job_id_of  # noqa: E402
from controller.rewrap.work import split_job  # noqa: E402
from controller.settings import load_settings  # noqa: E402
from controller.vault_policy import VaultPolicy  # noqa: E402
from emulators.keyvault import SandboxCredential  # noqa: E402

ACCOUNT = "devstoreaccount1"
THROTTLE_FACTOR = 2.5
IDLE_POLL_FIRST, IDLE_POLL_MAX = 0.1, 1.0


class NotUsedByWorkers:
    """A dependency page workers never touch (the reconciler, the sweep ...): touching it is a bench bug."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        raise AssertionError(f"a re-wrap worker used {self._name}.{attribute}")


class LoggedNotifier:
    def __init__(self) -> None:
        self.alerts: list[Any] = []

    def send(self, alert: Any) -> None:
        self.alerts.append(alert)


def worker_dependencies(config: dict[str, Any]) -> service.Dependencies:
    """The function app's dependencies for re-wrap work: the real queue, ledger, blob store and vault."""
    policy = VaultPolicy.of([config["origin"]])
    vault_clients = VaultClients(
        SandboxCredential(config["oid"]),
        policy=policy,
        verify_challenge_resource=False,
        transport=pooled_transport(config["concurrency"], connection_verify=config["ca_path"]),
    )
    table = TableClient.from_connection_string(config["connection_string"], table_name=config["table"])
    clock = SystemClock()
    return service.Dependencies(
        settings=load_settings({"CMK_VAULTS": config["origin"], "CMK_WORK_QUEUE": config["queue"]}),
        clock=clock,
        ledger=NotUsedByWorkers("ledger"),  # type: ignore[arg-type]
        notifier=LoggedNotifier(),
        work_queue=StorageWorkQueue(work_queue_client(config["connection_string"], config["queue"])),
        reconcile=NotUsedByWorkers("reconcile"),  # type: ignore[arg-type]
        rewrap=AzureRewrapBackend(
            vault_clients=vault_clients,
            blob_service=emulator_blob_services(config["connection_string"]),
            checkpoint=TableRewrapCheckpoint(table),
            page_size=config["page_size"],
        ),
        rewrap_jobs=TableRewrapJobLedger(table, clock=clock),
        blob_stores=NotUsedByWorkers("blob_stores"),  # type: ignore[arg-type]
        audit=NotUsedByWorkers("audit"),  # type: ignore[arg-type]
        audit_checkpoint=NotUsedByWorkers("audit_checkpoint"),  # type: ignore[arg-type]
        estate=NotUsedByWorkers("estate"),  # type: ignore[arg-type]
        reports=NotUsedByWorkers("reports"),  # type: ignore[arg-type]
    )


def worker(config: dict[str, Any]) -> int:
    """One worker process: take a message, process_work it, delete it; until the job is finished."""
    deps = worker_dependencies(config)
    queue = work_queue_client(config["connection_string"], config["queue"])
    job_id = config["job_id"]
    print("ready", flush=True)  # the job is enqueued once every worker is up: no ramp-up in the windows
    statuses: dict[str, int] = {}
    deadline = time.monotonic() + config["timeout_s"]
    idle = IDLE_POLL_FIRST
    while time.monotonic() < deadline:
        messages = list(queue.receive_messages(max_messages=1, visibility_timeout=300))
        if not messages:
            # An idle worker polls as the Functions host does (a delay doubling up to a maximum, here
            # shorter than the host's minute), and looks at the job's one flag, not its progress.
            if deps.rewrap_jobs.listing(job_id).finished:
                break
            time.sleep(idle)
            idle = min(2 * idle, IDLE_POLL_MAX)
            continue
        idle = IDLE_POLL_FIRST
        report = service.process_work(messages[0].content, deps)
        queue.delete_message(messages[0])
        status = report.rewrap.status.value if report.rewrap else report.kind
        statuses[status] = statuses.get(status, 0) + 1
        if report.rewrap is not None and report.rewrap.job_report is not None:
            break  # this worker finished the job
    print(json.dumps({"statuses": statuses}), flush=True)
    return 0


@dataclass
class Counters:
    """Successful unwraps over time, sampled from the vault's counters while a run goes on."""

    samples: list[tuple[float, int]]

    def active_rate(self) -> float:
        """Unwraps per second from the first successful unwrap to the last (process start-up and the
        wait for the job's end left out): one worker's own pace."""
        started = next((t for t, ok in self.samples if ok > 0), None)
        final = self.samples[-1][1]
        ended = next((t for t, ok in self.samples if ok >= final), None)
        if started is None or ended is None or ended <= started:
            return 0.0
        first_ok = next(ok for t, ok in self.samples if t >= started)
        return (final - first_ok) / (ended - started)

    def rate_over_whole_windows(self, window: float) -> float:
        started = next((t for t, ok in self.samples if ok > 0), None)
        if started is None:
            return 0.0
        end = self.samples[-1][0]
        whole = int((end - started) // window)
        if whole < 1:
            return self.samples[-1][1] / max(end - started, 1e-9)
        span_end = started + whole * window
        ok_at_end = max(ok for t, ok in self.samples if t <= span_end)
        return ok_at_end / (whole * window)


def successful_unwraps(counters: dict[str, Any]) -> int:
    # Only unwraps go to the RSA bucket in these runs, so the vault's 429s are all unwraps.
    return int(counters["byOperation"].get("KeyUnwrap", 0)) - int(counters["throttled"])


def run_job(bench: Any, world: Any, container: str, *, workers: int, concurrency: int, page_size: int,
            timeout_s: float, window: float | None = None) -> dict[str, Any]:
    """Enqueue a scale-out job onto a fresh version; N worker processes work it. Its report and rates."""
    target = world.new_version()
    queue_name = f"scale-{uuid.uuid4().hex[:10]}"
    table_name = f"scale{uuid.uuid4().hex[:10]}"
    [item] = split_job(targets=[(ACCOUNT, container)], key_id=target, concurrency=concurrency, scale_out=True)
    config = {
        "origin": world.vault.origin, "oid": bench.OID, "ca_path": world.vault.ca_path,
        "connection_string": world.connection_string, "queue": queue_name, "table": table_name,
        "concurrency": concurrency, "job_id": job_id_of(item), "timeout_s": timeout_s, "page_size": page_size,
    }
    deps = worker_dependencies(config)
    work_queue_client(world.connection_string, queue_name).create_queue()  # workers poll it from the start
    processes = [
        subprocess.Popen(  # noqa: S603 - this module, as a worker
            [sys.executable, str(Path(__file__).resolve()), "worker", json.dumps(config)],
            cwd=ROOT, stdout=subprocess.PIPE, text=True,
        )
        for _ in range(workers)
    ]
    for process in processes:
        assert process.stdout is not None
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError("a scale-out worker did not start")
    world.vault.reset_counters()
    cpu_before = _cpu_seconds(bench)
    service.enqueue_rewrap([item], deps)
    samples: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append((time.monotonic(), successful_unwraps(world.vault.counters())))
            stop.wait(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    started = time.monotonic()
    sampler.start()
    outputs = [process.communicate(timeout=timeout_s + 60)[0] for process in processes]
    elapsed = time.monotonic() - started
    stop.set()
    sampler.join()
    counters = world.vault.counters()
    samples.append((time.monotonic(), successful_unwraps(counters)))
    cpu = {name: round(1000 * (after - before) / max(successful_unwraps(counters), 1), 2)
           for (name, before), after in zip(cpu_before.items(), _cpu_seconds(bench).values(), strict=True)}
    progress = service.rewrap_job_progress(item, deps)
    report = progress.as_json()
    failed = sum(report["counts"].get(name, 0) for name in ("failed", "skipped_malformed", "skipped_unknown_key"))
    result: dict[str, Any] = {
        "workers": workers,
        "concurrency_per_worker": concurrency,
        "blobs": progress.blobs,
        "elapsed_s": round(elapsed, 2),
        "blobs_per_s": round(progress.blobs / elapsed, 1),
        "finished": progress.listing.finished,
        "pages": progress.listing.pages_listed,
        "pages_done": progress.pages_done,
        "pages_failed": progress.pages_failed,
        "counts": report["counts"],
        "counts_add_up_to_listing": progress.blobs == bench_blob_count(world, container),
        "kv_unwraps_per_blob": round(successful_unwraps(counters) / max(progress.blobs, 1), 4),
        "throttled_responses": int(counters["throttled"]),
        "failed_blobs": failed,
        "cpu_ms_per_unwrap": cpu,
        "worker_statuses": [json.loads(output.strip().splitlines()[-1]) for output in outputs if output.strip()],
    }
    result["active_unwraps_per_s"] = round(Counters(samples).active_rate(), 1)
    if window is not None:
        result["achieved_unwraps_per_s"] = round(Counters(samples).rate_over_whole_windows(window), 1)
    return result


def _cpu_seconds(bench: Any) -> dict[str, float]:
    """CPU seconds so far of the worker processes (reaped children), the vault and Azurite."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    meter = bench.CPU
    return {
        "workers": children.ru_utime + children.ru_stime,
        "vault": bench.process_cpu_seconds(meter.vault_pid) if meter else 0.0,
        "azurite": bench.process_cpu_seconds(meter.azurite_pid) if meter else 0.0,
    }


def bench_blob_count(world: Any, container: str) -> int:
    return sum(1 for _ in world.service().get_container_client(container).list_blobs())


def scale_out(bench: Any, world: Any, container: str, *, workers: int, concurrency: int, page_size: int,
              window: float, latency_ms: int, timeout_s: float) -> dict[str, Any]:
    """One worker alone (its pace), then N workers against the vault throttled to 2.5x that pace."""
    faults = f"/vaults/{bench.VAULT}/faults"
    world.vault.admin("PUT", faults, {"latencyMs": latency_ms, "operations": ["KeyUnwrap"]})
    try:
        return _alone_then_many(bench, world, container, workers=workers, concurrency=concurrency,
                                page_size=page_size, window=window, timeout_s=timeout_s) | {
                                    "vault_latency_ms": latency_ms}
    finally:
        world.vault.admin("PUT", faults, {})


def _alone_then_many(bench: Any, world: Any, container: str, *, workers: int, concurrency: int, page_size: int,
                     window: float, timeout_s: float) -> dict[str, Any]:
    """One worker alone sets the limit (2.5x its pace, so no worker reaches it on its own); N workers
    unthrottled measure what this machine lets N workers do at all (its CPU ceiling); then N workers
    against the limit. The achieved rate is reported against the limit and against min(limit, ceiling):
    when the ceiling is below the limit, the machine (not the throttle sharing) bounds the run, and
    the report says so."""
    alone = run_job(bench, world, container, workers=1, concurrency=concurrency, page_size=page_size,
                    timeout_s=timeout_s)
    unthrottled = run_job(bench, world, container, workers=workers, concurrency=concurrency, page_size=page_size,
                          timeout_s=timeout_s, window=window)
    limit = max(1, round(THROTTLE_FACTOR * alone["active_unwraps_per_s"] * window))
    world.vault.admin("PUT", f"/vaults/{bench.VAULT}/throttling",
                      {"enabled": True, "windowSeconds": window, "limits": {"RSA-2048": {"software": limit}}})
    try:
        many = run_job(bench, world, container, workers=workers, concurrency=concurrency, page_size=page_size,
                       timeout_s=timeout_s, window=window)
    finally:
        world.vault.admin("PUT", f"/vaults/{bench.VAULT}/throttling", {"enabled": False})
    limit_per_s = limit / window
    ceiling = unthrottled["achieved_unwraps_per_s"]
    bound = min(limit_per_s, ceiling)
    many.update(
        limit_per_window=limit, window_s=window, limit_per_s=round(limit_per_s, 1),
        achieved_vs_limit=round(many["achieved_unwraps_per_s"] / limit_per_s, 3),
        unthrottled_ceiling_per_s=ceiling,
        machine_reaches_limit=ceiling >= limit_per_s,
        achieved_vs_min_limit_ceiling=round(many["achieved_unwraps_per_s"] / bound, 3) if bound else 0.0,
    )
    return {"one_worker": alone, f"{workers}_workers_unthrottled": unthrottled, "throttled_to_x2.5": many}


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "worker":
        raise SystemExit("usage: rewrap_scale_out.py worker CONFIG_JSON (bench/rewrap_bench.py runs it)")
    raise SystemExit(worker(json.loads(sys.argv[2])))

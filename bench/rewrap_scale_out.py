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
import statistics
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
from controller.adapters.http_transport import pooled_transport  # noqa: E402
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
    cpu_at_ready = time.process_time()  # the interpreter's and the SDKs' start-up is not the job's
    statuses: dict[str, int] = {}
    unwraps = 0
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
        if report.rewrap is not None and report.rewrap.progress is not None:
            unwraps += report.rewrap.progress.unwrap_calls
        if report.rewrap is not None and report.rewrap.job_report is not None:
            break  # this worker finished the job
    print(json.dumps({"statuses": statuses, "unwraps": unwraps, "cpu_s": round(time.process_time() - cpu_at_ready, 3)}),
          flush=True)
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
        """Unwraps per second over the whole throttling windows from the job's first successful unwrap
        to its last (a partial last window, and the workers' exit after the job, left out)."""
        started = next((t for t, ok in self.samples if ok > 0), None)
        final = self.samples[-1][1]
        ended = next((t for t, ok in self.samples if ok >= final), None)
        if started is None or ended is None or ended <= started:
            return 0.0
        whole = int((ended - started) // window)
        if whole < 1:
            return final / (ended - started)
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
    reports = [json.loads(output.strip().splitlines()[-1]) for output in outputs if output.strip()]
    cpu_after = _cpu_seconds(bench) | {"workers": sum(report["cpu_s"] for report in reports)}
    cpu = {name: round(1000 * (cpu_after[name] - before) / max(successful_unwraps(counters), 1), 2)
           for name, before in cpu_before.items()}
    shares = sorted(report["unwraps"] for report in reports)
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
        # How evenly the workers shared the vault: the fewest and most unwraps one worker made.
        "unwraps_per_worker_min_max": [shares[0], shares[-1]] if shares else [],
        "worker_statuses": [report["statuses"] for report in reports],
    }
    result["active_unwraps_per_s"] = round(Counters(samples).active_rate(), 1)
    if window is not None:
        result["achieved_unwraps_per_s"] = round(Counters(samples).rate_over_whole_windows(window), 1)
    return result


def _cpu_seconds(bench: Any) -> dict[str, float]:
    """CPU seconds so far of the vault and Azurite (the workers report their own from ready on)."""
    meter = bench.CPU
    return {
        "workers": 0.0,
        "vault": bench.process_cpu_seconds(meter.vault_pid) if meter else 0.0,
        "azurite": bench.process_cpu_seconds(meter.azurite_pid) if meter else 0.0,
    }


def bench_blob_count(world: Any, container: str) -> int:
    return sum(1 for _ in world.service().get_container_client(container).list_blobs())


def scale_out(bench: Any, world: Any, container: str, *, workers: int, concurrency: int, page_size: int,
              window: float, latency_ms: int, timeout_s: float, repeats: int = 3) -> dict[str, Any]:
    """One worker alone (its pace), then N workers unthrottled and against the vault throttled to 2.5x
    that pace, interleaved."""
    faults = f"/vaults/{bench.VAULT}/faults"
    world.vault.admin("PUT", faults, {"latencyMs": latency_ms, "operations": ["KeyUnwrap"]})
    try:
        return _alone_then_many(bench, world, container, workers=workers, concurrency=concurrency,
                                page_size=page_size, window=window, timeout_s=timeout_s, repeats=repeats) | {
                                    "vault_latency_ms": latency_ms}
    finally:
        world.vault.admin("PUT", faults, {})


def _alone_then_many(bench: Any, world: Any, container: str, *, workers: int, concurrency: int, page_size: int,
                     window: float, timeout_s: float, repeats: int) -> dict[str, Any]:
    """One worker alone sets the limit (2.5x its pace, so that no worker reaches it on its own). Then,
    ``repeats`` times and interleaved (the machine's load drifts), N workers unthrottled -- what this
    machine lets N workers do at all, its CPU ceiling -- and N workers against the limit. The achieved
    rate (median) is reported against the limit and against min(limit, ceiling): when the ceiling is
    below the limit, this machine, not the sharing of the vault's throttle, bounds the run, and the
    report says so (machine_reaches_limit false)."""
    alone = run_job(bench, world, container, workers=1, concurrency=concurrency, page_size=page_size,
                    timeout_s=timeout_s)
    limit = max(1, round(THROTTLE_FACTOR * alone["active_unwraps_per_s"] * window))
    limit_per_s = limit / window
    unthrottled: list[dict[str, Any]] = []
    throttled: list[dict[str, Any]] = []
    for _ in range(repeats):
        unthrottled.append(run_job(bench, world, container, workers=workers, concurrency=concurrency,
                                   page_size=page_size, timeout_s=timeout_s, window=window))
        world.vault.admin("PUT", f"/vaults/{bench.VAULT}/throttling",
                          {"enabled": True, "windowSeconds": window, "limits": {"RSA-2048": {"software": limit}}})
        try:
            throttled.append(run_job(bench, world, container, workers=workers, concurrency=concurrency,
                                     page_size=page_size, timeout_s=timeout_s, window=window))
        finally:
            world.vault.admin("PUT", f"/vaults/{bench.VAULT}/throttling", {"enabled": False})
    ceiling = statistics.median(run["achieved_unwraps_per_s"] for run in unthrottled)
    achieved = statistics.median(run["achieved_unwraps_per_s"] for run in throttled)
    bound = min(limit_per_s, ceiling)
    return {
        "one_worker": alone,
        "limit_per_window": limit, "window_s": window, "limit_per_s": round(limit_per_s, 1),
        "unthrottled_ceiling_per_s": round(ceiling, 1),
        "achieved_unwraps_per_s": round(achieved, 1),
        "achieved_vs_limit": round(achieved / limit_per_s, 3),
        "machine_reaches_limit": ceiling >= limit_per_s,
        "achieved_vs_min_limit_ceiling": round(achieved / bound, 3) if bound else 0.0,
        "achieved_vs_ceiling_each_run": [round(t["achieved_unwraps_per_s"] / u["achieved_unwraps_per_s"], 3)
                                         if u["achieved_unwraps_per_s"] else 0.0
                                         for u, t in zip(unthrottled, throttled, strict=True)],
        "throttled_responses": [run["throttled_responses"] for run in throttled],
        "failed_blobs": sum(run["failed_blobs"] for run in unthrottled + throttled),
        "counts_add_up_to_listing": all(run["counts_add_up_to_listing"] for run in unthrottled + throttled),
        "kv_unwraps_per_blob_max": max(run["kv_unwraps_per_blob"] for run in unthrottled + throttled),
        f"{workers}_workers_unthrottled": [_brief(run) for run in unthrottled],
        f"{workers}_workers_throttled": [_brief(run) for run in throttled],
    }


def _brief(run: dict[str, Any]) -> dict[str, Any]:
    keep = ("achieved_unwraps_per_s", "active_unwraps_per_s", "elapsed_s", "throttled_responses", "failed_blobs",
            "pages_done", "kv_unwraps_per_blob", "cpu_ms_per_unwrap", "unwraps_per_worker_min_max")
    return {key: run[key] for key in keep}


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "worker":
        raise SystemExit("usage: rewrap_scale_out.py worker CONFIG_JSON (bench/rewrap_bench.py runs it)")
    raise SystemExit(worker(json.loads(sys.argv[2])))

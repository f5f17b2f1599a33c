"""Adoption at scale: one key's consumers adopting a new version under Azure Resource Manager's limits.

N storage accounts on one key (half versionless, half pinned with cmk-pinned-policy=update) in the
emulated ARM with Azure's published throttling (writes: bucket 200, refill 10/s; reads: 250, 25/s;
per subscription and per tenant) and the default latencies (a storage write about 1 s, a read 30 ms),
on a sandbox clock running --scale times faster (figures are reported in Azure seconds: sandbox
time). The controller's real adapters (inventory through Resource Graph, storage control, the ARM
pacer, the Table ledger, the Storage queue) reconcile the key after a rotation; a run cut off by
its time budget (CMK_RECONCILE_TIME_BUDGET_SECONDS' default) continues from the queue until every
account is adopted: each continuation item is run as the queue trigger runs it (service.process_work: it
takes over its run's write claims and plans from the worklist that run left in the ledger).

Baseline, measured in the same run: the sequential design (one write at a time, as before this
change) on --baseline-consumers accounts, its seconds per consumer extrapolated to N; and ARM's own
floor for N (the burst, then the refill rate). The write rate after the burst is (writes - 200) /
(last write - first write), against the 10/s refill.

Prints one JSON line. Usage: .venv/bin/python bench/adoption_scale.py [--consumers 1000,10000] [--scale 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from controller import service  # noqa: E402 - after the path set-up: bench runs as a script
from controller.errors import TransientError  # noqa: E402
from controller.settings import load_settings  # noqa: E402
from emulators.arm.throttling import AZURE_LIMITS, OperationKind  # noqa: E402
from emulators.azurite import Azurite  # noqa: E402
from tests.support.adoption import (  # noqa: E402
    CONTROLLER,
    azure_limits,
    build,
    continuations,
    instance,
    key_of,
    new_names,
    scaled_arm,
)
from tests.unit.fakes import fake_dependencies  # noqa: E402 - the use cases' other dependencies: unused here

TIME_BUDGET = timedelta(seconds=480)  # CMK_RECONCILE_TIME_BUDGET_SECONDS' default


def adopt(consumers: int, *, scale: float, concurrency: int, connection_string: str, work: Path) -> dict[str, Any]:
    with scaled_arm(work, scale=scale) as arm:
        built = time.perf_counter()
        estate = build(arm, consumers=consumers, controller_oid=CONTROLLER)
        built = time.perf_counter() - built
        table, queue = new_names()
        controller = instance(estate, connection_string, table=table, queue=queue, owner="bench",
                              concurrency=concurrency, time_budget=TIME_BUDGET)
        deps = fake_dependencies(load_settings({"CMK_VAULTS": key_of(estate).vault.url}), reconcile=controller.deps)
        try:
            version = estate.rotate()
            throttling = arm.set_limits(azure_limits(arm))
            assert throttling is not None
            started, wall = arm.clock.now(), time.perf_counter()
            invocations, host_retries, failures = 0, 0, []
            item: dict[str, Any] | None = {"kind": "reconcile", "key": key_of(estate).uri}
            while item is not None:
                invocations += 1
                try:
                    report = service.process_work(json.dumps(item), deps)
                except TransientError as err:  # the Functions host retries the work item
                    host_retries += 1
                    print(json.dumps({"progress": consumers, "invocation": invocations, "retried_by_the_host": str(err),
                                      "sandbox_seconds": round((arm.clock.now() - started).total_seconds(), 1)}),
                          file=sys.stderr, flush=True)
                    continue
                assert report.reconcile is not None
                failures += report.reconcile.failures
                item = next((queued for queued in continuations(connection_string, queue)
                             if queued.get("continuation")), None)
                print(json.dumps({"progress": consumers, "invocation": invocations,
                                  "adopted": estate.adoption(version).adopted,
                                  "sandbox_seconds": round((arm.clock.now() - started).total_seconds(), 1),
                                  "wall_seconds": round(time.perf_counter() - wall, 1)}), file=sys.stderr, flush=True)
            elapsed = (arm.clock.now() - started).total_seconds()
            wall = time.perf_counter() - wall
            adoption = estate.adoption(version)
            stats = controller.connection.pacer.stats
        finally:
            controller.close()
    writes = [moment for moment, kind, _, _ in throttling.admitted if kind is OperationKind.WRITES]
    reads = Counter(_read_kind(path, method) for _, kind, method, path in throttling.admitted
                    if kind is OperationKind.READS)
    per_account = {path.rsplit("/", 1)[-1]: count for path, count in throttling.writes_per_resource().items()
                   if "/storageaccounts/" in path}
    burst = AZURE_LIMITS[OperationKind.WRITES]
    span = (writes[-1] - writes[0]) if len(writes) > 1 else 0.0
    after_burst = (len(writes) - burst.capacity) / span if span and len(writes) > burst.capacity else None
    return {
        "consumers": consumers,
        "all_adopted": adoption.complete,
        "adopted": adoption.adopted,
        "failed_for_good": len(failures),
        "invocations": invocations,
        "invocations_retried_by_the_host": host_retries,
        "seconds_to_all_adopted": round(elapsed, 1),
        "wall_seconds": round(wall, 1),
        "build_wall_seconds": round(built, 1),
        "arm_floor_seconds": round(max(0, len(writes) - burst.capacity) / burst.refill_per_second, 1),
        "write_rate_after_burst": round(after_burst, 2) if after_burst else None,
        "write_rate_vs_refill": round(after_burst / burst.refill_per_second, 3) if after_burst else None,
        "arm_writes": len(writes),
        "arm_writes_per_consumer": round(len(writes) / consumers, 3),
        "max_writes_pinned": max(per_account.get(name, 0) for name in estate.pinned),
        "max_writes_versionless": max(per_account.get(name, 0) for name in estate.versionless),
        "arm_reads": sum(reads.values()),
        "arm_reads_per_consumer": round(sum(reads.values()) / consumers, 3),
        "arm_reads_by_kind": dict(reads),
        "throttled_responses": throttling.throttled,
        "throttled_responses_by_kind": dict(throttling.throttled_by_kind),
        "retries": stats.retries,
        "pacer_waited_seconds_wall": round(stats.waited_seconds, 1),
    }


def _read_kind(path: str, method: str) -> str:
    if "resourcegraph" in path:
        return "resource_graph_pages"
    if path.endswith("/encryptionscopes"):
        return "scope_listings"
    if path.endswith("/storageaccounts"):
        return "account_listings"
    return "other"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--consumers", default="1000", help="comma-separated estate sizes (default 1000)")
    parser.add_argument("--scale", type=float, default=1.0, help="sandbox seconds per real second")
    parser.add_argument("--concurrency", type=int, default=32, help="CMK_WRITE_CONCURRENCY")
    parser.add_argument("--baseline-consumers", type=int, default=20)
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.consumers.split(",") if size.strip()]
    with tempfile.TemporaryDirectory(prefix="bench-adoption-") as work, \
            Azurite(location=Path(work) / "azurite") as azurite:
        baseline = adopt(args.baseline_consumers, scale=args.scale, concurrency=1,
                         connection_string=azurite.connection_string, work=Path(work) / "baseline")
        runs = [adopt(size, scale=args.scale, concurrency=args.concurrency,
                      connection_string=azurite.connection_string, work=Path(work) / f"n{size}") for size in sizes]
    per_consumer = baseline["seconds_to_all_adopted"] / baseline["consumers"]
    for run in runs:
        sequential = per_consumer * run["consumers"]
        run["baseline_sequential_seconds_extrapolated"] = round(sequential, 1)
        run["speedup_vs_sequential"] = round(sequential / run["seconds_to_all_adopted"], 1)
        run["seconds_per_1000_consumers"] = round(run["seconds_to_all_adopted"] * 1000 / run["consumers"], 1)
    print(json.dumps({
        "benchmark": "adoption_scale",
        "limits": "azure (writes 200 + 10/s, reads 250 + 25/s, per subscription and tenant)",
        "latency": "default (storage write 1 s, read 0.03 s)",
        "scale": args.scale,
        "concurrency": args.concurrency,
        "target_write_rate_vs_refill": 0.9,
        "peak_rss_mb_process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "baseline_sequential": baseline,
        "runs": runs,
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

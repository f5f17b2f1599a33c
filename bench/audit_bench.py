"""Audit analysis (CMK-017) over a large workspace: the aggregation runs in KQL, so the rows returned
stay O(groups), not O(records).

The sandbox's Log Analytics endpoint holds ``--rows`` AZKVAuditLogs rows over the last 24 hours, built by
the same row mapping the sandbox's audit sink uses: mostly successful unwraps, ``--failure-percent`` of
them failed wraps and unwraps spread over 3 vaults x 4 keys x 2 callers x 3 causes (72 groups). The rows
are kept as the sandbox keeps them (an ``emulators.kql.RowLog``, column by column): the endpoint loads
them into DuckDB once (``load_seconds``: the sandbox's ingestion, before the first query) and later
queries read only what was appended since.
Through the unmodified LogsQueryClient it measures, ``--repeat`` times each (medians; the machine may be
loaded, compare the ratio within one run):

- the controller's analysis (LogAnalyticsAuditLog.failures: detection, aggregated failures and key
  deletions: three queries): wall time, groups;
- the aggregated failure query alone: wall time, rows returned;
- for comparison, the same failures fetched without aggregation (one row per failed request).

Prints one JSON line. Usage: .venv/bin/python bench/audit_bench.py [--rows 1000000] [--failure-percent 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from azure.monitor.query import LogsQueryClient  # noqa: E402 - after the path set-up: bench runs as a script

from controller import audit  # noqa: E402
from controller.adapters.audit_log import LogAnalyticsAuditLog  # noqa: E402
from controller.vault_policy import VaultPolicy  # noqa: E402
from emulators.audit import AZKV_AUDIT_LOGS, AuditSink, azkv_audit_logs_row  # noqa: E402
from emulators.clock import SandboxClock  # noqa: E402
from emulators.keyvault import SandboxCA, SandboxCredential  # noqa: E402
from emulators.kql import RowLog, TableSource  # noqa: E402
from emulators.query_endpoints import LogAnalyticsEmulator  # noqa: E402

SUBSCRIPTION = "5f2a1c3e-0000-4000-8000-0000000000b1"
VAULTS = [f"kvbench{index}" for index in range(3)]
KEYS = [f"cmk-{index}" for index in range(4)]
CALLERS = ["b0000000-0000-4000-8000-000000000001", "b0000000-0000-4000-8000-000000000002"]
CAUSES = [
    (403, "Operation unwrapKey is not allowed on a disabled key."),
    (404, "A key with (name/id) {key} was not found in this key vault. If you recently deleted this key you may "
          "be able to recover it using the correct recovery command."),
    (429, "Request was not processed because too many requests were received."),
]
VERSION = "0123456789abcdef0123456789abcdef"


def record(vault: str, key: str, *, caller: str, status: int, description: str, when: str) -> dict[str, Any]:
    key_id = f"https://{vault}.vault.azure.net/keys/{key}/{VERSION}"
    return {
        "time": when,
        "resourceId": f"/SUBSCRIPTIONS/{SUBSCRIPTION}/RESOURCEGROUPS/RG-BENCH/PROVIDERS/MICROSOFT.KEYVAULT/VAULTS/"
                      f"{vault.upper()}",
        "operationName": "KeyUnwrap", "operationVersion": "7.5", "category": "AuditEvent",
        "resultType": "Success" if status < 400 else "Failed",
        "resultSignature": {200: "OK", 403: "Forbidden", 404: "NotFound", 429: "TooManyRequests"}[status],
        "resultDescription": description.format(key=key), "durationMs": 3, "callerIpAddress": "10.1.2.3",
        "correlationId": str(uuid.uuid4()),
        "identity": {"claim": {"oid": caller, "appid": caller}},
        "properties": {"id": key_id, "requestUri": f"{key_id}/unwrapkey?api-version=7.5", "httpStatusCode": status},
    }


def rows(count: int, failure_percent: float, now: datetime) -> Iterator[dict[str, Any]]:
    """``count`` rows ending at ``now``, the same at every read: every ``1 / failure_percent``-th one fails."""
    every = max(1, round(100 / failure_percent)) if failure_percent > 0 else count + 1
    step = timedelta(hours=23) / max(1, count)
    templates: dict[tuple[int, ...], dict[str, Any]] = {}
    for index in range(count):
        failed = index % every == 0
        ordinal = index // every if failed else index  # failures cycle through every group
        shape = (ordinal % len(VAULTS), (ordinal // 3) % len(KEYS), (ordinal // 12) % len(CALLERS),
                 (ordinal // 24) % len(CAUSES) if failed else -1)
        template = templates.get(shape)
        if template is None:
            vault, key, caller = VAULTS[shape[0]], KEYS[shape[1]], CALLERS[shape[2]]
            status, description = CAUSES[shape[3]] if failed else (200, "")
            template = azkv_audit_logs_row(record(vault, key, caller=caller, status=status, description=description,
                                                  when=now.isoformat()))
            templates[shape] = template
        row = dict(template)
        row["TimeGenerated"] = now - step * index
        yield row


def timed(call: Any, repeat: int) -> tuple[float, Any]:
    """The median wall time of ``repeat`` calls, and the last answer."""
    seconds, answer = [], None
    for _ in range(repeat):
        began = time.perf_counter()
        answer = call()
        seconds.append(time.perf_counter() - began)
    return statistics.median(seconds), answer


def returned(result: Any) -> int:
    return sum(len(t.rows) for t in getattr(result, "tables", None) or getattr(result, "partial_data", None) or [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--failure-percent", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    clock = SandboxClock()
    log = RowLog(AuditSink.columns(AZKV_AUDIT_LOGS))
    began = time.perf_counter()
    log.extend(rows(args.rows, args.failure_percent, clock.now()))
    build_seconds = time.perf_counter() - began
    table = TableSource.of_logs(AZKV_AUDIT_LOGS, [log])
    vaults = [f"https://{vault}.vault.azure.net" for vault in VAULTS]
    end = clock.now() + timedelta(minutes=1)
    start = end - timedelta(hours=24)
    failures = audit.failure_query(vaults)
    unaggregated = failures.split("\n| extend KeyName")[0]
    with tempfile.TemporaryDirectory(prefix="audit-bench-") as directory:
        ca = SandboxCA(directory)
        with LogAnalyticsEmulator(ca, tables=[table], clock=clock) as la, LogsQueryClient(
                SandboxCredential(), endpoint=la.endpoint + "/v1", connection_verify=str(ca.ca_path)) as client:
            # The sandbox's ingestion: the endpoint's store takes the log's rows in (once; then only what is new).
            load_seconds, _ = timed(lambda: la.service.query(la.workspace_id, "AZKVAuditLogs | count"), 1)
            logs = LogAnalyticsAuditLog(SandboxCredential(), workspace_id=la.workspace_id, endpoint=la.endpoint,
                                        policy=VaultPolicy.of(vaults), connection_verify=str(ca.ca_path))
            analysis_seconds, report = timed(lambda: logs.failures(vaults, start=start, end=end), args.repeat)
            aggregated_seconds, aggregated = timed(
                lambda: client.query_workspace(la.workspace_id, failures, timespan=(start, end)), args.repeat)
            raw_seconds, raw = timed(
                lambda: client.query_workspace(la.workspace_id, unaggregated, timespan=(start, end)), args.repeat)
    print(json.dumps({
        "bench": "audit_analysis", "rows": args.rows, "failures": report.failures, "groups": len(report.groups),
        "partial": report.partial, "repeat": args.repeat, "statistic": "median",
        "build_rows_seconds": round(build_seconds, 2), "load_seconds": round(load_seconds, 2),
        "analysis": {"seconds": round(analysis_seconds, 2), "queries": 3},
        "aggregated_query": {"seconds": round(aggregated_seconds, 2), "rows_returned": returned(aggregated)},
        "unaggregated_query": {"seconds": round(raw_seconds, 2), "rows_returned": returned(raw)},
        "ratio": {"rows_returned": round(returned(raw) / max(1, returned(aggregated)), 1),
                  "seconds": round(raw_seconds / max(aggregated_seconds, 1e-6), 2)},
    }))


if __name__ == "__main__":
    main()

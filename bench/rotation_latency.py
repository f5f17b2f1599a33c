"""Rotation latency: from rotate_key to every consumer proven on the new version.

50 storage accounts on one key (half versionless, half pinned with the per-account tag
cmk-pinned-policy=update), in the local sandbox with the controller's function app on the local
Functions host. Each run: KeyClient.rotate_key, then poll ARM (as an operator) until every account's
currentVersionedKeyIdentifier is the new version and the versionless ones are versionless again.
The controller's ARM and Key Vault calls are counted per caller by the sandbox.

Baseline, measured in the same run: the same estate in a sandbox without the controller, where only
the emulated storage service's own key poll (about once a sandbox day, as in Azure) moves the
versionless accounts; the pinned ones never move. Its latency is sandbox time (the clock is advanced
an hour at a time), reported next to the controller's wall-clock latency.

Prints one JSON line at the end. Usage: .venv/bin/python bench/rotation_latency.py [--accounts 50] [--runs 5]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from azure.core.rest import HttpRequest  # noqa: E402 - after the path set-up: bench runs as a script

from emulators import sandbox  # noqa: E402
from emulators.seed import SandboxClients, Seeder, load_scenario  # noqa: E402

RESOURCE_GROUP = "rg-cmk-bench"


def bench_scenario(accounts: int) -> dict[str, Any]:
    """The rotation scenario's vault, key and identities, with ``accounts`` storage accounts."""
    scenario = copy.deepcopy(load_scenario("rotation"))
    scenario["name"] = "rotation-bench"
    scenario["resourceGroups"] = [{"name": RESOURCE_GROUP}]
    for item in scenario.get("identities", []) + scenario.get("vaults", []):
        item["resourceGroup"] = RESOURCE_GROUP
    vault = scenario["vaults"][0]["name"]
    key = scenario["keys"][0]["name"]
    identity = scenario["identities"][0]["name"]
    half = accounts // 2
    scenario["storageAccounts"] = [
        {
            "name": f"stbench{'p' if index < half else 'v'}{index:03d}",
            "resourceGroup": RESOURCE_GROUP,
            "identity": identity,
            "cmk": {"vault": vault, "key": key, "pinned": index < half},
            **({"tags": {"cmk-pinned-policy": "update"}} if index < half else {}),
        }
        for index in range(accounts)
    ]
    operator_role = next(role["name"] for role in scenario.get("roleDefinitions", []))
    scenario["roleAssignments"] = [
        {"principal": "$controller", "role": "Reader", "scope": "subscription"},
        {"principal": "$controller", "role": operator_role, "scope": f"resourceGroup:{RESOURCE_GROUP}"},
    ]
    scenario["containers"] = []
    return scenario


def accounts_on(clients: SandboxClients, version: str) -> tuple[int, int]:
    """(accounts using ``version``, accounts fully adopted: using it and configured as intended).

    The listing is read as JSON: the SDK's models cost about 1 ms an account, so polling 50 accounts every
    50 ms through them took half a core of the two the sandbox and the controller run on."""
    using = adopted = 0
    url = (f"/subscriptions/{clients.subscription_id}/resourceGroups/{RESOURCE_GROUP}"
           f"/providers/Microsoft.Storage/storageAccounts?api-version=2025-01-01")
    response = clients.storage.send_request(HttpRequest("GET", url))
    response.raise_for_status()
    for account in response.json()["value"]:
        properties = account["properties"]["encryption"].get("keyvaultproperties") or {}
        current = (properties.get("currentVersionedKeyIdentifier") or "").rstrip("/").rsplit("/", 1)[-1]
        if current != version:
            continue
        using += 1
        pinned = account["name"].startswith("stbenchp")
        configured = properties.get("keyversion") or ""
        if (pinned and configured == version) or (not pinned and configured == ""):
            adopted += 1
    return using, adopted


def not_adopted(clients: SandboxClients, version: str) -> dict[str, str]:
    """Account -> the version it uses and the one configured, for each account not (yet) adopted."""
    url = (f"/subscriptions/{clients.subscription_id}/resourceGroups/{RESOURCE_GROUP}"
           f"/providers/Microsoft.Storage/storageAccounts?api-version=2025-01-01")
    found = {}
    for account in clients.storage.send_request(HttpRequest("GET", url)).json()["value"]:
        properties = account["properties"]["encryption"].get("keyvaultproperties") or {}
        current = (properties.get("currentVersionedKeyIdentifier") or "").rstrip("/").rsplit("/", 1)[-1]
        configured = properties.get("keyversion") or ""
        pinned = account["name"].startswith("stbenchp")
        if current != version or configured != (version if pinned else ""):
            found[account["name"]] = f"uses {current or '-'}, configured {configured or 'versionless'}"
    return found


def host_log_tail(directory: Path, lines: int = 60) -> str:
    """The local Functions host's last log lines: what the controller did (or failed to do)."""
    log = directory / "functions" / "functions-host.log"
    if not log.exists():
        return f"(no host log at {log})"
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def start(directory: Path, scenario: dict[str, Any], *, functions: bool) -> tuple[dict[str, Any], SandboxClients,
                                                                                 dict[str, Any]]:
    state = sandbox.start_detached(directory, functions=functions, timeout=120)
    try:
        seeded = Seeder(directory, scenario, log=lambda _text: None).run()
    except BaseException:
        sandbox.stop(directory)  # never leave a sandbox behind
        raise
    state = sandbox.read_state(directory) or state
    operator = scenario["operator"]
    clients = SandboxClients.for_state(state, scenario["subscriptionId"], operator["objectId"], operator["name"])
    return state, clients, seeded


def key_client(clients: SandboxClients, seeded: dict[str, Any]) -> Any:
    vault_uri = next(iter(seeded["vaults"].values()))["uri"]
    return clients.key_client(vault_uri)


def wait_until_subscribed(state: dict[str, Any], directory: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = sandbox.read_state(directory) or state
        report = sandbox.control(current, "GET", "/_sandbox/eventSubscriptions")
        if report and all(item.get("provisioningState") == "Succeeded" for item in report.values()):
            return
        time.sleep(0.2)
    raise RuntimeError("the function app was not subscribed to the vault's events in time")


def wait_until_the_controller_is_idle(state: dict[str, Any], *, quiet: float = 3.0, timeout: float = 180.0) -> None:
    """Until the controller has made no ARM call for ``quiet`` seconds: building the estate sends it a
    resource event per resource created, whose drift re-reads (about 1,800 ARM calls) otherwise land in the
    first rotation's measurement."""
    deadline, last, since = time.monotonic() + timeout, -1, time.monotonic()
    while time.monotonic() < deadline:
        counters = sandbox.control(state, "GET", "/_sandbox/counters")
        calls = sum(counters["arm"].get(counters["controllerObjectId"], {}).values())
        if calls != last:
            last, since = calls, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.5)
    raise RuntimeError(f"the controller was still busy after {timeout:.0f} s")


def controller_runs(directory: Path, scenario: dict[str, Any], *, runs: int, accounts: int,
                    key_name: str) -> list[dict[str, Any]]:
    state, clients, seeded = start(directory, scenario, functions=True)
    try:
        wait_until_subscribed(state, directory)
        wait_until_the_controller_is_idle(state)
        keys = key_client(clients, seeded)
        results = []
        for _ in range(runs):
            sandbox.control(state, "DELETE", "/_sandbox/counters")
            started = time.perf_counter()
            version = keys.rotate_key(key_name).properties.version
            deadline = started + 120
            while accounts_on(clients, version)[1] < accounts:
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"not every account adopted {version} within 120 s: "
                                       f"{not_adopted(clients, version)}\n{host_log_tail(directory)}")
                time.sleep(0.05)
            elapsed = time.perf_counter() - started
            counters = sandbox.control(state, "GET", "/_sandbox/counters")
            controller = counters["controllerObjectId"]
            arm_calls = sum(counters["arm"].get(controller, {}).values())
            by_method = counters["arm"].get(controller, {})
            # The controller's POSTs are Resource Graph queries, which ARM counts as reads.
            arm_writes = sum(count for method, count in by_method.items() if method in ("PUT", "PATCH", "DELETE"))
            results.append({
                "seconds": elapsed,
                "arm_calls": arm_calls,
                "arm_writes": arm_writes,
                "resource_graph_queries": by_method.get("POST", 0),
                "keyvault_calls": counters["keyvaultByCaller"].get(controller, 0),
            })
        return results
    finally:
        sandbox.stop(directory)


def daily_adoption(directory: Path, scenario: dict[str, Any], *, key_name: str, versionless: int) -> dict[str, Any]:
    """Azure's own behaviour: no controller; advance the sandbox clock an hour at a time."""
    without_controller = {**scenario, "eventSubscriptions": []}  # nothing to deliver to
    state, clients, seeded = start(directory, without_controller, functions=False)
    try:
        version = key_client(clients, seeded).rotate_key(key_name).properties.version
        hours = 0
        while accounts_on(clients, version)[0] < versionless:
            if hours >= 72:
                raise RuntimeError("versionless accounts did not adopt within 72 sandbox hours")
            sandbox.control(state, "POST", "/_sandbox/clock/advance", {"seconds": 3600})
            hours += 1
        pinned_moved = accounts_on(clients, version)[0] - versionless
        return {"versionless_sandbox_hours": hours, "pinned_adopted": pinned_moved}
    finally:
        sandbox.stop(directory)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--accounts", type=int, default=50)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    scenario = bench_scenario(args.accounts)
    key_name = scenario["keys"][0]["name"]
    with tempfile.TemporaryDirectory(prefix="bench-rotation-") as work:
        runs = controller_runs(Path(work) / "controller", scenario, runs=args.runs, accounts=args.accounts,
                               key_name=key_name)
        baseline = daily_adoption(Path(work) / "baseline", scenario, key_name=key_name,
                                  versionless=args.accounts - args.accounts // 2)
    seconds = [run["seconds"] for run in runs]
    median, p95 = statistics.median(seconds), percentile(seconds, 0.95)
    baseline_seconds = baseline["versionless_sandbox_hours"] * 3600
    print(json.dumps({
        "benchmark": "rotation_latency",
        "accounts": args.accounts,
        "pinned_update": args.accounts // 2,
        "versionless": args.accounts - args.accounts // 2,
        "runs": args.runs,
        "adoption_seconds_median": round(median, 3),
        "adoption_seconds_p95": round(p95, 3),
        "target_p95_seconds": 2.0,
        "arm_calls_median": statistics.median(run["arm_calls"] for run in runs),
        "arm_calls_per_account_median": round(statistics.median(run["arm_calls"] for run in runs) / args.accounts, 2),
        "arm_writes_median": statistics.median(run["arm_writes"] for run in runs),
        "arm_writes_minimum": args.accounts // 2 + 2 * (args.accounts - args.accounts // 2),
        "keyvault_calls_median": statistics.median(run["keyvault_calls"] for run in runs),
        "baseline_daily_adoption_versionless_sandbox_seconds": baseline_seconds,
        "baseline_pinned_adopted": baseline["pinned_adopted"],
        "speedup_vs_daily_adoption_p95": round(baseline_seconds / p95, 1) if p95 else None,
        "per_run": [{key: round(value, 3) if isinstance(value, float) else value for key, value in run.items()}
                    for run in runs],
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

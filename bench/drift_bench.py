"""Drift latency: from a change made through ARM to its alert at the webhook sink, with no sweep running.

The rotation scenario in the local sandbox with the controller's function app, plus four more vaults (each
with its key and a storage account using it) to delete. Five kinds of change, made with the unmodified
azure-mgmt SDKs, each four times (20 changes): the vault firewall turned on (CMK-007), the storage
identity's access policy removed (CMK-006), an account switched to Microsoft-managed keys (CMK-001), an
encryption scope disabled (CMK-019), a vault deleted (CMK-013). Each change is timed from the SDK call to
the "opened" notice of that rule and resource at the sink; the revertible ones are then reverted and the
bench waits for the "resolved" notice (not timed) before the next change.

Baseline, measured in the same run: one full compliance sweep (``cmkctl sweep``, the app's settings and
identity) over the same estate; without drift detection a change waits for the timer's next sweep
(CMK_SWEEP_SCHEDULE, every 6 hours by default: 3 hours on average) plus that sweep's run time.

The machine is shared: quote the medians. Prints one JSON line. Usage: .venv/bin/python bench/drift_bench.py
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from azure.mgmt.keyvault.models import (  # noqa: E402
    AccessPolicyEntry,
    AccessPolicyUpdateKind,
    NetworkRuleSet,
    Permissions,
    VaultAccessPolicyParameters,
    VaultAccessPolicyProperties,
    VaultPatchParameters,
    VaultPatchProperties,
)
from azure.mgmt.storage.models import (  # noqa: E402
    Encryption,
    EncryptionIdentity,
    EncryptionScope,
    KeyVaultProperties,
    StorageAccountUpdateParameters,
)

from emulators import sandbox  # noqa: E402 - after the path set-up: bench runs as a script
from emulators.seed import SandboxClients, Seeder, load_scenario  # noqa: E402

GROUP = "rg-cmk-rotation"
ROUNDS = 4
#: A change whose alert has not arrived by then counts as missed (the target is 5 s at p95).
MISSED_AFTER_SECONDS = 30.0
SWEEP_INTERVAL_SECONDS = 6 * 3600


def bench_scenario() -> dict[str, Any]:
    scenario = copy.deepcopy(load_scenario("rotation"))
    scenario["name"] = "drift-bench"
    main_vault, key = scenario["vaults"][0], scenario["keys"][0]
    for index in range(1, ROUNDS + 1):
        vault = copy.deepcopy(main_vault)
        vault["name"] = f"kv-drift-{index}"
        vault["diagnosticSettings"] = []
        scenario["vaults"].append(vault)
        scenario["keys"].append({**copy.deepcopy(key), "vault": vault["name"]})
        scenario["storageAccounts"].append({
            "name": f"stdrift{index}", "resourceGroup": GROUP, "sku": "Standard_LRS", "kind": "StorageV2",
            "identity": scenario["identities"][0]["name"],
            "cmk": {"vault": vault["name"], "key": key["name"], "pinned": False},
        })
    return scenario


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - the sandbox's loopback URLs
        return json.loads(response.read())


class Sink:
    def __init__(self, state: dict[str, Any]) -> None:
        self.url = f"{state['endpoints']['alertSink']}/_records"

    def count(self) -> int:
        return len(get_json(self.url))

    def wait(self, after: int, transition: str, rule: str, resource: str, timeout: float) -> float | None:
        """Seconds until a notice (past record ``after``) arrives; None when it does not within ``timeout``."""
        started = time.perf_counter()
        wanted = resource.rstrip("/").lower()
        while time.perf_counter() - started < timeout:
            for record in get_json(self.url)[after:]:
                body = record["body"]
                if (isinstance(body, dict) and body.get("transition") == transition
                        and (body.get("details") or {}).get("rule") == rule
                        and str(body.get("resource", "")).rstrip("/").lower() == wanted):
                    return time.perf_counter() - started
            time.sleep(0.02)
        return None


def changes(clients: SandboxClients, state: dict[str, Any], seeded: dict[str, Any],
            scenario: dict[str, Any]) -> list[tuple[str, str, str, Callable[[], None], Callable[[], None] | None]]:
    """(kind, rule, resource, change, revert) for the five kinds."""
    vault_name = scenario["vaults"][0]["name"]
    vault = seeded["vaults"][vault_name]
    keyvault, storage = clients.keyvault_mgmt, clients.storage
    identity = seeded["identities"]["id-storage-cmk"]
    entry = AccessPolicyEntry(tenant_id=state["tenantId"], object_id=identity["principalId"],
                              permissions=Permissions(keys_property=["get", "wrapKey", "unwrapKey"]))

    def policy(kind: str) -> Callable[[], None]:
        return lambda: keyvault.vaults.update_access_policy(
            GROUP, vault_name, kind, VaultAccessPolicyParameters(
                properties=VaultAccessPolicyProperties(access_policies=[entry])))

    def firewall(action: str, bypass: str) -> Callable[[], None]:
        return lambda: keyvault.vaults.update(GROUP, vault_name, VaultPatchParameters(
            properties=VaultPatchProperties(network_acls=NetworkRuleSet(default_action=action, bypass=bypass))))

    pinned = storage.storage_accounts.get_properties(GROUP, "stcmkpinned")
    cmk = Encryption(key_source="Microsoft.Keyvault", key_vault_properties=KeyVaultProperties(
        key_name=scenario["keys"][0]["name"], key_vault_uri=vault["uri"]),
        encryption_identity=EncryptionIdentity(encryption_user_assigned_identity=identity["id"]))

    def account_keys(encryption: Encryption) -> Callable[[], None]:
        return lambda: storage.storage_accounts.update(GROUP, "stcmkpinned",
                                                       StorageAccountUpdateParameters(encryption=encryption))

    scope = storage.encryption_scopes.get(GROUP, "stcmkauto", "cmkscope")

    def scope_state(value: str) -> Callable[[], None]:
        return lambda: storage.encryption_scopes.patch(GROUP, "stcmkauto", "cmkscope",
                                                       EncryptionScope(state=value))

    auto = storage.storage_accounts.get_properties(GROUP, "stcmkauto")
    kinds = [
        ("firewall-on", "CMK-007", vault["id"], firewall("Deny", "None"), firewall("Allow", "AzureServices")),
        ("access-policy-removed", "CMK-006", auto.id, policy(AccessPolicyUpdateKind.REMOVE),
         policy(AccessPolicyUpdateKind.ADD)),
        ("microsoft-managed-keys", "CMK-001", pinned.id, account_keys(Encryption(key_source="Microsoft.Storage")),
         account_keys(cmk)),
        ("scope-disabled", "CMK-019", scope.id, scope_state("Disabled"), scope_state("Enabled")),
    ]
    return kinds


def deletions(clients: SandboxClients, seeded: dict[str, Any], scenario: dict[str, Any]) -> list[
        tuple[str, str, str, Callable[[], None], None]]:
    key = scenario["keys"][0]["name"]
    found = []
    for index in range(1, ROUNDS + 1):
        name = f"kv-drift-{index}"
        uri = f"{seeded['vaults'][name]['uri'].rstrip('/')}/keys/{key}"
        found.append(("vault-deleted", "CMK-013", uri,
                      lambda name=name: clients.keyvault_mgmt.vaults.delete(GROUP, name), None))
    return found


def wait_until_ready(state: dict[str, Any], directory: Path, subscription: str) -> None:
    name = f"{subscription}-on-resource-event".lower()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        statuses = get_json(f"{state['endpoints']['eventGridAdmin']}/subscriptions")
        if any(item["name"].lower() == name and item["provisioning_state"] == "Succeeded" for item in statuses) \
                and sandbox.health(directory).get("running"):
            return
        time.sleep(0.2)
    raise RuntimeError("the function app was not subscribed to the subscription's resource events in time")


def full_sweep_seconds(directory: Path) -> float:
    values = json.loads((directory / "local.settings.json").read_text())["Values"]
    cmkctl = Path(sys.executable).parent / "cmkctl"
    started = time.perf_counter()
    done = subprocess.run(  # noqa: S603 - the project's own console script
        [str(cmkctl), "sweep", "--format", "json"],
        capture_output=True, text=True, timeout=300, env={**os.environ, **values}, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode not in (0, 1):
        raise RuntimeError(f"cmkctl sweep failed ({done.returncode}): {done.stderr[-500:]}")
    return elapsed


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args(argv)
    scenario = bench_scenario()
    with tempfile.TemporaryDirectory(prefix="bench-drift-") as work:
        directory = Path(work) / "sandbox"
        state = sandbox.start_detached(directory, timeout=120)
        try:
            seeded = Seeder(directory, scenario, log=lambda _text: None).run()
            state = sandbox.read_state(directory) or state
            operator = scenario["operator"]
            clients = SandboxClients.for_state(state, scenario["subscriptionId"], operator["objectId"],
                                               operator["name"])
            wait_until_ready(state, directory, scenario["subscriptionId"])
            time.sleep(3)  # the seeding's own resource events settle first
            sink = Sink(state)
            revertible = changes(clients, state, seeded, scenario)
            deleted = deletions(clients, seeded, scenario)
            plan = [kind for index in range(ROUNDS) for kind in (*revertible, deleted[index])]
            per_change: list[dict[str, Any]] = []
            for kind, rule, resource, change, revert in plan:
                mark = sink.count()
                started = time.perf_counter()
                change()
                arrived = sink.wait(mark, "opened", rule, resource, MISSED_AFTER_SECONDS)
                per_change.append({"kind": kind, "seconds": None if arrived is None
                                   else round(time.perf_counter() - started, 3)})
                if revert is not None:
                    mark = sink.count()
                    revert()
                    sink.wait(mark, "resolved", rule, resource, MISSED_AFTER_SECONDS)
            sweep_seconds = full_sweep_seconds(directory)
        finally:
            sandbox.stop(directory)
    seconds = [item["seconds"] for item in per_change if item["seconds"] is not None]
    median = statistics.median(seconds) if seconds else None
    p95 = percentile(seconds, 0.95) if seconds else None
    by_kind: dict[str, list[float]] = {}
    for item in per_change:
        if item["seconds"] is not None:
            by_kind.setdefault(item["kind"], []).append(item["seconds"])
    baseline_average = SWEEP_INTERVAL_SECONDS / 2 + sweep_seconds
    print(json.dumps({
        "benchmark": "drift_latency",
        "changes": len(per_change),
        "kinds": sorted({item["kind"] for item in per_change}),
        "missed": sum(1 for item in per_change if item["seconds"] is None),
        "change_to_alert_seconds_median": round(median, 3) if median is not None else None,
        "change_to_alert_seconds_p95": round(p95, 3) if p95 is not None else None,
        "target_p95_seconds": 5.0,
        "median_by_kind": {kind: round(statistics.median(values), 3) for kind, values in sorted(by_kind.items())},
        "baseline_full_sweep_seconds": round(sweep_seconds, 3),
        "baseline_sweep_interval_seconds": SWEEP_INTERVAL_SECONDS,
        "baseline_average_detection_seconds": round(baseline_average, 1),
        "speedup_vs_sweep_average": round(baseline_average / median, 1) if median else None,
        "per_change": per_change,
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The compliance sweep's gather over a large estate: wall time, calls per resource, peak memory.

An estate of ``--accounts`` storage accounts over ``--vaults`` access-policy vaults holding ``--keys`` keys
in all (spread evenly; every account uses one key with CMK through one user-assigned identity per
vault, every tenth account has an encryption scope on its key) is built in the sandbox's ARM: vaults,
identities and keys through the unmodified management and Key Vault SDKs on a thread pool; accounts
and scopes as ARM requests served in-process by the emulator (``ArmEmulator.dispatch_json``: the same
handlers and validation, without HTTP, so that 10,000 accounts build in minutes). Resource Graph is
mounted on the ARM origin, as in the sandbox. Then the gatherer (controller/adapters/estate_gatherer.py)
reads the estate and the rules evaluate it. Measured:

- wall time and process CPU time (the emulators run in this process, so CPU counts both sides) of
  ``--runs`` gathers, median; the machine is shared, so CPU time is the steadier figure;
- the baseline, measured in the same run: one gather by a single reader thread (``--workers 1``), the
  same requests one after the other;
- ARM requests by kind (counted by a middleware on the ARM origin) and Key Vault data-plane requests
  (the vaults' own operation counters), divided by the resources they are about: each vault and key is
  read once whatever the number of accounts;
- peak memory allocated during one more gather (tracemalloc; it slows the run, so that run is not timed).

Prints one JSON line. Usage: .venv/bin/python bench/sweep_bench.py [--accounts 1000] [--vaults 100]
[--keys 300] [--workers 8] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiohttp import web  # noqa: E402 - after the path set-up: bench runs as a script
from azure.keyvault.keys import KeyClient  # noqa: E402
from azure.mgmt.keyvault import KeyVaultManagementClient  # noqa: E402
from azure.mgmt.keyvault.models import (  # noqa: E402
    AccessPolicyEntry,
    Permissions,
    Sku,
    VaultCreateOrUpdateParameters,
    VaultProperties,
)
from azure.mgmt.msi import ManagedServiceIdentityClient  # noqa: E402
from azure.mgmt.msi.models import Identity as MsiIdentity  # noqa: E402

from controller.adapters.credentials import ArmConnection  # noqa: E402
from controller.adapters.estate_gatherer import EstateGatherer  # noqa: E402
from controller.compliance.estate import Estate  # noqa: E402
from controller.compliance.rules import RuleSettings, evaluate  # noqa: E402
from controller.vault_policy import VaultPolicy  # noqa: E402
from emulators.arm import ArmEmulator  # noqa: E402
from emulators.bus import SandboxBus  # noqa: E402
from emulators.clock import SandboxClock  # noqa: E402
from emulators.keyvault import KeyVaultEmulator  # noqa: E402
from emulators.query_endpoints import mount_resource_graph  # noqa: E402

SUBSCRIPTION = "5f2a1c3e-0000-4000-8000-0000000000c1"
GROUP = "rg-sweep-bench"
CONTROLLER = "c0000000-0000-4000-8000-00000000be0c"
ARM_SCOPE = ["https://management.azure.com/.default"]


def _kind(path: str) -> str:
    """What an ARM request is about, from its path (lower case)."""
    for fragment, kind in (("/microsoft.resourcegraph/", "resource graph"), ("/versions", "key versions"),
                           ("/keys", "keys"), ("/diagnosticsettings", "diagnostics"),
                           ("/roleassignments", "role assignments"), ("/roledefinitions", "role definitions"),
                           ("/encryptionscopes", "encryption scopes"), ("/deletedvaults", "deleted vaults"),
                           ("/userassignedidentities", "identities"), ("/storageaccounts", "storage accounts"),
                           ("/vaults", "vaults")):
        if fragment in path:
            return kind
    return "other"


def build(arm: ArmEmulator, accounts: int, vaults: int, keys: int, workers: int) -> list[str]:
    """The estate; returns the vault origins."""
    cred = arm.credential(CONTROLLER)
    options: dict[str, Any] = {"base_url": arm.url, "connection_verify": arm.ca_path, "credential_scopes": ARM_SCOPE}
    keyvault = KeyVaultManagementClient(cred, SUBSCRIPTION, **options)
    msi = ManagedServiceIdentityClient(cred, SUBSCRIPTION, **options)
    arm.ensure_resource_group(SUBSCRIPTION, GROUP)

    def vault(index: int) -> tuple[str, str, str]:
        identity = msi.user_assigned_identities.create_or_update(GROUP, f"id-bench-{index}",
                                                                 MsiIdentity(location="westeurope"))
        policies = [AccessPolicyEntry(tenant_id=arm.tenant_id, object_id=principal, permissions=Permissions(
            keys_property=permissions)) for principal, permissions in (
            (CONTROLLER, ["all"]), (identity.principal_id, ["get", "wrapKey", "unwrapKey"]))]
        created = keyvault.vaults.begin_create_or_update(GROUP, f"kvbench{index}", VaultCreateOrUpdateParameters(
            location="westeurope", properties=VaultProperties(
                tenant_id=arm.tenant_id, sku=Sku(family="A", name="premium"), enable_soft_delete=True,
                soft_delete_retention_in_days=7, enable_purge_protection=True, access_policies=policies))).result()
        client = KeyClient(created.properties.vault_uri, cred, verify_challenge_resource=False,
                           connection_verify=arm.ca_path)
        for key in range(index, keys, vaults):
            client.create_rsa_key(f"cmk-{key}", size=2048)
        return created.properties.vault_uri, identity.id, created.name

    with ThreadPoolExecutor(max_workers=workers) as pool:
        built = list(pool.map(vault, range(vaults)))

    accounts_path = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{GROUP}/providers/Microsoft.Storage/storageAccounts"
    for index in range(accounts):
        key = index % keys
        vault_uri, identity, _ = built[key % vaults]
        account = f"{accounts_path}/stbench{index:06d}"
        arm.dispatch_json("PUT", account, {
            "sku": {"name": "Standard_LRS"}, "kind": "StorageV2", "location": "westeurope",
            "identity": {"type": "UserAssigned", "userAssignedIdentities": {identity: {}}},
            "properties": {"encryption": {
                "keySource": "Microsoft.Keyvault",
                "keyvaultproperties": {"keyname": f"cmk-{key}", "keyvaulturi": vault_uri},
                "identity": {"userAssignedIdentity": identity}}}})
        if index % 10 == 0:
            key_uri = f"{vault_uri.rstrip('/')}/keys/cmk-{key}"
            arm.dispatch_json("PUT", f"{account}/encryptionScopes/scope1", {"properties": {
                "source": "Microsoft.KeyVault", "keyVaultProperties": {"keyUri": key_uri}}})
    return [vault_uri.rstrip("/") for vault_uri, _, _ in built]


@dataclass
class Gather:
    """One timed gather: its estate, wall and CPU seconds, and the requests it made."""

    estate: Estate
    seconds: float
    cpu_seconds: float
    arm_requests: Counter[str]
    data_plane_requests: int


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--vaults", type=int, default=100)
    parser.add_argument("--keys", type=int, default=300)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if not 1 <= args.vaults <= args.keys:
        parser.error("--keys must be at least --vaults (each vault holds a key), and --vaults at least 1")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    with tempfile.TemporaryDirectory() as directory:
        keyvault = KeyVaultEmulator(SandboxClock(), SandboxBus(), directory=Path(directory))
        arm = ArmEmulator(keyvault=keyvault, storage_tick_seconds=3600)
        mount_resource_graph(arm.app, arm.resources_snapshot, clock=arm.clock)
        counted: Counter[str] = Counter()

        @web.middleware
        async def count(request: web.Request, handler: Any) -> web.StreamResponse:
            counted[_kind(request.path.lower())] += 1
            response: web.StreamResponse = await handler(request)
            return response

        arm.app.middlewares.append(count)
        with arm:
            started = time.perf_counter()
            origins = build(arm, args.accounts, args.vaults, args.keys, args.workers)
            build_seconds = time.perf_counter() - started

            def gatherer_of(workers: int) -> EstateGatherer:
                return EstateGatherer(
                    ArmConnection(arm.credential(CONTROLLER), endpoint=arm.url, connection_verify=arm.ca_path),
                    key_vault_credential=arm.credential(CONTROLLER), policy=VaultPolicy.of(origins),
                    custom_origins=origins, key_vault_verify=arm.ca_path, workers=workers)

            def gather(gatherer: EstateGatherer) -> Gather:
                counted.clear()
                for state in keyvault.vaults.values():
                    state.counters.reset()
                wall, cpu = time.perf_counter(), time.process_time()
                estate = gatherer.gather([SUBSCRIPTION], datetime.now(UTC))
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                return Gather(estate, wall, cpu, Counter(counted),
                              sum(state.counters.total for state in keyvault.vaults.values()))

            gatherer = gatherer_of(args.workers)
            runs = [gather(gatherer) for _ in range(args.runs)]
            baseline = gather(gatherer_of(1))
            tracemalloc.start()
            gather(gatherer)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            estate = runs[-1].estate
            started = time.perf_counter()
            findings = evaluate(estate, RuleSettings(), datetime.now(UTC))
            evaluate_seconds = time.perf_counter() - started
    wall = statistics.median(run.seconds for run in runs)
    cpu = statistics.median(run.cpu_seconds for run in runs)
    requests = runs[-1].arm_requests
    print(json.dumps({
        "accounts": args.accounts, "vaults": args.vaults, "keys": args.keys, "workers": args.workers,
        "runs": args.runs, "build_seconds": round(build_seconds, 1),
        "gather_seconds_median": round(wall, 2), "gather_cpu_seconds_median": round(cpu, 2),
        "baseline_gather_seconds": round(baseline.seconds, 2),
        "baseline_gather_cpu_seconds": round(baseline.cpu_seconds, 2),
        "speedup_vs_baseline": round(baseline.seconds / wall, 2),
        "cpu_ratio_vs_baseline": round(cpu / baseline.cpu_seconds, 2),
        "evaluate_seconds": round(evaluate_seconds, 3), "peak_memory_mib": round(peak / 2**20, 1),
        "arm_requests": dict(sorted(requests.items())), "arm_requests_total": sum(requests.values()),
        "baseline_arm_requests_total": sum(baseline.arm_requests.values()),
        "arm_requests_per_vault": round(sum(requests.values()) / args.vaults, 2),
        "key_requests_per_key": round((requests["keys"] + requests["key versions"]) / args.keys, 2),
        "keyvault_data_plane_requests": runs[-1].data_plane_requests,
        "scopes_gathered": sum(len(account.encryption_scopes or ()) for account in estate.storage_accounts),
        "baseline_scopes_gathered": sum(len(account.encryption_scopes or ())
                                        for account in baseline.estate.storage_accounts),
        "read_failures": len(estate.read_failures), "findings": len(findings),
    }))


if __name__ == "__main__":
    main()

"""The compliance sweep's gather over a large estate: wall time, calls per resource, peak memory.

An estate of ``--accounts`` storage accounts over ``--vaults`` access-policy vaults holding ``--keys`` keys
in all (spread evenly; every account uses one key with CMK through one user-assigned identity per
vault) is built in the sandbox's ARM through the unmodified management and Key Vault SDKs, on a thread
pool. Then the gatherer (controller/adapters/estate_gatherer.py) reads it once and the rules evaluate
it. Measured:

- wall time of the gather and of the evaluation;
- ARM requests by kind (counted by a middleware on the ARM origin) and Key Vault data-plane requests
  (the vaults' own operation counters), divided by the resources they are about: the design says each
  vault and key is read once whatever the number of accounts;
- peak memory of the process during the gather (tracemalloc).

Prints one JSON line. Usage: .venv/bin/python bench/sweep_bench.py [--accounts 1000] [--vaults 100]
[--keys 300] [--workers 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
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
from azure.mgmt.storage import StorageManagementClient  # noqa: E402
from azure.mgmt.storage.models import (  # noqa: E402
    Encryption,
    EncryptionIdentity,
    Identity,
    KeyVaultProperties,
    StorageAccountCreateParameters,
    UserAssignedIdentity,
)
from azure.mgmt.storage.models import Sku as StorageSku  # noqa: E402

from controller.adapters.credentials import ArmConnection  # noqa: E402
from controller.adapters.estate_gatherer import EstateGatherer  # noqa: E402
from controller.compliance.rules import RuleSettings, evaluate  # noqa: E402
from controller.vault_policy import VaultPolicy  # noqa: E402
from emulators.arm import ArmEmulator  # noqa: E402
from emulators.bus import SandboxBus  # noqa: E402
from emulators.clock import SandboxClock  # noqa: E402
from emulators.keyvault import KeyVaultEmulator  # noqa: E402

SUBSCRIPTION = "5f2a1c3e-0000-4000-8000-0000000000c1"
GROUP = "rg-sweep-bench"
CONTROLLER = "c0000000-0000-4000-8000-00000000be0c"
ARM_SCOPE = ["https://management.azure.com/.default"]


def _kind(path: str) -> str:
    """What an ARM request is about, from its path (lower case)."""
    for fragment, kind in (("/versions", "key versions"), ("/keys", "keys"), ("/diagnosticsettings", "diagnostics"),
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
    storage = StorageManagementClient(cred, SUBSCRIPTION, **options)
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

    def account(index: int) -> None:
        key = index % keys
        vault_uri, identity, _ = built[key % vaults]
        name = f"stbench{index:06d}"
        storage.storage_accounts.begin_create(GROUP, name, StorageAccountCreateParameters(
            sku=StorageSku(name="Standard_LRS"), kind="StorageV2", location="westeurope",
            identity=Identity(type="UserAssigned", user_assigned_identities={identity: UserAssignedIdentity()}),
            encryption=Encryption(key_source="Microsoft.Keyvault", key_vault_properties=KeyVaultProperties(
                key_name=f"cmk-{key}", key_vault_uri=vault_uri),
                encryption_identity=EncryptionIdentity(encryption_user_assigned_identity=identity)))).result()

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(account, range(accounts)))
    return [vault_uri.rstrip("/") for vault_uri, _, _ in built]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--vaults", type=int, default=100)
    parser.add_argument("--keys", type=int, default=300)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    if not 1 <= args.vaults <= args.keys:
        parser.error("--keys must be at least --vaults (each vault holds a key), and --vaults at least 1")
    with tempfile.TemporaryDirectory() as directory:
        keyvault = KeyVaultEmulator(SandboxClock(), SandboxBus(), directory=Path(directory))
        arm = ArmEmulator(keyvault=keyvault, storage_tick_seconds=3600)
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
            counted.clear()
            for state in keyvault.vaults.values():
                state.counters.reset()
            gatherer = EstateGatherer(
                ArmConnection(arm.credential(CONTROLLER), endpoint=arm.url, connection_verify=arm.ca_path),
                key_vault_credential=arm.credential(CONTROLLER), policy=VaultPolicy.of(origins),
                custom_origins=origins, key_vault_verify=arm.ca_path)
            tracemalloc.start()
            started = time.perf_counter()
            estate = gatherer.gather([SUBSCRIPTION], datetime.now(UTC))
            gather_seconds = time.perf_counter() - started
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            started = time.perf_counter()
            findings = evaluate(estate, RuleSettings(), datetime.now(UTC))
            evaluate_seconds = time.perf_counter() - started
            data_plane = sum(state.counters.total for state in keyvault.vaults.values())
    print(json.dumps({
        "accounts": args.accounts, "vaults": args.vaults, "keys": args.keys,
        "build_seconds": round(build_seconds, 1), "gather_seconds": round(gather_seconds, 2),
        "evaluate_seconds": round(evaluate_seconds, 3), "peak_memory_mib": round(peak / 2**20, 1),
        "arm_requests": dict(sorted(counted.items())), "arm_requests_total": sum(counted.values()),
        "arm_requests_per_vault": round(sum(counted.values()) / args.vaults, 2),
        "key_requests_per_key": round((counted["keys"] + counted["key versions"]) / args.keys, 2),
        "keyvault_data_plane_requests": data_plane,
        "read_failures": len(estate.read_failures), "findings": len(findings),
    }))


if __name__ == "__main__":
    main()

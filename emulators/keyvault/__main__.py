"""Run emulated vaults from a JSON config: ``python -m emulators.keyvault config.json``.

Config (every field optional except vaults[].name)::

    {
      "directory": ".sandbox/keyvault",   # ca.pem (+ ca-key.pem, reused next run), keyvault.json
      "host": "127.0.0.1", "adminPort": 0, "tenantId": "<guid>", "tickSeconds": 1.0,
      "vaults": [
        {"name": "kv1", "subscriptionId": "<guid>", "resourceGroup": "rg", "location": "westeurope",
         "host": "127.0.0.2", "port": 0,
         "properties": {"enableRbacAuthorization": false, "softDeleteRetentionInDays": 90,
                        "enablePurgeProtection": true, "enableSoftDelete": true, "sku": {"name": "premium"},
                        "accessPolicies": [...], "networkAcls": {...}},
         "roleAssignments": [{"principalId": "<oid>", "roleDefinitionId": "<guid>", "scope": "<arm id>"}]}
      ]
    }

Prints one JSON line {"caPath", "adminUrl", "vaults": {name: {"uri", "resourceId"}}} (also written to
<directory>/keyvault.json) and serves until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from .ca import SandboxCA
from .credential import DEFAULT_TENANT_ID
from .emulator import KeyVaultEmulator


def vault_kwargs(spec: dict[str, Any]) -> dict[str, Any]:
    props = spec.get("properties") or {}
    sku = props.get("sku") or {}
    return {
        "subscription_id": str(spec.get("subscriptionId") or "00000000-0000-0000-0000-000000000000"),
        "resource_group": str(spec.get("resourceGroup") or "rg-sandbox"),
        "location": str(spec.get("location") or "westeurope"),
        "tenant_id": props.get("tenantId") or spec.get("tenantId"),
        "soft_delete_retention_days": int(props.get("softDeleteRetentionInDays", 90)),
        "purge_protection": bool(props.get("enablePurgeProtection", True)),
        "enable_soft_delete": bool(props.get("enableSoftDelete", True)),
        "rbac": bool(props.get("enableRbacAuthorization", False)),
        "sku": str(sku.get("name", "premium") if isinstance(sku, dict) else sku),
        "access_policies": props.get("accessPolicies") or [],
        "role_assignments": spec.get("roleAssignments") or [],
        "network_acls": props.get("networkAcls"),
        "host": spec.get("host"),
        "port": int(spec.get("port") or 0),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emulators.keyvault", description=__doc__.split("\n")[0])
    parser.add_argument("config", help="JSON config file ('-' for stdin)")
    args = parser.parse_args(argv)
    raw = sys.stdin.read() if args.config == "-" else Path(args.config).read_text(encoding="utf-8")
    config = json.loads(raw)
    directory = Path(config.get("directory") or ".sandbox/keyvault")
    emulator = KeyVaultEmulator(
        ca=SandboxCA(directory, persist=True),
        tenant_id=str(config.get("tenantId") or DEFAULT_TENANT_ID),
        host=str(config.get("host") or "127.0.0.1"),
        admin_port=int(config.get("adminPort") or 0),
        tick_seconds=float(config.get("tickSeconds") or 1.0),
        directory=directory,
    )
    for spec in config.get("vaults") or []:
        emulator.add_vault(str(spec["name"]), **vault_kwargs(spec))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    emulator.start()
    try:
        summary = {
            "caPath": emulator.ca_path,
            "adminUrl": emulator.admin_url,
            "vaults": {v.name: {"uri": v.uri, "resourceId": v.resource_id} for v in emulator.vaults.values()},
        }
        (directory / "keyvault.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        sys.stdout.write(json.dumps(summary) + "\n")
        sys.stdout.flush()
        stop.wait()
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m emulators.keyvault`` runs vaults from a JSON config and prints their URIs."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from azure.keyvault.keys import KeyClient

from emulators.keyvault import SandboxCredential

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_entry_point_serves_configured_vaults(tmp_path: Path) -> None:
    config = {
        "directory": str(tmp_path),
        "vaults": [
            {
                "name": "kv-cli",
                "subscriptionId": "cccccccc-0000-0000-0000-000000000000",
                "resourceGroup": "rg-cli",
                "host": "127.0.0.4",
                "properties": {"accessPolicies": [{"objectId": "cli-user", "permissions": {"keys": ["all"]}}]},
            }
        ],
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "emulators.keyvault", str(path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        summary = json.loads(proc.stdout.readline())
        vault = summary["vaults"]["kv-cli"]
        assert vault["uri"].startswith("https://127.0.0.4:")
        assert vault["resourceId"].endswith("/resourceGroups/rg-cli/providers/Microsoft.KeyVault/vaults/kv-cli")
        assert json.loads((tmp_path / "keyvault.json").read_text(encoding="utf-8")) == summary
        ctx = ssl.create_default_context(cafile=summary["caPath"])
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(vault["uri"] + "keys?api-version=2025-07-01", context=ctx)  # noqa: S310
        assert info.value.code == 401
        client = KeyClient(
            vault["uri"],
            SandboxCredential("cli-user"),
            verify_challenge_resource=False,
            connection_verify=summary["caPath"],
        )
        assert client.create_rsa_key("from-cli", size=2048).name == "from-cli"
        with urllib.request.urlopen(summary["adminUrl"] + "/vaults/kv-cli", context=ctx) as response:  # noqa: S310
            assert json.loads(response.read())["sandbox"]["keys"] == ["from-cli"]
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0
        if proc.stdout is not None:
            proc.stdout.close()

"""`cmkctl sandbox up | status | env | seed rotation | down` in a temporary directory, as a user runs them.

The commands run as separate processes (the installed console script's module), so the sandbox really is
detached from the caller; after `down` no process the sandbox started is left: neither the recorded
pids (orchestrator, Azurite, Functions host) nor anything whose command line names the directory.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emulators import sandbox

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def cmkctl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "controller.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.timeout(120)
def test_up_status_env_seed_down_leaves_no_process(tmp_path: Path) -> None:
    directory = tmp_path / "sandbox"
    where = ("--dir", str(directory))
    started = time.monotonic()
    try:
        up = cmkctl("sandbox", "up", *where)
        assert up.returncode == 0, up.stderr
        assert "sandbox running" in up.stdout

        state = json.loads((directory / sandbox.STATE_FILE).read_text())
        assert state["status"] == "running"
        assert sandbox.pid_alive(state["pid"]) and sandbox.pid_alive(state["children"]["azurite"])
        assert os.getpgid(state["pid"]) == state["pid"]  # its own process group, detached from ours
        assert Path(state["caPath"]).is_file() and Path(state["caBundle"]).is_file()

        status = cmkctl("sandbox", "status", "--json", *where)
        assert status.returncode == 0, status.stdout + status.stderr
        components = json.loads(status.stdout)["components"]
        assert {"azurite", "keyvault", "arm", "logAnalytics", "eventGrid", "alertSink", "functions"} <= set(components)
        assert all(component["ok"] for component in components.values())

        env = cmkctl("sandbox", "env", *where)
        assert env.returncode == 0, env.stderr
        exported = dict(
            shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in env.stdout.splitlines() if line
        )
        assert exported["CMK_ARM_ENDPOINT"] == state["endpoints"]["arm"]
        assert exported["REQUESTS_CA_BUNDLE"] == state["caBundle"]
        assert exported["AZURE_CLIENT_ID"] == state["controllerIdentity"]["clientId"]
        assert "127.0.0.1" in exported["AzureWebJobsStorage"]
        assert {"CMK_WORK_QUEUE", "CMK_LEDGER_TABLE", "CMK_SWEEP_SCHEDULE"} <= set(exported)

        seeded = cmkctl("sandbox", "seed", "rotation", *where)
        assert seeded.returncode == 0, seeded.stdout + seeded.stderr
        result = json.loads((directory / "seed-rotation.json").read_text())
        assert set(result["storageAccounts"]) == {"stcmkauto", "stcmkpinned"}
        assert len(next(iter(result["containers"].values()))["blobs"]) == 20
        subscription = next(iter(result["eventSubscriptions"].values()))
        assert subscription["provisioningState"] == "Succeeded"

        state = json.loads((directory / sandbox.STATE_FILE).read_text())
        vault_uri = result["vaults"]["kv-cmk-rotation"]["uri"].rstrip("/")
        settings = json.loads((directory / sandbox.SETTINGS_FILE).read_text())["Values"]
        assert settings["CMK_VAULTS"] == vault_uri
        assert sandbox.pid_alive(state["children"]["functions"])
        recorded = sandbox.recorded_pids(state)
        assert len(recorded) == 3
    finally:
        down = cmkctl("sandbox", "down", *where)
    assert down.returncode == 0, down.stdout + down.stderr
    assert [pid for pid in recorded if sandbox.pid_alive(pid)] == []
    assert sandbox.sandbox_processes(directory) == []

    stopped = cmkctl("sandbox", "status", *where)
    assert stopped.returncode == 3
    assert time.monotonic() - started < 90


def test_without_the_emulators_package_sandbox_commands_exit_2(tmp_path: Path) -> None:
    """The deployed app ships no emulators/: cmkctl still imports, and `sandbox` says why it cannot run."""
    code = (
        "import sys; sys.modules['emulators'] = None\n"
        "from controller.cli import main\n"
        f"sys.exit(main(['sandbox', 'up', '--dir', {str(tmp_path)!r}]))"
    )
    result = subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert "emulators package is missing" in result.stderr
    assert not (tmp_path / sandbox.STATE_FILE).exists()


@pytest.mark.timeout(180)
def test_make_demo_runs_end_to_end_and_cleans_up(tmp_path: Path) -> None:
    """What `make demo` runs: every step reports what the services answered, and nothing is left running."""
    directory = tmp_path / "demo"
    result = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "emulators.demo", "--dir", str(directory)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert ": delivered after" in out
    assert "on_key_event logged: key event accepted" in out
    assert "Adopted: account stcmkauto" in out and "alert webhook received: high PinnedToOldVersion stcmkpinned" in out
    after_poll = out.split("after the poll", 1)[1]
    assert "stcmkauto    (versionless)" in after_poll and "[latest]" in after_poll
    assert "(pinned" in after_poll and "[OLD]" in after_poll
    assert "cmkctl rewrap exited 0" in out and "after: 20 blobs" in out and "(latest)" in out
    assert "HTTP 403 KeyVaultEncryptionKeyNotFound" in out
    assert "bytes decrypted" in out
    assert "failed KeyUnwrap call(s)" in out and "caller id-storage-cmk" in out
    assert "no sandbox process left" in out
    assert sandbox.sandbox_processes(directory) == []

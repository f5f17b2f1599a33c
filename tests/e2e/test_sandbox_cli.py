"""`python -m emulators up | status | env | seed rotation | down` in a temporary directory, as a user runs them.

The commands run as separate processes from the repository root, so the sandbox really is detached from the
caller. After `down`, every process the sandbox recorded (orchestrator, Azurite, Functions host) is gone with
its process group, and processes it did not start are still there, whatever their arguments name.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from emulators import sandbox
from emulators.processes import Liveness, ProcessRecord, RecordedProcess, start_time
from tests.e2e.polling import wait_for
from tests.support.processes import live_members

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SH, SLEEP, BASH = (shutil.which(name) or name for name in ("sh", "sleep", "bash"))


def sandbox_command(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "emulators", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def recorded(directory: Path) -> dict[str, RecordedProcess]:
    processes, unreadable = ProcessRecord(directory).read()
    assert unreadable == []
    return {process.name: process for process in processes}


def assert_gone(processes: dict[str, RecordedProcess]) -> None:
    """Each process the sandbox recorded has exited, and so has every process of the group it created for it."""
    for process in processes.values():
        assert process.liveness() is Liveness.GONE, process
        assert process.process_group is not None and not live_members(process.process_group), process


@pytest.fixture
def bystanders() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes the test starts, each in a session of its own, that the sandbox must leave alone."""
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


VALIDATION_CODE = "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"


def validation_answer(functions: str, function_key: str) -> object:
    """POST /api/events?code=<function key> with Event Grid's subscription validation, as `up` says to call it."""
    delivery = [{"id": "1", "topic": "/subscriptions/x", "subject": "", "eventTime": "2026-12-04T00:00:00Z",
                 "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent", "dataVersion": "1",
                 "metadataVersion": "1", "data": {"validationCode": VALIDATION_CODE}}]
    headers = {"Content-Type": "application/json", "aeg-event-type": "SubscriptionValidation"}
    request = urllib.request.Request(f"{functions}/api/events?code={function_key}",  # noqa: S310 - loopback
                                      data=json.dumps(delivery).encode(), method="POST", headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
        return json.loads(response.read())


def test_up_status_env_seed_down_leaves_no_process(tmp_path: Path) -> None:
    directory = tmp_path / "sandbox"
    where = ("--dir", str(directory))
    processes: dict[str, RecordedProcess] = {}
    try:
        up = sandbox_command("up", *where)
        assert up.returncode == 0, up.stderr
        assert "sandbox running" in up.stdout
        assert f"no vaults yet: python -m emulators seed rotation --dir {directory}" in up.stdout

        state = json.loads((directory / sandbox.STATE_FILE).read_text())
        assert state["status"] == "running"
        # Before any vault: where the Functions host will answer, and with which key (its keys exist already).
        functions = state["functionsUrl"]
        keys_path = directory / "functions" / "host-keys.json"
        assert state["hostKeysPath"] == str(keys_path) and "functions" not in state["endpoints"]
        assert (f"Functions host {functions}: curl {functions}/api/health; POST {functions}/api/events?code=<the "
                f"'function' key in {keys_path}> with an Event Grid delivery\n"
                "                 (it starts with the first vault: CMK_VAULTS is required)\n") in up.stdout
        assert keys_path.stat().st_mode & 0o777 == 0o600
        function_key = json.loads(keys_path.read_text())["function"]
        processes = recorded(directory)
        assert set(processes) == {"orchestrator", "azurite"}
        assert processes["orchestrator"].pid == state["pid"]
        assert processes["azurite"].pid == state["children"]["azurite"]
        assert all(process.liveness() is Liveness.RUNNING for process in processes.values())
        assert os.getpgid(state["pid"]) == state["pid"]  # its own process group, detached from ours
        assert Path(state["caPath"]).is_file() and Path(state["caBundle"]).is_file()

        status = sandbox_command("status", "--json", *where)
        assert status.returncode == 0, status.stdout + status.stderr
        components = json.loads(status.stdout)["components"]
        assert {"azurite", "keyvault", "arm", "logAnalytics", "eventGrid", "alertSink", "functions"} <= set(components)
        assert all(component["ok"] for component in components.values())

        env = sandbox_command("env", *where)
        assert env.returncode == 0, env.stderr
        exported = dict(
            shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in env.stdout.splitlines() if line
        )
        assert exported["CMK_ARM_ENDPOINT"] == state["endpoints"]["arm"]
        assert exported["REQUESTS_CA_BUNDLE"] == state["caBundle"]
        assert exported["SSL_CERT_FILE"] == state["caBundle"]
        # Azure's host names through the sandbox's proxy; every loopback emulator directly.
        assert exported["HTTPS_PROXY"] == exported["https_proxy"] == state["endpoints"]["proxy"]
        assert exported["NO_PROXY"] == exported["no_proxy"] == "127.0.0.1,localhost"
        assert "CMK_LOG_ANALYTICS_ENDPOINT" not in exported or (
            exported["CMK_LOG_ANALYTICS_ENDPOINT"] == "https://api.loganalytics.io")
        # They hold the identity endpoint's header, and the CA's private key.
        for secret_file in ("env", "local.settings.json", "ca/ca-key.pem"):
            assert (directory / secret_file).stat().st_mode & 0o777 == 0o600
        assert exported["AZURE_CLIENT_ID"] == state["controllerIdentity"]["clientId"]
        assert "127.0.0.1" in exported["AzureWebJobsStorage"]
        assert {"CMK_WORK_QUEUE", "CMK_LEDGER_TABLE", "CMK_SWEEP_SCHEDULE"} <= set(exported)

        seeded = sandbox_command("seed", "rotation", *where)
        assert seeded.returncode == 0, seeded.stdout + seeded.stderr
        result = json.loads((directory / "seed-rotation.json").read_text())
        assert set(result["storageAccounts"]) == {"stcmkauto", "stcmkpinned"}
        assert len(next(iter(result["containers"].values()))["blobs"]) == 20
        subscription = next(iter(result["eventSubscriptions"].values()))
        assert subscription["provisioningState"] == "Succeeded"

        state = json.loads((directory / sandbox.STATE_FILE).read_text())
        vault_uri = result["vaults"]["kv-cmk-rotation"]["uri"].rstrip("/")
        settings = json.loads((directory / sandbox.SETTINGS_FILE).read_text())["Values"]
        assert settings["CMK_VAULTS"] == vault_uri == "https://kv-cmk-rotation.vault.azure.net"
        assert state["endpoints"]["vaultListeners"]["kv-cmk-rotation"].startswith("https://127.0.0.1:")
        processes = recorded(directory)
        assert set(processes) == {"orchestrator", "azurite", "functions"}
        assert state["endpoints"]["functions"] == functions  # at the URL `up` printed before it existed
        again = sandbox_command("up", *where)  # on a running sandbox: its summary, the Functions host running
        assert again.returncode == 0, again.stdout + again.stderr
        assert f"Functions host {functions}: curl {functions}/api/health; POST {functions}/api/events?code=" in (
            again.stdout)
        assert "it starts with the first vault" not in again.stdout
        assert validation_answer(functions, function_key) == {"validationResponse": VALIDATION_CODE}
        for private in ("local.settings.json", "host-keys.json"):  # the host's own copy of the settings too
            assert (directory / "functions" / private).stat().st_mode & 0o777 == 0o600
        assert processes["functions"].pid == state["children"]["functions"]
        assert processes["functions"].liveness() is Liveness.RUNNING
    finally:
        down = sandbox_command("down", *where)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "no process it started is left" in down.stdout
    assert_gone(processes)
    assert recorded(directory) == {}

    stopped = sandbox_command("status", *where)
    assert stopped.returncode == 3


@pytest.mark.timeout(120)
def test_down_under_timeout_from_a_script_stops_only_what_the_sandbox_started(
    tmp_path: Path, bystanders: list[subprocess.Popen[bytes]]
) -> None:
    """Issue 18: `timeout 60 ... down --dir D` was killed with the sandbox, and so was anything naming D."""
    directory = tmp_path / "sandbox"
    up = sandbox_command("up", "--dir", str(directory))
    assert up.returncode == 0, up.stdout + up.stderr
    processes = recorded(directory)
    # A user's `tail -f` of the sandbox's log (holding a file of the directory open, naming it in its arguments),
    # in a session and process group of its own, with a second process in that group.
    follower = subprocess.Popen(  # noqa: S603 - fixed argv
        [SH, "-c", 'tail -f "$1" & echo started; wait', "follower", str(directory / sandbox.LOG_FILE)],
        start_new_session=True,
        stdout=subprocess.PIPE,
    )
    bystanders.append(follower)
    assert follower.stdout is not None and follower.stdout.readline() == b"started\n"
    # A stale record: the pid it names now belongs to another process (the start time tells them apart).
    other = subprocess.Popen([SLEEP, "300"], start_new_session=True)  # noqa: S603 - fixed argv
    bystanders.append(other)
    actual = start_time(other.pid)
    assert actual is not None
    stale = RecordedProcess("functions", other.pid, actual[0] - 1, other.pid)
    (directory / "processes" / "functions.json").write_text(json.dumps(stale.to_json()))

    script = 'timeout 60 "$0" -m emulators down --dir "$1"; echo "down exited $?"'
    down = subprocess.run(  # noqa: S603 - a fixed script, our own interpreter
        [BASH, "-c", script, sys.executable, str(directory)],
        cwd=ROOT, capture_output=True, text=True, timeout=90, check=False,
    )

    assert down.returncode == 0, down.stdout + down.stderr
    assert "down exited 0" in down.stdout, down.stdout + down.stderr
    assert f"left alone: pid {other.pid} (recorded for functions) now belongs to another process" in down.stdout
    assert_gone(processes)
    assert follower.poll() is None and len(live_members(follower.pid)) == 2  # sh and its tail -f
    assert other.poll() is None and live_members(other.pid)
    assert recorded(directory) == {}


@pytest.mark.timeout(150)
def test_down_after_the_orchestrator_was_killed_leaves_no_process_of_its_own(tmp_path: Path) -> None:
    directory = tmp_path / "sandbox"
    where = ("--dir", str(directory))
    try:
        up = sandbox_command("up", *where)
        assert up.returncode == 0, up.stdout + up.stderr
        seeded = sandbox_command("seed", "rotation", *where)  # the Functions host starts once there is a vault
        assert seeded.returncode == 0, seeded.stdout + seeded.stderr
        processes = recorded(directory)
        assert set(processes) == {"orchestrator", "azurite", "functions"}

        os.kill(processes["orchestrator"].pid, signal.SIGKILL)
        wait_for(lambda: processes["orchestrator"].liveness() is Liveness.GONE)
        assert processes["azurite"].liveness() is Liveness.RUNNING  # its children outlive it
        assert processes["functions"].liveness() is Liveness.RUNNING
        status = sandbox_command("status", *where)
        assert status.returncode == 3
        assert "processes left behind" in status.stdout
        (directory / sandbox.STATE_FILE).unlink()  # and the state file is lost too: the record is enough
    finally:
        down = sandbox_command("down", *where)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "state.json is missing: stopping what the process record names (3 process(es))" in down.stdout
    assert "already gone: orchestrator" in down.stdout
    assert "stopped azurite" in down.stdout and "stopped functions" in down.stdout
    assert_gone(processes)
    assert recorded(directory) == {}


def test_the_command_line_documents_its_exit_codes_and_answers_without_a_sandbox(tmp_path: Path) -> None:
    usage = sandbox_command("--help")
    assert usage.returncode == 0
    assert "usage: python -m emulators" in usage.stdout
    assert {"up", "down", "status", "env", "seed"} <= set(usage.stdout.replace(",", " ").replace("{", " ").split())
    assert "3  no running sandbox" in usage.stdout and "2  invalid input" in usage.stdout

    where = ("--dir", str(tmp_path / "none"))
    assert sandbox_command("status", *where).returncode == 3
    assert sandbox_command("env", *where).returncode == 3
    assert sandbox_command("seed", "no-such-scenario", *where).returncode == 2
    assert sandbox_command("frobnicate", *where).returncode == 2
    down = sandbox_command("down", *where)
    assert down.returncode == 0 and "no sandbox in" in down.stdout


@pytest.mark.timeout(600)
def test_make_demo_tells_its_three_stories_and_cleans_up(tmp_path: Path) -> None:
    """What `make demo` runs (the SaaS fleet at 2 accounts per tenant instead of 25), asserted from the JSON
    summary the demo writes of every outcome it prints; nothing is left running."""
    directory = tmp_path / "demo"
    summary_path = tmp_path / "out" / "demo-summary.json"
    result = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "emulators.demo", "--dir", str(directory), "--saas-accounts-per-tenant", "2",
         "--summary", str(summary_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=590, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    assert summary["stories"] == ["rotation", "hospital", "saas"]

    rotation = summary["rotation"]
    event = rotation["event"]
    assert event["state"] == "delivered" and event["claimedInLedger"]
    assert event["accepted"]["version"] == rotation["newVersion"] != rotation["previousVersion"]
    reasons = {consumer["reason"] for consumer in rotation["reconcile"]["consumers"]}
    assert {"Adopted", "PinnedToOldVersion"} <= reasons
    assert {"severity": "high", "reason": "PinnedToOldVersion", "resource": "stcmkpinned"} in \
        rotation["reconcile"]["alerts"]
    after = rotation["afterPoll"]
    assert after["stcmkauto"] == {"mode": "versionless", "inUse": rotation["newVersion"], "latest": True}
    assert after["stcmkpinned"]["mode"] == "pinned" and not after["stcmkpinned"]["latest"]
    assert rotation["rewrap"]["exitCode"] == 0 and rotation["rewrap"]["after"] == {rotation["newVersion"]: 20}
    assert set(rotation["revoked"]["accounts"].values()) == {"HTTP 403 KeyVaultEncryptionKeyNotFound"}
    assert rotation["revoked"]["blobRead"].startswith("HTTP 403")
    assert set(rotation["restored"]["accounts"].values()) == {"ok"} and rotation["restored"]["blobRead"] == "decrypted"

    hospital = summary["hospital"]
    assert hospital["key"] | {"name": None} == {"name": None, "type": "RSA-HSM", "size": 3072, "rotateAfter": "P90D",
                                                "expiresIn": "P1Y"}
    hospital_accounts = set(hospital["accounts"])
    assert all(account["identity"] == "SystemAssigned" and account["principalId"]
               for account in hospital["accounts"].values())
    assert hospital["outage"]["firewall"] == {"defaultAction": "Deny", "bypass": "None"}
    assert hospital["outage"]["refused"] == len(hospital_accounts) == 3
    assert hospital["fixed"]["firewall"] == {"defaultAction": "Deny", "bypass": "AzureServices"}
    assert hospital["fixed"]["refused"] == 0

    saas = summary["saas"]
    assert saas["accounts"] == 8 and set(saas["tenants"]) == {"contoso", "fabrikam", "northwind", "tailspin"}
    assert len({tenant["key"] for tenant in saas["tenants"].values()}) == 4
    assert saas["revokedTenant"] == "fabrikam" and saas["revokedIdentityPermissions"] == ["get", "wrapKey"]
    assert saas["refusedByTenant"] == {"contoso": 0, "fabrikam": 2, "northwind": 0, "tailspin": 0}

    groups = summary["audit"]["groups"]
    hospital_vault = hospital["vault"].rstrip("/")
    firewall = [g for g in groups if g["class"] == "firewall" and g["vault"].rstrip("/") == hospital_vault]
    assert {account for g in firewall for account in g["storageAccounts"]} == hospital_accounts
    assert all(g["statusCode"] == 403 and g["operations"] == ["KeyUnwrap"] for g in firewall)
    denied = [g for g in groups if g["class"] == "permission" and g["caller"] == "id-tenant-fabrikam"]
    assert denied and denied[0]["statusCode"] == 403 and denied[0]["storageAccounts"] == ["stfabrikam001",
                                                                                         "stfabrikam002"]
    assert not [g for g in groups if g["class"] == "key_deleted"]  # seeding probes nothing that is not there

    sweep = summary["sweep"]
    cannot_unwrap = {f["resource"].rsplit("/", 1)[-1] for f in sweep["serious"] if f["rule"] == "CMK-006"}
    assert cannot_unwrap == {"stfabrikam001", "stfabrikam002"}
    assert "<table" in Path(sweep["htmlReport"]).read_text(encoding="utf-8")
    assert Path(sweep["htmlReport"]).parent == summary_path.parent
    alerts = summary["alerts"]["alerts"]
    assert {a["resource"].rsplit("/", 1)[-1] for a in alerts if a["reason"] == "IdentityLacksAccess"} == \
        {"stfabrikam001", "stfabrikam002"}
    # A compliance finding's alert is sent once: by drift detection as the change happens, or else by the sweep.
    compliance = [a for a in alerts + summary["alerts"]["beforeTheSweep"] if a["reason"] == "ComplianceFinding"]
    assert any(a["severity"] == "critical" and a["resource"].rsplit("/", 1)[-1] == "stfabrikam001"
               for a in compliance), compliance
    assert "no sandbox process left" in result.stdout
    assert ProcessRecord(directory).read() == ([], [])

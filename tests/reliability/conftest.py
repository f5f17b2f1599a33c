"""The reliability suite's shared estate: one sandbox (emulated Azure plus the controller's function app
on the local Functions host) seeded once for every scenario of the directory.

Size: ``RELIABILITY_SIZE=ci`` (the default, what ``make test`` runs) or ``full`` (``make
reliability``). Each scenario prints one JSON line of figures (``report_figures``), visible in the
test output whatever pytest's capture setting.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from azure.data.tables import TableClient
from azure.storage.queue import QueueClient

from emulators import sandbox
from emulators.seed import SandboxClients, Seeder, load_scenario
from tests.conftest import FIGURES_PROPERTY

SIZE_VARIABLE = "RELIABILITY_SIZE"
RESOURCE_GROUP = "rg-cmk-reliability"
VAULT = "kv-cmk-reliability"
PINNED_TAG = {"cmk-pinned-policy": "update"}
#: A container of client-side-encrypted blobs on the first account, re-wrapped when its key rotates: the
#: content keys the security scenario searches every log, alert and report for.
REWRAP_ACCOUNT, REWRAP_CONTAINER = "strel000", "documents"
#: The function app's settings that differ from the defaults: claims lapse after seconds instead of the
#: host's 10-minute function timeout, so the crash scenario sees a killed host's work taken over in seconds.
APP_SETTINGS = {"CMK_CLAIM_LEASE_SECONDS": "5"}


@dataclass(frozen=True, slots=True)
class Size:
    name: str
    #: Hostile input: payloads generated (hypothesis) and mutated (the corpus), each posted to both HTTP routes.
    hostile_payloads: int
    #: Hostile input: the share of those also put on the work queue.
    hostile_queue_items: int
    #: The estate: keys in the managed vault and storage accounts (consumers) spread over them.
    keys: int
    consumers: int
    #: Delivery: new versions per key, and how many times each of their events is delivered.
    versions_per_key: int
    deliveries_per_event: int
    #: Client-side-encrypted blobs in the re-wrapped container.
    encrypted_blobs: int


SIZES = {
    "ci": Size("ci", hostile_payloads=200, hostile_queue_items=30, keys=4, consumers=8,
               versions_per_key=2, deliveries_per_event=5, encrypted_blobs=4),
    "full": Size("full", hostile_payloads=10_000, hostile_queue_items=1_000, keys=20, consumers=100,
                 versions_per_key=10, deliveries_per_event=5, encrypted_blobs=20),
}


@pytest.fixture(scope="session")
def size() -> Size:
    name = os.environ.get(SIZE_VARIABLE, "ci")
    if name not in SIZES:
        raise pytest.UsageError(f"{SIZE_VARIABLE} must be one of {', '.join(SIZES)}, not {name!r}")
    return SIZES[name]


@pytest.fixture
def report_figures(request: pytest.FixtureRequest, size: Size, capsys: pytest.CaptureFixture[str]):
    """Print the scenario's one JSON line of figures (past pytest's capture, so CI logs show it)."""

    def report(figures: dict[str, Any]) -> None:
        line = json.dumps({"scenario": request.node.name, "size": size.name, **figures}, sort_keys=True)
        with capsys.disabled():
            sys.stdout.write(line + "\n")
        request.node.user_properties.append((FIGURES_PROPERTY, line))

    return report


def reliability_scenario(size: Size) -> dict[str, Any]:
    """The rotation scenario's vault and identities with ``size.keys`` keys and ``size.consumers``
    storage accounts over them (alternately versionless and pinned with the update policy)."""
    spec = copy.deepcopy(load_scenario("rotation"))
    spec["name"] = "reliability"
    spec["resourceGroups"] = [{"name": RESOURCE_GROUP}]
    for item in spec["identities"] + spec["vaults"]:
        item["resourceGroup"] = RESOURCE_GROUP
    vault = spec["vaults"][0]
    vault["name"] = VAULT
    vault["diagnosticSettings"] = []
    template = spec["keys"][0]
    spec["keys"] = [{**template, "vault": VAULT, "name": key_name(index)} for index in range(size.keys)]
    identity = spec["identities"][0]["name"]
    spec["storageAccounts"] = [
        {
            "name": account_name(index),
            "resourceGroup": RESOURCE_GROUP,
            "identity": identity,
            "cmk": {"vault": VAULT, "key": key_name(index % size.keys), "pinned": index % 2 == 1},
            **({"tags": PINNED_TAG} if index % 2 == 1 else {}),
        }
        for index in range(size.consumers)
    ]
    spec["storageAccounts"][0]["tags"] = {"cmk-rewrap-containers": REWRAP_CONTAINER}
    spec["containers"] = [{
        "account": REWRAP_ACCOUNT, "name": REWRAP_CONTAINER,
        "clientSideEncryption": {"vault": VAULT, "key": key_name(0), "version": "2.0"},
        "blobs": {"count": size.encrypted_blobs, "prefix": "secret-", "sizeBytes": 512},
    }]
    operator_role = spec["roleDefinitions"][0]["name"]
    spec["roleAssignments"] = [
        {"principal": "$controller", "role": "Reader", "scope": "subscription"},
        {"principal": "$controller", "role": operator_role, "scope": f"resourceGroup:{RESOURCE_GROUP}"},
    ]
    spec["eventSubscriptions"][0] |= {"name": f"{VAULT}-on-key-event", "vault": VAULT}
    return spec


def key_name(index: int) -> str:
    return f"rel-key-{index:02d}"


def account_name(index: int) -> str:
    return f"strel{index:03d}"


class Estate:
    """The running sandbox as the scenarios use it: the host's routes and keys, the app's settings,
    the emulators' counters and records."""

    def __init__(self, directory: Path, state: dict[str, Any], spec: dict[str, Any], seeded: dict[str, Any]) -> None:
        self.directory = directory
        self.state = state
        self.spec = spec
        self.seeded = seeded
        self.values: dict[str, str] = json.loads(Path(state["settingsPath"]).read_text())["Values"]
        self.host_keys: dict[str, str] = json.loads(Path(state["hostKeysPath"]).read_text())
        operator = spec["operator"]
        self.clients = SandboxClients.for_state(state, spec["subscriptionId"], operator["objectId"], operator["name"])
        self.vault_uri: str = seeded["vaults"][VAULT]["uri"]
        self.vault_origin: str = self.values["CMK_VAULTS"].split(",")[0]
        self.controller: str = state["controllerIdentity"]["principalId"]

    @property
    def functions_url(self) -> str:
        return str(self.state["endpoints"]["functions"])

    @property
    def events_url(self) -> str:
        return f"{self.functions_url}/api/events?code={self.host_keys['function']}"

    def eventgrid_webhook(self, function: str = "on_key_event") -> str:
        return (f"{self.functions_url}/runtime/webhooks/eventgrid?functionName={function}"
                f"&code={self.host_keys['eventgrid_extension']}")

    @property
    def host_log(self) -> Path:
        return self.directory / "functions" / "functions-host.log"

    def host_log_size(self) -> int:
        return self.host_log.stat().st_size

    def host_log_since(self, offset: int) -> str:
        with self.host_log.open("rb") as log:
            log.seek(offset)
            return log.read().decode("utf-8", errors="replace")

    def control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return sandbox.control(self.state, method, path, body)

    def counters(self) -> dict[str, Any]:
        return dict(self.control("GET", "/_sandbox/counters"))

    def controller_arm_writes(self) -> int:
        """The controller's ARM PUT, PATCH and DELETE requests (its POSTs are Resource Graph queries: reads)."""
        by_method = self.counters()["arm"].get(self.controller, {})
        return sum(count for method, count in by_method.items() if method in ("PUT", "PATCH", "DELETE"))

    def alerts(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.state['endpoints']['alertSink']}/_records", timeout=10) as response:  # noqa: S310 - loopback sink
            return list(json.loads(response.read()))

    def queue(self, name: str | None = None) -> QueueClient:
        return QueueClient.from_connection_string(self.values["AzureWebJobsStorage"],
                                                  name or self.values["CMK_WORK_QUEUE"])

    def poison_queue(self) -> QueueClient:
        return self.queue(self.values["CMK_WORK_QUEUE"] + "-poison")

    def ledger(self) -> TableClient:
        return TableClient.from_connection_string(self.values["AzureWebJobsStorage"],
                                                  table_name=self.values["CMK_LEDGER_TABLE"])

    def send_work(self, body: bytes) -> None:
        self.queue().send_message(base64.b64encode(body).decode("ascii"))


def post(url: str, body: bytes, headers: dict[str, str] | None = None, timeout: float = 120) -> tuple[int, bytes]:
    """POST raw bytes; the status and body whatever the status."""
    request = urllib.request.Request(url, data=body, method="POST",  # noqa: S310 - loopback host
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.fixture(scope="session")
def estate(size: Size, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Estate]:
    directory = tmp_path_factory.mktemp("reliability-sandbox")
    spec = reliability_scenario(size)
    with sandbox.running(directory, timeout=180, app_settings=APP_SETTINGS) as state:
        seeded = Seeder(directory, spec, log=lambda _text: None).run()
        current = sandbox.read_state(directory) or state
        yield Estate(directory, current, spec, seeded)


# --- the local Functions host as a process: crashes and load ------------------------------------------------


def host_pid(estate: Estate) -> int:
    """The running host's pid, as the sandbox recorded it (a restart records a new one)."""
    current = sandbox.read_state(estate.directory) or {}
    return int(current.get("children", {}).get("functions") or 0)


def host_answers(estate: Estate) -> bool:
    try:
        with urllib.request.urlopen(f"{estate.functions_url}/admin/host/ping", timeout=2) as response:  # noqa: S310
            return bool(response.status == 200)
    except OSError:
        return False


def kill_host(estate: Estate) -> int:
    """SIGKILL the host's process group (the host and anything it started); return the killed pid."""
    pid = host_pid(estate)
    os.killpg(pid, signal.SIGKILL)
    return pid


def wait_for_host_restart(estate: Estate, killed: int, *, timeout: float = 120) -> None:
    """Until the sandbox has restarted the killed host (as Azure restarts a crashed worker) and it answers."""
    deadline = time.monotonic() + timeout
    while not (host_pid(estate) not in (0, killed) and host_answers(estate)):
        assert time.monotonic() < deadline, "the Functions host was not restarted"
        time.sleep(0.1)
    estate.state = sandbox.read_state(estate.directory) or estate.state  # the new pid, for every scenario after


def host_rss_bytes(estate: Estate) -> int:
    """Resident memory of the host's worker processes (its process group)."""
    group = os.getpgid(host_pid(estate))
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != group:
                continue
            status = (entry / "status").read_text()
        except (OSError, ProcessLookupError):
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total

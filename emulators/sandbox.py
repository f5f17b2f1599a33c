"""The local sandbox as one process: every emulator started, wired and described in ``<dir>/``.

``python -m emulators.sandbox serve --dir .sandbox`` (what ``python -m emulators up`` runs, detached, in its
own session) starts, on loopback and free ports:

* Azurite (blob, queue, table) from the project's node_modules, its workspace in ``<dir>/azurite``
  (emptied at every start: ARM and the vaults live in memory, so every start is an empty estate);
* the egress proxy (emulators/egress_proxy.py; ``HTTPS_PROXY`` in the env file, loopback in ``NO_PROXY``): it
  tunnels ``<vault>.vault.azure.net:443``, ``api.loganalytics.io:443`` and Azurite's account under its Azure
  host names (``devstoreaccount1[-secondary].blob.core.windows.net:443``, emulators/storage_hosts.py) to the
  emulators and refuses everything else, so unmodified clients use Azure's host names (vault URIs are
  ``https://<name>.vault.azure.net/``, the Key Vault challenge check stays on) and nothing reaches the internet;
* the emulated Key Vault data plane (one HTTPS origin per vault) and ARM (storage accounts with CMK
  behaviour, per-account blob endpoints, vaults, identities, role assignments, diagnostic settings,
  Resource Graph), with a CA kept in ``<dir>/ca`` so clients keep trusting it across restarts;
* the vaults' audit sink (archive in Azurite, Log Analytics rows) and the Log Analytics query endpoint;
* Event Grid delivery, the alert webhook sink, the controller's user-assigned identity and its App
  Service-style managed identity endpoint (IDENTITY_ENDPOINT / IDENTITY_HEADER, emulators/identity_endpoint.py);
* the local Functions host running function_app.py, as soon as there is a vault for ``CMK_VAULTS`` (the app
  refuses to start without one), on a port and with keys the sandbox holds from its start (``functionsUrl``
  and ``hostKeysPath`` in the state file, before the host runs). When the set of vaults changes, the host is
  restarted with the new ``CMK_VAULTS`` (as Azure restarts an app whose settings change) and the event
  subscriptions pointing at it are created again. Every vault is subscribed: explicitly (the control API
  below, which ``python -m emulators seed`` uses for a scenario's ``eventSubscriptions``), or else
  automatically as ``<vault>-on-key-event`` (on_key_event, Event Grid schema, the key event types,
  dead-letter container ``key-events-deadletter``), as the post-deploy hook subscribes managed vaults; and
  every subscription's resource events (the emulated ARM's, topic ``/subscriptions/{id}``) as
  ``<subscription>-on-resource-event`` (on_resource_event, the three resource event types, filtered on
  ``data.operationName`` like infra/modules/resource-events.bicep). A deleted vault does not restart the
  host (no app setting changes); a new one does;
* a control API (plain HTTP, loopback, no auth; ``endpoints.control`` in the state file)::

      GET  /_sandbox/status                      component health
      POST /_sandbox/clock/advance               {"seconds": n} -> {"now", "offsetSeconds"}: vaults evaluate,
                                                 due storage key polls and root-key checks run
      POST /_sandbox/storage/check               the storage service unwraps every CMK root key now
      GET  /_sandbox/counters                    ARM requests per caller, Key Vault operations per vault
      DELETE /_sandbox/counters                  the same, then reset to zero
      GET  /_sandbox/faults                      per service (vault, arm, storage): the fault profile, the requests
                                                 seen and the faults injected by kind (emulators/faults.py)
      PUT  /_sandbox/faults                      {"faults": "<SANDBOX_FAULTS text>"} -> the same: switch faults
                                                 (storage faults only where SANDBOX_FAULTS started the proxy)
      GET  /_sandbox/eventSubscriptions          the event subscriptions and their provisioning state
      PUT  /_sandbox/eventSubscriptions/{name}   {"vault": name, "function": "on_key_event",
                                                 "includedEventTypes": [...], "deadLetterContainer": c,
                                                 "schema": "EventGridSchema"} -> subscribes the function

It writes ``state.json`` (pid, status, every endpoint, CA and bundle paths, host keys path, child pids),
``processes/`` (a record of every process it starts, written as each one starts: ``emulators/processes.py``;
``stop`` stops what is recorded there and nothing else),
``local.settings.json`` (the function app's Values, for the local host and for ``func start``; alerts go to
the webhook sink through ``CMK_ALERT_WEBHOOK_URL``) and
``env`` (the same settings as shell export lines), and stops everything on SIGTERM or SIGINT.

The client side (``start_detached``, ``stop``, ``read_state``, ``health``) is what ``python -m emulators``
(emulators/__main__.py) uses; it imports nothing heavier than the standard library.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from emulators.files import write_file
from emulators.functions_host import host_keys
from emulators.processes import Liveness, ProcessRecord, StopReport

log = logging.getLogger("emulators.sandbox")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
STATE_FILE = "state.json"
SETTINGS_FILE = "local.settings.json"
ENV_FILE = "env"
LOG_FILE = "sandbox.log"
CA_DIR = "ca"
CA_BUNDLE = "ca-bundle.pem"
#: JSON object of CMK_ settings the function app gets instead of their defaults (start_detached's app_settings).
APP_SETTINGS_ENV = "SANDBOX_APP_SETTINGS"
ORCHESTRATOR = "orchestrator"  # its name in the process record

# The controller's own identity lives next to the function app, as `azd up` creates it.
CONTROLLER_SUBSCRIPTION = "5a9d0000-0000-4000-8000-00000000c0de"
CONTROLLER_RESOURCE_GROUP = "rg-cmk-controller"
CONTROLLER_IDENTITY = "id-cmk-controller"
DEAD_LETTER_CONTAINER = "key-events-deadletter"
KEY_EVENT_TYPES = (
    "Microsoft.KeyVault.KeyNewVersionCreated",
    "Microsoft.KeyVault.KeyNearExpiry",
    "Microsoft.KeyVault.KeyExpired",
)
RECONCILE_SECONDS = 1.0
# The subscription system topic's event subscription (infra/modules/resource-events.bicep declares the same).
RESOURCE_EVENT_FUNCTION = "on_resource_event"
RESOURCE_EVENT_DEAD_LETTER_CONTAINER = "resource-events-deadletter"
WATCHED_OPERATION_PREFIXES = (
    "Microsoft.KeyVault/vaults/",
    "Microsoft.Storage/storageAccounts/",
    "Microsoft.Authorization/roleAssignments/",
)
READ_ONLY_ACTIONS = ("/listKeys/action", "/listAccountSas/action", "/listServiceSas/action")
#: The Log Analytics query API's host, which LogsQueryClient uses unless given another endpoint.
LOG_ANALYTICS_HOST = "api.loganalytics.io"
#: What clients reach directly rather than through the sandbox's proxy: every emulator's loopback origin.
NO_PROXY = "127.0.0.1,localhost"


class SandboxError(RuntimeError):
    """The sandbox did not start, is not running, or did not stop cleanly."""


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------


def read_state(directory: Path) -> dict[str, Any] | None:
    path = directory / STATE_FILE
    try:
        state: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state


def _write_atomically(path: Path, text: str, *, mode: int = 0o600) -> None:
    """Replace ``path`` at once with a file of ``mode`` (by default only its owner can read it, from its first
    byte)."""
    tmp = path.with_name(path.name + ".tmp")
    write_file(tmp, text, mode=mode)
    tmp.replace(path)


def env_lines(values: dict[str, str]) -> str:
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in values.items())


def write_ca_bundle(path: Path, ca_path: Path) -> Path:
    """certifi's CAs plus the sandbox CA: azure-core (requests) then trusts Azure and the emulators."""
    import certifi

    bundle = Path(certifi.where()).read_text(encoding="utf-8").rstrip("\n") + "\n"
    bundle += "# cmk-controller sandbox CA\n" + ca_path.read_text(encoding="utf-8")
    _write_atomically(path, bundle, mode=0o644)
    return path


# ------------------------------------------------------------------------------------------------
# Client side: what `python -m emulators` calls
# ------------------------------------------------------------------------------------------------


def running_state(directory: Path) -> dict[str, Any] | None:
    """The state file when the orchestrator it names is the recorded one and still running, else None."""
    state = read_state(directory)
    if state is None:
        return None
    orchestrator = ProcessRecord(directory).get(ORCHESTRATOR)
    if orchestrator is None or orchestrator.pid != state.get("pid") or orchestrator.liveness() is not Liveness.RUNNING:
        return None
    return state


def start_detached(directory: Path, *, timeout: float = 90.0, functions: bool = True,
                   app_settings: dict[str, str] | None = None) -> dict[str, Any]:
    """Spawn the orchestrator in its own session and wait until it reports running (or failed).

    ``functions=False`` runs the emulated Azure without the controller's function app: Azure's own
    behaviour alone (benchmarks compare the controller against it). ``app_settings``: CMK_ settings
    the function app gets instead of their defaults."""
    directory.mkdir(parents=True, exist_ok=True)
    existing = running_state(directory)
    if existing is not None:
        if existing.get("status") == "running":
            return existing
        raise SandboxError(f"a sandbox is already starting or stopping in {directory} (pid {existing.get('pid')})")
    record = ProcessRecord(directory)
    if read_state(directory) is not None or any(record.read()):
        # A previous orchestrator died: end whatever it recorded before starting again.
        report = stop(directory)
        if not report.clean:
            lines = "\n".join(report.lines())
            raise SandboxError(f"a previous sandbox left processes that could not be stopped:\n{lines}")
    (directory / STATE_FILE).unlink(missing_ok=True)
    log_path = directory / LOG_FILE
    with log_path.open("wb") as log_file:  # one run's log: the previous run's is of no use to this one
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "emulators.sandbox", "serve", "--dir", str(directory.resolve()),
             *([] if functions else ["--no-functions"])],
            cwd=str(PROJECT_ROOT),  # emulators/ is not installed: it is imported from the checkout
            env={**os.environ, APP_SETTINGS_ENV: json.dumps(app_settings or {})},
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    record.add(ORCHESTRATOR, process.pid, own_group=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = read_state(directory)
        if state is not None and state.get("pid") == process.pid:
            if state.get("status") == "running":
                return state
            if state.get("status") == "failed":
                process.wait(timeout=30)
                raise SandboxError(f"the sandbox failed to start: {state.get('error')}\n{log_tail(directory)}")
        if process.poll() is not None:
            stop(directory)  # whatever it started before it died
            raise SandboxError(f"the sandbox exited during start-up (code {process.returncode})\n{log_tail(directory)}")
        time.sleep(0.1)
    stop(directory)
    raise SandboxError(f"the sandbox did not start within {timeout:.0f}s\n{log_tail(directory)}")


def log_tail(directory: Path, lines: int = 25) -> str:
    try:
        text = (directory / LOG_FILE).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def stop(directory: Path, *, timeout: float = 30.0) -> StopReport:
    """Stop every process this sandbox recorded, and nothing else.

    The orchestrator first (SIGTERM: it stops its children in order and forgets their records; SIGKILL after
    ``timeout``), then whatever it left recorded (it was killed, or a child hung): SIGTERM, wait, SIGKILL."""
    record = ProcessRecord(directory)
    report = record.stop(names=(ORCHESTRATOR,), grace=timeout).then(record.stop())
    state = read_state(directory)
    if state is not None and state.get("status") != "stopped":
        state["status"] = "stopped"
        with contextlib.suppress(OSError):
            _write_atomically(directory / STATE_FILE, json.dumps(state, indent=2))
    return report


def control(state: dict[str, Any], method: str, path: str, body: Any = None, *, timeout: float = 60.0) -> Any:
    """Call the orchestrator's control API; raises SandboxError with its error message."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(  # noqa: S310 - loopback http URL from our own state file
        state["endpoints"]["control"] + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        detail = err.read().decode(errors="replace")
        raise SandboxError(f"{method} {path}: HTTP {err.code}: {detail}") from err
    except OSError as err:
        raise SandboxError(f"the sandbox control API does not answer: {err}") from err


def health(directory: Path) -> dict[str, Any]:
    """Each component's health as the orchestrator sees it, plus whether its process is alive."""
    state = running_state(directory)
    if state is None:
        leftovers = ProcessRecord(directory).running()
        if leftovers:  # the orchestrator died (SIGKILL, crash) and its children outlived it
            names = ", ".join(process.describe() for process in leftovers)
            return {"running": False, "components": {}, "error": f"processes left behind: {names}; run down"}
        return {"running": False, "components": {}}
    try:
        report: dict[str, Any] = control(state, "GET", "/_sandbox/status", timeout=10)
    except SandboxError as err:
        return {"running": False, "components": {}, "error": str(err)}
    report["running"] = state.get("status") == "running" and all(c.get("ok") for c in report["components"].values())
    return report


# ------------------------------------------------------------------------------------------------
# The orchestrator (runs in the detached process)
# ------------------------------------------------------------------------------------------------


@dataclass
class EventSubscriptionSpec:
    name: str
    vault: str  # vault name
    function: str = "on_key_event"
    included_event_types: tuple[str, ...] = KEY_EVENT_TYPES
    dead_letter_container: str = DEAD_LETTER_CONTAINER
    schema: str = "EventGridSchema"
    max_delivery_attempts: int = 30
    event_ttl_minutes: int = 1440
    automatic: bool = False  # created by the sandbox for a vault nobody subscribed explicitly

    @classmethod
    def from_json(cls, name: str, body: dict[str, Any]) -> EventSubscriptionSpec:
        if not isinstance(body.get("vault"), str) or not body["vault"]:
            raise ValueError("vault (the vault's name) is required")
        return cls(
            name=name,
            vault=body["vault"].lower(),
            function=str(body.get("function") or "on_key_event"),
            included_event_types=tuple(body.get("includedEventTypes") or KEY_EVENT_TYPES),
            dead_letter_container=str(body.get("deadLetterContainer") or DEAD_LETTER_CONTAINER),
            schema=str(body.get("schema") or "EventGridSchema"),
            max_delivery_attempts=int(body.get("maxDeliveryAttempts") or 30),
            event_ttl_minutes=int(body.get("eventTimeToLiveInMinutes") or 1440),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "vault": self.vault,
            "function": self.function,
            "includedEventTypes": list(self.included_event_types),
            "deadLetterContainer": self.dead_letter_container,
            "schema": self.schema,
            "maxDeliveryAttempts": self.max_delivery_attempts,
            "eventTimeToLiveInMinutes": self.event_ttl_minutes,
            "automatic": self.automatic,
        }


class Orchestrator:
    """Starts, wires and stops every sandbox component; keeps the files in ``directory`` current."""

    def __init__(self, directory: Path, *, host: str = "127.0.0.1", functions: bool = True) -> None:
        self.directory = directory.resolve()
        self.host = host
        self.functions_enabled = functions
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._stack: list[tuple[str, Callable[[], None]]] = []
        self._subscriptions: dict[str, EventSubscriptionSpec] = {}
        self._functions: Any = None
        self._functions_vaults: tuple[str, ...] = ()
        self._functions_error: str | None = None
        self._functions_failed_for: tuple[str, ...] = ()
        #: The Functions host's port, held from the start (see _reserve_functions_address); None without it.
        self._functions_reservation: socket.socket | None = None
        self._identity_endpoint: Any = None
        self._control: ThreadingHTTPServer | None = None
        #: SANDBOX_FAULTS (emulators/faults.py): the proxy in front of Azurite, and the injectors per service.
        self.storage_fault_proxy: Any = None
        self._fault_injectors: dict[str, Any] = {}
        self.processes = ProcessRecord(self.directory)
        self.state: dict[str, Any] = {"pid": os.getpid(), "status": "starting", "directory": str(self.directory)}

    # ---- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        from emulators.arm import ArmEmulator
        from emulators.arm.throttling import LIMITS_ENV, LimitsSettings
        from emulators.audit import AuditSink
        from emulators.azurite import Azurite
        from emulators.bus import SandboxBus
        from emulators.clock import SandboxClock
        from emulators.egress_proxy import EgressProxy
        from emulators.eventgrid import EventGridEmulator
        from emulators.faults import FAULTS_ENV, FaultPlan
        from emulators.keyvault import KeyVaultEmulator, SandboxCA
        from emulators.kql import audit_tables
        from emulators.query_endpoints import LogAnalyticsEmulator, mount_resource_graph
        from emulators.storage_hosts import BlobHostRelay
        from emulators.webhook_sink import WebhookSink

        self._write_state()
        # ARM and the vaults live in memory, so every start is an empty estate: Azurite's workspace and the
        # Functions host's files go too (blobs and ledger rows of vanished vaults would only mislead).
        # Only the CA is kept, so that clients configured with it keep trusting the sandbox.
        for leftover in ("azurite", "functions"):
            shutil.rmtree(self.directory / leftover, ignore_errors=True)
        ca = SandboxCA(self.directory / CA_DIR, persist=True)
        self.ca = ca
        self.bundle = write_ca_bundle(self.directory / CA_BUNDLE, ca.ca_path)
        # SANDBOX_ARM_LIMITS: Azure's ARM throttling and latency, the sandbox clock scaled with them.
        limits = LimitsSettings.parse(os.environ.get(LIMITS_ENV, ""))
        self.clock, self.bus = SandboxClock(rate=limits.scale if limits else 1.0), SandboxBus()

        self.azurite = Azurite(location=self.directory / "azurite", host=self.host, process_record=self.processes)
        self.azurite.start()
        self._push("azurite", self.azurite.stop)
        self.state.setdefault("children", {})["azurite"] = self.azurite.pid
        # SANDBOX_FAULTS: service faults (emulators/faults.py); the app and the accounts' blob endpoints then
        # reach Azurite through the storage fault proxy.
        faults = FaultPlan.parse(os.environ.get(FAULTS_ENV, ""))
        self.app_storage: Any = self.azurite.endpoints
        if faults is not None:
            from emulators.storage_fault_proxy import StorageFaultProxy

            self.storage_fault_proxy = StorageFaultProxy(self.azurite.endpoints, host=self.host).start()
            self._push("storage-fault-proxy", self.storage_fault_proxy.stop)
            self.app_storage = self.storage_fault_proxy.endpoints

        self.audit = AuditSink(self.bus, connection_string=self.azurite.connection_string).start()
        self._push("audit", self.audit.stop)

        self.proxy = EgressProxy(host=self.host).start()
        self._push("egress-proxy", self.proxy.stop)
        # Azurite's account under its Azure host names too (<account>.blob.core.windows.net, and its secondary).
        self.blob_hosts = BlobHostRelay(ca, self.azurite.endpoints, host=self.host).start()
        self._push("blob-host-relay", self.blob_hosts.stop)
        self.proxy.add_route(self.blob_hosts.listener_for)
        self.keyvault = KeyVaultEmulator(self.clock, self.bus, ca, host=self.host, proxy=self.proxy)
        self.arm = ArmEmulator(keyvault=self.keyvault, azurite=self.app_storage, audit=self.audit, host=self.host,
                               limits=limits)
        mount_resource_graph(
            self.arm.app,
            self.arm.resources_snapshot,
            resource_containers=self.arm.resource_containers_snapshot,
            clock=self.arm.clock,
        )
        self.arm.start()
        self._push("arm", self.arm.stop)

        self.log_analytics = LogAnalyticsEmulator(
            ca, tables=audit_tables(self.audit), workspace_id=self.audit.workspace_id, clock=self.clock, host=self.host,
            public_host=LOG_ANALYTICS_HOST,
        ).start()
        self._push("log-analytics", self.log_analytics.stop)
        self.proxy.add_route(self.log_analytics.listener_for)

        self.eventgrid = EventGridEmulator(
            self.bus, clock=self.clock, dead_letter_connection_string=self.azurite.connection_string, host=self.host
        ).start()
        self._push("eventgrid", self.eventgrid.stop)

        self.alerts = WebhookSink(host=self.host).start()
        self._push("alerts", self.alerts.stop)

        self.controller_identity = self.arm.add_identity(
            CONTROLLER_SUBSCRIPTION, CONTROLLER_RESOURCE_GROUP, CONTROLLER_IDENTITY
        )
        self._start_identity_endpoint()

        self._control = ThreadingHTTPServer((self.host, 0), _control_handler(self))
        self._control.daemon_threads = True
        threading.Thread(target=self._control.serve_forever, name="sandbox-control", daemon=True).start()
        self._push("control", self._stop_control)

        if faults is not None:
            self.set_faults(faults)
        if self.functions_enabled:
            self._reserve_functions_address()
        self._reconcile()
        threading.Thread(target=self._reconcile_periodically, name="sandbox-reconcile", daemon=True).start()
        self.state["status"] = "running"
        self._write_files()
        log.info("sandbox running in %s", self.directory)

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            self.state["status"] = "stopping"
            self._write_state()
            if self._functions is not None:
                self._stop_functions()
            while self._stack:
                name, stop_component = self._stack.pop()
                try:
                    stop_component()
                except Exception:
                    log.exception("stopping %s failed", name)
            self.state["status"] = "stopped"
            self.state["children"] = {}
            self._write_state()

    def _push(self, name: str, stop_component: Callable[[], None]) -> None:
        self._stack.append((name, stop_component))

    def _stop_control(self) -> None:
        if self._control is not None:
            self._control.shutdown()
            self._control.server_close()

    def _start_identity_endpoint(self) -> None:
        """The App Service-style identity endpoint, so the controller's ManagedIdentityCredential works unchanged."""
        from emulators.identity_endpoint import ManagedIdentityEndpoint
        from emulators.keyvault import Principal

        identity = self.controller_identity
        principal = Principal(
            identity.principal_id, appid=identity.client_id, tid=identity.tenant_id, name=identity.name
        )
        endpoint = ManagedIdentityEndpoint(
            {identity.client_id: principal}, default_client_id=identity.client_id, host=self.host
        ).start()
        self._identity_endpoint = endpoint
        self._push("identity-endpoint", endpoint.stop)

    # ---- settings -------------------------------------------------------------------------------
    def vault_origins(self) -> tuple[str, ...]:
        return tuple(sorted(v.origin for v in list(self.keyvault.vaults.values()) if v.origin))

    def app_settings(self) -> dict[str, str]:
        """The function app's Values: every CMK_ setting (default unless the sandbox decides), storage, trust."""
        from controller.settings import SETTINGS

        values: dict[str, str] = {"FUNCTIONS_WORKER_RUNTIME": "python"}
        values["AzureWebJobsStorage"] = self.app_storage.connection_string
        values.update({spec.name: spec.default for spec in SETTINGS})
        values["CMK_VAULTS"] = ",".join(self.vault_origins())
        values["CMK_ARM_ENDPOINT"] = self.arm.url
        values["REQUESTS_CA_BUNDLE"] = str(self.bundle)
        values["SSL_CERT_FILE"] = str(self.bundle)  # async clients (aiohttp) ignore REQUESTS_CA_BUNDLE
        values["CMK_ALERT_WEBHOOK_URL"] = f"{self.alerts.url}/cmk-alerts"  # the sandbox's webhook sink records them
        values["AZURE_CLIENT_ID"] = self.controller_identity.client_id
        values["CMK_LOG_ANALYTICS_WORKSPACE"] = self.audit.workspace_id  # the vaults' AuditEvent logs
        # Azure's host names (the vaults', api.loganalytics.io: CMK_LOG_ANALYTICS_ENDPOINT keeps its default) go
        # through the sandbox's proxy; the loopback emulators are reached directly. Both spellings: urllib and
        # aiohttp prefer the lower-case one when both are set, so a user's own proxy settings cannot win.
        for name in ("HTTPS_PROXY", "https_proxy"):
            values[name] = self.proxy.url
        for name in ("NO_PROXY", "no_proxy"):
            values[name] = NO_PROXY
        values.update(_app_setting_overrides())
        if self._identity_endpoint is not None:
            values["IDENTITY_ENDPOINT"] = self._identity_endpoint.endpoint
            values["IDENTITY_HEADER"] = self._identity_endpoint.secret
        return values

    def _write_files(self) -> None:
        values = self.app_settings()
        settings = {"IsEncrypted": False, "Values": values}
        _write_atomically(self.directory / SETTINGS_FILE, json.dumps(settings, indent=2) + "\n")
        _write_atomically(self.directory / ENV_FILE, env_lines(values))
        self._write_state()

    def _endpoints(self) -> dict[str, Any]:
        endpoints: dict[str, Any] = {
            "arm": self.arm.url,
            "keyvaultAdmin": self.keyvault.admin_url,
            "vaults": {v.name: v.uri for v in list(self.keyvault.vaults.values())},
            "vaultListeners": {v.name: v.listen_origin + "/" for v in list(self.keyvault.vaults.values())},
            "proxy": self.proxy.url,
            "logAnalytics": self.log_analytics.endpoint + "/v1",
            "logAnalyticsWorkspaceId": self.audit.workspace_id,
            "eventGridAdmin": self.eventgrid.base_url + "/admin/eventgrid",
            "alertSink": self.alerts.url,
            "azuriteBlob": self.azurite.blob_endpoint,
            "azuriteQueue": self.azurite.queue_endpoint,
            "azuriteTable": self.azurite.table_endpoint,
        }
        if self._control is not None:
            endpoints["control"] = f"http://{self.host}:{self._control.server_address[1]}"
        if self._identity_endpoint is not None:
            endpoints["identity"] = self._identity_endpoint.endpoint
        if self._functions is not None:
            endpoints["functions"] = self._functions.url
        return endpoints

    def _write_state(self) -> None:
        if hasattr(self, "log_analytics") and self.state.get("status") in ("starting", "running"):
            with contextlib.suppress(Exception):
                self.state["endpoints"] = self._endpoints()
                self.state["caPath"] = str(self.ca.ca_path)
                self.state["caBundle"] = str(self.bundle)
                self.state["settingsPath"] = str(self.directory / SETTINGS_FILE)
                self.state["envPath"] = str(self.directory / ENV_FILE)
                self.state["controllerIdentity"] = {
                    "id": self.controller_identity.id,
                    "principalId": self.controller_identity.principal_id,
                    "clientId": self.controller_identity.client_id,
                }
                self.state["tenantId"] = self.arm.tenant_id
                self.state["functionsUrl"] = self.functions_url
                self.state["hostKeysPath"] = str(self.host_keys_path) if self.functions_url is not None else None
                self.state["functionsError"] = self._functions_error
                self.state["eventSubscriptions"] = {n: s.to_json() for n, s in self._subscriptions.items()}
        _write_atomically(self.directory / STATE_FILE, json.dumps(self.state, indent=2) + "\n")

    # ---- the Functions host and its event subscriptions -------------------------------------------
    @property
    def functions_url(self) -> str | None:
        """Where the Functions host answers (from the start, though it runs only once there is a vault)."""
        if self._functions_reservation is None:
            return None
        return f"http://127.0.0.1:{self._functions_reservation.getsockname()[1]}"

    @property
    def host_keys_path(self) -> Path:
        return self.directory / "functions" / "host-keys.json"

    def _reserve_functions_address(self) -> None:
        """The Functions host's port and keys exist before the host does (it waits for a vault: the app refuses
        to start without CMK_VAULTS), so that `up` shows how to call it at once and every (re)start of the host
        answers at the same URL with the same keys. The port stays bound, never listening, with SO_REUSEADDR:
        no other socket takes it, and the host's listener (SO_REUSEADDR too, as socket.create_server sets it)
        binds it beside the reservation."""
        reservation = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        reservation.bind(("127.0.0.1", 0))
        self._functions_reservation = reservation
        self._push("functions-port", reservation.close)
        host_keys(self.host_keys_path)  # the host takes the keys it finds in its keys file

    def _reconcile_periodically(self) -> None:
        while not self._stopping.wait(RECONCILE_SECONDS):
            try:
                self._reconcile()
            except Exception:
                log.exception("sandbox reconcile failed")

    def _reconcile(self) -> None:
        """(Re)start the Functions host when the vaults changed; keep every event subscription in place."""
        with self._lock:
            if self._stopping.is_set():
                return
            origins = self.vault_origins()
            subscribed = {spec.vault for spec in self._subscriptions.values()}
            for name in list(self.keyvault.vaults):
                if name not in subscribed:
                    self._subscriptions[f"{name}-on-key-event"] = EventSubscriptionSpec(
                        name=f"{name}-on-key-event", vault=name, automatic=True
                    )
            changed = False
            host = self._functions
            if host is not None and host.process is not None and host.process.poll() is not None:
                # It had started: Azure restarts a crashed worker, on the same URLs with the same keys.
                log.warning("the Functions host exited (code %s): restarting it", host.process.returncode)
                crashed_for, port = self._functions_vaults, host.port
                self._stop_functions()
                self._restart_functions(crashed_for, port=port)
                self.state["functionsRestarts"] = int(self.state.get("functionsRestarts", 0)) + 1
                changed = True
            # A host that failed for these vaults is not restarted in a loop: status shows why; a vault change retries.
            # A deleted vault changes no app setting (in Azure neither): only a new vault restarts the host.
            wanted = self.functions_enabled and origins and origins != self._functions_failed_for
            if wanted and (self._functions is None or not set(origins) <= set(self._functions_vaults)):
                self._restart_functions(origins)
                changed = True
            if self._functions is not None:
                changed = self._ensure_subscriptions(force=changed) or changed
            vaults_known = set(self.state.get("endpoints", {}).get("vaults", {}))
            if changed or vaults_known != {v.name for v in self.keyvault.vaults.values()}:
                self._write_files()

    def _restart_functions(self, origins: tuple[str, ...], *, port: int | None = None) -> None:
        from emulators.functions_host import LocalFunctionsHost

        # Every start is on the reserved port (a crashed host's, given by the caller, is the same).
        reserved = self._functions_reservation
        port = port or (int(reserved.getsockname()[1]) if reserved is not None else 0)
        self._stop_functions()
        values = self.app_settings()
        values["CMK_VAULTS"] = ",".join(origins)
        host = LocalFunctionsHost(
            PROJECT_ROOT, values, work_dir=self.directory / "functions", port=port, process_record=self.processes
        )
        try:
            host.start()
        except (RuntimeError, TimeoutError) as err:
            self._functions_error = str(err)[-2000:]
            self._functions_failed_for = origins
            log.warning("the Functions host did not start: %s", err)
            return
        self._functions, self._functions_vaults, self._functions_error = host, origins, None
        self._functions_failed_for = ()
        self.state.setdefault("children", {})["functions"] = host.process.pid if host.process else None
        log.info("Functions host at %s for %s", host.url, ", ".join(origins))

    def _stop_functions(self) -> None:
        host, self._functions = self._functions, None
        self._functions_vaults = ()
        if host is not None:
            host.stop()
        self.state.get("children", {}).pop("functions", None)

    def _ensure_subscriptions(self, *, force: bool) -> bool:
        from emulators.eventgrid import WebhookSubscription

        created = False
        existing = {s.name.lower(): s for s in self.eventgrid.subscriptions()}
        for spec in self._subscriptions.values():
            vault = self.keyvault.vaults.get(spec.vault)
            if vault is None or vault.origin not in self._functions_vaults:
                continue
            status = existing.get(spec.name.lower())
            if status is not None and status.provisioning_state == "Succeeded" and not force:
                continue
            self.eventgrid.create_subscription(
                WebhookSubscription(
                    name=spec.name,
                    endpoint_url=self._functions.eventgrid_webhook(spec.function),
                    event_delivery_schema=spec.schema,
                    included_event_types=spec.included_event_types,
                    topic=vault.resource_id,
                    dead_letter_container=spec.dead_letter_container,
                    max_delivery_attempts=spec.max_delivery_attempts,
                    event_ttl_minutes=spec.event_ttl_minutes,
                )
            )
            created = True
        return self._ensure_resource_event_subscriptions(existing, force=force) or created

    def _ensure_resource_event_subscriptions(self, existing: dict[str, Any], *, force: bool) -> bool:
        """Every subscription's system topic (Microsoft.Resources.Subscriptions) delivers its resource events
        on vaults, storage accounts and role assignments to on_resource_event, as the post-deploy hook does."""
        from emulators.arm.resource_events import EVENT_TYPES
        from emulators.eventgrid import AdvancedFilter, WebhookSubscription

        created = False
        for subscription in sorted({sub for sub, _ in list(self.arm.resource_groups.groups)}):
            name = f"{subscription}-on-resource-event"
            status = existing.get(name.lower())
            if status is not None and status.provisioning_state == "Succeeded" and not force:
                continue
            self.eventgrid.create_subscription(
                WebhookSubscription(
                    name=name,
                    endpoint_url=self._functions.eventgrid_webhook(RESOURCE_EVENT_FUNCTION),
                    included_event_types=EVENT_TYPES,
                    advanced_filters=(
                        AdvancedFilter("StringBeginsWith", "data.operationName", WATCHED_OPERATION_PREFIXES),
                        AdvancedFilter("StringNotContains", "data.operationName", READ_ONLY_ACTIONS),
                    ),
                    topic=f"/subscriptions/{subscription}",
                    system_topic_name=f"sub-{subscription}",
                    dead_letter_container=RESOURCE_EVENT_DEAD_LETTER_CONTAINER,
                )
            )
            created = True
        return created

    def put_subscription(self, spec: EventSubscriptionSpec) -> dict[str, Any]:
        with self._lock:
            if spec.vault not in self.keyvault.vaults:
                raise LookupError(f"no vault named {spec.vault!r} in the sandbox")
            for name, existing in list(self._subscriptions.items()):
                if existing.automatic and existing.vault == spec.vault and name != spec.name:
                    del self._subscriptions[name]
                    self.eventgrid.delete_subscription(name)
            self._subscriptions[spec.name] = spec
            self._reconcile()
            self._ensure_subscriptions(force=True)
            self._write_files()
            report: dict[str, Any] = self.subscription_report()[spec.name]
            return report

    def subscription_report(self) -> dict[str, Any]:
        statuses = {s.name.lower(): s for s in self.eventgrid.subscriptions()}
        report: dict[str, Any] = {}
        for name, spec in self._subscriptions.items():
            status = statuses.get(name.lower())
            report[name] = spec.to_json() | {
                "provisioningState": status.provisioning_state if status else "NotCreated",
                "failureReason": status.failure_reason if status else self._functions_error,
            }
        return report

    # ---- control operations ---------------------------------------------------------------------
    def advance_clock(self, seconds: float) -> dict[str, Any]:
        if seconds < 0:
            raise ValueError("the sandbox clock only moves forward")
        self.arm.advance_clock(timedelta(seconds=seconds))
        return {"now": self.clock.now().isoformat(), "offsetSeconds": self.clock.offset.total_seconds()}

    def counters(self, *, reset: bool = False) -> dict[str, Any]:
        """ARM requests per caller and Key Vault operations per vault (benchmarks count calls with it)."""
        # Every request the vaults served, whatever their diagnostic settings ("azure": Key Vault's own records).
        by_caller = self.audit.records_by_caller(reset=reset)
        report = {
            "arm": self.arm.request_counts(),
            "keyvault": {name: vault.counters.snapshot() for name, vault in self.keyvault.vaults.items()},
            "keyvaultByCaller": by_caller,
            "controllerObjectId": self.controller_identity.principal_id,
        }
        if reset:
            self.arm.reset_request_counts()
            for vault in self.keyvault.vaults.values():
                vault.counters.reset()
        return report

    def set_faults(self, plan: Any) -> dict[str, Any]:
        """Switch the services' faults (an emulators.faults.FaultPlan, or None: none), fresh counts."""
        from emulators.faults import FaultPlan

        plan = plan or FaultPlan(profiles={})
        proxy = self.storage_fault_proxy
        if proxy is None and plan.profile("storage").active:
            raise ValueError("storage faults need the storage fault proxy: start the sandbox with SANDBOX_FAULTS set")
        injectors = plan.injectors()
        self.keyvault.faults = injectors["vault"] if plan.profile("vault").active else None
        self.arm.faults = injectors["arm"] if plan.profile("arm").active else None
        if proxy is not None:
            proxy.injector = injectors["storage"]
        self._fault_injectors = injectors
        return self.fault_report()

    def fault_report(self) -> dict[str, Any]:
        """Per service: the profile, the requests it saw and the faults it injected, by kind."""
        return {"storageFaultProxy": self.storage_fault_proxy is not None,
                "services": {service: injector.report() for service, injector in self._fault_injectors.items()}}

    def check_storage(self) -> dict[str, Any]:
        touched = self.arm.check_storage_keys()
        return {"bindingsChecked": touched}

    def status(self) -> dict[str, Any]:
        """Each component's health, probed over HTTP(S) the way a client reaches it (any HTTP answer is alive)."""
        context = self.ca.client_ssl_context()
        vaults = list(self.keyvault.vaults.values())
        components: dict[str, dict[str, Any]] = {
            "azurite": {
                "ok": self.azurite.is_running() and _probe(self.azurite.blob_endpoint + "?comp=list", context),
                "url": self.azurite.blob_endpoint,
                "pid": self.azurite.pid,
            },
            "keyvault": {
                "ok": _probe(self.keyvault.admin_url + "/clock", context)
                and all(_probe(v.listen_origin + "/", context) for v in vaults if v.listen_origin),
                "vaults": len(vaults),
            },
            "arm": {
                "ok": _probe(self.arm.url + "/subscriptions", context),
                "url": self.arm.url,
                "accounts": len(self.arm.accounts),
            },
            "logAnalytics": {
                "ok": _probe(self.log_analytics.endpoint + "/v1", context),
                "url": self.log_analytics.endpoint + "/v1",
            },
            "eventGrid": {
                "ok": _probe(self.eventgrid.base_url + "/admin/eventgrid/subscriptions", context),
                "subscriptions": len(self.eventgrid.subscriptions()),
            },
            "alertSink": {
                "ok": _probe(self.alerts.url + "/_records", context),
                "url": self.alerts.url,
                "received": len(self.alerts.records),
            },
        }
        if self._identity_endpoint is not None:
            endpoint = self._identity_endpoint.endpoint
            components["identityEndpoint"] = {"ok": _probe(endpoint, context), "url": endpoint}
        functions = self._functions
        if functions is not None:
            alive = functions.process is not None and functions.process.poll() is None
            healthy = alive and _probe(functions.url + "/api/health", context, want_success=True)
            components["functions"] = {"ok": healthy, "url": functions.url, "vaults": list(self._functions_vaults)}
        elif self._functions_error:
            components["functions"] = {"ok": False, "error": self._functions_error}
        else:
            components["functions"] = {"ok": True, "url": self.functions_url,
                                       "note": "starts with the first vault (CMK_VAULTS is required)"}
        return {
            "components": components,
            "clock": {"now": self.clock.now().isoformat(), "offsetSeconds": self.clock.offset.total_seconds()},
        }


def _app_setting_overrides() -> dict[str, str]:
    """CMK_ settings the sandbox was started with (``start_detached(app_settings=...)``), e.g. a test's shorter
    leases; anything else in that variable is refused (a typo must not pass silently)."""
    raw = os.environ.get(APP_SETTINGS_ENV, "")
    overrides = json.loads(raw) if raw else {}
    if not isinstance(overrides, dict) or not all(
            isinstance(name, str) and name.startswith("CMK_") and isinstance(value, str)
            for name, value in overrides.items()):
        raise SandboxError(f"{APP_SETTINGS_ENV} must be a JSON object of CMK_ settings and string values")
    return overrides


def _probe(url: str, context: Any, *, want_success: bool = False) -> bool:
    """True when the URL answers HTTP at all (or, with want_success, answers 2xx) within two seconds."""
    request = urllib.request.Request(url, method="GET")  # noqa: S310 - loopback URLs of our own components
    try:
        with urllib.request.urlopen(request, timeout=2, context=context):  # noqa: S310
            return True
    except urllib.error.HTTPError:
        return not want_success
    except OSError:
        return False


def _control_handler(orchestrator: Orchestrator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "cmk-sandbox"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("control: %s", format % args)

        def _reply(self, status: int, body: Any) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _body(self) -> dict[str, Any]:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else {}
            if not isinstance(body, dict):
                raise TypeError("the body must be a JSON object")
            return body

        def _route(self, method: str) -> None:
            path = self.path.split("?", 1)[0].rstrip("/")
            try:
                if method == "GET" and path == "/_sandbox/status":
                    return self._reply(200, orchestrator.status())
                if method == "POST" and path == "/_sandbox/clock/advance":
                    seconds = float(self._body().get("seconds", 0))
                    return self._reply(200, orchestrator.advance_clock(seconds))
                if method == "POST" and path == "/_sandbox/storage/check":
                    return self._reply(200, orchestrator.check_storage())
                if method == "GET" and path == "/_sandbox/counters":
                    return self._reply(200, orchestrator.counters())
                if method == "DELETE" and path == "/_sandbox/counters":
                    return self._reply(200, orchestrator.counters(reset=True))
                if method == "GET" and path == "/_sandbox/faults":
                    return self._reply(200, orchestrator.fault_report())
                if method == "PUT" and path == "/_sandbox/faults":
                    from emulators.faults import FaultPlan

                    plan = FaultPlan.parse(str(self._body().get("faults", "")))
                    return self._reply(200, orchestrator.set_faults(plan))
                if method == "GET" and path == "/_sandbox/eventSubscriptions":
                    return self._reply(200, orchestrator.subscription_report())
                prefix = "/_sandbox/eventSubscriptions/"
                if method == "PUT" and path.startswith(prefix) and len(path) > len(prefix):
                    spec = EventSubscriptionSpec.from_json(path[len(prefix) :], self._body())
                    return self._reply(200, orchestrator.put_subscription(spec))
                return self._reply(404, {"error": f"no route {method} {path}"})
            except LookupError as err:
                return self._reply(404, {"error": str(err)})
            except (ValueError, TypeError) as err:
                return self._reply(400, {"error": str(err)})
            except Exception as err:
                log.exception("control %s %s failed", method, path)
                return self._reply(500, {"error": f"{type(err).__name__}: {err}"})

        def do_GET(self) -> None:
            self._route("GET")

        def do_POST(self) -> None:
            self._route("POST")

        def do_PUT(self) -> None:
            self._route("PUT")

        def do_DELETE(self) -> None:
            self._route("DELETE")

    return Handler


def serve(directory: Path, *, functions: bool = True) -> int:
    """Run the orchestrator in the foreground until SIGTERM/SIGINT."""
    directory.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)  # the SDKs log every request at INFO
    stop_requested = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop_requested.set())
    signal.signal(signal.SIGINT, lambda *_: stop_requested.set())
    orchestrator = Orchestrator(directory, functions=functions)
    # Recorded by whoever started it too (start_detached); recorded here for a serve started by hand.
    # Only a session leader can have been given its group by the sandbox: never signal a shell's job group.
    orchestrator.processes.add(ORCHESTRATOR, os.getpid(), own_group=os.getsid(0) == os.getpid())
    try:
        return _run(orchestrator, stop_requested)
    finally:
        orchestrator.processes.remove(ORCHESTRATOR, os.getpid())


def _run(orchestrator: Orchestrator, stop_requested: threading.Event) -> int:
    try:
        orchestrator.start()
    except BaseException as err:
        log.exception("the sandbox failed to start")
        orchestrator.state["error"] = f"{type(err).__name__}: {err}"
        orchestrator.stop()
        orchestrator.state["status"] = "failed"
        orchestrator._write_state()
        return 1
    try:
        while not stop_requested.wait(0.5):
            pass
    finally:
        log.info("stopping the sandbox")
        orchestrator.stop()
    return 0


@contextlib.contextmanager
def running(directory: Path, *, timeout: float = 90.0,
            app_settings: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
    """A detached sandbox for the duration of a block (tests, the demo); stopped on exit."""
    state = start_detached(directory, timeout=timeout, app_settings=app_settings)
    try:
        yield state
    finally:
        stop(directory)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emulators.sandbox", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run the sandbox in the foreground until SIGTERM")
    serve_parser.add_argument("--dir", type=Path, default=Path(".sandbox"))
    serve_parser.add_argument("--no-functions", action="store_true",
                              help="emulated Azure only: no Functions host running the controller")
    args = parser.parse_args(argv)
    return serve(args.dir, functions=not args.no_functions)


if __name__ == "__main__":
    raise SystemExit(main())

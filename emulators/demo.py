"""`make demo`: the sandbox end to end, showing what the controller and the emulated Azure do today.

``python -m emulators.demo [--dir DIR] [--keep]`` starts a sandbox (a temporary directory unless --dir),
seeds the "rotation" scenario, rotates the key, follows the Key Vault event through Event Grid to
on_key_event and the function's ledger, shows what the controller's reconciler did (ARM writes, consumer
verdicts, the alert its webhook received), shows what each storage account reports before and after the
storage service's daily key poll, re-wraps the client-side-encrypted blobs with ``cmkctl rewrap`` (as
the controller's managed identity), revokes the storage identity's access and shows the blob endpoints
refusing requests, restores it, queries the vault's audit logs for the failed unwraps, and stops the
sandbox. Every value printed comes from a response of the emulated services (unmodified SDK clients)
or from the sandbox's own records; nothing is assumed.

The steps are functions in ``STEPS``, run in order over one ``Demo``: a new capability of the controller
(for example a reconciler forcing adoption right after the event) is one more function inserted
where it belongs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from emulators import sandbox
from emulators.seed import SandboxClients, load_scenario, seed

SCENARIO = "rotation"
EVENT_TIMEOUT_S = 60.0


class DemoFailed(RuntimeError):
    """Something the demo waits for did not happen: the demo says so instead of printing a result."""


class Demo:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started = time.monotonic()
        self.state: dict[str, Any] = {}
        self.seeded: dict[str, Any] = {}
        self.scenario = load_scenario(SCENARIO)
        self.clients: SandboxClients | None = None
        self.rotated_version = ""
        self.previous_version = ""
        self.events_before_rotation: set[str] = set()

    # ---- output ---------------------------------------------------------------------------------
    def step(self, title: str) -> None:
        print(f"\n== {title}  [{time.monotonic() - self.started:5.1f}s]", flush=True)

    @staticmethod
    def say(text: str) -> None:
        print(f"   {text}", flush=True)

    # ---- shared lookups -------------------------------------------------------------------------
    @property
    def sdk(self) -> SandboxClients:
        if self.clients is None:
            operator = self.scenario["operator"]
            self.clients = SandboxClients.for_state(
                self.state, self.scenario["subscriptionId"], operator["objectId"], operator["name"]
            )
        return self.clients

    @property
    def vault_uri(self) -> str:
        return str(next(iter(self.seeded["vaults"].values()))["uri"])

    @property
    def key_name(self) -> str:
        return str(self.scenario["keys"][0]["name"])

    def account(self, name: str) -> Any:
        group = self.seeded["storageAccounts"][name]["resourceGroup"]
        return self.sdk.storage.storage_accounts.get_properties(group, name)

    def control(self, method: str, path: str, body: Any = None) -> Any:
        return sandbox.control(self.state, method, path, body)

    def identity_names(self) -> dict[str, str]:
        names = {v["principalId"]: k for k, v in self.seeded["identities"].items()}
        names[self.state["controllerIdentity"]["principalId"]] = sandbox.CONTROLLER_IDENTITY
        names[self.scenario["operator"]["objectId"]] = self.scenario["operator"]["name"]
        return names


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise DemoFailed(f"{what}: not observed within {timeout:.0f}s")


def version_of(kid: str | None) -> str:
    return kid.rstrip("/").rsplit("/", 1)[-1] if kid else "(none)"


# ---- the steps -----------------------------------------------------------------------------------


def start_sandbox(demo: Demo) -> None:
    demo.step("sandbox up (what `python -m emulators up` runs)")
    demo.state = sandbox.start_detached(demo.directory)
    components = sandbox.health(demo.directory)["components"]
    healthy = [name for name, component in components.items() if component["ok"]]
    demo.say(f"orchestrator pid {demo.state['pid']}; healthy: {', '.join(healthy)}")
    demo.say(f"ARM {demo.state['endpoints']['arm']}, Log Analytics {demo.state['endpoints']['logAnalytics']}")


def seed_scenario(demo: Demo) -> None:
    demo.step(f"seed {SCENARIO} (what `python -m emulators seed {SCENARIO}` runs: unmodified SDK clients)")
    demo.seeded = seed(demo.directory, SCENARIO, log=demo.say)
    demo.state = sandbox.running_state(demo.directory) or demo.state
    demo.previous_version = next(iter(demo.seeded["keys"].values()))["version"]


def delivery_records(demo: Demo) -> list[dict[str, Any]]:
    subscription = next(iter(demo.seeded["eventSubscriptions"]))
    url = f"{demo.state['endpoints']['eventGridAdmin']}/deliveries?subscription={subscription}"
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback admin URL from state
        records: list[dict[str, Any]] = json.loads(response.read())
    return records


def rotate_key(demo: Demo) -> None:
    demo.step(f"rotate {demo.key_name} with KeyClient.rotate_key")
    demo.events_before_rotation = {r["event_id"] for r in delivery_records(demo)}
    rotated = demo.sdk.key_client(demo.vault_uri).rotate_key(demo.key_name)
    demo.rotated_version = rotated.properties.version
    created = rotated.properties.created_on
    demo.say(f"new version {demo.rotated_version} (was {demo.previous_version}), created {created:%Y-%m-%d %H:%M:%S}Z")


def follow_event(demo: Demo) -> None:
    demo.step("Event Grid delivers KeyNewVersionCreated to on_key_event")

    def delivered() -> dict[str, Any] | None:
        done = [
            r
            for r in delivery_records(demo)
            if r["event_type"] == "Microsoft.KeyVault.KeyNewVersionCreated"
            and r["event_id"] not in demo.events_before_rotation
            and r["state"] != "pending"
        ]
        return done[0] if done else None

    record = wait_for(delivered, EVENT_TIMEOUT_S, "the Event Grid delivery")
    last = record["attempts"][-1]
    demo.say(
        f"event {record['event_id']}: {record['state']} after {len(record['attempts'])} attempt(s), "
        f"last answer HTTP {last['status_code']} ({last['outcome']})"
    )
    if record["state"] != "delivered":
        raise DemoFailed(f"the event was {record['state']}: {record.get('dead_letter_reason')}")

    from azure.data.tables import TableClient

    values = json.loads((demo.directory / sandbox.SETTINGS_FILE).read_text())["Values"]
    table = TableClient.from_connection_string(values["AzureWebJobsStorage"], table_name=values["CMK_LEDGER_TABLE"])

    def claimed() -> dict[str, Any] | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            rows = list(table.query_entities("EventId eq @id", parameters={"id": record["event_id"]}))
        except ResourceNotFoundError:
            return None
        return rows[0] if rows else None

    entity = wait_for(claimed, 30, "the ledger claim")
    demo.say(f"ledger {values['CMK_LEDGER_TABLE']}: event claimed by on_key_event at {entity['ClaimedAt']:%H:%M:%S}Z")
    decision = wait_for(
        lambda: controller_record(demo.directory, "key event accepted", event_id=record["event_id"]),
        30,
        "the function's log record",
    )
    if decision.get("key_version") != demo.rotated_version:
        raise DemoFailed(f"event {record['event_id']} is about version {decision.get('key_version')}, not the rotation")
    demo.say(
        f"on_key_event logged: key event accepted ({decision.get('kind')}, {decision.get('key_name')} "
        f"version {decision.get('key_version')}, outcome {decision.get('outcome')})"
    )


def controller_record(directory: Path, message: str, **expected: Any) -> dict[str, Any] | None:
    """The first structured log record of the controller with this message and these field values.

    The controller logs one JSON record per decision; the local Functions host writes them to its log.
    """
    log_path = directory / "functions" / "functions-host.log"
    try:
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        head, brace, tail = line.partition(" {")
        # "<date> <time> <logger> <LEVEL> <message>"
        parts = head.split(" ", 4)
        if len(parts) < 5 or not parts[2].startswith("controller.") or parts[4] != message:
            continue
        try:
            fields: dict[str, Any] = json.loads(brace.strip() + tail)
        except ValueError:
            continue
        if all(fields.get(name) == value for name, value in expected.items()):
            return fields
    return None


def short_resource(resource_id: str) -> str:
    return resource_id.split("/storageAccounts/", 1)[-1].replace("/encryptionScopes/", "/")


def controller_reconciles(demo: Demo) -> None:
    demo.step("the controller reconciles the key's consumers (as its managed identity, through ARM)")
    result = wait_for(
        lambda: controller_record(demo.directory, "key reconciled", target_version=demo.rotated_version),
        60,
        "the reconciler's record",
    )
    for write in result.get("writes") or []:
        resource, _, key = write.partition(" -> ")
        name_and_version = key.rsplit("/keys/", 1)[-1]
        versionless = "/" not in name_and_version
        demo.say(
            f"write {short_resource(resource)}: key -> .../{name_and_version}{' (versionless)' if versionless else ''}"
        )
    for consumer in result.get("consumers") or []:
        demo.say(f"{consumer['reason']}: {consumer['message']}")
    for failure in result.get("failures") or []:
        demo.say(f"failure: {failure}")
    expected_alerts = len(result.get("alerts") or [])
    if expected_alerts:
        url = f"{demo.state['endpoints']['alertSink']}/_records"

        def received() -> list[dict[str, Any]]:
            with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback sink from state
                records: list[dict[str, Any]] = json.loads(response.read())
            return records if len(records) >= expected_alerts else []

        for alert in wait_for(received, 30, "the alert webhook"):
            body = alert["body"] if isinstance(alert["body"], dict) else {}
            demo.say(
                f"alert webhook received: {body.get('severity')} {body.get('reason')} "
                f"{short_resource(str(body.get('resource')))}: {body.get('message')}"
            )


def show_accounts(demo: Demo, heading: str) -> None:
    demo.step(heading)
    latest = demo.sdk.key_client(demo.vault_uri).get_key(demo.key_name).properties.version
    demo.say(f"latest version of {demo.key_name}: {latest}")
    for name, seeded in demo.seeded["storageAccounts"].items():
        account = demo.account(name)
        kvp = account.encryption.key_vault_properties
        mode = f"pinned {kvp.key_version}" if kvp.key_version else "versionless"
        in_use = version_of(kvp.current_versioned_key_identifier)
        verdict = "latest" if in_use == latest else "OLD"
        rotated = kvp.last_key_rotation_timestamp
        when = f", last key rotation {rotated:%Y-%m-%d %H:%M}Z" if rotated else ""
        demo.say(f"{name:<12} ({mode}): currentVersionedKeyIdentifier .../{in_use} [{verdict}]{when}")
        for scope_name in seeded["encryptionScopes"]:
            scope = demo.sdk.storage.encryption_scopes.get(seeded["resourceGroup"], name, scope_name)
            scope_version = version_of(scope.key_vault_properties.current_versioned_key_identifier)
            scope_verdict = "latest" if scope_version == latest else "OLD"
            demo.say(f"  scope {scope_name}: currentVersionedKeyIdentifier .../{scope_version} [{scope_verdict}]")


def before_poll(demo: Demo) -> None:
    show_accounts(demo, "what each storage account reports now (azure-mgmt-storage)")


def after_daily_poll(demo: Demo) -> None:
    demo.step("advance the sandbox clock one day: the storage service's daily key poll runs")
    moved = demo.control("POST", "/_sandbox/clock/advance", {"seconds": timedelta(days=1).total_seconds()})
    demo.say(f"sandbox time {moved['now'][:19]}Z (offset {timedelta(seconds=moved['offsetSeconds'])})")
    show_accounts(demo, "what each storage account reports after the poll")


def rewrap_blobs(demo: Demo) -> None:
    container = next(c for c in demo.seeded["containers"].values() if c["blobs"])
    account = demo.seeded["storageAccounts"][container["account"]]
    vault_origin = demo.vault_uri.rstrip("/")
    command = [
        "rewrap", "--account", container["account"], "--container", container["container"],
        "--key", f"{vault_origin}/{demo.key_name}", "--blob-endpoint", account["blobEndpoint"], "--no-progress",
    ]  # fmt: skip
    demo.step(f"cmkctl {' '.join(command[:5])}: re-wrap the client-side-encrypted blobs onto the new version")
    say_wrapped_by(demo, "before: ")
    result = cmkctl(demo, *command)
    demo.say(f"cmkctl rewrap exited {result.returncode}")
    if result.returncode != 0:
        raise DemoFailed(f"cmkctl rewrap failed:\n{(result.stderr or result.stdout)[-2000:]}")
    say_wrapped_by(demo, "after: ")


def cmkctl(demo: Demo, *command: str) -> subprocess.CompletedProcess[str]:
    """Run the operator CLI with the controller's settings and identity, as `source .sandbox/env` gives
    them to a shell: it authenticates through the sandbox's managed-identity endpoint, as in Azure."""
    values = json.loads((demo.directory / sandbox.SETTINGS_FILE).read_text())["Values"]
    return subprocess.run(  # noqa: S603 - our own interpreter and CLI
        [sys.executable, "-m", "controller.cli", *command],
        cwd=sandbox.PROJECT_ROOT, env=dict(os.environ) | values, capture_output=True, text=True, timeout=120,
        check=False,
    )


def say_wrapped_by(demo: Demo, label: str) -> None:
    """Which key version wraps each blob's content key, read from every blob's encryptiondata metadata."""
    client, _ = blob_container(demo)
    wrapped_by = Counter(
        version_of(json.loads(blob.metadata["encryptiondata"])["WrappedContentKey"]["KeyId"])
        for blob in client.list_blobs(include=["metadata"])
        if blob.metadata and "encryptiondata" in blob.metadata
    )
    counted = ", ".join(
        f"{count} by .../{version}{' (latest)' if version == demo.rotated_version else ''}"
        for version, count in wrapped_by.most_common()
    )
    where = f"{client.account_name}/{client.container_name}"
    demo.say(f"{label}{sum(wrapped_by.values())} blobs in {where}, content keys wrapped {counted}")


def blob_container(demo: Demo) -> tuple[Any, str]:
    container = next(c for c in demo.seeded["containers"].values() if c["blobs"])
    account = demo.seeded["storageAccounts"][container["account"]]
    service = demo.sdk.blob_service(account["resourceGroup"], container["account"])
    client = service.get_container_client(container["container"])
    client.require_encryption = True
    client.key_resolver_function = demo.sdk.key_wrapper
    client.encryption_version = container["encryptionVersion"] or "2.0"
    return client, container["blobs"][0]


def read_blob(demo: Demo) -> None:
    from azure.core.exceptions import HttpResponseError

    client, blob = blob_container(demo)
    try:
        data = client.download_blob(blob).readall()
    except HttpResponseError as err:
        headers = getattr(err.response, "headers", {}) or {}
        code = headers.get("x-ms-error-code")
        demo.say(f"read {client.account_name}/{client.container_name}/{blob}: HTTP {err.status_code} {code}")
        return
    properties = client.get_blob_client(blob).get_blob_properties()
    wrapped_by = json.loads(properties.metadata["encryptiondata"])["WrappedContentKey"]["KeyId"]
    demo.say(
        f"read {client.account_name}/{client.container_name}/{blob}: {len(data)} bytes decrypted "
        f"(content key wrapped by .../{version_of(wrapped_by)}), starts {data[:24]!r}"
    )


def list_containers(demo: Demo) -> None:
    """Each account's blob endpoint, asked for its containers: what every application of the account sees."""
    from azure.core.exceptions import HttpResponseError

    for name, account in demo.seeded["storageAccounts"].items():
        service = demo.sdk.blob_service(account["resourceGroup"], name)
        try:
            containers = [c.name for c in service.list_containers()]
        except HttpResponseError as err:
            headers = getattr(err.response, "headers", {}) or {}
            demo.say(f"list containers of {name}: HTTP {err.status_code} {headers.get('x-ms-error-code')}")
            continue
        demo.say(f"list containers of {name}: {len(containers)} ({', '.join(containers) or 'none'})")


def storage_access_policy(demo: Demo, kind: str) -> list[str]:
    from azure.mgmt.keyvault.models import (
        AccessPolicyEntry,
        AccessPolicyUpdateKind,
        Permissions,
        VaultAccessPolicyParameters,
        VaultAccessPolicyProperties,
    )

    vault_spec = demo.scenario["vaults"][0]
    entry_spec = next(e for e in vault_spec["accessPolicies"] if e["principal"].startswith("identity:"))
    identity = demo.seeded["identities"][entry_spec["principal"].split(":", 1)[1]]
    entry = AccessPolicyEntry(
        tenant_id=demo.state["tenantId"],
        object_id=identity["principalId"],
        permissions=Permissions(keys_property=list(entry_spec["keys"])),
    )
    result = demo.sdk.keyvault_mgmt.vaults.update_access_policy(
        vault_spec["resourceGroup"],
        vault_spec["name"],
        AccessPolicyUpdateKind(kind),
        VaultAccessPolicyParameters(properties=VaultAccessPolicyProperties(access_policies=[entry])),
    )
    remaining = [p for p in result.properties.access_policies if p.object_id == identity["principalId"]]
    return [str(getattr(k, "value", k)) for p in remaining for k in (p.permissions.keys_property or [])]


def hourly_check(demo: Demo) -> None:
    moved = demo.control("POST", "/_sandbox/clock/advance", {"seconds": timedelta(hours=1).total_seconds()})
    demo.say(f"advance the sandbox clock 1 h (the storage service's root-key unwrap check): {moved['now'][11:19]}Z")


def revoke(demo: Demo) -> None:
    demo.step("revoke the storage identity's key permissions (azure-mgmt-keyvault, access policy remove)")
    left = storage_access_policy(demo, "remove")
    demo.say(f"storage identity's key permissions now: {', '.join(left) or 'none'}")
    hourly_check(demo)
    list_containers(demo)
    read_blob(demo)


def restore(demo: Demo) -> None:
    demo.step("restore them (access policy add)")
    demo.say(f"storage identity's key permissions now: {', '.join(storage_access_policy(demo, 'add')) or 'none'}")
    hourly_check(demo)
    list_containers(demo)
    read_blob(demo)


def audit_failures(demo: Demo) -> None:
    # The sandbox clock ran a day ahead (the daily poll): the audit window ends at the sandbox's now.
    sandbox_now = demo.control("POST", "/_sandbox/clock/advance", {"seconds": 0})["now"]
    demo.step("cmkctl audit: failed wraps and unwraps in the vault's audit logs, classified")
    result = cmkctl(demo, "audit", "--since", "72h", "--until", sandbox_now, "--format", "json")
    if result.returncode not in (0, 1):  # 1: failures found, as expected after the revocation
        raise DemoFailed(f"cmkctl audit failed:\n{(result.stderr or result.stdout)[-2000:]}")
    report = json.loads(result.stdout)
    names = demo.identity_names()
    groups = report["groups"]
    demo.say(f"{report['failures']} failed request(s) in {len(groups)} group(s); by class: {report['byClass']}")
    for group in groups:
        accounts = ", ".join(group["storageAccounts"]) or "no known account"
        demo.say(f"{group['count']} x {'/'.join(group['operations'])} HTTP {group['statusCode']} {group['class']}: "
                 f"caller {names.get(group['caller'], group['caller'])} ({accounts}), key .../{group['version']}")
        demo.say(f"  fix: {group['remediation']}")


#: Where `make demo` leaves the compliance report it produced.
REPORT_COPY = sandbox.PROJECT_ROOT / ".sandbox" / "demo-compliance-report.html"


def compliance_sweep(demo: Demo) -> None:
    demo.step("cmkctl sweep: every compliance rule over the estate, as a table and an HTML report")
    table = cmkctl(demo, "sweep")
    if table.returncode not in (0, 1):  # 1: findings at or above high, as this estate has
        raise DemoFailed(f"cmkctl sweep failed:\n{(table.stderr or table.stdout)[-2000:]}")
    for line in table.stdout.rstrip().splitlines():
        demo.say(line)
    html = demo.directory / "compliance-report.html"
    written = cmkctl(demo, "sweep", "--format", "html", "--out", str(html))
    if written.returncode not in (0, 1) or not html.is_file():
        raise DemoFailed(f"cmkctl sweep --format html failed:\n{(written.stderr or written.stdout)[-2000:]}")
    # Kept where it outlives the demo's temporary sandbox (.sandbox/ is ignored by git).
    REPORT_COPY.parent.mkdir(parents=True, exist_ok=True)
    REPORT_COPY.write_bytes(html.read_bytes())
    demo.say(f"HTML report: {REPORT_COPY.relative_to(sandbox.PROJECT_ROOT)} (self-contained: open it in a browser)")


def stop_sandbox(demo: Demo) -> None:
    demo.step("sandbox down (what `python -m emulators down` runs)")
    report = sandbox.stop(demo.directory)
    if not report.clean:
        raise DemoFailed("processes left behind:\n" + "\n".join(report.lines()))
    demo.say(f"stopped {len(report.stopped)} recorded process(es); no sandbox process left")


STEPS: list[Callable[[Demo], None]] = [
    start_sandbox,
    seed_scenario,
    rotate_key,
    follow_event,
    controller_reconciles,
    before_poll,
    after_daily_poll,
    rewrap_blobs,
    revoke,
    restore,
    audit_failures,
    compliance_sweep,
    stop_sandbox,
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emulators.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, help="sandbox directory (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="leave the sandbox running at the end")
    args = parser.parse_args(argv)
    directory = args.dir or Path(tempfile.mkdtemp(prefix="cmk-demo-"))
    demo = Demo(directory)
    steps = [s for s in STEPS if not (args.keep and s is stop_sandbox)]
    try:
        for run_step in steps:
            run_step(demo)
    except (DemoFailed, sandbox.SandboxError) as err:
        print(f"\ndemo failed: {err}", file=sys.stderr)
        print(f"sandbox log tail:\n{sandbox.log_tail(directory)}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            sandbox.stop(directory)
            if args.dir is None:
                shutil.rmtree(directory, ignore_errors=True)
    print(f"\ndemo finished in {time.monotonic() - demo.started:.1f}s")
    if args.keep:
        print(f"sandbox still running: python -m emulators status --dir {directory}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`make demo`: the sandbox end to end, showing what the controller and the emulated Azure do today.

``python -m emulators.demo [--dir DIR] [--keep] [--stories rotation,hospital,saas]
[--saas-accounts-per-tenant N] [--summary PATH]`` starts a sandbox (a temporary directory unless --dir) and
tells three stories, each loaded through the unmodified SDK clients from emulators/scenarios/:

* rotation: seeds the "rotation" scenario, rotates the key, follows the Key Vault event through Event Grid
  to on_key_event and the function's ledger, shows what the controller's reconciler did (ARM writes,
  consumer verdicts, the alert its webhook received), what each storage account reports before and after
  the storage service's daily key poll, re-wraps the client-side-encrypted blobs with ``cmkctl rewrap`` (as
  the controller's managed identity), revokes the storage identity's access and shows the blob endpoints
  refusing requests, and restores it;
* hospital: an HSM-backed key rotated every 90 days by its policy, accounts using their system-assigned
  identities; the vault firewall turned on by accident (the accounts refuse requests), fixed by letting
  trusted Microsoft services through;
* saas: a key and a user-assigned identity per tenant, a hundred accounts; one tenant's identity loses
  unwrapKey and that tenant's accounts, only those, refuse requests.

Then ``cmkctl audit`` shows the failed unwraps (403s: firewall, permission) classified, the function app's
timer sweep runs (through the local host's admin API) and its alerts reach the webhook sink, and the
report it stored is fetched from the ``report`` function as JSON and HTML. Every value printed comes from
a response of the emulated services or from the sandbox's own records; nothing is assumed. Every outcome
printed is also written as JSON to ``--summary`` (default ``.sandbox/demo-summary.json``, the HTML report
beside it): tests assert that, not the text.

The steps are functions in ``STEPS``, run in order over one ``Demo``: a new capability of the controller is
one more function inserted where it belongs.
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
from emulators.seed import SandboxClients, account_specs, load_scenario, seed, seed_document

SCENARIO = "rotation"
EVENT_TIMEOUT_S = 60.0
#: The SaaS story's tenant whose identity loses unwrapKey.
SAAS_REVOKED_TENANT = "fabrikam"
#: Where `make demo` leaves the compliance report it produced.
REPORT_COPY = sandbox.PROJECT_ROOT / ".sandbox" / "demo-compliance-report.html"
#: Where `make demo` leaves its summary: every outcome it printed, as JSON (tests read this, not the text).
SUMMARY_COPY = sandbox.PROJECT_ROOT / ".sandbox" / "demo-summary.json"


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
        #: Each story's seed result (hospital, saas), and what the demo observed: written as JSON at the end.
        self.stories: dict[str, dict[str, Any]] = {}
        self.summary: dict[str, Any] = {}
        self.saas_accounts_per_tenant: int | None = None
        self.saas_tenants: dict[str, dict[str, Any]] = {}
        self.report_path = REPORT_COPY
        #: How many records the alert sink held when the first story began: later ones are the stories' alerts.
        self.stories_sink_mark: int | None = None

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
        names = {v["principalId"]: k for k, v in (self.seeded.get("identities") or {}).items()}
        for story in self.stories.values():
            names |= {v["principalId"]: k for k, v in (story.get("identities") or {}).items()}
            names |= {v["principalId"]: f"{k} (system-assigned)"
                      for k, v in (story.get("storageAccounts") or {}).items() if v.get("principalId")}
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
    demo.say(f"ARM {demo.state['endpoints']['arm']}; vaults at https://<name>.vault.azure.net and Log Analytics at "
             f"https://api.loganalytics.io through the sandbox's proxy {demo.state['endpoints']['proxy']}")


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
    demo.summary["rotation"] = {"key": demo.key_name, "previousVersion": demo.previous_version,
                                "newVersion": demo.rotated_version}
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
    event = demo.summary["rotation"]["event"] = {"state": record["state"], "attempts": len(record["attempts"]),
                                                 "lastStatus": last["status_code"]}

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
    event["claimedInLedger"] = True
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
    event["accepted"] = {"kind": decision.get("kind"), "version": decision.get("key_version"),
                         "outcome": decision.get("outcome")}


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
    reconciled = demo.summary["rotation"]["reconcile"] = {
        "writes": [short_resource(write.partition(" -> ")[0]) for write in result.get("writes") or []],
        "consumers": [{"reason": c["reason"], "message": c["message"]} for c in result.get("consumers") or []],
        "failures": list(result.get("failures") or []), "alerts": [],
    }
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
            reconciled["alerts"].append({"severity": body.get("severity"), "reason": body.get("reason"),
                                         "resource": short_resource(str(body.get("resource")))})


def show_accounts(demo: Demo, heading: str) -> dict[str, Any]:
    """What each account (and scope) reports: {name: {"mode", "inUse", "latest"}}, as printed."""
    demo.step(heading)
    latest = demo.sdk.key_client(demo.vault_uri).get_key(demo.key_name).properties.version
    demo.say(f"latest version of {demo.key_name}: {latest}")
    reported: dict[str, Any] = {}
    for name, seeded in demo.seeded["storageAccounts"].items():
        account = demo.account(name)
        kvp = account.encryption.key_vault_properties
        mode = f"pinned {kvp.key_version}" if kvp.key_version else "versionless"
        in_use = version_of(kvp.current_versioned_key_identifier)
        verdict = "latest" if in_use == latest else "OLD"
        rotated = kvp.last_key_rotation_timestamp
        when = f", last key rotation {rotated:%Y-%m-%d %H:%M}Z" if rotated else ""
        demo.say(f"{name:<12} ({mode}): currentVersionedKeyIdentifier .../{in_use} [{verdict}]{when}")
        reported[name] = {"mode": "pinned" if kvp.key_version else "versionless", "inUse": in_use,
                          "latest": in_use == latest}
        for scope_name in seeded["encryptionScopes"]:
            scope = demo.sdk.storage.encryption_scopes.get(seeded["resourceGroup"], name, scope_name)
            scope_version = version_of(scope.key_vault_properties.current_versioned_key_identifier)
            scope_verdict = "latest" if scope_version == latest else "OLD"
            demo.say(f"  scope {scope_name}: currentVersionedKeyIdentifier .../{scope_version} [{scope_verdict}]")
            reported[f"{name}/{scope_name}"] = {"mode": "scope", "inUse": scope_version,
                                                "latest": scope_version == latest}
    return reported


def before_poll(demo: Demo) -> None:
    demo.summary["rotation"]["beforePoll"] = show_accounts(demo, "what each storage account reports now "
                                                                 "(azure-mgmt-storage)")


def after_daily_poll(demo: Demo) -> None:
    demo.step("advance the sandbox clock one day: the storage service's daily key poll runs")
    moved = demo.control("POST", "/_sandbox/clock/advance", {"seconds": timedelta(days=1).total_seconds()})
    demo.say(f"sandbox time {moved['now'][:19]}Z (offset {timedelta(seconds=moved['offsetSeconds'])})")
    demo.summary["rotation"]["afterPoll"] = show_accounts(demo, "what each storage account reports after the poll")


def rewrap_blobs(demo: Demo) -> None:
    container = next(c for c in demo.seeded["containers"].values() if c["blobs"])
    account = demo.seeded["storageAccounts"][container["account"]]
    vault_origin = demo.vault_uri.rstrip("/")
    command = [
        "rewrap", "--account", container["account"], "--container", container["container"],
        "--key", f"{vault_origin}/{demo.key_name}", "--blob-endpoint", account["blobEndpoint"], "--no-progress",
    ]  # fmt: skip
    demo.step(f"cmkctl {' '.join(command[:5])}: re-wrap the client-side-encrypted blobs onto the new version")
    before = say_wrapped_by(demo, "before: ")
    result = cmkctl(demo, *command)
    demo.say(f"cmkctl rewrap exited {result.returncode}")
    if result.returncode != 0:
        raise DemoFailed(f"cmkctl rewrap failed:\n{(result.stderr or result.stdout)[-2000:]}")
    demo.summary["rotation"]["rewrap"] = {"exitCode": result.returncode, "before": before,
                                          "after": say_wrapped_by(demo, "after: ")}


def cmkctl(demo: Demo, *command: str) -> subprocess.CompletedProcess[str]:
    """Run the operator CLI with the controller's settings and identity, as `source .sandbox/env` gives
    them to a shell: it authenticates through the sandbox's managed-identity endpoint, as in Azure."""
    values = json.loads((demo.directory / sandbox.SETTINGS_FILE).read_text())["Values"]
    return subprocess.run(  # noqa: S603 - our own interpreter and CLI
        [sys.executable, "-m", "controller.cli", *command],
        cwd=sandbox.PROJECT_ROOT, env=dict(os.environ) | values, capture_output=True, text=True, timeout=120,
        check=False,
    )


def say_wrapped_by(demo: Demo, label: str) -> dict[str, int]:
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
    return dict(wrapped_by)


def blob_container(demo: Demo) -> tuple[Any, str]:
    container = next(c for c in demo.seeded["containers"].values() if c["blobs"])
    account = demo.seeded["storageAccounts"][container["account"]]
    service = demo.sdk.blob_service(account["resourceGroup"], container["account"])
    client = service.get_container_client(container["container"])
    client.require_encryption = True
    client.key_resolver_function = demo.sdk.key_wrapper
    client.encryption_version = container["encryptionVersion"] or "2.0"
    return client, container["blobs"][0]


def read_blob(demo: Demo) -> str:
    """Read (and decrypt) one client-side-encrypted blob: "decrypted" or the HTTP error, as printed."""
    from azure.core.exceptions import HttpResponseError

    client, blob = blob_container(demo)
    try:
        data = client.download_blob(blob).readall()
    except HttpResponseError as err:
        headers = getattr(err.response, "headers", {}) or {}
        code = headers.get("x-ms-error-code")
        demo.say(f"read {client.account_name}/{client.container_name}/{blob}: HTTP {err.status_code} {code}")
        return f"HTTP {err.status_code} {code}"
    properties = client.get_blob_client(blob).get_blob_properties()
    wrapped_by = json.loads(properties.metadata["encryptiondata"])["WrappedContentKey"]["KeyId"]
    demo.say(
        f"read {client.account_name}/{client.container_name}/{blob}: {len(data)} bytes decrypted "
        f"(content key wrapped by .../{version_of(wrapped_by)}), starts {data[:24]!r}"
    )
    return "decrypted"


def list_containers(demo: Demo) -> dict[str, str]:
    """Each account's blob endpoint, asked for its containers: what every application of the account sees
    ("ok" or the HTTP error, per account)."""
    from azure.core.exceptions import HttpResponseError

    answers: dict[str, str] = {}
    for name, account in demo.seeded["storageAccounts"].items():
        service = demo.sdk.blob_service(account["resourceGroup"], name)
        try:
            containers = [c.name for c in service.list_containers()]
        except HttpResponseError as err:
            headers = getattr(err.response, "headers", {}) or {}
            demo.say(f"list containers of {name}: HTTP {err.status_code} {headers.get('x-ms-error-code')}")
            answers[name] = f"HTTP {err.status_code} {headers.get('x-ms-error-code')}"
            continue
        demo.say(f"list containers of {name}: {len(containers)} ({', '.join(containers) or 'none'})")
        answers[name] = "ok"
    return answers


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
    demo.summary["rotation"]["revoked"] = {"permissions": left, "accounts": list_containers(demo),
                                           "blobRead": read_blob(demo)}


def restore(demo: Demo) -> None:
    demo.step("restore them (access policy add)")
    granted = storage_access_policy(demo, "add")
    demo.say(f"storage identity's key permissions now: {', '.join(granted) or 'none'}")
    hourly_check(demo)
    demo.summary["rotation"]["restored"] = {"permissions": granted, "accounts": list_containers(demo),
                                            "blobRead": read_blob(demo)}


# ---- the hospital and the multi-tenant SaaS (emulators/scenarios/hospital.json, saas.json) ----------------


def story_clients(demo: Demo, story: str) -> SandboxClients:
    """The operator's SDK clients in the story's own subscription."""
    scenario = load_scenario(story)
    operator = scenario["operator"]
    return SandboxClients.for_state(demo.state, scenario["subscriptionId"], operator["objectId"], operator["name"])


def seed_story(demo: Demo, story: str, scenario: dict[str, Any]) -> None:
    if demo.stories_sink_mark is None:
        demo.stories_sink_mark = len(_sink_records(f"{demo.state['endpoints']['alertSink']}/_records"))
    """Seed a story's scenario and wait until the controller (the Functions host, its CMK_VAULTS) knows its vaults."""
    lines: list[str] = []
    demo.stories[story] = seed_document(demo.directory, scenario, log=lines.append)
    accounts = [line for line in lines if line.startswith("storage account ")]
    for line in [line for line in lines if not line.startswith(("storage account ", "  "))]:
        demo.say(line)
    demo.say(f"{len(accounts)} storage account(s), e.g. {accounts[0].removeprefix('storage account ')}")
    origins = [str(vault["uri"]).rstrip("/") for vault in demo.stories[story]["vaults"].values()]

    def controller_knows() -> bool:
        values = json.loads((demo.directory / sandbox.SETTINGS_FILE).read_text())["Values"]
        managed = {origin.rstrip("/") for origin in values["CMK_VAULTS"].split(",")}
        return set(origins) <= managed and bool(sandbox.health(demo.directory).get("running"))

    wait_for(controller_knows, 60, f"the Functions host restarted with {', '.join(origins)} in CMK_VAULTS")
    demo.state = sandbox.running_state(demo.directory) or demo.state


def probe_accounts(demo: Demo, story: str, names: list[str]) -> dict[str, str]:
    """Each account's blob endpoint asked for its containers (what every application sees): "ok" or the error."""
    from concurrent.futures import ThreadPoolExecutor

    from azure.core.exceptions import HttpResponseError

    clients = story_clients(demo, story)
    accounts = demo.stories[story]["storageAccounts"]

    def probe(name: str) -> str:
        try:
            list(clients.blob_service(accounts[name]["resourceGroup"], name).list_containers())
        except HttpResponseError as err:
            headers = getattr(err.response, "headers", {}) or {}
            return f"HTTP {err.status_code} {headers.get('x-ms-error-code')}"
        return "ok"

    with ThreadPoolExecutor(max_workers=8) as pool:
        return dict(zip(names, pool.map(probe, names), strict=True))


def say_probes(demo: Demo, probes: dict[str, str]) -> None:
    answers = Counter(probes.values())
    demo.say("blob endpoints: " + ", ".join(f"{count} x {answer}" for answer, count in answers.most_common()))


def hospital_seed(demo: Demo) -> None:
    demo.step("the hospital: an HSM-backed key on a 90-day rotation policy, accounts with their own identities")
    seed_story(demo, "hospital", load_scenario("hospital"))
    seeded = demo.stories["hospital"]
    vault = next(iter(seeded["vaults"].values()))
    key_name = next(iter(seeded["keys"])).split("/", 1)[1]
    key_client = demo.sdk.key_client(str(vault["uri"]))
    key = key_client.get_key(key_name)
    policy = key_client.get_key_rotation_policy(key_name)
    rotate = next(action for action in policy.lifetime_actions if str(action.action).lower().endswith("rotate"))
    key_type = str(getattr(key.key_type, "value", key.key_type))
    size = len(key.key.n) * 8  # the RSA modulus, in bits
    demo.say(f"key {key_name}: {key_type} {size} bits (HSM-protected), rotated {rotate.time_after_create} after "
             f"creation by its rotation policy, expires {policy.expires_in} after")
    accounts = {name: {"identity": "SystemAssigned", "principalId": account["principalId"]}
                for name, account in seeded["storageAccounts"].items()}
    for name, account in accounts.items():
        demo.say(f"{name}: CMK through its system-assigned identity {account['principalId']}")
    demo.summary["hospital"] = {
        "vault": vault["uri"], "key": {"name": key_name, "type": key_type, "size": size,
                                       "rotateAfter": rotate.time_after_create, "expiresIn": policy.expires_in},
        "accounts": accounts,
    }


def set_hospital_firewall(demo: Demo, bypass: str) -> dict[str, str]:
    from azure.mgmt.keyvault.models import NetworkRuleSet, VaultPatchParameters, VaultPatchProperties

    seeded = demo.stories["hospital"]
    name, vault = next(iter(seeded["vaults"].items()))
    updated = story_clients(demo, "hospital").keyvault_mgmt.vaults.update(
        vault["resourceGroup"], name,
        VaultPatchParameters(properties=VaultPatchProperties(
            network_acls=NetworkRuleSet(default_action="Deny", bypass=bypass, ip_rules=[], virtual_network_rules=[]))),
    )
    acls = updated.properties.network_acls
    firewall = {"defaultAction": str(getattr(acls.default_action, "value", acls.default_action)),
                "bypass": str(getattr(acls.bypass, "value", acls.bypass))}
    demo.say(f"vault {name} networkAcls: defaultAction {firewall['defaultAction']}, bypass {firewall['bypass']}")
    return firewall


def hospital_firewall_outage(demo: Demo) -> None:
    demo.step("the hospital: the vault firewall is turned on by accident (deny, no trusted services)")
    firewall = set_hospital_firewall(demo, "None")
    hourly_check(demo)
    probes = probe_accounts(demo, "hospital", sorted(demo.stories["hospital"]["storageAccounts"]))
    say_probes(demo, probes)
    demo.summary["hospital"]["outage"] = {"firewall": firewall, "accounts": probes,
                                          "refused": sum(answer != "ok" for answer in probes.values())}


def hospital_fix(demo: Demo) -> None:
    demo.step("the hospital: fixed by allowing trusted Microsoft services (Azure Storage) through the firewall")
    firewall = set_hospital_firewall(demo, "AzureServices")
    hourly_check(demo)
    probes = probe_accounts(demo, "hospital", sorted(demo.stories["hospital"]["storageAccounts"]))
    say_probes(demo, probes)
    demo.say("Azure Storage is a trusted service; the controller is not: the firewall still refuses its reads of "
             "this vault's data plane (the sweep below says so)")
    demo.summary["hospital"]["fixed"] = {"firewall": firewall, "accounts": probes,
                                         "refused": sum(answer != "ok" for answer in probes.values())}


def saas_seed(demo: Demo) -> None:
    scenario = load_scenario("saas")
    if demo.saas_accounts_per_tenant is not None:  # a smaller fleet (the test), the same story
        for spec in scenario["storageAccounts"]:
            spec["count"] = demo.saas_accounts_per_tenant
    demo.step(f"the multi-tenant SaaS: a key and an identity per tenant, {len(account_specs(scenario))} accounts")
    seed_story(demo, "saas", scenario)
    tenants: dict[str, dict[str, Any]] = {}
    for spec in account_specs(scenario):
        tenant = spec["tags"]["tenant"]
        entry = tenants.setdefault(tenant, {"key": spec["cmk"]["key"], "identity": spec["identity"], "accounts": []})
        entry["accounts"].append(spec["name"])
    for tenant, entry in tenants.items():
        demo.say(f"tenant {tenant}: key {entry['key']}, identity {entry['identity']}, "
                 f"{len(entry['accounts'])} accounts")
    demo.summary["saas"] = {"accounts": sum(len(entry["accounts"]) for entry in tenants.values()),
                            "tenants": {tenant: {**entry, "accounts": len(entry["accounts"])}
                                        for tenant, entry in tenants.items()}}
    demo.saas_tenants = tenants


def saas_tenant_loses_unwrap(demo: Demo) -> None:
    from azure.mgmt.keyvault.models import (
        AccessPolicyEntry,
        AccessPolicyUpdateKind,
        Permissions,
        VaultAccessPolicyParameters,
        VaultAccessPolicyProperties,
    )

    tenants = demo.saas_tenants
    revoked = tenants[SAAS_REVOKED_TENANT]
    demo.step(f"the multi-tenant SaaS: tenant {SAAS_REVOKED_TENANT}'s identity loses its unwrapKey permission")
    seeded = demo.stories["saas"]
    name, vault = next(iter(seeded["vaults"].items()))
    identity = seeded["identities"][revoked["identity"]]
    entry = AccessPolicyEntry(tenant_id=demo.state["tenantId"], object_id=identity["principalId"],
                              permissions=Permissions(keys_property=["get", "wrapKey"]))
    result = story_clients(demo, "saas").keyvault_mgmt.vaults.update_access_policy(
        vault["resourceGroup"], name, AccessPolicyUpdateKind.REPLACE,
        VaultAccessPolicyParameters(properties=VaultAccessPolicyProperties(access_policies=[entry])),
    )
    left = [str(getattr(k, "value", k)) for policy in result.properties.access_policies
            if policy.object_id == identity["principalId"] for k in (policy.permissions.keys_property or [])]
    demo.say(f"{revoked['identity']}'s key permissions now: {', '.join(left)}")
    hourly_check(demo)
    names = [account for entry in tenants.values() for account in entry["accounts"]]
    probes = probe_accounts(demo, "saas", names)
    refused = {tenant: sum(probes[account] != "ok" for account in entry["accounts"])
               for tenant, entry in tenants.items()}
    for tenant, count in refused.items():
        demo.say(f"tenant {tenant}: {count} of {len(tenants[tenant]['accounts'])} accounts refuse requests"
                 + (f" ({next(probes[a] for a in tenants[tenant]['accounts'] if probes[a] != 'ok')})" if count else ""))
    demo.summary["saas"] |= {"revokedTenant": SAAS_REVOKED_TENANT, "revokedIdentityPermissions": left,
                             "refusedByTenant": refused}


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
        accounts = list(group["storageAccounts"])
        shown = ", ".join(accounts[:3]) + (f" and {len(accounts) - 3} more" if len(accounts) > 3 else "")
        demo.say(f"{group['count']} x {'/'.join(group['operations'])} HTTP {group['statusCode']} {group['class']}: "
                 f"caller {names.get(group['caller'], group['caller'])} ({shown or 'no known account'}), "
                 f"key {group['key']}/{group['version'][:8]}")
        demo.say(f"  fix: {group['remediation']}")
    demo.summary["audit"] = {
        "failures": report["failures"],
        "groups": [{"vault": group["vault"], "key": group["key"], "class": group["class"],
                    "statusCode": group["statusCode"], "operations": group["operations"], "count": group["count"],
                    "caller": names.get(group["caller"], group["caller"]),
                    "storageAccounts": sorted(group["storageAccounts"])} for group in groups],
    }


def compliance_report(demo: Demo) -> None:
    demo.step("the sweep's compliance report, served by the function app (GET /api/report, function key)")
    report = json.loads(_report(demo, "json"))
    findings = report["findings"]
    by_severity = Counter(finding["severity"] for finding in findings)
    by_rule = Counter(finding["rule"] for finding in findings)
    demo.say(f"{len(findings)} findings over {report['summary']['resourcesEvaluated']} resources: "
             + ", ".join(f"{count} {severity}" for severity, count in by_severity.most_common()))
    demo.say("by rule: " + ", ".join(f"{rule} x {count}" for rule, count in sorted(by_rule.items())))
    serious = [finding for finding in findings if finding["severity"] in ("critical", "high")]
    for rule, group in _grouped(serious).items():
        first = group[0]
        more = f" (and {len(group) - 1} more like it)" if len(group) > 1 else ""
        demo.say(f"{first['severity']} {rule} {first['resource'].rsplit('/', 1)[-1]}: {first['title']}{more}")
    # Kept where it outlives the demo's temporary sandbox (.sandbox/ is ignored by git).
    demo.report_path.parent.mkdir(parents=True, exist_ok=True)
    demo.report_path.write_text(_report(demo, "html"), encoding="utf-8")
    demo.say(f"HTML report (?format=html): {demo.report_path} (self-contained: open it in a browser)")
    demo.summary["sweep"] = {
        "findings": len(findings), "bySeverity": dict(by_severity), "byRule": dict(by_rule),
        "serious": [{"rule": f["rule"], "severity": f["severity"], "resource": f["resource"], "title": f["title"]}
                    for f in serious],
        "htmlReport": str(demo.report_path),
    }


def _report(demo: Demo, report_format: str) -> str:
    keys = json.loads(Path(demo.state["hostKeysPath"]).read_text(encoding="utf-8"))
    query = urllib.parse.urlencode({"format": report_format, "code": keys["function"]})
    url = f"{demo.state['endpoints']['functions']}/api/report?{query}"
    with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 - the local Functions host from state
        return str(response.read().decode("utf-8"))


def _grouped(findings: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for finding in findings:
        grouped.setdefault(finding["rule"], []).append(finding)
    return grouped


def timer_sweep(demo: Demo) -> None:
    demo.step("the function app's timer sweep (run now through the host's admin API): alerts to the webhook")
    sink = f"{demo.state['endpoints']['alertSink']}/_records"
    before = len(_sink_records(sink))
    keys = json.loads(Path(demo.state["hostKeysPath"]).read_text(encoding="utf-8"))
    request = urllib.request.Request(  # noqa: S310 - the local Functions host from the sandbox state
        f"{demo.state['endpoints']['functions']}/admin/functions/compliance_sweep", data=b"{}", method="POST",
        headers={"x-functions-key": keys["master"], "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310 - loopback host from state
        demo.say(f"POST /admin/functions/compliance_sweep: HTTP {response.status} (the host ran it to the end)")
    records = _sink_records(sink)
    drift = [record["body"] for record in records[demo.stories_sink_mark or before:before]
             if isinstance(record["body"], dict)]
    if drift:
        # Opened within seconds of each change by the resource events (drift), so the sweep does not repeat them.
        demo.say(f"{len(drift)} alert(s) already sent during the stories by drift detection (ARM resource events): "
                 + ", ".join(f"{len(group)} {reason}" for reason, group in _by_reason(drift).items()))
    alerts = [record["body"] for record in records[before:] if isinstance(record["body"], dict)]
    by_severity = Counter(str(alert.get("severity")) for alert in alerts)
    demo.say(f"{len(alerts)} alert(s) received by the webhook sink: "
             + ", ".join(f"{count} {severity}" for severity, count in by_severity.most_common()))
    for reason, group in _by_reason(alerts).items():
        more = f" (and {len(group) - 1} more)" if len(group) > 1 else ""
        first = group[0]
        demo.say(f"{first.get('severity')} {reason} {str(first.get('resource')).rsplit('/', 1)[-1]}: "
                 f"{first.get('message')}{more}")
    fields = ("severity", "reason", "resource", "message", "fingerprint")
    demo.summary["alerts"] = {
        "received": len(alerts), "bySeverity": dict(by_severity),
        "alerts": [{key: alert.get(key) for key in fields} for alert in alerts],
        "beforeTheSweep": [{key: alert.get(key) for key in fields} for alert in drift],
    }


def _sink_records(url: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback sink from state
        records: list[dict[str, Any]] = json.loads(response.read())
    return records


def _by_reason(alerts: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for alert in alerts:
        grouped.setdefault(str(alert.get("reason")), []).append(alert)
    return grouped


def stop_sandbox(demo: Demo) -> None:
    demo.step("sandbox down (what `python -m emulators down` runs)")
    report = sandbox.stop(demo.directory)
    if not report.clean:
        raise DemoFailed("processes left behind:\n" + "\n".join(report.lines()))
    demo.say(f"stopped {len(report.stopped)} recorded process(es); no sandbox process left")


#: Today's rotation story, then the hospital's and the SaaS's, then what the controller makes of all three.
ROTATION_STORY: list[Callable[[Demo], None]] = [
    seed_scenario,
    rotate_key,
    follow_event,
    controller_reconciles,
    before_poll,
    after_daily_poll,
    rewrap_blobs,
    revoke,
    restore,
]
HOSPITAL_STORY: list[Callable[[Demo], None]] = [hospital_seed, hospital_firewall_outage, hospital_fix]
SAAS_STORY: list[Callable[[Demo], None]] = [saas_seed, saas_tenant_loses_unwrap]
STORIES = {"rotation": ROTATION_STORY, "hospital": HOSPITAL_STORY, "saas": SAAS_STORY}
STEPS: list[Callable[[Demo], None]] = [
    start_sandbox,
    *ROTATION_STORY,
    *HOSPITAL_STORY,
    *SAAS_STORY,
    audit_failures,
    timer_sweep,
    compliance_report,
    stop_sandbox,
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emulators.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, help="sandbox directory (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="leave the sandbox running at the end")
    parser.add_argument("--stories", default=",".join(STORIES),
                        help=f"comma-separated stories to tell (default: {','.join(STORIES)})")
    parser.add_argument("--saas-accounts-per-tenant", type=int, metavar="N",
                        help="resize the SaaS fleet (default: the scenario's 25 per tenant, 100 in all)")
    parser.add_argument("--summary", type=Path, default=SUMMARY_COPY,
                        help=f"where to write the JSON summary of every outcome (default {SUMMARY_COPY}); the "
                        f"HTML report goes beside it as {REPORT_COPY.name}")
    args = parser.parse_args(argv)
    chosen = [story.strip() for story in args.stories.split(",") if story.strip()]
    unknown = sorted(set(chosen) - set(STORIES))
    if unknown or not chosen:
        parser.error(f"--stories: unknown {', '.join(unknown) or '(none given)'}; known: {', '.join(STORIES)}")
    if args.saas_accounts_per_tenant is not None and not 1 <= args.saas_accounts_per_tenant <= 250:
        parser.error("--saas-accounts-per-tenant must be 1-250")
    directory = args.dir or Path(tempfile.mkdtemp(prefix="cmk-demo-"))
    demo = Demo(directory)
    demo.saas_accounts_per_tenant = args.saas_accounts_per_tenant
    demo.report_path = args.summary.parent / REPORT_COPY.name
    left_out = {step for story, steps in STORIES.items() if story not in chosen for step in steps}
    steps = [s for s in STEPS if s not in left_out and not (args.keep and s is stop_sandbox)]
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
    demo.summary["stories"] = chosen
    demo.summary["elapsedSeconds"] = round(time.monotonic() - demo.started, 1)
    args.summary.parent.mkdir(parents=True, exist_ok=True)
    args.summary.write_text(json.dumps(demo.summary, indent=2) + "\n", encoding="utf-8")
    print(f"\ndemo finished in {time.monotonic() - demo.started:.1f}s; summary (JSON): {args.summary}")
    if args.keep:
        print(f"sandbox still running: python -m emulators status --dir {directory}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

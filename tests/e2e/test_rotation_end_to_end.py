"""Rotation end to end in the sandbox: rotate a key in the emulated vault -> Event Grid -> the local
Functions host -> on_key_event -> the reconciler, as the controller's managed identity, through ARM.

A pinned account with the update policy and a versionless account (and its encryption scope) converge
on the new version; the versionless one keeps automatic updates on; an account whose identity lost its
access is not touched and is alerted to the webhook sink; conditions are recorded in the ledger; the
account's tagged client-side-encrypted container is re-wrapped onto the new version by process_work
(queue fan-out), and every blob still decrypts.
"""

from __future__ import annotations

import copy
import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from azure.data.tables import TableClient

from emulators import sandbox
from emulators.seed import SandboxClients, Seeder, load_scenario
from tests.e2e.polling import wait_for as _wait_for

pytestmark = pytest.mark.e2e

GROUP = "rg-cmk-rotation"


def scenario() -> dict[str, Any]:
    spec = copy.deepcopy(load_scenario("rotation"))
    vault = spec["vaults"][0]
    vault["accessPolicies"].append(
        {"principal": "identity:id-storage-revoked", "keys": ["get", "wrapKey", "unwrapKey"]})
    spec["identities"].append({"name": "id-storage-revoked", "resourceGroup": GROUP})
    for account in spec["storageAccounts"]:
        if account["name"] == "stcmkpinned":
            account["tags"] = {"cmk-pinned-policy": "update"}
        if account["name"] == "stcmkauto":  # its client-side-encrypted container, re-wrapped after a rotation
            account["tags"] = {"cmk-rewrap-containers": "documents"}
    spec["storageAccounts"].append({
        "name": "stcmkrevoked", "resourceGroup": GROUP, "identity": "id-storage-revoked",
        "cmk": {"vault": vault["name"], "key": spec["keys"][0]["name"], "pinned": False},
    })
    spec["roleAssignments"] = [
        {"principal": "$controller", "role": "Reader", "scope": "subscription"},
        {"principal": "$controller", "role": spec["roleDefinitions"][0]["name"], "scope": f"resourceGroup:{GROUP}"},
    ]
    return spec


def wait_for(condition, timeout: float = 60.0):
    return _wait_for(condition, timeout, interval=0.25)


def revoke(clients: SandboxClients, state: dict[str, Any], spec: dict[str, Any], principal_id: str) -> None:
    from azure.mgmt.keyvault.models import (
        AccessPolicyEntry,
        AccessPolicyUpdateKind,
        Permissions,
        VaultAccessPolicyParameters,
        VaultAccessPolicyProperties,
    )

    entry = AccessPolicyEntry(tenant_id=state["tenantId"], object_id=principal_id,
                              permissions=Permissions(keys_property=["get", "wrapKey", "unwrapKey"]))
    clients.keyvault_mgmt.vaults.update_access_policy(
        GROUP, spec["vaults"][0]["name"], AccessPolicyUpdateKind.REMOVE,
        VaultAccessPolicyParameters(properties=VaultAccessPolicyProperties(access_policies=[entry])),
    )


def version_of(identifier: str | None) -> str:
    return (identifier or "").rstrip("/").rsplit("/", 1)[-1]


@pytest.fixture(scope="module")
def estate(tmp_path_factory):
    directory: Path = tmp_path_factory.mktemp("sandbox")
    spec = scenario()
    with sandbox.running(directory, timeout=120) as state:
        seeded = Seeder(directory, spec, log=lambda _text: None).run()
        clients = SandboxClients.for_state(state, spec["subscriptionId"], spec["operator"]["objectId"], "operator")
        # Every test meets the estate with one storage identity that has lost its key access (each stands alone).
        revoke(clients, state, spec, seeded["identities"]["id-storage-revoked"]["principalId"])
        yield {"directory": directory, "state": state, "spec": spec, "seeded": seeded, "clients": clients}


def test_a_rotation_is_adopted_everywhere_it_may_be_and_alerted_where_it_may_not(estate):
    clients, spec, seeded, state = estate["clients"], estate["spec"], estate["seeded"], estate["state"]
    keys = clients.key_client(next(iter(seeded["vaults"].values()))["uri"])
    old_version = keys.get_key(spec["keys"][0]["name"]).properties.version
    new_version = keys.rotate_key(spec["keys"][0]["name"]).properties.version

    def account(name: str) -> Any:
        return clients.storage.storage_accounts.get_properties(GROUP, name)

    def converged() -> bool:
        auto, pinned = account("stcmkauto"), account("stcmkpinned")
        scope = clients.storage.encryption_scopes.get(GROUP, "stcmkauto", "cmkscope")
        return (version_of(auto.encryption.key_vault_properties.current_versioned_key_identifier) == new_version
                and not auto.encryption.key_vault_properties.key_version
                and pinned.encryption.key_vault_properties.key_version == new_version
                and version_of(scope.key_vault_properties.current_versioned_key_identifier) == new_version
                and scope.key_vault_properties.key_uri.rstrip("/").endswith("/keys/storage-cmk"))

    wait_for(converged)
    revoked = account("stcmkrevoked").encryption.key_vault_properties
    assert version_of(revoked.current_versioned_key_identifier) == old_version  # never touched
    assert not revoked.key_version

    def alerts() -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{state['endpoints']['alertSink']}/_records", timeout=10) as response:  # noqa: S310
            return [record["body"] for record in json.loads(response.read())
                    if isinstance(record["body"], dict) and record["body"].get("resource", "").endswith("stcmkrevoked")]

    # The reconciler's alert; the revocation's resource event also raises the compliance finding (drift).
    [alert] = wait_for(lambda: [body for body in alerts() if body["reason"] == "IdentityLacksAccess"])[:1]
    assert alert["severity"] == "critical"
    assert wait_for(lambda: [body for body in alerts() if (body.get("details") or {}).get("rule") == "CMK-006"])

    settings = json.loads((estate["directory"] / "local.settings.json").read_text())["Values"]
    ledger = TableClient.from_connection_string(settings["AzureWebJobsStorage"],
                                                table_name=settings["CMK_LEDGER_TABLE"])

    def conditions() -> dict[str, list[dict[str, Any]]]:
        return {entity["Subject"]: json.loads(entity["Conditions"])
                for entity in ledger.query_entities("Kind eq 'consumer'")}

    recorded = wait_for(lambda: (found := conditions()) and len(found) >= 4 and found)
    by_account = {subject.rsplit("/", 1)[-1]: items for subject, items in recorded.items()}
    adopted = {item["type"]: item for item in by_account["stcmkauto"]}["Adopted"]
    assert (adopted["status"], adopted["reason"]) == ("True", "Adopted")
    access = {item["type"]: item for item in by_account["stcmkrevoked"]}["KeyAccessible"]
    assert (access["status"], access["reason"]) == ("False", "IdentityLacksAccess")
    intents = [entity for entity in ledger.query_entities("Kind eq 'intent'")]
    assert {entity["Step"] for entity in intents} == {"restored"}  # the forced adoptions completed


def test_the_tagged_container_is_rewrapped_onto_the_new_version_by_the_queue_fan_out(estate):
    clients, spec, seeded = estate["clients"], estate["spec"], estate["seeded"]
    keys = clients.key_client(next(iter(seeded["vaults"].values()))["uri"])
    current = keys.get_key(spec["keys"][0]["name"]).properties.version  # the rotation of the first test
    container = clients.blob_service(GROUP, "stcmkauto").get_container_client("documents")

    def wrapped_versions() -> dict[str, int]:
        counts: dict[str, int] = {}
        for blob in container.list_blobs(include=["metadata"]):
            envelope = json.loads(blob.metadata["encryptiondata"])
            version = version_of(envelope["WrappedContentKey"]["KeyId"])
            counts[version] = counts.get(version, 0) + 1
        return counts

    assert wait_for(lambda: wrapped_versions() == {current: 20} or None, timeout=90)
    # Every blob still decrypts with the unmodified client, its content key unwrapped by the new version.
    new_kek = clients.key_wrapper(keys.get_key(spec["keys"][0]["name"]).id)
    for blob in container.list_blobs():
        reader = container.get_blob_client(blob.name)
        reader.key_encryption_key = new_kek
        reader.require_encryption = True
        reader.encryption_version = "2.0"
        assert reader.download_blob().readall().startswith(blob.name.encode())


def test_usage_reports_consumers_blobs_and_audited_unwraps_per_version(estate):
    """`cmkctl usage` as an operator runs it, with the function app's settings (its managed identity)."""
    import os
    import subprocess
    import sys

    values = json.loads((estate["directory"] / "local.settings.json").read_text())["Values"]
    vault = values["CMK_VAULTS"].split(",")[0]
    cmkctl = Path(sys.executable).parent / "cmkctl"
    done = subprocess.run(  # noqa: S603 - the project's own console script
        [str(cmkctl), "usage", vault, "storage-cmk", "--json"], capture_output=True, text=True, timeout=120,
        env={**os.environ, **values}, check=False,
    )
    assert done.returncode == 0, done.stderr
    versions = {item["version"]: item for item in json.loads(done.stdout)["versions"]}
    keys = estate["clients"].key_client(next(iter(estate["seeded"]["vaults"].values()))["uri"])
    current = keys.get_key("storage-cmk").properties.version
    newest = versions[current]
    assert newest["blobs"] == 20  # the re-wrapped container, counted from the blobs' envelopes
    assert not newest["safe_to_disable"]
    assert newest["audit_available"] is True
    assert newest["last_unwrap"] is not None  # the storage service unwraps its root key with it
    [old] = [item for version, item in versions.items() if version != current]
    assert old["blobs"] == 0
    assert any(consumer.endswith("/stcmkrevoked") for consumer in old["consumers"])  # never moved: still used
    assert old["safe_to_disable"] is False
    assert old["reason"] == "InUse"


def test_cmkctl_rotate_racing_the_function_app_reports_the_outcome_not_the_race(estate):
    """The rotation's own Event Grid event makes the function app reconcile the same key at the same
    time as `cmkctl rotate` follows it through: the ledger lets one write, and the CLI reports what
    happened (every consumer that may adopt did; the revoked one is left for a human), never a failure
    of the race itself."""
    import os
    import subprocess
    import sys

    values = json.loads((estate["directory"] / "local.settings.json").read_text())["Values"]
    vault = values["CMK_VAULTS"].split(",")[0]
    cmkctl = Path(sys.executable).parent / "cmkctl"
    done = subprocess.run(  # noqa: S603 - the project's own console script
        [str(cmkctl), "rotate", vault, "storage-cmk", "--json", "--wait", "90"], capture_output=True, text=True,
        timeout=180, env={**os.environ, **values}, check=False,
    )
    report = json.loads(done.stdout)  # exactly one JSON document
    actions = {consumer["resource"].rsplit("/", 1)[-1]: consumer["action"] for consumer in report["consumers"]}
    assert actions == {"stcmkauto": "adopted", "cmkscope": "adopted", "stcmkpinned": "adopted",
                       "stcmkrevoked": "blocked"}, done.stderr
    assert report["failures"] == []
    assert done.returncode == 1  # the revoked consumer needs a human: said, not hidden
    keys = estate["clients"].key_client(next(iter(estate["seeded"]["vaults"].values()))["uri"])
    assert report["new_version"] == keys.get_key("storage-cmk").properties.version


def test_cmkctl_audit_reads_the_vaults_audit_logs_through_the_workspace(estate):
    """`cmkctl audit` with the function app's settings: the sandbox vault's records are found in the
    workspace, and the exit status says whether any wrap/unwrap failed (each failure classified)."""
    import os
    import subprocess
    import sys

    values = json.loads((estate["directory"] / "local.settings.json").read_text())["Values"]
    cmkctl = Path(sys.executable).parent / "cmkctl"
    done = subprocess.run(  # noqa: S603 - the project's own console script
        [str(cmkctl), "audit", "--since", "24h", "--format", "json"], capture_output=True, text=True, timeout=180,
        env={**os.environ, **values}, check=False,
    )
    report = json.loads(done.stdout)
    vault = values["CMK_VAULTS"].split(",")[0]
    assert [source["vault"] for source in report["sources"] if source["records"] > 0] == [vault], done.stderr
    assert report["partial"] is False
    assert done.returncode == (1 if report["groups"] else 0)
    classes = {"permission", "firewall", "key_disabled", "key_expired", "key_deleted", "throttled", "other"}
    assert all(group["class"] in classes and group["remediation"] for group in report["groups"])

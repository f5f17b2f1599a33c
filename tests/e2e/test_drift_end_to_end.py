"""Drift in seconds, end to end in the sandbox, with no sweep running: a change made through the
unmodified azure-mgmt SDKs -> the emulated ARM's resource event -> Event Grid (the subscription's system
topic, filtered) -> the local Functions host -> on_resource_event -> a focused re-read and re-evaluation
-> the alert at the webhook sink, within 10 seconds for each of: the storage identity's access policy
edited away, the vault firewall turned on, the vault deleted.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from emulators import sandbox
from emulators.seed import SandboxClients, Seeder, load_scenario
from tests.e2e.polling import wait_for

pytestmark = pytest.mark.e2e

GROUP = "rg-cmk-rotation"
#: The bound the issue sets from the change to the alert (the tests poll up to it, never assert a time).
DRIFT_DEADLINE_SECONDS = 10.0


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - the sandbox's loopback URLs
        return json.loads(response.read())


@pytest.fixture(scope="module")
def estate(tmp_path_factory):
    directory: Path = tmp_path_factory.mktemp("sandbox")
    spec = load_scenario("rotation")
    with sandbox.running(directory, timeout=120) as state:
        seeded = Seeder(directory, spec, log=lambda _text: None).run()
        clients = SandboxClients.for_state(state, spec["subscriptionId"], spec["operator"]["objectId"], "operator")
        subscription_name = f"{spec['subscriptionId']}-on-resource-event".lower()

        def subscribed() -> bool:
            statuses = get_json(f"{state['endpoints']['eventGridAdmin']}/subscriptions")
            return any(status["name"].lower() == subscription_name and status["provisioning_state"] == "Succeeded"
                       for status in statuses) and sandbox.health(directory)["running"]

        wait_for(subscribed, timeout=90)
        yield {"state": state, "spec": spec, "seeded": seeded, "clients": clients}


def opened_alert(state: dict[str, Any], rule: str, resource: str) -> dict[str, Any] | None:
    for record in get_json(f"{state['endpoints']['alertSink']}/_records"):
        body = record["body"]
        if (isinstance(body, dict) and body.get("transition") == "opened"
                and (body.get("details") or {}).get("rule") == rule
                and str(body.get("resource", "")).rstrip("/").lower() == resource.rstrip("/").lower()):
            return body
    return None


def within_deadline(state: dict[str, Any], rule: str, resource: str) -> dict[str, Any]:
    found: dict[str, Any] = wait_for(lambda: opened_alert(state, rule, resource), timeout=DRIFT_DEADLINE_SECONDS,
                                     interval=0.1)
    return found


def vault_id(estate: dict[str, Any]) -> str:
    spec = estate["spec"]
    return (f"/subscriptions/{spec['subscriptionId']}/resourceGroups/{GROUP}/providers/Microsoft.KeyVault/vaults/"
            f"{spec['vaults'][0]['name']}")


def test_the_storage_identity_losing_its_access_policy_is_alerted_within_seconds(estate):
    from azure.mgmt.keyvault.models import (
        AccessPolicyEntry,
        AccessPolicyUpdateKind,
        Permissions,
        VaultAccessPolicyParameters,
        VaultAccessPolicyProperties,
    )

    clients, spec, state = estate["clients"], estate["spec"], estate["state"]
    principal = estate["seeded"]["identities"]["id-storage-cmk"]["principalId"]
    account = clients.storage.storage_accounts.get_properties(GROUP, "stcmkauto")
    assert opened_alert(state, "CMK-006", account.id) is None
    entry = AccessPolicyEntry(tenant_id=state["tenantId"], object_id=principal,
                              permissions=Permissions(keys_property=["get", "wrapKey", "unwrapKey"]))

    clients.keyvault_mgmt.vaults.update_access_policy(
        GROUP, spec["vaults"][0]["name"], AccessPolicyUpdateKind.REMOVE,
        VaultAccessPolicyParameters(properties=VaultAccessPolicyProperties(access_policies=[entry])))

    alert = within_deadline(state, "CMK-006", account.id)
    assert alert["severity"] == "critical"


def test_the_vault_firewall_turned_on_is_alerted_within_seconds(estate):
    from azure.mgmt.keyvault.models import NetworkRuleSet, VaultPatchParameters, VaultPatchProperties

    clients, spec, state = estate["clients"], estate["spec"], estate["state"]
    assert opened_alert(state, "CMK-007", vault_id(estate)) is None

    clients.keyvault_mgmt.vaults.update(GROUP, spec["vaults"][0]["name"], VaultPatchParameters(
        properties=VaultPatchProperties(network_acls=NetworkRuleSet(default_action="Deny", bypass="None"))))

    alert = within_deadline(state, "CMK-007", vault_id(estate))
    assert alert["severity"] == "critical"


def test_the_vault_deleted_is_a_critical_deletion_finding_within_seconds(estate):
    clients, spec, state, seeded = estate["clients"], estate["spec"], estate["state"], estate["seeded"]
    key_uri = f"{seeded['vaults'][spec['vaults'][0]['name']]['uri'].rstrip('/')}/keys/{spec['keys'][0]['name']}"
    assert opened_alert(state, "CMK-013", key_uri) is None

    clients.keyvault_mgmt.vaults.delete(GROUP, spec["vaults"][0]["name"])

    alert = within_deadline(state, "CMK-013", key_uri)
    assert alert["severity"] == "critical"
    deleted = list(clients.keyvault_mgmt.vaults.list_deleted())
    assert [item.properties.vault_id.lower() for item in deleted] == [vault_id(estate).lower()]

"""Drift in seconds, end to end in the sandbox, with no sweep running: a change made through the
unmodified azure-mgmt SDKs -> the emulated ARM's resource event -> Event Grid (the subscription's system
topic, filtered) -> the local Functions host -> on_resource_event -> a focused re-read and re-evaluation
-> the alert at the webhook sink, within 10 seconds for each of: the storage identity's access policy
edited away, its role assignment on an RBAC vault deleted, the vault firewall turned on, the vault deleted.
"""

from __future__ import annotations

import json
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from emulators import sandbox
from emulators.seed import SandboxClients, Seeder, load_scenario
from tests.e2e.polling import wait_for

pytestmark = pytest.mark.e2e

GROUP = "rg-cmk-rotation"
RBAC_VAULT = "kv-drift-rbac"
RBAC_ACCOUNT = "stcmkrbac"
CRYPTO_OFFICER = "14b46e9e-c2b7-41b4-b07b-48a6ebf60603"
CRYPTO_SERVICE_ENCRYPTION_USER = "e147488a-f6f5-4113-8e2d-b22465e65bf6"
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
        rbac = rbac_vault_with_a_consumer(clients, state, spec, seeded)
        subscription_name = f"{spec['subscriptionId']}-on-resource-event".lower()

        rbac_origin = rbac["vault"].properties.vault_uri.rstrip("/").lower()

        def subscribed() -> bool:  # the host restarted for the new vault, and everything is subscribed again
            statuses = get_json(f"{state['endpoints']['eventGridAdmin']}/subscriptions")
            health = sandbox.health(directory)
            hosted = [origin.lower() for origin in health["components"].get("functions", {}).get("vaults", [])]
            return (health["running"] and rbac_origin in hosted
                    and all(status["provisioning_state"] == "Succeeded" for status in statuses)
                    and any(status["name"].lower() == subscription_name for status in statuses))

        wait_for(subscribed, timeout=90)
        yield {"state": state, "spec": spec, "seeded": seeded, "clients": clients, "rbac": rbac}


def rbac_vault_with_a_consumer(clients: SandboxClients, state: dict[str, Any], spec: dict[str, Any],
                               seeded: dict[str, Any]) -> dict[str, Any]:
    """An RBAC vault whose key protects one account; the account's identity holds its role at the vault."""
    from azure.mgmt.authorization.models import RoleAssignmentCreateParameters
    from azure.mgmt.keyvault.models import Sku, VaultCreateOrUpdateParameters, VaultProperties
    from azure.mgmt.storage.models import (
        Encryption,
        EncryptionIdentity,
        Identity,
        KeyVaultProperties,
        StorageAccountCreateParameters,
        UserAssignedIdentity,
    )
    from azure.mgmt.storage.models import Sku as StorageSku

    vault = clients.keyvault_mgmt.vaults.begin_create_or_update(GROUP, RBAC_VAULT, VaultCreateOrUpdateParameters(
        location=spec["location"], properties=VaultProperties(
            tenant_id=state["tenantId"], sku=Sku(family="A", name="standard"), enable_rbac_authorization=True,
            enable_soft_delete=True, soft_delete_retention_in_days=7, enable_purge_protection=True))).result()

    def assign(principal: str, role: str) -> str:
        name = str(uuid.uuid4())
        clients.authorization.role_assignments.create(vault.id, name, RoleAssignmentCreateParameters(
            role_definition_id=f"/subscriptions/{spec['subscriptionId']}/providers/Microsoft.Authorization/"
                               f"roleDefinitions/{role}", principal_id=principal))
        return name

    assign(spec["operator"]["objectId"], CRYPTO_OFFICER)
    identity = seeded["identities"]["id-storage-cmk"]
    storage_assignment = assign(identity["principalId"], CRYPTO_SERVICE_ENCRYPTION_USER)
    clients.key_client(vault.properties.vault_uri).create_rsa_key("storage-cmk", size=2048)
    account = clients.storage.storage_accounts.begin_create(GROUP, RBAC_ACCOUNT, StorageAccountCreateParameters(
        sku=StorageSku(name="Standard_LRS"), kind="StorageV2", location=spec["location"],
        identity=Identity(type="UserAssigned", user_assigned_identities={identity["id"]: UserAssignedIdentity()}),
        encryption=Encryption(key_source="Microsoft.Keyvault", key_vault_properties=KeyVaultProperties(
            key_name="storage-cmk", key_vault_uri=vault.properties.vault_uri),
            encryption_identity=EncryptionIdentity(encryption_user_assigned_identity=identity["id"])))).result()
    return {"vault": vault, "account": account, "storage_assignment": storage_assignment}


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


def test_the_storage_identity_s_role_assignment_deleted_is_alerted_within_seconds(estate):
    clients, state, rbac = estate["clients"], estate["state"], estate["rbac"]
    account_id = rbac["account"].id
    assert opened_alert(state, "CMK-006", account_id) is None

    clients.authorization.role_assignments.delete(rbac["vault"].id, rbac["storage_assignment"])

    alert = within_deadline(state, "CMK-006", account_id)
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

"""The emulated ARM publishes Azure Resource Manager resource events (a subscription system topic's) for
changes made with the unmodified mgmt clients, in Azure's shape; Event Grid's filters select them; the
controller's strict intake accepts every one of them."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.mgmt.authorization import AuthorizationManagementClient
from azure.mgmt.authorization.models import RoleAssignmentCreateParameters
from azure.mgmt.keyvault import KeyVaultManagementClient
from azure.mgmt.keyvault.models import (
    NetworkRuleSet,
    Sku,
    VaultCreateOrUpdateParameters,
    VaultPatchParameters,
    VaultPatchProperties,
    VaultProperties,
)
from azure.mgmt.storage import StorageManagementClient

from controller.resource_events import ResourceEvent, parse_resource_event
from emulators.arm import ArmEmulator
from emulators.bus import VaultEvent
from emulators.eventgrid import AdvancedFilter, EventGridError, WebhookSubscription, event_grid_envelope
from tests.emulators.test_arm_resources import arm_request

pytestmark = pytest.mark.integration

SUB = "aaaaaaaa-0000-0000-0000-00000000e001"
RG = "rg-events"
OPERATOR = "11111111-1111-1111-1111-11111111e001"
ARM_SCOPE = ["https://management.azure.com/.default"]
CRYPTO_USER = "12338af0-0e69-4776-bea7-57ae8d297424"


class Recorder:
    def __init__(self) -> None:
        self.events: list[VaultEvent] = []
        self._lock = threading.Lock()

    def __call__(self, event: VaultEvent) -> None:
        with self._lock:
            self.events.append(event)

    def since(self, mark: int) -> list[VaultEvent]:
        with self._lock:
            return [event for event in self.events[mark:] if event.topic.startswith("/subscriptions/")
                    and "/providers/microsoft.keyvault/vaults/" not in event.topic.lower()]


@pytest.fixture(scope="module")
def arm(arm_sandbox: ArmEmulator) -> Any:
    recorder = Recorder()
    arm_sandbox.bus.on_event(recorder)
    kwargs: dict[str, Any] = {"base_url": arm_sandbox.url, "connection_verify": arm_sandbox.ca_path,
                              "credential_scopes": ARM_SCOPE}
    credential = arm_sandbox.credential(OPERATOR)
    status, _ = arm_request(arm_sandbox, "PUT", f"/subscriptions/{SUB}/resourcegroups/{RG}?api-version=2021-04-01",
                            {"location": "westeurope"})
    assert status == 201
    return {
        "emulator": arm_sandbox, "events": recorder,
        "keyvault": KeyVaultManagementClient(credential, SUB, **kwargs),
        "storage": StorageManagementClient(credential, SUB, **kwargs),
        "authz": AuthorizationManagementClient(credential, SUB, **kwargs),
    }


def intake(event: VaultEvent) -> ResourceEvent:
    parsed = parse_resource_event(event_grid_envelope(event), subscriptions=(SUB,))
    assert isinstance(parsed, ResourceEvent), parsed
    return parsed


def test_vault_writes_role_assignments_and_deletion_publish_azure_s_resource_events(arm):
    events, keyvault = arm["events"], arm["keyvault"]
    mark = len(events.events)
    tenant = arm["emulator"].tenant_id
    vault = keyvault.vaults.begin_create_or_update(RG, "kv-events", VaultCreateOrUpdateParameters(
        location="westeurope", properties=VaultProperties(tenant_id=tenant, sku=Sku(family="A", name="standard"),
                                                          enable_rbac_authorization=True,
                                                          enable_purge_protection=True))).result()
    keyvault.vaults.update(RG, "kv-events", VaultPatchParameters(properties=VaultPatchProperties(
        network_acls=NetworkRuleSet(default_action="Deny", bypass="None"))))
    assignment = str(uuid.uuid4())
    arm["authz"].role_assignments.create(vault.id, assignment, RoleAssignmentCreateParameters(
        role_definition_id=f"/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/{CRYPTO_USER}",
        principal_id=OPERATOR))
    arm["authz"].role_assignments.delete(vault.id, assignment)
    keyvault.vaults.delete(RG, "kv-events")
    keyvault.vaults.delete(RG, "kv-events")  # nothing left to delete: 204, no event

    published = events.since(mark)
    assert [(event.event_type.rsplit(".", 1)[1], event.data["operationName"]) for event in published] == [
        ("ResourceWriteSuccess", "Microsoft.KeyVault/vaults/write"),
        ("ResourceWriteSuccess", "Microsoft.KeyVault/vaults/write"),
        ("ResourceWriteSuccess", "Microsoft.Authorization/roleAssignments/write"),
        ("ResourceDeleteSuccess", "Microsoft.Authorization/roleAssignments/delete"),
        ("ResourceDeleteSuccess", "Microsoft.KeyVault/vaults/delete"),
    ]
    first = published[0]
    assert first.topic == f"/subscriptions/{SUB}"
    assert first.subject.lower() == vault.id.lower() and first.data["resourceUri"] == first.subject
    assert first.data_version == "2"
    assert first.data["status"] == "Succeeded" and first.data["subscriptionId"] == SUB
    assert first.data["tenantId"] == tenant and first.data["resourceProvider"] == "Microsoft.KeyVault"
    assert first.data["httpRequest"]["method"] == "PUT"
    assert first.data["claims"]["http://schemas.microsoft.com/identity/claims/objectidentifier"] == OPERATOR
    assert {"authorization", "correlationId"} <= set(first.data)
    assert [intake(event).target.resource_id for event in published] == [vault.id.lower()] * 5
    with pytest.raises(ResourceNotFoundError):
        keyvault.vaults.get(RG, "kv-events")
    (deleted,) = [item for item in keyvault.vaults.list_deleted() if item.name == "kv-events"]
    assert deleted.properties.vault_id.lower() == vault.id.lower()
    assert deleted.properties.scheduled_purge_date > deleted.properties.deletion_date


def test_an_action_names_the_resource_it_ran_on(arm):
    from azure.mgmt.storage.models import Sku as StorageSku
    from azure.mgmt.storage.models import StorageAccountCreateParameters

    events, storage = arm["events"], arm["storage"]
    account = storage.storage_accounts.begin_create(RG, "stevents1", StorageAccountCreateParameters(
        sku=StorageSku(name="Standard_LRS"), kind="StorageV2", location="westeurope")).result()
    mark = len(events.events)
    storage.storage_accounts.list_keys(RG, "stevents1")
    (action,) = events.since(mark)
    assert action.event_type == "Microsoft.Resources.ResourceActionSuccess"
    assert action.data["operationName"] == "Microsoft.Storage/storageAccounts/listKeys/action"
    assert action.subject.lower() == account.id.lower()


def test_advanced_filters_select_on_data_members_ignoring_case():
    def event(operation: str) -> VaultEvent:
        from datetime import UTC, datetime
        return VaultEvent("e", "Microsoft.Resources.ResourceWriteSuccess", f"/subscriptions/{SUB}", "/x",
                          datetime.now(UTC), {"operationName": operation}, "2")

    subscription = WebhookSubscription(
        name="drift", endpoint_url="https://127.0.0.1:1/x", topic=f"/subscriptions/{SUB}",
        advanced_filters=(AdvancedFilter("StringBeginsWith", "data.operationName", ("microsoft.keyvault/vaults/",)),
                          AdvancedFilter("StringNotContains", "data.OPERATIONNAME", ("/listKeys/",))))
    assert subscription.matches(event("Microsoft.KeyVault/vaults/write"))
    assert not subscription.matches(event("Microsoft.Web/sites/write"))
    assert not subscription.matches(event("Microsoft.KeyVault/vaults/listKeys/action"))
    every_vault = WebhookSubscription(name="vaults", endpoint_url="https://127.0.0.1:1/x")
    assert not every_vault.matches(event("Microsoft.KeyVault/vaults/write"))  # Key Vault events only
    with pytest.raises(EventGridError):
        AdvancedFilter("NumberIn", "data.x", ("1",))

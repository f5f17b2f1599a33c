"""Management groups in the emulated ARM, driven by the unmodified azure-mgmt-managementgroups and
azure-mgmt-authorization clients: the hierarchy, getEntities' parent chains, and role assignments at a
management-group scope, which reach the subscriptions below it (the ARM listing and a vault's data plane)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError
from azure.keyvault.keys import KeyClient
from azure.mgmt.authorization import AuthorizationManagementClient
from azure.mgmt.authorization.models import RoleAssignmentCreateParameters
from azure.mgmt.keyvault import KeyVaultManagementClient
from azure.mgmt.keyvault.models import Sku, VaultCreateOrUpdateParameters, VaultProperties
from azure.mgmt.managementgroups import ManagementGroupsMgmtClient
from azure.mgmt.managementgroups.models import (
    CreateManagementGroupDetails,
    CreateManagementGroupProperties,
    CreateManagementGroupRequest,
    CreateParentGroupInfo,
)

from emulators.arm import ArmEmulator
from emulators.bus import SandboxBus
from emulators.clock import SandboxClock
from emulators.keyvault import KeyVaultEmulator

pytestmark = pytest.mark.integration

SUB_IN = "aaaaaaaa-0000-4000-8000-00000000f001"  # moved under mg-child
SUB_OUT = "aaaaaaaa-0000-4000-8000-00000000f002"  # stays under the root group
RG = "rg-mg"
CONTROLLER = "11111111-1111-4111-8111-11111111f001"
ARM_SCOPE = ["https://management.azure.com/.default"]
CRYPTO_SERVICE = "e147488a-f6f5-4113-8e2d-b22465e65bf6"
KV_ADMIN = "00482a5a-887f-4fb3-b363-3b7fe8e74483"
GROUPS = "/providers/Microsoft.Management/managementGroups"


class Env:
    def __init__(self, arm: ArmEmulator) -> None:
        self.arm = arm
        self.cred = arm.credential(CONTROLLER)
        self.kwargs: dict[str, Any] = {"base_url": arm.url, "connection_verify": arm.ca_path,
                                       "credential_scopes": ARM_SCOPE}
        self.groups = ManagementGroupsMgmtClient(self.cred, **self.kwargs)

    def authz(self, subscription: str) -> AuthorizationManagementClient:
        return AuthorizationManagementClient(self.cred, subscription, **self.kwargs)

    def create_group(self, name: str, parent: str) -> Any:
        return self.groups.management_groups.begin_create_or_update(name, CreateManagementGroupRequest(
            properties=CreateManagementGroupProperties(display_name=name.upper(), details=CreateManagementGroupDetails(
                parent=CreateParentGroupInfo(id=f"{GROUPS}/{parent}"))))).result()

    def assign(self, scope: str, principal: str, role: str) -> None:
        self.authz(SUB_IN).role_assignments.create(scope, str(uuid.uuid4()), RoleAssignmentCreateParameters(
            role_definition_id=f"/providers/Microsoft.Authorization/roleDefinitions/{role}", principal_id=principal))


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    keyvault = KeyVaultEmulator(SandboxClock(), SandboxBus(), directory=Path(tmp_path_factory.mktemp("mg-kv")))
    with ArmEmulator(keyvault=keyvault, storage_tick_seconds=3600) as arm:
        for subscription in (SUB_IN, SUB_OUT):
            arm.ensure_resource_group(subscription, RG)
        environment = Env(arm)
        environment.create_group("mg-parent", arm.tenant_id)
        environment.create_group("mg-child", "mg-parent")
        environment.groups.management_group_subscriptions.create("mg-child", SUB_IN)
        yield environment


def test_the_hierarchy_reads_back_through_the_sdk(env: Env) -> None:
    root = env.arm.tenant_id
    child = env.groups.management_groups.get("mg-child", expand="ancestors")
    assert child.id == f"{GROUPS}/mg-child" and child.properties.display_name == "MG-CHILD"
    assert child.properties.details.parent.id == f"{GROUPS}/mg-parent"
    assert child.properties.details.management_group_ancestors == ["mg-parent", root]  # nearest first
    placed = env.groups.management_group_subscriptions.get_subscription("mg-child", SUB_IN)
    assert placed.properties.parent.id == f"{GROUPS}/mg-child"
    with pytest.raises(HttpResponseError) as caught:
        env.groups.management_group_subscriptions.get_subscription("mg-child", SUB_OUT)
    assert caught.value.status_code == 404
    with pytest.raises(HttpResponseError) as missing:
        env.groups.management_groups.get("mg-nowhere")
    assert missing.value.status_code == 404


def test_get_entities_gives_every_subscriptions_parent_chain_root_first(env: Env) -> None:
    root = env.arm.tenant_id
    entities = {entity.name: entity for entity in env.groups.entities.list()}
    inside, outside = entities[SUB_IN], entities[SUB_OUT]
    assert inside.type == outside.type == "/subscriptions"
    assert inside.properties.parent_name_chain == [root, "mg-parent", "mg-child"]
    assert inside.properties.parent.id == f"{GROUPS}/mg-child"
    assert outside.properties.parent_name_chain == [root]
    assert entities["mg-child"].type == "Microsoft.Management/managementGroups"
    assert entities["mg-child"].properties.parent_name_chain == [root, "mg-parent"]
    parent = entities["mg-parent"].properties
    assert (parent.number_of_children, parent.number_of_child_groups, parent.number_of_descendants) == (1, 1, 2)


def test_an_assignment_at_a_management_group_reaches_the_subscriptions_below_it(env: Env) -> None:
    vault_inside = KeyVaultManagementClient(env.cred, SUB_IN, **env.kwargs).vaults.begin_create_or_update(
        RG, "kv-mg-in", VaultCreateOrUpdateParameters(location="westeurope", properties=VaultProperties(
            tenant_id=env.arm.tenant_id, sku=Sku(family="A", name="standard"), enable_rbac_authorization=True))
    ).result()
    vault_outside = KeyVaultManagementClient(env.cred, SUB_OUT, **env.kwargs).vaults.begin_create_or_update(
        RG, "kv-mg-out", VaultCreateOrUpdateParameters(location="westeurope", properties=VaultProperties(
            tenant_id=env.arm.tenant_id, sku=Sku(family="A", name="standard"), enable_rbac_authorization=True))
    ).result()
    user = str(uuid.uuid4())
    env.assign(f"{GROUPS}/mg-parent", user, KV_ADMIN)

    listed_inside = {a.scope for a in env.authz(SUB_IN).role_assignments.list_for_scope(vault_inside.id)
                     if a.principal_id == user}
    listed_outside = {a.scope for a in env.authz(SUB_OUT).role_assignments.list_for_scope(vault_outside.id)
                      if a.principal_id == user}
    assert listed_inside == {f"{GROUPS}/mg-parent"}  # inherited from the grandparent group
    assert listed_outside == set()
    assert {a.principal_id for a in env.authz(SUB_IN).role_assignments.list_for_scope(
        f"{GROUPS}/mg-parent", filter="atScope()")} == {user}

    def client(vault: Any) -> KeyClient:
        return KeyClient(vault.properties.vault_uri, env.arm.credential(user), verify_challenge_resource=False,
                         connection_verify=env.arm.ca_path)

    assert client(vault_inside).create_rsa_key("via-management-group").name == "via-management-group"
    with pytest.raises(HttpResponseError) as denied:
        client(vault_outside).create_rsa_key("not-below-the-group")
    assert denied.value.status_code == 403

    # Moving the subscription out of the hierarchy takes the inherited grant away.
    env.groups.management_group_subscriptions.delete("mg-child", SUB_IN)
    with pytest.raises(HttpResponseError) as revoked:
        client(vault_inside).create_rsa_key("after-the-move")
    assert revoked.value.status_code == 403
    env.groups.management_group_subscriptions.create("mg-child", SUB_IN)

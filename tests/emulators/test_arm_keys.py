"""Keys and key versions through ARM (Microsoft.KeyVault/vaults/keys), against keys.json 2024-11-01: the control
plane's view of the vault's real keys, whatever the vault's firewall says; soft-deleted keys are not listed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.keyvault.keys import KeyClient, KeyRotationLifetimeAction, KeyRotationPolicy, KeyRotationPolicyAction
from azure.mgmt.keyvault import KeyVaultManagementClient
from azure.mgmt.keyvault.models import (
    AccessPolicyEntry,
    NetworkRuleSet,
    Permissions,
    Sku,
    VaultCreateOrUpdateParameters,
    VaultPatchParameters,
    VaultPatchProperties,
    VaultProperties,
)

from emulators.arm import ArmEmulator
from tests.emulators.test_arm_resources import ARM_SCOPE, CONTROLLER, ResponseLog, arm_request
from tests.support.arm_contract import keyvault_contract, keyvault_keys_contract

pytestmark = pytest.mark.integration

SUB = "aaaaaaaa-0000-0000-0000-00000000a0c2"
RG = "rg-arm-keys"


class Env:
    def __init__(self, arm: ArmEmulator) -> None:
        self.arm = arm
        self.log = ResponseLog()
        self.cred = arm.credential(CONTROLLER)
        self.mgmt = KeyVaultManagementClient(self.cred, SUB, base_url=arm.url, connection_verify=arm.ca_path,
                                             credential_scopes=ARM_SCOPE, raw_response_hook=self.log)

    def vault(self, name: str) -> tuple[Any, KeyClient]:
        policy = AccessPolicyEntry(tenant_id=self.arm.tenant_id, object_id=CONTROLLER,
                                   permissions=Permissions(keys_property=["all"]))
        vault = self.mgmt.vaults.begin_create_or_update(RG, name, VaultCreateOrUpdateParameters(
            location="westeurope", properties=VaultProperties(
                tenant_id=self.arm.tenant_id, sku=Sku(family="A", name="premium"), enable_soft_delete=True,
                soft_delete_retention_in_days=90, enable_purge_protection=True, access_policies=[policy]))).result()
        keys = KeyClient(vault.properties.vault_uri, self.cred, verify_challenge_resource=False,
                         connection_verify=self.arm.ca_path, retry_total=0)
        return vault, keys

    def validate_every_keys_response(self) -> set[str]:
        contract = keyvault_keys_contract()
        operations = (("/versions/", "Keys_GetVersion"), ("/versions", "Keys_ListVersions"), ("/keys/", "Keys_Get"),
                      ("/keys", "Keys_List"))
        checked = set()
        for method, url, status, body in self.log.exchanges:
            path = url.split("?", 1)[0].lower()
            if method != "GET" or "/keys" not in path:
                continue
            operation = next(name for fragment, name in operations if fragment in path
                             and (fragment.endswith("/") or path.endswith(fragment)))
            contract.validate(operation, status, body)
            checked.add(f"{operation} {status}")
        return checked


@pytest.fixture(scope="module")
def env(arm_sandbox: ArmEmulator) -> Iterator[Env]:
    environment = Env(arm_sandbox)
    status, _ = arm_request(arm_sandbox, "PUT", f"/subscriptions/{SUB}/resourcegroups/{RG}?api-version=2021-04-01",
                            {"location": "westeurope"})
    assert status == 201
    yield environment


def test_keys_versions_and_rotation_policy_through_arm_match_the_data_plane(env: Env) -> None:
    vault, keys = env.vault("kv-arm-keys")
    rsa = keys.create_rsa_key("cmk", size=3072)
    keys.update_key_rotation_policy("cmk", KeyRotationPolicy(expires_in="P1Y", lifetime_actions=[
        KeyRotationLifetimeAction(KeyRotationPolicyAction.rotate, time_after_create="P90D")]))
    rotated = keys.rotate_key("cmk")
    keys.create_ec_key("signing", curve="P-256")

    listed = {key.name: key for key in env.mgmt.keys.list(RG, "kv-arm-keys")}
    assert set(listed) == {"cmk", "signing"}
    cmk = listed["cmk"].properties
    assert (cmk.kty, cmk.key_size, cmk.key_uri) == ("RSA", 3072, f"{vault.properties.vault_uri.rstrip('/')}/keys/cmk")
    assert cmk.key_uri_with_version == rotated.id
    assert cmk.rotation_policy.attributes.expiry_time == "P1Y"
    assert [(action.trigger.time_after_create, action.action.type) for action in cmk.rotation_policy.lifetime_actions
            ] == [("P90D", "rotate")]
    assert listed["signing"].properties.curve_name == "P-256"
    assert listed["signing"].properties.rotation_policy is None  # omitted when the key has none

    versions = list(env.mgmt.keys.list_versions(RG, "kv-arm-keys", "cmk"))
    assert {version.name for version in versions} == {rsa.properties.version, rotated.properties.version}
    data_plane = {item.version: item for item in keys.list_properties_of_key_versions("cmk")}
    for version in versions:
        created = data_plane[version.name].created_on
        assert created is not None and version.properties.attributes.created == int(created.timestamp())
    one = env.mgmt.keys.get_version(RG, "kv-arm-keys", "cmk", rsa.properties.version)
    assert one.properties.key_uri_with_version == rsa.id
    assert env.mgmt.keys.get(RG, "kv-arm-keys", "signing").properties.kty == "EC"
    with pytest.raises(ResourceNotFoundError):
        env.mgmt.keys.get(RG, "kv-arm-keys", "missing")

    assert env.validate_every_keys_response() >= {"Keys_List 200", "Keys_ListVersions 200", "Keys_GetVersion 200",
                                                  "Keys_Get 200", "Keys_Get 404"}


def test_arm_lists_keys_behind_a_firewall_and_not_soft_deleted_ones(env: Env) -> None:
    _, keys = env.vault("kv-arm-keys-fw")
    keys.create_rsa_key("kept")
    keys.create_rsa_key("gone")
    keys.begin_delete_key("gone").wait()
    env.mgmt.vaults.update(RG, "kv-arm-keys-fw", VaultPatchParameters(properties=VaultPatchProperties(
        network_acls=NetworkRuleSet(default_action="Deny", bypass="None"))))

    assert [key.name for key in env.mgmt.keys.list(RG, "kv-arm-keys-fw")] == ["kept"]
    assert len(list(env.mgmt.keys.list_versions(RG, "kv-arm-keys-fw", "kept"))) == 1
    with pytest.raises(ResourceNotFoundError):
        env.mgmt.keys.get(RG, "kv-arm-keys-fw", "gone")


def test_no_vault_is_listed_as_deleted(env: Env) -> None:
    assert list(env.mgmt.vaults.list_deleted()) == []
    status, body = next((status, body) for method, url, status, body in reversed(env.log.exchanges)
                        if method == "GET" and "/deletedvaults" in url.lower())
    keyvault_contract().validate("Vaults_ListDeleted", status, body)

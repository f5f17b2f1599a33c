"""Authorization of the emulated vaults: access policies, RBAC, the firewall, tokens, the admin API."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError
from azure.keyvault.keys import KeyClient
from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm

from emulators.bus import SandboxBus
from emulators.clock import SandboxClock
from emulators.keyvault import KeyVaultEmulator, SandboxCredential, VaultState
from tests.support.keyvault import Admin, Recorder, client_kwargs

pytestmark = pytest.mark.integration

CONTROLLER = "c0000000-0000-0000-0000-000000000001"
READER = "c0000000-0000-0000-0000-000000000002"
STORAGE_MI = "c0000000-0000-0000-0000-000000000003"
APP_BOUND = "c0000000-0000-0000-0000-000000000004"
LATE = "c0000000-0000-0000-0000-000000000005"
CRYPTO_OFFICER = "14b46e9e-c2b7-41b4-b07b-48a6ebf60603"
SERVICE_ENCRYPTION_USER = "e147488a-f6f5-4113-8e2d-b22465e65bf6"


@dataclass
class Env:
    kv: KeyVaultEmulator
    recorder: Recorder
    admin: Admin
    policies: VaultState
    rbac: VaultState
    firewalled: VaultState

    def client(self, vault: VaultState, credential: SandboxCredential) -> KeyClient:
        return KeyClient(vault.uri, credential, **client_kwargs(self.kv, retry_total=0))

    def crypto(self, key_id: str, credential: SandboxCredential) -> CryptographyClient:
        return CryptographyClient(key_id, credential, **client_kwargs(self.kv, retry_total=0))


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    bus = SandboxBus()
    recorder = Recorder().attach(bus)
    with KeyVaultEmulator(SandboxClock(), bus, directory=tmp_path_factory.mktemp("kv")) as kv:
        policies = kv.add_vault(
            "kv-policies",
            access_policies=[
                {"objectId": CONTROLLER, "permissions": {"keys": ["all"]}},
                {"objectId": READER, "permissions": {"keys": ["Get", "LIST"]}},
                {"objectId": APP_BOUND, "applicationId": "the-app", "permissions": {"keys": ["get"]}},
            ],
        )
        rbac = kv.add_vault(
            "kv-rbac",
            host="127.0.0.2",
            rbac=True,
            access_policies=[{"objectId": STORAGE_MI, "permissions": {"keys": ["all"]}}],  # ignored in RBAC mode
            role_assignments=[{"principalId": CONTROLLER, "roleDefinitionId": CRYPTO_OFFICER}],
        )
        firewalled = kv.add_vault(
            "kv-firewall",
            access_policies=[
                {"objectId": CONTROLLER, "permissions": {"keys": ["all"]}},
                {"objectId": STORAGE_MI, "permissions": {"keys": ["get", "wrapKey", "unwrapKey"]}},
            ],
            network_acls={"defaultAction": "Deny", "bypass": "AzureServices", "ipRules": [{"value": "203.0.113.0/24"}]},
        )
        yield Env(kv, recorder, Admin(kv), policies, rbac, firewalled)


def _status(exc: pytest.ExceptionInfo[HttpResponseError]) -> tuple[int | None, str | None, str | None]:
    error = exc.value.error
    inner = getattr(error, "innererror", None) or {}
    inner_code = inner.get("code") if isinstance(inner, dict) else getattr(inner, "code", None)
    return exc.value.status_code, error.code if error else None, inner_code


def test_vaults_have_distinct_origins(env: Env) -> None:
    origins = {env.policies.origin, env.rbac.origin, env.firewalled.origin}
    assert len(origins) == 3
    assert env.rbac.origin.startswith("https://127.0.0.2:")


def test_access_policy_permissions_are_case_insensitive(env: Env) -> None:
    controller = env.client(env.policies, env.kv.credential(CONTROLLER))
    key = controller.create_rsa_key("ap-key", size=2048)
    reader = env.client(env.policies, env.kv.credential(READER))
    assert reader.get_key("ap-key").id == key.id
    assert [p.name for p in reader.list_properties_of_keys()] == ["ap-key"]
    with pytest.raises(HttpResponseError) as info:
        reader.create_rsa_key("not-allowed", size=2048)
    assert _status(info) == (403, "Forbidden", "AccessDenied")
    assert "does not have keys create permission" in info.value.error.message
    record = env.recorder.audits_of("KeyCreate", status=403)[-1]
    assert record["resultType"] == "Forbidden"
    assert record["resultSignature"] == "Forbidden"
    assert record["properties"]["isAccessPolicyMatch"] is False
    assert record["identity"]["claim"]["oid"] == READER
    with pytest.raises(HttpResponseError) as info:
        env.crypto(key.id, env.kv.credential(READER)).unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, b"x" * 256)
    assert info.value.status_code == 403


def test_compound_identity_requires_the_application(env: Env) -> None:
    env.client(env.policies, env.kv.credential(CONTROLLER)).create_rsa_key("compound", size=2048)
    assert env.client(env.policies, env.kv.credential(APP_BOUND, appid="the-app")).get_key("compound")
    with pytest.raises(HttpResponseError) as info:
        env.client(env.policies, env.kv.credential(APP_BOUND, appid="another-app")).get_key("compound")
    assert info.value.status_code == 403


def test_unknown_principal_is_forbidden_and_other_tenant_unauthorized(env: Env) -> None:
    with pytest.raises(HttpResponseError) as info:
        env.client(env.policies, env.kv.credential("nobody")).get_key("ap-key")
    assert info.value.status_code == 403
    foreign = SandboxCredential(CONTROLLER, tenant_id="99999999-9999-9999-9999-999999999999")
    with pytest.raises(ClientAuthenticationError) as auth:
        env.client(env.policies, foreign).get_key("ap-key")
    assert auth.value.status_code == 401
    assert env.recorder.audits_of("Authentication", status=401)


def test_access_policy_changes_through_admin_api(env: Env) -> None:
    controller = env.client(env.policies, env.kv.credential(CONTROLLER))
    key = controller.create_rsa_key("late-key", size=2048)
    late = env.crypto(key.id, env.kv.credential(LATE))
    with pytest.raises(HttpResponseError):
        late.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, b"\0" * 256)
    before = len(env.recorder.events_of("VaultAccessPolicyChanged"))
    env.admin.ok(
        "POST",
        "/vaults/kv-policies/accessPolicies",
        {"objectId": LATE, "permissions": {"keys": ["get", "wrapKey", "unwrapKey"]}},
    )
    events = env.recorder.events_of("VaultAccessPolicyChanged")
    assert len(events) == before + 1
    event = events[-1]
    assert event.topic == env.policies.resource_id
    assert event.subject == "kv-policies"
    assert event.data["Id"] == env.policies.uri
    assert event.data["ObjectType"] == "Vault"
    assert event.data["ObjectName"] == "kv-policies"
    assert env.recorder.audits_of("VaultAccessPolicyChangedEventGridNotification")
    late = env.crypto(key.id, env.kv.credential(LATE))
    cek = os.urandom(32)
    wrapped = late.wrap_key(KeyWrapAlgorithm.rsa_oaep_256, cek)
    assert late.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped.encrypted_key).key == cek
    policies = env.admin.ok("GET", "/vaults/kv-policies/accessPolicies")
    assert LATE in {p["objectId"] for p in policies}
    status, _ = env.admin.call("DELETE", f"/vaults/kv-policies/accessPolicies/{LATE}")
    assert status == 204
    assert len(env.recorder.events_of("VaultAccessPolicyChanged")) == before + 2
    with pytest.raises(HttpResponseError) as info:
        late.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped.encrypted_key)
    assert info.value.status_code == 403


def test_rbac_roles_and_scopes(env: Env) -> None:
    officer = env.client(env.rbac, env.kv.credential(CONTROLLER))
    key = officer.create_rsa_key("rbac-key", size=2048)
    other = officer.create_rsa_key("rbac-other", size=2048)
    storage = env.kv.credential(STORAGE_MI, trusted_service=True)
    # the access policy granting STORAGE_MI 'all' is ignored in RBAC mode
    with pytest.raises(HttpResponseError) as info:
        env.client(env.rbac, storage).get_key("rbac-key")
    assert _status(info) == (403, "Forbidden", "ForbiddenByRbac")
    assert "Microsoft.KeyVault/vaults/keys/read" in info.value.error.message
    assignment = env.admin.ok(
        "POST",
        "/vaults/kv-rbac/roleAssignments",
        {
            "principalId": STORAGE_MI,
            "roleDefinitionId": f"/providers/Microsoft.Authorization/roleDefinitions/{SERVICE_ENCRYPTION_USER}",
            "scope": env.rbac.resource_id + "/keys/rbac-key",
        },
    )
    storage_client = env.client(env.rbac, storage)
    assert storage_client.get_key("rbac-key").id == key.id
    crypto = env.crypto(key.id, storage)
    cek = os.urandom(32)
    wrapped = crypto.wrap_key(KeyWrapAlgorithm.rsa_oaep_256, cek)
    assert crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped.encrypted_key).key == cek
    with pytest.raises(HttpResponseError) as info:
        storage_client.get_key("rbac-other")  # assignment scoped to the other key
    assert info.value.status_code == 403
    with pytest.raises(HttpResponseError) as info:
        storage_client.create_rsa_key("rbac-new", size=2048)
    assert info.value.status_code == 403
    record = env.recorder.audits_of("KeyUnwrap", status=200)[-1]
    assert record["properties"]["isRbacAuthorized"] is True
    assert record["properties"]["trustedService"] == "AzureServices"
    status, _ = env.admin.call("DELETE", f"/vaults/kv-rbac/roleAssignments/{assignment['id']}")
    assert status == 204
    with pytest.raises(HttpResponseError):
        env.crypto(other.id, storage).unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped.encrypted_key)


def test_rbac_custom_role_definition(env: Env) -> None:
    env.admin.ok(
        "PUT",
        "/vaults/kv-rbac/roleDefinitions/aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
        {"roleName": "Key lister", "dataActions": ["Microsoft.KeyVault/vaults/keys/*"],
         "notDataActions": ["Microsoft.KeyVault/vaults/keys/create/action"]},
    )  # fmt: skip
    env.admin.ok(
        "POST",
        "/vaults/kv-rbac/roleAssignments",
        {"principalId": READER, "roleDefinitionId": "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"},
    )
    reader = env.client(env.rbac, env.kv.credential(READER))
    assert "rbac-key" in {p.name for p in reader.list_properties_of_keys()}
    with pytest.raises(HttpResponseError) as info:
        reader.create_rsa_key("denied-by-not-actions", size=2048)
    assert info.value.status_code == 403


def test_firewall(env: Env) -> None:
    inside = env.client(env.firewalled, env.kv.credential(CONTROLLER, ip="203.0.113.9"))
    key = inside.create_rsa_key("fw-key", size=2048)
    outside = env.client(env.firewalled, env.kv.credential(CONTROLLER, ip="198.51.100.1"))
    with pytest.raises(HttpResponseError) as info:
        outside.get_key("fw-key")
    assert _status(info) == (403, "Forbidden", "ForbiddenByFirewall")
    assert "198.51.100.1" in info.value.error.message
    record = env.recorder.audits_of("KeyGet", status=403)[-1]
    assert record["callerIpAddress"] == "198.51.100.1"
    # a trusted Azure service (storage's managed identity) passes with bypass=AzureServices
    storage = env.kv.credential(STORAGE_MI, ip="198.51.100.2", trusted_service=True)
    crypto = env.crypto(key.id, storage)
    wrapped = crypto.wrap_key(KeyWrapAlgorithm.rsa_oaep, b"c" * 32)
    assert crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep, wrapped.encrypted_key).key == b"c" * 32
    env.admin.ok("PUT", "/vaults/kv-firewall/networkAcls", {"defaultAction": "Deny", "bypass": "None", "ipRules": []})
    with pytest.raises(HttpResponseError) as info:
        env.crypto(key.id, storage).unwrap_key(KeyWrapAlgorithm.rsa_oaep, wrapped.encrypted_key)
    assert _status(info)[2] == "ForbiddenByFirewall"
    env.admin.ok("PATCH", "/vaults/kv-firewall", {"properties": {"networkAcls": {"defaultAction": "Allow"}}})
    assert outside.get_key("fw-key").id == key.id


def test_admin_api_vault_json_and_creation(env: Env) -> None:
    vault = env.admin.ok("GET", "/vaults/kv-rbac")
    assert vault["id"] == env.rbac.resource_id
    assert vault["properties"]["vaultUri"] == env.rbac.uri
    assert vault["properties"]["enableRbacAuthorization"] is True
    assert vault["properties"]["enablePurgeProtection"] is True
    status, body = env.admin.call("PATCH", "/vaults/kv-rbac", {"properties": {"enablePurgeProtection": False}})
    assert status == 400 and "purge protection" in body["error"]
    status, _ = env.admin.call("GET", "/vaults/nope")
    assert status == 404
    created = env.admin.ok(
        "POST",
        "/vaults",
        {
            "name": "kv-admin-made",
            "subscriptionId": "bbbbbbbb-0000-0000-0000-000000000000",
            "resourceGroup": "rg-admin",
            "properties": {
                "softDeleteRetentionInDays": 30,
                "accessPolicies": [{"objectId": CONTROLLER, "permissions": {"keys": ["all"]}}],
            },
        },
    )
    uri = created["properties"]["vaultUri"]
    client = KeyClient(uri, env.kv.credential(CONTROLLER), **client_kwargs(env.kv))
    key = client.create_rsa_key("made", size=2048)
    assert key.id.startswith(uri + "keys/made/")
    assert key.properties.recovery_level == "CustomizedRecoverable"
    assert key.properties.recoverable_days == 30
    assert {v["name"] for v in env.admin.ok("GET", "/vaults")} >= {"kv-admin-made", "kv-rbac"}
    status, _ = env.admin.call("DELETE", "/vaults/kv-admin-made")
    assert status == 204
    assert "kv-admin-made" not in {v["name"] for v in env.admin.ok("GET", "/vaults")}
    with pytest.raises(ServiceRequestError):
        KeyClient(uri, env.kv.credential(CONTROLLER), **client_kwargs(env.kv, retry_total=0)).get_key("made")


def test_in_process_state_mutation(env: Env) -> None:
    """What the ARM emulator will do: mutate VaultState directly."""
    from emulators.keyvault import AccessPolicy

    client = env.client(env.policies, env.kv.credential(CONTROLLER))
    client.create_rsa_key("in-process", size=2048)
    env.policies.apply_json({"properties": {"enableRbacAuthorization": True}})
    try:
        with pytest.raises(HttpResponseError) as info:
            client.get_key("in-process")
        assert _status(info)[2] == "ForbiddenByRbac"
    finally:
        env.policies.apply_json({"properties": {"enableRbacAuthorization": False}})
    before = len(env.recorder.events_of("VaultAccessPolicyChanged"))
    env.policies.upsert_access_policy(AccessPolicy(object_id=LATE, tenant_id=env.policies.tenant_id, keys=["get"]))
    assert len(env.recorder.events_of("VaultAccessPolicyChanged")) == before + 1
    assert env.client(env.policies, env.kv.credential(LATE)).get_key("in-process").name == "in-process"
    env.policies.remove_access_policy(LATE)

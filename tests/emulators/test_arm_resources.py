"""The emulated ARM endpoint driven by the unmodified mgmt clients: every resource type round-trips, and the
responses validate against the official storage.json / keyvault.json schemas."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.mgmt.authorization import AuthorizationManagementClient
from azure.mgmt.authorization.models import RoleAssignmentCreateParameters
from azure.mgmt.keyvault import KeyVaultManagementClient
from azure.mgmt.keyvault.models import (
    AccessPolicyEntry,
    AccessPolicyUpdateKind,
    NetworkRuleSet,
    Permissions,
    Sku,
    VaultAccessPolicyParameters,
    VaultAccessPolicyProperties,
    VaultCreateOrUpdateParameters,
    VaultPatchParameters,
    VaultPatchProperties,
    VaultProperties,
)
from azure.mgmt.monitor import MonitorManagementClient
from azure.mgmt.msi import ManagedServiceIdentityClient
from azure.mgmt.storage import StorageManagementClient
from azure.mgmt.storage.models import EncryptionScope, StorageAccountCreateParameters, StorageAccountUpdateParameters
from azure.mgmt.storage.models import Sku as StorageSku

from emulators.arm import ArmEmulator
from tests.support.arm_contract import keyvault_contract, storage_contract

pytestmark = pytest.mark.integration

SUB = "aaaaaaaa-0000-0000-0000-00000000a001"
RG = "rg-arm"
CONTROLLER = "11111111-1111-1111-1111-11111111a001"
ARM_SCOPE = ["https://management.azure.com/.default"]
KV_ADMIN = "00482a5a-887f-4fb3-b363-3b7fe8e74483"
CRYPTO_SERVICE = "e147488a-f6f5-4113-8e2d-b22465e65bf6"


def arm_request(arm: ArmEmulator, method: str, path: str, body: Any = None, *, token: bool = True) -> tuple[int, Any]:
    """A plain HTTPS request to ARM (resource groups have no client in this project's dependencies)."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = "Bearer " + arm.credential(CONTROLLER).get_token(*ARM_SCOPE).token
    request = urllib.request.Request(  # noqa: S310 - https to the local ARM origin
        arm.url + path, data=json.dumps(body).encode() if body is not None else None, method=method, headers=headers
    )
    context = ssl.create_default_context(cafile=arm.ca_path)
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as response:  # noqa: S310
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw) if raw else None


class ResponseLog:
    """raw_response_hook recording (method, url, status, JSON body); reads streamed (LRO) responses too."""

    def __init__(self) -> None:
        self.exchanges: list[tuple[str, str, int, Any]] = []

    def __call__(self, pipeline_response: Any) -> None:
        request, response = pipeline_response.http_request, pipeline_response.http_response
        if hasattr(response, "read"):  # azure.core.rest responses may still be streamed (LRO initial calls)
            response.read()
        text = response.text()
        self.exchanges.append((request.method, request.url, response.status_code, json.loads(text) if text else None))


class Env:
    def __init__(self, arm: ArmEmulator) -> None:
        self.arm = arm
        self.log = ResponseLog()
        self.cred = arm.credential(CONTROLLER)
        kwargs: dict[str, Any] = {
            "base_url": arm.url,
            "connection_verify": arm.ca_path,
            "credential_scopes": ARM_SCOPE,
            "raw_response_hook": self.log,
        }
        self.storage = StorageManagementClient(self.cred, SUB, **kwargs)
        self.keyvault = KeyVaultManagementClient(self.cred, SUB, **kwargs)
        self.msi = ManagedServiceIdentityClient(self.cred, SUB, **kwargs)
        self.authz = AuthorizationManagementClient(self.cred, SUB, **kwargs)
        self.monitor = MonitorManagementClient(self.cred, SUB, **kwargs)

    def raw(self, method: str, path: str, body: Any = None, *, token: bool = True) -> tuple[int, Any]:
        return arm_request(self.arm, method, path, body, token=token)

    def last_body(self, method: str, fragment: str) -> Any:
        for verb, url, status, body in reversed(self.log.exchanges):
            if verb == method and fragment.lower() in url.lower():
                return status, body
        raise AssertionError(f"no {method} {fragment} in the response log")


@pytest.fixture(scope="module")
def env(arm_sandbox: ArmEmulator) -> Iterator[Env]:
    environment = Env(arm_sandbox)
    status, _ = environment.raw(
        "PUT", f"/subscriptions/{SUB}/resourcegroups/{RG}?api-version=2021-04-01", {"location": "westeurope"}
    )
    assert status == 201
    yield environment


def _vault_params(**props: Any) -> VaultCreateOrUpdateParameters:
    return VaultCreateOrUpdateParameters(
        location="westeurope",
        properties=VaultProperties(
            tenant_id=ArmEmulator.__init__.__kwdefaults__["tenant_id"], sku=Sku(family="A", name="standard"), **props
        ),
    )


def test_resource_groups_and_errors(env: Env) -> None:
    status, body = env.raw("GET", f"/subscriptions/{SUB}/resourceGroups/{RG}?api-version=2021-04-01")
    assert status == 200
    assert body["id"] == f"/subscriptions/{SUB}/resourceGroups/{RG}"
    status, body = env.raw("GET", f"/subscriptions/{SUB}/resourceGroups/nope?api-version=2021-04-01")
    assert (status, body["error"]["code"]) == (404, "ResourceGroupNotFound")
    status, body = env.raw("GET", f"/subscriptions/{SUB}/resourceGroups/{RG}?api-version=2021-04-01", token=False)
    assert (status, body["error"]["code"]) == (401, "AuthenticationFailed")
    status, body = env.raw("GET", f"/subscriptions/{SUB}/resourceGroups/{RG}")
    assert (status, body["error"]["code"]) == (400, "MissingApiVersionParameter")
    with pytest.raises(ResourceNotFoundError) as caught:
        env.storage.storage_accounts.get_properties(RG, "missingacct")
    assert caught.value.error.code == "ResourceNotFound"
    with pytest.raises(ResourceNotFoundError) as caught:
        env.storage.storage_accounts.list_by_resource_group("rg-missing").next()
    assert caught.value.error.code == "ResourceGroupNotFound"


def test_storage_account_round_trip(env: Env) -> None:
    name = "st" + uuid.uuid4().hex[:10]
    poller = env.storage.storage_accounts.begin_create(
        RG,
        name,
        StorageAccountCreateParameters(
            sku=StorageSku(name="Standard_GRS"), kind="StorageV2", location="westeurope", tags={"team": "cmk"}
        ),
    )
    account = poller.result()
    assert account.name == name
    assert account.provisioning_state == "Succeeded"
    assert account.encryption.key_source == "Microsoft.Storage"
    assert account.primary_endpoints.blob == env.arm.blob_endpoint(name)
    assert env.storage.storage_accounts.get_properties(RG, name).tags == {"team": "cmk"}
    updated = env.storage.storage_accounts.update(RG, name, StorageAccountUpdateParameters(tags={"team": "platform"}))
    assert updated.tags == {"team": "platform"}
    assert name in {a.name for a in env.storage.storage_accounts.list()}
    assert name in {a.name for a in env.storage.storage_accounts.list_by_resource_group(RG)}
    keys = env.storage.storage_accounts.list_keys(RG, name).keys_property
    assert [k.key_name for k in keys] == ["key1", "key2"]
    contract = storage_contract()
    contract.validate("StorageAccounts_GetProperties", *env.last_body("GET", f"storageAccounts/{name}?"))
    contract.validate("StorageAccounts_List", *env.last_body("GET", "Microsoft.Storage/storageAccounts?"))
    contract.validate("StorageAccounts_ListKeys", *env.last_body("POST", "listKeys"))


def test_encryption_scopes_round_trip(env: Env) -> None:
    name = "st" + uuid.uuid4().hex[:10]
    env.storage.storage_accounts.begin_create(
        RG,
        name,
        StorageAccountCreateParameters(sku=StorageSku(name="Standard_LRS"), kind="StorageV2", location="westeurope"),
    ).result()
    scope = env.storage.encryption_scopes.put(RG, name, "scope1", EncryptionScope(source="Microsoft.Storage"))
    assert (scope.name, scope.state, scope.source) == ("scope1", "Enabled", "Microsoft.Storage")
    patched = env.storage.encryption_scopes.patch(RG, name, "scope1", EncryptionScope(state="Disabled"))
    assert patched.state == "Disabled"
    assert env.storage.encryption_scopes.get(RG, name, "scope1").state == "Disabled"
    assert [s.name for s in env.storage.encryption_scopes.list(RG, name)] == ["scope1"]
    contract = storage_contract()
    contract.validate("EncryptionScopes_Get", *env.last_body("GET", "encryptionScopes/scope1"))
    contract.validate("EncryptionScopes_List", *env.last_body("GET", "encryptionScopes?"))


def test_vault_create_update_and_data_plane(env: Env) -> None:
    vault = env.keyvault.vaults.begin_create_or_update(
        RG,
        "kv-arm-one",
        _vault_params(
            enable_soft_delete=True,
            soft_delete_retention_in_days=7,
            access_policies=[
                AccessPolicyEntry(
                    tenant_id=env.arm.tenant_id, object_id=CONTROLLER, permissions=Permissions(keys_property=["all"])
                )
            ],
        ),
    ).result()
    assert vault.properties.vault_uri.startswith("https://127.0.0.1:")
    assert vault.properties.enable_purge_protection is None
    state = env.arm.keyvault.vault("kv-arm-one")
    assert state.soft_delete_retention_days == 7 and state.uri == vault.properties.vault_uri
    # The vault created through ARM serves its data plane at properties.vaultUri.
    from azure.keyvault.keys import KeyClient

    keys = KeyClient(
        vault.properties.vault_uri, env.cred, verify_challenge_resource=False, connection_verify=env.arm.ca_path
    )
    assert keys.create_rsa_key("k1").key_type == "RSA"
    updated = env.keyvault.vaults.update(
        RG,
        "kv-arm-one",
        VaultPatchParameters(
            properties=VaultPatchProperties(
                enable_purge_protection=True,
                network_acls=NetworkRuleSet(bypass="AzureServices", default_action="Deny"),
            )
        ),
    )
    assert updated.properties.enable_purge_protection is True
    assert state.network_acls.default_action == "Deny"
    with pytest.raises(HttpResponseError) as caught:  # purge protection is irreversible
        env.keyvault.vaults.update(
            RG, "kv-arm-one", VaultPatchParameters(properties=VaultPatchProperties(enable_purge_protection=False))
        )
    assert caught.value.status_code == 400
    assert "irreversible" in caught.value.error.message
    with pytest.raises(HttpResponseError) as caught:
        env.keyvault.vaults.begin_create_or_update(
            RG, "kv-arm-bad", _vault_params(soft_delete_retention_in_days=3)
        ).result()
    assert caught.value.status_code == 400
    assert env.keyvault.vaults.get(RG, "kv-arm-one").properties.network_acls.default_action == "Deny"
    assert "kv-arm-one" in {v.name for v in env.keyvault.vaults.list_by_resource_group(RG)}
    contract = keyvault_contract()
    contract.validate("Vaults_Get", *env.last_body("GET", "vaults/kv-arm-one?"))
    contract.validate("Vaults_ListByResourceGroup", *env.last_body("GET", "Microsoft.KeyVault/vaults?"))


def test_access_policies_add_replace_remove(env: Env) -> None:
    env.keyvault.vaults.begin_create_or_update(RG, "kv-arm-ap", _vault_params(access_policies=[])).result()
    state = env.arm.keyvault.vault("kv-arm-ap")
    principal = str(uuid.uuid4())

    def update(kind: AccessPolicyUpdateKind, keys: list[str]) -> None:
        entry = AccessPolicyEntry(
            tenant_id=env.arm.tenant_id, object_id=principal, permissions=Permissions(keys_property=keys)
        )
        env.keyvault.vaults.update_access_policy(
            RG,
            "kv-arm-ap",
            kind,
            VaultAccessPolicyParameters(properties=VaultAccessPolicyProperties(access_policies=[entry])),
        )

    update(AccessPolicyUpdateKind.ADD, ["get"])
    update(AccessPolicyUpdateKind.ADD, ["wrapKey", "unwrapKey"])
    assert [p.keys for p in state.access_policies] == [["get", "wrapKey", "unwrapKey"]]
    update(AccessPolicyUpdateKind.REPLACE, ["list"])
    assert [p.keys for p in state.access_policies] == [["list"]]
    update(AccessPolicyUpdateKind.REMOVE, ["list"])
    assert state.access_policies == []
    keyvault_contract().validate("Vaults_UpdateAccessPolicy", *env.last_body("PUT", "accessPolicies/remove"))


def test_user_assigned_identity_and_its_credential(env: Env) -> None:
    from azure.mgmt.msi.models import Identity

    identity = env.msi.user_assigned_identities.create_or_update(RG, "uai-one", Identity(location="westeurope"))
    assert identity.principal_id and identity.client_id and identity.tenant_id == env.arm.tenant_id
    assert env.msi.user_assigned_identities.get(RG, "uai-one").principal_id == identity.principal_id
    assert [i.name for i in env.msi.user_assigned_identities.list_by_resource_group(RG)] == ["uai-one"]
    credential = env.arm.identity_credential(identity.id)
    assert credential.object_id == identity.principal_id
    assert credential.principal.appid == identity.client_id


def test_role_definitions_and_assignments_feed_vault_rbac(env: Env) -> None:
    definition = env.authz.role_definitions.get("/", CRYPTO_SERVICE)
    assert definition.role_name == "Key Vault Crypto Service Encryption User"
    assert definition.permissions[0].data_actions == [
        "Microsoft.KeyVault/vaults/keys/read",
        "Microsoft.KeyVault/vaults/keys/wrap/action",
        "Microsoft.KeyVault/vaults/keys/unwrap/action",
    ]
    reader = list(env.authz.role_definitions.list(f"/subscriptions/{SUB}", filter="roleName eq 'Reader'"))
    assert [r.name for r in reader] == ["acdd72a7-3385-48ef-bd42-f606fba81ae7"]

    vault = env.keyvault.vaults.begin_create_or_update(
        RG, "kv-arm-rbac", _vault_params(enable_rbac_authorization=True)
    ).result()
    from azure.keyvault.keys import KeyClient

    user = str(uuid.uuid4())
    client = KeyClient(
        vault.properties.vault_uri,
        env.arm.credential(user),
        verify_challenge_resource=False,
        connection_verify=env.arm.ca_path,
    )
    with pytest.raises(HttpResponseError) as caught:
        client.create_rsa_key("denied")
    assert caught.value.status_code == 403
    # Assignment at resource-group scope reaches the vault.
    group_scope = f"/subscriptions/{SUB}/resourceGroups/{RG}"
    name = str(uuid.uuid4())
    assignment = env.authz.role_assignments.create(
        group_scope,
        name,
        RoleAssignmentCreateParameters(
            role_definition_id=f"/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/{KV_ADMIN}",
            principal_id=user,
            principal_type="User",
        ),
    )
    assert assignment.scope == group_scope
    assert client.create_rsa_key("allowed").name == "allowed"
    with pytest.raises(ResourceExistsError):
        env.authz.role_assignments.create(
            group_scope,
            str(uuid.uuid4()),
            RoleAssignmentCreateParameters(role_definition_id=assignment.role_definition_id, principal_id=user),
        )
    assert name in {a.name for a in env.authz.role_assignments.list_for_scope(vault.id)}
    assert env.authz.role_assignments.get(group_scope, name).principal_id == user
    env.authz.role_assignments.delete(group_scope, name)
    with pytest.raises(HttpResponseError) as caught:
        client.create_rsa_key("denied-again")
    assert caught.value.status_code == 403
    # Key scope: only that key.
    key_scope = f"{vault.id}/keys/allowed"
    env.authz.role_assignments.create(
        key_scope,
        str(uuid.uuid4()),
        RoleAssignmentCreateParameters(
            role_definition_id=f"/providers/Microsoft.Authorization/roleDefinitions/{CRYPTO_SERVICE}", principal_id=user
        ),
    )
    assert client.get_key("allowed").name == "allowed"
    with pytest.raises(HttpResponseError):
        client.create_rsa_key("still-denied")
    # Subscription scope reaches every vault of the subscription.
    env.authz.role_assignments.create(
        f"/subscriptions/{SUB}",
        str(uuid.uuid4()),
        RoleAssignmentCreateParameters(
            role_definition_id=f"/providers/Microsoft.Authorization/roleDefinitions/{KV_ADMIN}", principal_id=user
        ),
    )
    assert client.create_rsa_key("via-subscription").name == "via-subscription"


def test_diagnostic_settings_on_a_vault(env: Env) -> None:
    from azure.mgmt.monitor.models import DiagnosticSettingsResource, LogSettings

    from emulators.audit import AuditSink, DiagnosticRoute

    env.keyvault.vaults.begin_create_or_update(RG, "kv-arm-diag", _vault_params()).result()
    vault_id = env.arm.keyvault.vault("kv-arm-diag").resource_id
    sink = AuditSink()
    env.arm.audit = sink
    assert sink.routes(vault_id) == ()  # as in Azure: no diagnostic setting, no logs
    workspace = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.OperationalInsights/workspaces/law"
    archive = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Storage/storageAccounts/stlogs"
    setting = env.monitor.diagnostic_settings.create_or_update(
        vault_id,
        "to-law",
        DiagnosticSettingsResource(
            workspace_id=workspace,
            logs=[LogSettings(category_group="audit", enabled=True)],
            log_analytics_destination_type="Dedicated",
        ),
    )
    assert setting.workspace_id == workspace
    env.monitor.diagnostic_settings.create_or_update(
        vault_id, "to-archive",
        DiagnosticSettingsResource(storage_account_id=archive, logs=[LogSettings(category="AuditEvent", enabled=True)]))
    env.monitor.diagnostic_settings.create_or_update(  # metrics only: sends no AuditEvent record
        vault_id, "metrics", DiagnosticSettingsResource(workspace_id=workspace, logs=[]))
    assert set(sink.routes(vault_id)) == {DiagnosticRoute(workspace=workspace, dedicated=True),
                                         DiagnosticRoute(archive_account="stlogs")}
    assert sorted(s.name for s in env.monitor.diagnostic_settings.list(vault_id)) == ["metrics", "to-archive", "to-law"]
    assert env.monitor.diagnostic_settings.get(vault_id, "to-law").logs[0].category_group == "audit"
    for name in ("to-law", "to-archive"):
        env.monitor.diagnostic_settings.delete(vault_id, name)
    assert [s.name for s in env.monitor.diagnostic_settings.list(vault_id)] == ["metrics"]
    assert sink.routes(vault_id) == ()
    env.arm.audit = None


def test_resources_snapshot_has_resource_graph_shape(env: Env) -> None:
    rows = env.arm.resources_snapshot()
    types = {r["type"] for r in rows}
    assert {"microsoft.storage/storageaccounts", "microsoft.keyvault/vaults"} <= types
    expected = {
        "id",
        "name",
        "type",
        "tenantId",
        "kind",
        "location",
        "resourceGroup",
        "subscriptionId",
        "managedBy",
        "sku",
        "plan",
        "properties",
        "tags",
        "identity",
        "zones",
        "extendedLocation",
    }
    assert all(set(r) == expected for r in rows)
    vault = next(r for r in rows if r["name"] == "kv-arm-one")
    assert vault["properties"]["vaultUri"] == env.arm.keyvault.vault("kv-arm-one").uri
    # vaults.list goes through the generic /resources listing
    assert "kv-arm-one" in {v.name for v in env.keyvault.vaults.list()}


STORAGE_OPERATIONS = [
    ("PUT", r"/storageAccounts/[^/]+", "StorageAccounts_Create"),
    ("GET", r"/storageAccounts/[^/]+", "StorageAccounts_GetProperties"),
    ("PATCH", r"/storageAccounts/[^/]+", "StorageAccounts_Update"),
    ("GET", r"^/subscriptions/[^/]+/providers/Microsoft.Storage/storageAccounts", "StorageAccounts_List"),
    (
        "GET",
        r"/resourceGroups/[^/]+/providers/Microsoft.Storage/storageAccounts",
        "StorageAccounts_ListByResourceGroup",
    ),
    ("POST", r"/listKeys", "StorageAccounts_ListKeys"),
    ("PUT", r"/encryptionScopes/[^/]+", "EncryptionScopes_Put"),
    ("PATCH", r"/encryptionScopes/[^/]+", "EncryptionScopes_Patch"),
    ("GET", r"/encryptionScopes/[^/]+", "EncryptionScopes_Get"),
    ("GET", r"/encryptionScopes", "EncryptionScopes_List"),
]
VAULT_OPERATIONS = [
    ("PUT", r"/vaults/[^/]+/accessPolicies/[^/]+", "Vaults_UpdateAccessPolicy"),
    ("PUT", r"/vaults/[^/]+", "Vaults_CreateOrUpdate"),
    ("PATCH", r"/vaults/[^/]+", "Vaults_Update"),
    ("GET", r"/vaults/[^/]+", "Vaults_Get"),
    ("GET", r"^/subscriptions/[^/]+/providers/Microsoft.KeyVault/vaults", "Vaults_ListBySubscription"),
    ("GET", r"/resourceGroups/[^/]+/providers/Microsoft.KeyVault/vaults", "Vaults_ListByResourceGroup"),
    ("GET", r"^/subscriptions/[^/]+/resources", "Vaults_List"),
]


def test_every_response_matches_the_contract(env: Env) -> None:
    """All storage and vault responses this module received, errors included, validate against the specs."""
    import re
    from urllib.parse import urlsplit

    contracts = {"storage": storage_contract(), "keyvault": keyvault_contract()}
    checked: set[str] = set()
    for method, url, status, body in env.log.exchanges:
        path = urlsplit(url).path
        for kind, table in (("storage", STORAGE_OPERATIONS), ("keyvault", VAULT_OPERATIONS)):
            for verb, pattern, operation in table:
                if verb == method and re.search(pattern + "$", path):
                    if status < 300 or kind == "keyvault":  # storage.json 2025-01-01 defines no error bodies
                        contracts[kind].validate(operation, status, body)
                        checked.add(f"{operation} {status}")
                    break
            else:
                continue
            break
    assert {"StorageAccounts_Create 200", "Vaults_CreateOrUpdate 201", "Vaults_Update 400"} <= checked


def test_extra_routes_mount_on_a_standalone_arm() -> None:
    """Resource Graph (another engineer's) mounts its route on the ARM origin; ARM runs without Azurite."""
    from aiohttp import web

    arm = ArmEmulator()  # its own Key Vault emulator, clock and bus

    async def graph(request: web.Request) -> web.Response:
        return web.json_response({"count": len(arm.resources_snapshot()), "data": arm.resources_snapshot()})

    arm.add_routes([web.post("/providers/Microsoft.ResourceGraph/resources", graph)])
    with arm:
        arm.keyvault.add_vault("kv-standalone", subscription_id=SUB, resource_group="rg-standalone")
        status, body = arm_request(
            arm, "POST", "/providers/Microsoft.ResourceGraph/resources?api-version=2021-03-01", {}
        )
        assert (status, body["count"]) == (200, 1)
        assert body["data"][0]["type"] == "microsoft.keyvault/vaults"
        status, _ = arm_request(
            arm, "POST", "/providers/Microsoft.ResourceGraph/resources?api-version=2021-03-01", {}, token=False
        )
        assert status == 401
        # a vault created directly in the Key Vault emulator is visible through ARM, resource group included
        status, body = arm_request(
            arm,
            "GET",
            f"/subscriptions/{SUB}/resourceGroups/rg-standalone/providers"
            "/Microsoft.KeyVault/vaults/kv-standalone?api-version=2024-11-01",
        )
        assert (status, body["properties"]["vaultUri"]) == (200, arm.keyvault.vault("kv-standalone").uri)
    assert not arm.keyvault.running

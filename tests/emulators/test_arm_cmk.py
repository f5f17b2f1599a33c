"""Storage CMK in the sandbox: validation as Azure does it, version adoption under the sandbox clock, and
revocation that really makes blob data unreadable through the account's blob endpoint."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError
from azure.keyvault.keys import KeyClient
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
from azure.mgmt.msi import ManagedServiceIdentityClient
from azure.mgmt.msi.models import Identity as MsiIdentity
from azure.mgmt.storage import StorageManagementClient
from azure.mgmt.storage.models import (
    Encryption,
    EncryptionIdentity,
    EncryptionScope,
    EncryptionScopeKeyVaultProperties,
    Identity,
    KeyVaultProperties,
    StorageAccountCreateParameters,
    StorageAccountUpdateParameters,
    UserAssignedIdentity,
)
from azure.mgmt.storage.models import Sku as StorageSku
from azure.storage.blob import BlobServiceClient

from emulators.arm import ArmEmulator
from tests.support.arm_contract import storage_contract
from tests.support.keyvault import Recorder

pytestmark = pytest.mark.integration

SUB = "aaaaaaaa-0000-0000-0000-00000000c001"
RG = "rg-cmk"
CONTROLLER = "11111111-1111-1111-1111-11111111c001"
ARM_SCOPE = ["https://management.azure.com/.default"]
CRYPTO_SERVICE = "e147488a-f6f5-4113-8e2d-b22465e65bf6"
STORAGE_KEY_PERMISSIONS = ["get", "wrapKey", "unwrapKey"]


class Env:
    def __init__(self, arm: ArmEmulator) -> None:
        self.arm = arm
        self.recorder = Recorder().attach(arm.bus)
        self.cred = arm.credential(CONTROLLER)
        kwargs: dict[str, Any] = {"base_url": arm.url, "connection_verify": arm.ca_path, "credential_scopes": ARM_SCOPE}
        self.storage = StorageManagementClient(self.cred, SUB, **kwargs)
        self.keyvault = KeyVaultManagementClient(self.cred, SUB, **kwargs)
        self.msi = ManagedServiceIdentityClient(self.cred, SUB, **kwargs)
        self.authz = AuthorizationManagementClient(self.cred, SUB, **kwargs)
        self.responses: list[tuple[str, int, Any]] = []
        arm.ensure_resource_group(SUB, RG)
        self.tenant = arm.tenant_id
        controller = AccessPolicyEntry(
            tenant_id=self.tenant, object_id=CONTROLLER, permissions=Permissions(keys_property=["all"])
        )
        self.vault = self.create_vault("kv-cmk", purge_protection=True, policies=[controller])
        self.vault_no_pp = self.create_vault("kv-cmk-nopp", purge_protection=False, policies=[controller])
        self.keys = self.key_client(self.vault.properties.vault_uri)
        self.keys_no_pp = self.key_client(self.vault_no_pp.properties.vault_uri)
        self.rsa = self.keys.create_rsa_key("cmk-rsa", size=2048)
        self.ec = self.keys.create_ec_key("cmk-ec")
        self.keys_no_pp.create_rsa_key("cmk-rsa")
        self.uai = self.msi.user_assigned_identities.create_or_update(RG, "uai-cmk", MsiIdentity(location="westeurope"))
        self.grant(self.uai.principal_id)

    def create_vault(
        self, name: str, *, purge_protection: bool, policies: list[AccessPolicyEntry], rbac: bool = False
    ) -> Any:
        props = VaultProperties(
            tenant_id=self.tenant,
            sku=Sku(family="A", name="premium"),
            enable_soft_delete=True,
            soft_delete_retention_in_days=7,
            enable_purge_protection=purge_protection or None,
            enable_rbac_authorization=rbac,
            access_policies=policies,
        )
        return self.keyvault.vaults.begin_create_or_update(
            RG, name, VaultCreateOrUpdateParameters(location="westeurope", properties=props)
        ).result()

    def key_client(self, vault_uri: str) -> KeyClient:
        return KeyClient(vault_uri, self.cred, verify_challenge_resource=False, connection_verify=self.arm.ca_path)

    def access_policy(self, kind: AccessPolicyUpdateKind, principal: str, vault: str = "kv-cmk") -> None:
        entry = AccessPolicyEntry(
            tenant_id=self.tenant, object_id=principal, permissions=Permissions(keys_property=STORAGE_KEY_PERMISSIONS)
        )
        self.keyvault.vaults.update_access_policy(
            RG,
            vault,
            kind,
            VaultAccessPolicyParameters(properties=VaultAccessPolicyProperties(access_policies=[entry])),
        )

    def grant(self, principal: str) -> None:
        self.access_policy(AccessPolicyUpdateKind.ADD, principal)

    def new_account(self, *, with_uai: bool = True) -> str:
        name = "cmk" + uuid.uuid4().hex[:12]
        identity = (
            Identity(type="UserAssigned", user_assigned_identities={self.uai.id: UserAssignedIdentity()})
            if with_uai
            else Identity(type="SystemAssigned")
        )
        self.storage.storage_accounts.begin_create(
            RG,
            name,
            StorageAccountCreateParameters(
                sku=StorageSku(name="Standard_LRS"), kind="StorageV2", location="westeurope", identity=identity
            ),
        ).result()
        return name

    def enable_cmk(self, account: str, *, vault_uri: str, key: str, version: str = "", uai: Any = None) -> Any:
        identity = EncryptionIdentity(encryption_user_assigned_identity=(uai or self.uai).id)
        encryption = Encryption(
            key_source="Microsoft.Keyvault",
            key_vault_properties=KeyVaultProperties(key_name=key, key_version=version, key_vault_uri=vault_uri),
            encryption_identity=identity,
        )
        return self.storage.storage_accounts.update(RG, account, StorageAccountUpdateParameters(encryption=encryption))

    def enable_cmk_system(self, account: str, vault_uri: str, key: str) -> Any:
        """CMK through the account's system-assigned identity (no encryption.identity)."""
        encryption = Encryption(
            key_source="Microsoft.Keyvault",
            key_vault_properties=KeyVaultProperties(key_name=key, key_vault_uri=vault_uri),
        )
        return self.storage.storage_accounts.update(RG, account, StorageAccountUpdateParameters(encryption=encryption))

    def put_cmk_scope(self, account: str, scope: str, key: str) -> Any:
        """An encryption scope on ``account`` wrapped by the versionless ``key`` of the test vault."""
        key_uri = self.vault.properties.vault_uri + f"keys/{key}"
        properties = EncryptionScopeKeyVaultProperties(key_uri=key_uri)
        return self.storage.encryption_scopes.put(
            RG, account, scope, EncryptionScope(source="Microsoft.KeyVault", key_vault_properties=properties)
        )

    def blob_service(self, account: str) -> BlobServiceClient:
        return BlobServiceClient(
            self.arm.blob_endpoint(account),
            credential={"account_name": account, "account_key": self.arm.account_key(account)},
            connection_verify=self.arm.ca_path,
            retry_total=0,
        )


@pytest.fixture(scope="module")
def env(arm_sandbox: ArmEmulator) -> Iterator[Env]:
    yield Env(arm_sandbox)


def _error(caught: pytest.ExceptionInfo[HttpResponseError]) -> tuple[int | None, str | None, str | None]:
    error = caught.value.error
    return caught.value.status_code, error.code if error else None, error.message if error else None


# ---- validation -------------------------------------------------------------------------------------
def test_cmk_refused_without_purge_protection(env: Env) -> None:
    account = env.new_account()
    env.access_policy(AccessPolicyUpdateKind.ADD, env.uai.principal_id, vault="kv-cmk-nopp")
    with pytest.raises(HttpResponseError) as caught:
        env.enable_cmk(account, vault_uri=env.vault_no_pp.properties.vault_uri, key="cmk-rsa")
    assert _error(caught) == (400, "KeyVaultPolicyError", "Keyvault policy recoverable is not set")
    assert env.storage.storage_accounts.get_properties(RG, account).encryption.key_source == "Microsoft.Storage"


def test_cmk_refused_for_an_ec_key(env: Env) -> None:
    account = env.new_account()
    with pytest.raises(HttpResponseError) as caught:
        env.enable_cmk(account, vault_uri=env.vault.properties.vault_uri, key="cmk-ec")
    status, code, message = _error(caught)
    assert (status, code) == (400, "InvalidValuesForRequestParameters")
    assert message and "encryption.keyvaultproperties.keyname" in message


def test_cmk_refused_without_key_permissions(env: Env) -> None:
    stranger = env.msi.user_assigned_identities.create_or_update(RG, "uai-none", MsiIdentity(location="westeurope"))
    account = "cmk" + uuid.uuid4().hex[:12]
    env.storage.storage_accounts.begin_create(
        RG,
        account,
        StorageAccountCreateParameters(
            sku=StorageSku(name="Standard_LRS"),
            kind="StorageV2",
            location="westeurope",
            identity=Identity(type="UserAssigned", user_assigned_identities={stranger.id: UserAssignedIdentity()}),
        ),
    ).result()
    with pytest.raises(HttpResponseError) as caught:
        env.enable_cmk(account, vault_uri=env.vault.properties.vault_uri, key="cmk-rsa", uai=stranger)
    assert _error(caught) == (
        400,
        "KeyVaultAuthenticationFailure",
        "The operation failed because of authentication issue on the keyvault.",
    )
    denied = env.recorder.audits_of("KeyGet", status=403)
    assert any(a["identity"]["claim"]["oid"] == stranger.principal_id for a in denied)
    # get alone is not enough: wrap is checked in the vault too
    env.keyvault.vaults.update_access_policy(
        RG,
        "kv-cmk",
        AccessPolicyUpdateKind.ADD,
        VaultAccessPolicyParameters(
            properties=VaultAccessPolicyProperties(
                access_policies=[
                    AccessPolicyEntry(
                        tenant_id=env.tenant,
                        object_id=stranger.principal_id,
                        permissions=Permissions(keys_property=["get"]),
                    )
                ]
            )
        ),
    )
    with pytest.raises(HttpResponseError) as caught:
        env.enable_cmk(account, vault_uri=env.vault.properties.vault_uri, key="cmk-rsa", uai=stranger)
    assert _error(caught)[1] == "KeyVaultAuthenticationFailure"
    assert any(
        a["identity"]["claim"]["oid"] == stranger.principal_id for a in env.recorder.audits_of("KeyWrap", status=403)
    )


def test_cmk_refused_for_a_missing_key_or_vault(env: Env) -> None:
    account = env.new_account()
    with pytest.raises(HttpResponseError) as caught:
        env.enable_cmk(account, vault_uri=env.vault.properties.vault_uri, key="no-such-key")
    assert _error(caught)[:2] == (400, "KeyVaultKeyNotFound")
    with pytest.raises(HttpResponseError) as caught:
        env.enable_cmk(account, vault_uri="https://127.0.0.1:9/", key="cmk-rsa")
    assert _error(caught)[:2] == (400, "KeyVaultVaultNotFound")


def test_cmk_on_an_rbac_vault_through_a_role_assignment(env: Env) -> None:
    vault = env.create_vault("kv-cmk-rbac", purge_protection=True, policies=[], rbac=True)
    env.authz.role_assignments.create(
        vault.id,
        str(uuid.uuid4()),
        RoleAssignmentCreateParameters(
            role_definition_id="/providers/Microsoft.Authorization/roleDefinitions/00482a5a-887f-4fb3-b363-3b7fe8e74483",
            principal_id=CONTROLLER,
        ),
    )
    env.key_client(vault.properties.vault_uri).create_rsa_key("rbac-key")
    account = env.new_account(with_uai=False)
    principal = env.storage.storage_accounts.get_properties(RG, account).identity.principal_id
    with pytest.raises(HttpResponseError) as caught:
        env.enable_cmk_system(account, vault.properties.vault_uri, "rbac-key")
    assert _error(caught)[1] == "KeyVaultAuthenticationFailure"
    env.authz.role_assignments.create(
        vault.id,
        str(uuid.uuid4()),
        RoleAssignmentCreateParameters(
            role_definition_id=f"/providers/Microsoft.Authorization/roleDefinitions/{CRYPTO_SERVICE}",
            principal_id=principal,
            principal_type="ServicePrincipal",
        ),
    )
    account_json = env.enable_cmk_system(account, vault.properties.vault_uri, "rbac-key")
    assert account_json.encryption.key_vault_properties.current_versioned_key_identifier.startswith(
        vault.properties.vault_uri + "keys/rbac-key/"
    )


# ---- enabling and adoption ------------------------------------------------------------------------------
def test_enable_cmk_records_the_versioned_key(env: Env) -> None:
    account = env.new_account()
    updated = env.enable_cmk(account, vault_uri=env.vault.properties.vault_uri, key="cmk-rsa")
    kvp = updated.encryption.key_vault_properties
    assert updated.encryption.key_source == "Microsoft.Keyvault"
    assert kvp.current_versioned_key_identifier == env.keys.get_key("cmk-rsa").id
    assert kvp.last_key_rotation_timestamp is not None
    assert updated.encryption.encryption_identity.encryption_user_assigned_identity == env.uai.id
    uai = env.uai.principal_id
    for operation in ("KeyGet", "KeyWrap", "KeyUnwrap"):
        records = [a for a in env.recorder.audits_of(operation, status=200) if a["identity"]["claim"]["oid"] == uai]
        assert records and all(r["properties"]["trustedService"] for r in records)
    path = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Storage/storageAccounts/{account}"
    raw = env.arm.dispatch_json("GET", path)
    assert (
        raw["properties"]["encryption"]["keyvaultproperties"]["currentVersionedKeyIdentifier"]
        == kvp.current_versioned_key_identifier
    )
    storage_contract().validate("StorageAccounts_GetProperties", 200, raw)


def test_versionless_adopts_after_a_sandbox_day_pinned_never(env: Env) -> None:
    key = env.keys.create_rsa_key("cmk-rotating")
    versionless = env.new_account()
    pinned = env.new_account()
    env.enable_cmk(versionless, vault_uri=env.vault.properties.vault_uri, key="cmk-rotating")
    env.enable_cmk(pinned, vault_uri=env.vault.properties.vault_uri, key="cmk-rotating", version=key.properties.version)
    scope = env.put_cmk_scope(versionless, "scopeauto", "cmk-rotating")
    assert scope.key_vault_properties.current_versioned_key_identifier == key.id
    storage_contract().validate(
        "EncryptionScopes_Get",
        200,
        env.arm.dispatch_json(
            "GET",
            f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Storage/storageAccounts/{versionless}"
            "/encryptionScopes/scopeauto",
        ),
    )

    rotated = env.keys.rotate_key("cmk-rotating")
    assert rotated.id != key.id

    def current(account: str) -> Any:
        return env.storage.storage_accounts.get_properties(RG, account).encryption.key_vault_properties

    env.arm.advance_clock(timedelta(hours=23))  # Azure Storage checks once a day: not yet
    assert current(versionless).current_versioned_key_identifier == key.id
    before = current(versionless).last_key_rotation_timestamp
    env.arm.advance_clock(timedelta(hours=1, minutes=1))
    assert current(versionless).current_versioned_key_identifier == rotated.id
    assert current(versionless).last_key_rotation_timestamp > before
    assert current(pinned).current_versioned_key_identifier == key.id
    assert current(pinned).key_version == key.properties.version
    assert (
        env.storage.encryption_scopes.get(
            RG, versionless, "scopeauto"
        ).key_vault_properties.current_versioned_key_identifier
        == rotated.id
    )
    # the pinned account moves only when its keyversion is changed (validated again)
    moved = env.enable_cmk(
        pinned, vault_uri=env.vault.properties.vault_uri, key="cmk-rotating", version=rotated.properties.version
    )
    assert moved.encryption.key_vault_properties.current_versioned_key_identifier == rotated.id


# ---- revocation --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def readable(env: Env) -> tuple[str, BlobServiceClient]:
    account = env.new_account()
    env.enable_cmk(account, vault_uri=env.vault.properties.vault_uri, key="cmk-rsa")
    service = env.blob_service(account)
    service.create_container("data").upload_blob("hello.txt", b"hello cmk")
    return account, service


def _read(service: BlobServiceClient) -> bytes:
    return service.get_blob_client("data", "hello.txt").download_blob().readall()


def _assert_blocked(service: BlobServiceClient, code: str = "KeyVaultEncryptionKeyNotFound") -> None:
    with pytest.raises(HttpResponseError) as caught:
        _read(service)
    assert caught.value.status_code == 403
    assert caught.value.error_code == code


def test_blob_endpoint_isolates_accounts(env: Env, readable: tuple[str, BlobServiceClient]) -> None:
    _, service = readable
    assert [c.name for c in service.list_containers()] == ["data"]
    other = env.blob_service(env.new_account())
    assert list(other.list_containers()) == []
    assert [b.name for b in service.get_container_client("data").list_blobs()] == ["hello.txt"]
    assert service.get_blob_client("data", "hello.txt").get_blob_properties().size == len(b"hello cmk")
    bearer = BlobServiceClient(
        env.arm.blob_endpoint(readable[0]), credential=env.cred, connection_verify=env.arm.ca_path
    )
    assert bearer.get_blob_client("data", "hello.txt").download_blob().readall() == b"hello cmk"
    wrong_key = BlobServiceClient(
        env.arm.blob_endpoint(readable[0]),
        credential={"account_name": readable[0], "account_key": env.arm.account_key(other.account_name)},
        connection_verify=env.arm.ca_path,
    )
    with pytest.raises(HttpResponseError) as caught:
        wrong_key.get_blob_client("data", "hello.txt").download_blob()
    assert (caught.value.status_code, caught.value.error_code) == (403, "AuthenticationFailed")


def test_revoking_the_access_policy_makes_data_unreadable(env: Env, readable: tuple[str, BlobServiceClient]) -> None:
    _, service = readable
    assert _read(service) == b"hello cmk"
    env.access_policy(AccessPolicyUpdateKind.REMOVE, env.uai.principal_id)
    assert _read(service) == b"hello cmk"  # until the storage service next unwraps its root key
    env.arm.check_storage_keys()
    _assert_blocked(service)
    assert any(
        a["identity"]["claim"]["oid"] == env.uai.principal_id for a in env.recorder.audits_of("KeyUnwrap", status=403)
    )
    env.grant(env.uai.principal_id)
    env.arm.check_storage_keys()
    assert _read(service) == b"hello cmk"


def test_disabling_the_key_makes_data_unreadable(env: Env, readable: tuple[str, BlobServiceClient]) -> None:
    _, service = readable
    version = env.keys.get_key("cmk-rsa").properties.version
    env.keys.update_key_properties("cmk-rsa", version, enabled=False)
    env.arm.check_storage_keys()
    _assert_blocked(service)
    env.keys.update_key_properties("cmk-rsa", version, enabled=True)
    env.arm.check_storage_keys()
    assert _read(service) == b"hello cmk"


def test_firewall_blocks_unless_trusted_services_bypass(env: Env, readable: tuple[str, BlobServiceClient]) -> None:
    _, service = readable

    def firewall(bypass: str) -> None:
        env.keyvault.vaults.update(
            RG,
            "kv-cmk",
            VaultPatchParameters(
                properties=VaultPatchProperties(network_acls=NetworkRuleSet(bypass=bypass, default_action="Deny"))
            ),
        )

    firewall("None")
    env.arm.check_storage_keys()
    _assert_blocked(service)
    firewall("AzureServices")  # Azure Storage is a trusted service
    env.arm.check_storage_keys()
    assert _read(service) == b"hello cmk"
    env.keyvault.vaults.update(
        RG,
        "kv-cmk",
        VaultPatchParameters(
            properties=VaultPatchProperties(network_acls=NetworkRuleSet(bypass="AzureServices", default_action="Allow"))
        ),
    )


def test_encryption_scope_key_revocation(env: Env, readable: tuple[str, BlobServiceClient]) -> None:
    account, service = readable
    env.keys.create_rsa_key("cmk-scope")
    env.put_cmk_scope(account, "scopecmk", "cmk-scope")
    blob = service.get_blob_client("data", "scoped.txt")
    blob.upload_blob(b"scoped", encryption_scope="scopecmk")
    version = env.keys.get_key("cmk-scope").properties.version
    env.keys.update_key_properties("cmk-scope", version, enabled=False)
    env.arm.check_storage_keys()
    with pytest.raises(HttpResponseError) as caught:
        blob.upload_blob(b"again", encryption_scope="scopecmk", overwrite=True)
    assert (caught.value.status_code, caught.value.error_code) == (403, "KeyVaultEncryptionKeyNotFound")
    assert _read(service) == b"hello cmk"  # the account key is fine
    env.keys.update_key_properties("cmk-scope", version, enabled=True)
    env.arm.check_storage_keys()
    blob.upload_blob(b"again", encryption_scope="scopecmk", overwrite=True)


def test_expiration_timestamp_follows_the_key(env: Env) -> None:
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=200)
    env.keys.create_rsa_key("cmk-expiring", expires_on=expires)
    account = env.new_account()
    kvp = env.enable_cmk(account, vault_uri=env.vault.properties.vault_uri, key="cmk-expiring")
    assert kvp.encryption.key_vault_properties.current_versioned_key_expiration_timestamp == expires


def test_deleting_the_key_makes_data_unreadable_until_recovered(env: Env) -> None:
    env.keys.create_rsa_key("cmk-deleted")
    account = env.new_account()
    env.enable_cmk(account, vault_uri=env.vault.properties.vault_uri, key="cmk-deleted")
    service = env.blob_service(account)
    service.create_container("data").upload_blob("hello.txt", b"hello cmk")
    env.keys.begin_delete_key("cmk-deleted").wait()
    env.arm.check_storage_keys()
    _assert_blocked(service)
    env.keys.begin_recover_deleted_key("cmk-deleted").wait()
    env.arm.check_storage_keys()
    assert _read(service) == b"hello cmk"


def test_the_storage_timer_adopts_on_the_sandbox_clock(env: Env) -> None:
    key = env.keys.create_rsa_key("cmk-timer")
    account = env.new_account()
    env.enable_cmk(account, vault_uri=env.vault.properties.vault_uri, key="cmk-timer")
    rotated = env.keys.rotate_key("cmk-timer")
    env.arm.keyvault.advance_clock(timedelta(days=1, minutes=1))  # the vaults' clock only: ARM's timer must notice

    def adopted() -> str:
        return env.storage.storage_accounts.get_properties(
            RG, account
        ).encryption.key_vault_properties.current_versioned_key_identifier

    assert adopted() == key.id
    env.arm.set_storage_tick(0.05)
    try:
        deadline = time.monotonic() + 30
        while adopted() != rotated.id and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        env.arm.set_storage_tick(3600)
    assert adopted() == rotated.id


def test_create_an_account_with_cmk_in_one_request(env: Env) -> None:
    name = "cmk" + uuid.uuid4().hex[:12]
    account = env.storage.storage_accounts.begin_create(
        RG,
        name,
        StorageAccountCreateParameters(
            sku=StorageSku(name="Standard_GZRS"),
            kind="StorageV2",
            location="westeurope",
            identity=Identity(type="UserAssigned", user_assigned_identities={env.uai.id: UserAssignedIdentity()}),
            encryption=Encryption(
                key_source="Microsoft.Keyvault",
                key_vault_properties=KeyVaultProperties(
                    key_name="cmk-rsa", key_vault_uri=env.vault.properties.vault_uri
                ),
                encryption_identity=EncryptionIdentity(encryption_user_assigned_identity=env.uai.id),
            ),
        ),
    ).result()
    assert account.encryption.key_vault_properties.current_versioned_key_identifier == env.keys.get_key("cmk-rsa").id
    assert account.identity.user_assigned_identities[env.uai.id].principal_id == env.uai.principal_id


def test_a_throttled_vault_does_not_lock_the_data(env: Env, readable: tuple[str, BlobServiceClient]) -> None:
    from emulators.keyvault.state import FaultConfig

    _, service = readable
    state = env.arm.keyvault.vault("kv-cmk")
    state.faults = FaultConfig(error_rate=1.0, error_status=429, operations=["KeyUnwrap"])
    try:
        env.arm.check_storage_keys()
    finally:
        state.faults = FaultConfig()
    assert env.recorder.audits_of("KeyUnwrap", status=429)
    assert _read(service) == b"hello cmk"


def test_a_vault_that_drops_the_connection_refuses_the_change_and_keeps_the_data(
    env: Env, readable: tuple[str, BlobServiceClient]
) -> None:
    """The storage service reaches the vault in-process; a connection the vault's fault injection drops is
    still a vault that could not be reached: the change is refused for a retry, the data stays readable."""
    from emulators.arm.errors import ArmError
    from emulators.keyvault.state import FaultConfig

    _, service = readable
    account = env.new_account()
    path = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Storage/storageAccounts/{account}"
    encryption = {"keySource": "Microsoft.Keyvault", "identity": {"userAssignedIdentity": env.uai.id},
                  "keyvaultproperties": {"keyname": "cmk-rsa", "keyvaulturi": env.vault.properties.vault_uri}}
    state = env.arm.keyvault.vault("kv-cmk")
    state.faults = FaultConfig(reset_rate=1.0, operations=["KeyWrap", "KeyUnwrap"])
    try:
        with pytest.raises(ArmError) as refused:
            env.arm.dispatch_json("PATCH", path, {"properties": {"encryption": encryption}})
        env.arm.check_storage_keys()
    finally:
        state.faults = FaultConfig()
    assert (refused.value.status, refused.value.code) == (503, "ServiceUnavailable")
    assert env.arm.dispatch_json("GET", path)["properties"]["encryption"]["keySource"] == "Microsoft.Storage"
    dropped = [a for a in env.recorder.audits_of("KeyWrap") if a["resultSignature"] == "ConnectionReset"]
    assert any(a["identity"]["claim"]["oid"] == env.uai.principal_id for a in dropped)
    assert env.recorder.audits_of("KeyUnwrap", status=0)
    assert _read(service) == b"hello cmk"

"""Hand-built estates for the compliance rule tests.

``estate()`` is a compliant estate (every rule passes); each test changes one thing with the keyword
arguments or ``dataclasses.replace`` and asserts the finding that one change causes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from controller.compliance.estate import (
    AccessPolicy,
    AccountEncryption,
    AttachedIdentity,
    AuditLog,
    ContainerCensus,
    DeletedVault,
    DiagnosticSetting,
    EncryptionScope,
    Estate,
    KeyVaultProperties,
    LogSetting,
    ManagedIdentity,
    NetworkAcls,
    RoleAssignment,
    StorageAccount,
    Subscription,
    UserAssignedIdentity,
    Vault,
    VaultKey,
)
from controller.compliance.findings import Finding
from controller.compliance.rules import RuleContext, RuleSettings
from controller.model import (
    DeletedKeyInfo,
    KeyRef,
    KeyRotationPolicyInfo,
    KeyVersionInfo,
    RotationLifetimeAction,
    VaultOrigin,
)

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
SUB = "00000000-0000-0000-0000-0000000000a1"
SUB2 = "00000000-0000-0000-0000-0000000000a2"
TENANT = "00000000-0000-0000-0000-00000000000f"
TENANT2 = "00000000-0000-0000-0000-00000000000e"
VAULT_NAME = "contoso-cmk"
VAULT_RG = "rg-keys"
VAULT_ID = f"/subscriptions/{SUB}/resourceGroups/{VAULT_RG}/providers/Microsoft.KeyVault/vaults/{VAULT_NAME}"
VAULT_URI = f"https://{VAULT_NAME}.vault.azure.net/"
VAULT_ORIGIN = f"https://{VAULT_NAME}.vault.azure.net"
KEY_NAME = "storage-cmk"
KEY_URI = f"{VAULT_ORIGIN}/keys/{KEY_NAME}"
KEY_REF = KeyRef(VaultOrigin(VAULT_ORIGIN), KEY_NAME)
PRINCIPAL = "11111111-1111-1111-1111-111111111111"
SYSTEM_PRINCIPAL = "22222222-2222-2222-2222-222222222222"
UAI_ID = f"/subscriptions/{SUB}/resourceGroups/rg-id/providers/Microsoft.ManagedIdentity/userAssignedIdentities/cmk-id"
CRYPTO_USER_ROLE = (f"/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/"
                    "e147488a-f6f5-4113-8e2d-b22465e65bf6")
WORKSPACE = f"/subscriptions/{SUB}/resourceGroups/rg-logs/providers/Microsoft.OperationalInsights/workspaces/logs"


def version_id(number: int) -> str:
    return f"{number:032x}"


V1, V2, V3 = version_id(1), version_id(2), version_id(3)


def key_version(version: str, *, age: timedelta, enabled: bool = True, not_before: datetime | None = None,
                expires: datetime | None = None) -> KeyVersionInfo:
    return KeyVersionInfo(version, enabled, NOW - age, not_before, expires)


#: V1 is 60 days old, V2 (the latest) 30 days: both usable, no expiry.
VERSIONS = (key_version(V1, age=timedelta(days=60)), key_version(V2, age=timedelta(days=30)))


def rotation_policy(*actions: RotationLifetimeAction, expires_after: str | None = "P2Y") -> KeyRotationPolicyInfo:
    if not actions:
        actions = (RotationLifetimeAction("Rotate", time_after_create="P90D"),
                   RotationLifetimeAction("Notify", time_before_expiry="P30D"))
    return KeyRotationPolicyInfo(KEY_REF, actions, expires_after)


def vault_key(name: str = KEY_NAME, *, kty: str = "RSA", key_size: int | None = 3072,
              versions: tuple[KeyVersionInfo, ...] | None = VERSIONS,
              policy: KeyRotationPolicyInfo | None = None, policy_read: bool = True,
              current_version: str | None = None) -> VaultKey:
    return VaultKey(name=name, kty=kty, key_size=key_size, versions=versions,
                    rotation_policy=(policy or rotation_policy()) if policy_read else None,
                    current_version=current_version)


def assignment(scope: str = VAULT_ID, *, principal: str = PRINCIPAL, role: str = CRYPTO_USER_ROLE,
               condition: str | None = None) -> RoleAssignment:
    return RoleAssignment(scope=scope, principal_id=principal, role_definition_id=role, condition=condition)


AUDIT_TO_WORKSPACE = DiagnosticSetting(name="audit", logs=(LogSetting(enabled=True, category_group="audit"),),
                                       workspace_id=WORKSPACE)


def vault(*, name: str = VAULT_NAME, vault_id: str = VAULT_ID, vault_uri: str = VAULT_URI,
          location: str = "westeurope", **overrides: object) -> Vault:
    built = Vault(
        id=vault_id, name=name, location=location, vault_uri=vault_uri,
        enable_soft_delete=True, soft_delete_retention_in_days=90, enable_purge_protection=True,
        enable_rbac_authorization=True,
        keys=(vault_key(),),
        deleted_keys=(), diagnostic_settings=(AUDIT_TO_WORKSPACE,), role_assignments=(assignment(),),
        network_acls=NetworkAcls(default_action="Deny", bypass="AzureServices"),
    )
    return replace(built, **overrides)  # type: ignore[arg-type]


def account_id(name: str, subscription: str = SUB) -> str:
    return f"/subscriptions/{subscription}/resourceGroups/rg-data/providers/Microsoft.Storage/storageAccounts/{name}"


ATTACHED_UAI = ManagedIdentity(type="UserAssigned", user_assigned=(AttachedIdentity(resource_id=UAI_ID,
                                                                                     principal_id=PRINCIPAL),))


def scope(name: str = "scope1", account: str = "acct1", *, source: str = "Microsoft.KeyVault", state: str = "Enabled",
          key_uri: str | None = KEY_URI, current: str | None = f"{KEY_URI}/{V2}",
          subscription: str = SUB) -> EncryptionScope:
    return EncryptionScope(id=f"{account_id(account, subscription)}/encryptionScopes/{name}", name=name,
                           source=source, state=state, key_uri=key_uri, current_versioned_key_identifier=current)


def account(name: str = "acct1", *, key_source: str = "Microsoft.Keyvault", key_vault_uri: str | None = VAULT_URI,
            key_name: str | None = KEY_NAME, key_version: str | None = None, current: str | None = f"{KEY_URI}/{V2}",
            uai: str | None = UAI_ID, identity: ManagedIdentity = ATTACHED_UAI, location: str = "West Europe",
            sku: str = "Standard_LRS", tags: Mapping[str, str] | None = None, queue: str | None = "Account",
            table: str | None = "Account", scopes: tuple[EncryptionScope, ...] | None = (),
            subscription: str = SUB) -> StorageAccount:
    properties = (KeyVaultProperties(key_name=key_name, key_version=key_version, key_vault_uri=key_vault_uri,
                                     current_versioned_key_identifier=current)
                  if key_source.lower() == "microsoft.keyvault" else None)
    return StorageAccount(
        id=account_id(name, subscription), name=name, location=location, sku=sku,
        encryption=AccountEncryption(key_source=key_source, key_vault_properties=properties,
                                     user_assigned_identity=uai, queue_key_type=queue, table_key_type=table),
        encryption_scopes=scopes, identity=identity, tags=dict(tags or {}),
    )


def estate(*, accounts: tuple[StorageAccount, ...] | None = None, vaults: tuple[Vault, ...] | None = None,
           **overrides: object) -> Estate:
    built = Estate(
        gathered_at=NOW,
        storage_accounts=(account(),) if accounts is None else accounts,
        vaults=(vault(),) if vaults is None else vaults,
        deleted_vaults=(),
        audit=AuditLog(since=NOW - timedelta(days=1), until=NOW, source="AZKVAuditLogs"),
        user_assigned_identities=(UserAssignedIdentity(id=UAI_ID, principal_id=PRINCIPAL),),
        subscriptions=(Subscription(subscription_id=SUB, tenant_id=TENANT, management_groups=("mg-data", TENANT)),
                       Subscription(subscription_id=SUB2, tenant_id=TENANT, management_groups=("mg-other", TENANT))),
    )
    return replace(built, **overrides)  # type: ignore[arg-type]


def deleted_key(name: str = KEY_NAME, *, purge_in: timedelta = timedelta(days=12)) -> DeletedKeyInfo:
    return DeletedKeyInfo(KeyRef(VaultOrigin(VAULT_ORIGIN), name), NOW - timedelta(days=78), NOW + purge_in)


def deleted_vault(*, purge_in: timedelta = timedelta(days=5)) -> DeletedVault:
    return DeletedVault(name=VAULT_NAME, vault_id=VAULT_ID, location="westeurope",
                        deletion_date=NOW - timedelta(days=85), scheduled_purge_date=NOW + purge_in)


def census(blobs: Mapping[str, int] | None, *, account_name: str = "acct1", container: str = "secrets",
           key_uri: str = KEY_URI) -> ContainerCensus:
    return ContainerCensus(account=account_name, container=container, key_uri=key_uri,
                           blobs_per_version=None if blobs is None else dict(blobs))


def access_policy(object_id: str = PRINCIPAL, *keys: str, application_id: str | None = None) -> AccessPolicy:
    return AccessPolicy(object_id=object_id, keys=keys, application_id=application_id)


def run(check: object, built: Estate, *, settings: RuleSettings | None = None, now: datetime = NOW) -> list[Finding]:
    """Run one rule's check over ``built``."""
    context = RuleContext.of(built, settings or RuleSettings(), now)
    return check(context)  # type: ignore[operator, no-any-return]


def only(findings: list[Finding]) -> Finding:
    assert len(findings) == 1, findings
    return findings[0]


def not_evaluated(result: Finding) -> list[dict[str, object]]:
    """The entries of a CMK-000 finding's evidence."""
    assert result.rule == "CMK-000", result
    return [dict(entry) for entry in result.evidence["not_evaluated"]]  # type: ignore[attr-defined]

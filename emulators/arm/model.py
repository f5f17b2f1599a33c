"""The ARM-side records of the sandbox (resource groups, storage accounts, scopes, identities ...) and their
ARM JSON (the storage.json / keyvault.json 2025-01-01 / 2024-11-01 model shapes; None fields are omitted)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .storage import KeyBinding, iso, new_account_key

if TYPE_CHECKING:
    from emulators.keyvault import VaultState

STORAGE_TYPE = "Microsoft.Storage/storageAccounts"
SCOPE_TYPE = "Microsoft.Storage/storageAccounts/encryptionScopes"
VAULT_TYPE = "Microsoft.KeyVault/vaults"
UAI_TYPE = "Microsoft.ManagedIdentity/userAssignedIdentities"
KEY_SOURCE_STORAGE = "Microsoft.Storage"
KEY_SOURCE_KEYVAULT = "Microsoft.Keyvault"  # the casing the storage RP returns
SKU_TIERS = {"premium": "Premium"}


def compact(value: Any) -> Any:
    """Drop None values recursively (ARM omits unset properties; the schemas do not allow null)."""
    # Only containers are recursed into: an account listing has about seventy values per account.
    if isinstance(value, dict):
        return {k: compact(v) if isinstance(v, dict | list) else v for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [compact(v) if isinstance(v, dict | list) else v for v in value]
    return value


@dataclass
class ResourceGroup:
    subscription_id: str
    name: str
    location: str
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"/subscriptions/{self.subscription_id}/resourceGroups/{self.name}"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "type": "Microsoft.Resources/resourceGroups",
            "location": self.location,
            "tags": dict(self.tags),
            "properties": {"provisioningState": "Succeeded"},
        }


@dataclass
class UserAssignedIdentity:
    subscription_id: str
    resource_group: str
    name: str
    location: str
    tenant_id: str
    tags: dict[str, str] = field(default_factory=dict)
    principal_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    client_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def id(self) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/{UAI_TYPE}/{self.name}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "type": UAI_TYPE,
            "location": self.location,
            "tags": dict(self.tags),
            "properties": {"tenantId": self.tenant_id, "principalId": self.principal_id, "clientId": self.client_id},
        }


@dataclass
class EncryptionScope:
    name: str
    source: str  # Microsoft.Storage | Microsoft.KeyVault
    state: str  # Enabled | Disabled
    created: datetime
    modified: datetime
    require_infrastructure_encryption: bool = False
    binding: KeyBinding | None = None

    def to_json(self, account_id: str) -> dict[str, Any]:
        props: dict[str, Any] = {
            "source": self.source,
            "state": self.state,
            "creationTime": iso(self.created),
            "lastModifiedTime": iso(self.modified),
            "requireInfrastructureEncryption": self.require_infrastructure_encryption,
        }
        if self.binding is not None:
            props["keyVaultProperties"] = {
                "keyUri": self.binding.key_uri,
                "currentVersionedKeyIdentifier": self.binding.current_kid or None,
                "lastKeyRotationTimestamp": iso(self.binding.last_rotation),
            }
        return compact(
            {
                "id": f"{account_id}/encryptionScopes/{self.name}",
                "name": self.name,
                "type": SCOPE_TYPE,
                "properties": props,
            }
        )


@dataclass
class StorageAccount:
    subscription_id: str
    resource_group: str
    name: str
    location: str
    kind: str
    sku_name: str
    created: datetime
    tenant_id: str
    tags: dict[str, str] = field(default_factory=dict)
    system_principal_id: str | None = None
    user_assigned: dict[str, dict[str, str]] = field(default_factory=dict)  # UAI id -> {principalId, clientId}
    key_source: str = KEY_SOURCE_STORAGE
    binding: KeyBinding | None = None
    encryption_identity: str | None = None  # encryption.identity.userAssignedIdentity
    federated_identity_client_id: str | None = None
    require_infrastructure_encryption: bool = False
    queue_table_key_type: str = "Service"
    keys: dict[str, str] = field(default_factory=lambda: {"key1": new_account_key(), "key2": new_account_key()})
    scopes: dict[str, EncryptionScope] = field(default_factory=dict)  # lower-case name -> scope
    blob_endpoint: str = ""

    @property
    def id(self) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/{STORAGE_TYPE}/{self.name}"
        )

    @property
    def identity_type(self) -> str:
        kinds = [
            k for k, on in (("SystemAssigned", self.system_principal_id), ("UserAssigned", self.user_assigned)) if on
        ]
        return ",".join(kinds) or "None"

    def identity_json(self) -> dict[str, Any] | None:
        if self.identity_type == "None":
            return None
        return compact(
            {
                "type": self.identity_type,
                "principalId": self.system_principal_id,
                "tenantId": self.tenant_id if self.system_principal_id else None,
                "userAssignedIdentities": {k: dict(v) for k, v in self.user_assigned.items()} or None,
            }
        )

    def endpoints(self) -> dict[str, str]:
        blob = self.blob_endpoint or f"https://{self.name}.blob.core.windows.net/"
        return {
            "blob": blob,
            "queue": f"https://{self.name}.queue.core.windows.net/",
            "table": f"https://{self.name}.table.core.windows.net/",
            "file": f"https://{self.name}.file.core.windows.net/",
            "dfs": f"https://{self.name}.dfs.core.windows.net/",
            "web": f"https://{self.name}.z6.web.core.windows.net/",
        }

    def encryption_json(self) -> dict[str, Any]:
        enabled_at = iso(self.created)
        services = {
            "blob": {"enabled": True, "keyType": "Account", "lastEnabledTime": enabled_at},
            "file": {"enabled": True, "keyType": "Account", "lastEnabledTime": enabled_at},
        }
        if self.queue_table_key_type == "Account":
            services["queue"] = {"enabled": True, "keyType": "Account", "lastEnabledTime": enabled_at}
            services["table"] = {"enabled": True, "keyType": "Account", "lastEnabledTime": enabled_at}
        out: dict[str, Any] = {
            "services": services,
            "keySource": self.key_source,
            "requireInfrastructureEncryption": self.require_infrastructure_encryption,
        }
        if self.binding is not None:
            out["keyvaultproperties"] = {
                "keyname": self.binding.key_name,
                "keyversion": self.binding.key_version,
                "keyvaulturi": self.binding.vault_uri,
                "currentVersionedKeyIdentifier": self.binding.current_kid or None,
                "lastKeyRotationTimestamp": iso(self.binding.last_rotation),
                "currentVersionedKeyExpirationTimestamp": iso(self.binding.expiration),
            }
        if self.encryption_identity or self.federated_identity_client_id:
            out["identity"] = {
                "userAssignedIdentity": self.encryption_identity,
                "federatedIdentityClientId": self.federated_identity_client_id,
            }
        return out

    def to_json(self) -> dict[str, Any]:
        tier = SKU_TIERS.get(self.sku_name.split("_", 1)[0].lower(), "Standard")
        created = iso(self.created)
        return compact(
            {
                "id": self.id,
                "name": self.name,
                "type": STORAGE_TYPE,
                "location": self.location,
                "tags": dict(self.tags),
                "sku": {"name": self.sku_name, "tier": tier},
                "kind": self.kind,
                "identity": self.identity_json(),
                "properties": {
                    "provisioningState": "Succeeded",
                    "primaryEndpoints": self.endpoints(),
                    "primaryLocation": self.location,
                    "statusOfPrimary": "available",
                    "creationTime": created,
                    "keyCreationTime": {"key1": created, "key2": created},
                    "encryption": self.encryption_json(),
                    "accessTier": "Hot",
                    "supportsHttpsTrafficOnly": True,
                    "minimumTlsVersion": "TLS1_2",
                    "allowBlobPublicAccess": False,
                    "allowSharedKeyAccess": True,
                    "publicNetworkAccess": "Enabled",
                    "networkAcls": {
                        "bypass": "AzureServices",
                        "defaultAction": "Allow",
                        "ipRules": [],
                        "virtualNetworkRules": [],
                    },
                },
            }
        )


def vault_json(state: VaultState, tags: dict[str, str] | None = None) -> dict[str, Any]:
    """A vault as ARM returns it (keyvault.json 2024-11-01 Vault), read from the Key Vault emulator's state."""
    with state.lock:
        acls = state.network_acls
        props: dict[str, Any] = {
            "tenantId": state.tenant_id,
            "sku": {"family": "A", "name": state.sku},
            "accessPolicies": [p.to_json() for p in state.access_policies],
            "vaultUri": state.uri,
            "enabledForDeployment": False,
            "enabledForDiskEncryption": False,
            "enabledForTemplateDeployment": False,
            "enableSoftDelete": state.enable_soft_delete,
            "softDeleteRetentionInDays": state.soft_delete_retention_days,
            "enableRbacAuthorization": state.rbac,
            "enablePurgeProtection": True if state.purge_protection else None,
            "networkAcls": {
                "bypass": acls.bypass,
                "defaultAction": acls.default_action,
                "ipRules": [{"value": r} for r in acls.ip_rules],
                "virtualNetworkRules": list(acls.virtual_network_rules),
            },
            "provisioningState": "Succeeded",
            "publicNetworkAccess": "Enabled",
        }
        return compact(
            {
                "id": state.resource_id,
                "name": state.name,
                "type": VAULT_TYPE,
                "location": state.location,
                "tags": dict(tags or {}),
                "properties": props,
            }
        )

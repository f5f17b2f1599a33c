"""The estate: everything the compliance sweep reads, gathered once, as frozen typed values (pure).

A gatherer (an adapter) fills an ``Estate`` from ARM JSON, the Key Vault data plane, Log Analytics and
the blob census; the rules (``controller.compliance.rules``) only read it. Field names follow the
ARM / Key Vault property names (snake_case; the docstrings name the JSON property), values are kept as
Azure reports them (case and all): the rules compare names, URIs, regions and enum values
case-insensitively, so the gatherer never has to normalise anything.

"Not read" is never "empty". Every part that is read by its own request is typed ``X | None``, and
``None`` means the request was not made or failed (the gatherer then records a ``ReadFailure`` saying
why); an empty tuple means it was read and holds nothing. A rule that needs a part that was not read
yields a CMK-000 finding for the resource it evaluates, never a silent pass.

The same values serve onboarding and remediation features later: they describe the estate, not the
rules.

Where each part comes from (for the gatherer)
    StorageAccount      storage_accounts list/get: id, name, location, sku.name, kind, tags, identity
                        {type, principalId, userAssignedIdentities{id: {principalId, clientId}}},
                        properties.encryption {keySource, keyvaultproperties{keyname, keyversion,
                        keyvaulturi, currentVersionedKeyIdentifier, lastKeyRotationTimestamp},
                        identity.userAssignedIdentity, services.queue/table.keyType}
    EncryptionScope     encryption_scopes.list per account: {id, name, source, state,
                        keyVaultProperties{keyUri, currentVersionedKeyIdentifier, lastKeyRotationTimestamp}}
    Vault               vaults.get: id, name, location, properties {vaultUri, enableSoftDelete,
                        softDeleteRetentionInDays, enablePurgeProtection, enableRbacAuthorization,
                        networkAcls{defaultAction, bypass}, accessPolicies[{objectId, applicationId,
                        permissions.keys}]}; role_assignments.list_for_scope(vault id);
                        diagnostic_settings.list(vault id); data plane: list keys, versions
                        (KeyVersionInfo), rotation policies, deleted keys (DeletedKeyInfo)
    DeletedVault        vaults.list_deleted: name, properties {vaultId, location, deletionDate,
                        scheduledPurgeDate}
    RoleDefinition      role_definitions.get_by_id for each assignment's roleDefinitionId
    Subscription        subscriptions.get (tenantId); management-group ancestry when readable
    ContainerCensus     controller.blob_census.wrapping_versions over each registered container
    AuditLog            Log Analytics (AZKVAuditLogs / AzureDiagnostics) failed KeyWrap/KeyUnwrap,
                        grouped and classified by controller.audit (one FailureClass for both)
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from controller.audit import FailureClass
from controller.model import DeletedKeyInfo, KeyRotationPolicyInfo, KeyVersionInfo


def same_name(left: str | None, right: str | None) -> bool:
    """Azure names, ids and enum values compare case-insensitively (None equals only None)."""
    if left is None or right is None:
        return left is right
    return left.strip().lower() == right.strip().lower()


def same_arm_id(left: str, right: str) -> bool:
    """ARM ids compare case-insensitively and ignore a trailing slash."""
    return left.strip().rstrip("/").lower() == right.strip().rstrip("/").lower()


def region(name: str) -> str:
    """The comparable form of an Azure region: "West Europe" and "westeurope" are the same region."""
    return "".join(name.split()).lower()


def arm_segments(resource_id: str) -> tuple[str, ...]:
    """The lower-case path segments of an ARM id or scope (``"/"`` has none)."""
    return tuple(segment.lower() for segment in resource_id.strip().strip("/").split("/") if segment)


def arm_name(resource_id: str) -> str:
    """The last segment of an ARM id: the resource's name, as spelled."""
    return resource_id.strip().rstrip("/").rsplit("/", 1)[-1]


def arm_resource_group(resource_id: str) -> str:
    """The resource group named in an ARM id, as spelled ("" when the id names none)."""
    parts = resource_id.strip().strip("/").split("/")
    for index, segment in enumerate(parts[:-1]):
        if segment.lower() == "resourcegroups":
            return parts[index + 1]
    return ""


def arm_subscription(resource_id: str) -> str:
    """The subscription id named in an ARM id, lower case ("" when the id names none)."""
    segments = arm_segments(resource_id)
    if len(segments) >= 2 and segments[0] == "subscriptions":
        return segments[1]
    return ""


# --- what could not be read ------------------------------------------------------------------------


class ReadAspect(enum.StrEnum):
    """Which part of a resource (or of the estate) a read failure concerns."""

    STORAGE_ACCOUNTS = "storage-accounts"  # a subscription's account listing
    ACCOUNT = "account"  # one account's properties
    ENCRYPTION_SCOPES = "encryption-scopes"
    VAULTS = "vaults"  # a subscription's vault listing
    DELETED_VAULTS = "deleted-vaults"
    VAULT = "vault"  # one vault's ARM properties
    KEYS = "keys"  # a vault's key listing (data plane)
    KEY_VERSIONS = "key-versions"
    ROTATION_POLICY = "rotation-policy"
    DELETED_KEYS = "deleted-keys"
    ROLE_ASSIGNMENTS = "role-assignments"
    ROLE_DEFINITION = "role-definition"
    DIAGNOSTIC_SETTINGS = "diagnostic-settings"
    MANAGEMENT_GROUPS = "management-groups"
    USER_ASSIGNED_IDENTITIES = "user-assigned-identities"
    AUDIT_LOGS = "audit-logs"
    BLOB_CENSUS = "blob-census"


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadFailure:
    """Something the gatherer could not read: ``resource`` is what (ARM id, key URI, subscription id,
    ``<account>/<container>``, or "audit-logs"), ``reason`` why, ``status_code`` the HTTP status if any.
    Each becomes a CMK-000 finding for ``resource``."""

    resource: str
    aspect: ReadAspect
    reason: str
    status_code: int | None = None


# --- storage accounts --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AttachedIdentity:
    """One entry of ``identity.userAssignedIdentities``: the identity's ARM id and its principal."""

    resource_id: str
    principal_id: str | None = None
    client_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ManagedIdentity:
    """A resource's ``identity`` block.

    ``type``: ``None`` | ``SystemAssigned`` | ``UserAssigned`` | ``SystemAssigned,UserAssigned`` (any
    case, any spacing). ``principal_id`` is the system-assigned identity's principal.
    """

    type: str = "None"
    principal_id: str | None = None
    tenant_id: str | None = None
    user_assigned: tuple[AttachedIdentity, ...] = ()

    @property
    def types(self) -> frozenset[str]:
        return frozenset(part.strip().lower() for part in self.type.split(",") if part.strip())

    @property
    def system_assigned(self) -> bool:
        return "systemassigned" in self.types

    def attached(self, resource_id: str) -> AttachedIdentity | None:
        """The user-assigned identity with this ARM id, when it is attached (listed and type says so)."""
        if "userassigned" not in self.types:
            return None
        return next((entry for entry in self.user_assigned if same_arm_id(entry.resource_id, resource_id)), None)


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyVaultProperties:
    """``encryption.keyvaultproperties`` of a storage account."""

    key_name: str | None = None  # keyname
    key_version: str | None = None  # keyversion: empty or None means versionless (automatic updates)
    key_vault_uri: str | None = None  # keyvaulturi
    current_versioned_key_identifier: str | None = None  # read-only
    last_key_rotation_timestamp: datetime | None = None  # read-only


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountEncryption:
    """``properties.encryption`` of a storage account.

    ``queue_key_type`` / ``table_key_type``: ``services.queue.keyType`` / ``services.table.keyType``
    (``Service`` | ``Account``); None when ARM does not report the service, which means ``Service``.
    """

    key_source: str = "Microsoft.Storage"  # keySource: Microsoft.Storage | Microsoft.Keyvault
    key_vault_properties: KeyVaultProperties | None = None
    user_assigned_identity: str | None = None  # encryption.identity.userAssignedIdentity (ARM id)
    queue_key_type: str | None = None
    table_key_type: str | None = None

    @property
    def uses_key_vault(self) -> bool:
        return same_name(self.key_source, "Microsoft.Keyvault")


@dataclass(frozen=True, slots=True, kw_only=True)
class EncryptionScope:
    """One encryption scope (``Microsoft.Storage/storageAccounts/encryptionScopes``)."""

    id: str
    name: str
    source: str = "Microsoft.Storage"  # Microsoft.Storage | Microsoft.KeyVault
    state: str = "Enabled"  # Enabled | Disabled
    key_uri: str | None = None  # keyVaultProperties.keyUri (versionless or versioned)
    current_versioned_key_identifier: str | None = None
    last_key_rotation_timestamp: datetime | None = None

    @property
    def uses_key_vault(self) -> bool:
        return same_name(self.source, "Microsoft.KeyVault")


@dataclass(frozen=True, slots=True, kw_only=True)
class StorageAccount:
    """A storage account as ARM reports it. ``encryption_scopes`` None: the scopes were not read."""

    id: str
    name: str
    location: str
    sku: str  # sku.name, e.g. Standard_RAGRS
    encryption: AccountEncryption
    encryption_scopes: tuple[EncryptionScope, ...] | None
    identity: ManagedIdentity = field(default_factory=ManagedIdentity)
    tags: Mapping[str, str] = field(default_factory=dict)
    kind: str = "StorageV2"

    @property
    def subscription_id(self) -> str:
        return arm_subscription(self.id)

    def tag(self, name: str) -> str | None:
        """A tag's value; Azure tag names are case-insensitive."""
        return next((value for tag, value in self.tags.items() if same_name(tag, name)), None)


# --- vaults and keys ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkAcls:
    """``properties.networkAcls`` of a vault. ``bypass``: ``AzureServices`` | ``None``."""

    default_action: str = "Allow"
    bypass: str = "AzureServices"

    @property
    def denies_by_default(self) -> bool:
        return same_name(self.default_action, "Deny")

    @property
    def bypasses_azure_services(self) -> bool:
        return any(same_name(part, "AzureServices") for part in self.bypass.split(","))


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessPolicy:
    """One entry of ``properties.accessPolicies``; ``keys`` is ``permissions.keys`` as listed."""

    object_id: str
    keys: tuple[str, ...] = ()
    tenant_id: str | None = None
    application_id: str | None = None  # a compound entry grants the object only through this application


@dataclass(frozen=True, slots=True, kw_only=True)
class RoleAssignment:
    """A role assignment that applies at, above or below a vault (``role_assignments.list_for_scope``)."""

    scope: str
    principal_id: str
    role_definition_id: str  # full ARM id or bare GUID
    condition: str | None = None  # ABAC condition: not evaluated


@dataclass(frozen=True, slots=True, kw_only=True)
class LogSetting:
    """One entry of a diagnostic setting's ``logs``: a ``category`` or a ``categoryGroup``."""

    enabled: bool
    category: str | None = None
    category_group: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DiagnosticSetting:
    """A diagnostic setting of a vault and where it sends logs (any destination counts)."""

    name: str
    logs: tuple[LogSetting, ...] = ()
    workspace_id: str | None = None
    storage_account_id: str | None = None
    event_hub_authorization_rule_id: str | None = None
    marketplace_partner_id: str | None = None

    @property
    def destination(self) -> str | None:
        return (self.workspace_id or self.storage_account_id or self.event_hub_authorization_rule_id
                or self.marketplace_partner_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class VaultKey:
    """A key of a vault: ``kty`` (RSA, RSA-HSM, EC, EC-HSM, oct, oct-HSM) and size of its current
    version, every version (None: not listed) and its rotation policy (None: not read; a key without
    one is read as a policy with no lifetime actions). ``current_version`` is the version ARM reports
    as the key's own (``keyUriWithVersion``), None when not reported: Key Vault gives creation times
    in seconds, so only it orders two versions made within one second."""

    name: str
    kty: str
    key_size: int | None
    versions: tuple[KeyVersionInfo, ...] | None
    rotation_policy: KeyRotationPolicyInfo | None
    current_version: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Vault:
    """A Key Vault as ARM (and its data plane) reports it.

    ``vault_uri`` is ``properties.vaultUri``. ``soft_delete_retention_in_days`` None means ARM did not
    report it (the service default, 90). ``network_acls`` None means no firewall (allow all).
    ``role_assignments`` are those that apply at, above or below the vault (None: not read); read them
    for RBAC vaults at least. ``keys`` / ``deleted_keys`` / ``diagnostic_settings`` None: not read.
    """

    id: str
    name: str
    location: str
    vault_uri: str
    enable_soft_delete: bool
    soft_delete_retention_in_days: int | None
    enable_purge_protection: bool
    enable_rbac_authorization: bool
    keys: tuple[VaultKey, ...] | None
    deleted_keys: tuple[DeletedKeyInfo, ...] | None
    diagnostic_settings: tuple[DiagnosticSetting, ...] | None
    role_assignments: tuple[RoleAssignment, ...] | None
    network_acls: NetworkAcls | None = None
    access_policies: tuple[AccessPolicy, ...] = ()
    tenant_id: str | None = None

    @property
    def subscription_id(self) -> str:
        return arm_subscription(self.id)

    def key(self, name: str) -> VaultKey | None:
        return next((key for key in self.keys or () if same_name(key.name, name)), None)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeletedVault:
    """A soft-deleted vault (``vaults.list_deleted``): ``vault_id`` is ``properties.vaultId``."""

    name: str
    vault_id: str
    location: str
    deletion_date: datetime | None = None
    scheduled_purge_date: datetime | None = None


# --- identities, roles, subscriptions ----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class UserAssignedIdentity:
    """A ``Microsoft.ManagedIdentity/userAssignedIdentities`` resource."""

    id: str
    principal_id: str
    client_id: str | None = None
    tenant_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RolePermission:
    """One ``permissions`` block of a role definition (only data actions matter to Key Vault keys)."""

    data_actions: tuple[str, ...] = ()
    not_data_actions: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class RoleDefinition:
    """A role definition, built-in or custom: ``id`` is its ARM id (or bare GUID)."""

    id: str
    role_name: str
    permissions: tuple[RolePermission, ...]
    role_type: str = "CustomRole"  # BuiltInRole | CustomRole

    @property
    def guid(self) -> str:
        return arm_name(self.id).lower()


@dataclass(frozen=True, slots=True, kw_only=True)
class Subscription:
    """A subscription: its tenant and management-group ancestry (nearest first, up to the tenant root
    group), each None when unknown."""

    subscription_id: str
    tenant_id: str | None = None
    management_groups: tuple[str, ...] | None = None


# --- data and activity -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerCensus:
    """A registered client-side-encrypted container: blobs per wrapping version of ``key_uri``.

    ``blobs_per_version`` None: the census could not be taken. Versions are lower case.
    """

    account: str
    container: str
    key_uri: str  # the key the container is registered with (versionless)
    blobs_per_version: Mapping[str, int] | None

    @property
    def name(self) -> str:
        return f"{self.account}/{self.container}"


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditFailureGroup:
    """Failed key operations from the vault's audit log, grouped by vault, key, version, caller,
    operation, status and class."""

    vault_id: str
    key_name: str
    key_version: str | None
    caller: str  # the caller identity (object id, app id or IP when nothing else is logged)
    operation: str  # KeyWrap | KeyUnwrap (others are ignored by CMK-017)
    status_code: int
    failure_class: FailureClass
    count: int
    first_seen: datetime
    last_seen: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditLog:
    """The audit-log query of this sweep: the window it covered and the failure groups it found (an
    empty tuple: gathered, none failed)."""

    since: datetime
    until: datetime
    source: str  # e.g. "AZKVAuditLogs", "AzureDiagnostics", "archive"
    failures: tuple[AuditFailureGroup, ...] = ()


# --- the estate --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Estate:
    """One sweep's snapshot of everything the rules read.

    ``deleted_vaults`` None: not read. ``audit`` None: audit logs were not gathered (not configured, or
    the query failed: a ``ReadFailure`` with aspect AUDIT_LOGS says which). ``custom_origins`` are the
    vault origins that key URIs may use besides the clouds' hosts (the sandbox's; settings.vaults).
    """

    gathered_at: datetime
    storage_accounts: tuple[StorageAccount, ...]
    vaults: tuple[Vault, ...]
    deleted_vaults: tuple[DeletedVault, ...] | None
    audit: AuditLog | None
    user_assigned_identities: tuple[UserAssignedIdentity, ...] = ()
    role_definitions: tuple[RoleDefinition, ...] = ()
    subscriptions: tuple[Subscription, ...] = ()
    container_census: tuple[ContainerCensus, ...] = ()
    read_failures: tuple[ReadFailure, ...] = ()
    custom_origins: tuple[str, ...] = ()

    def failure(self, resource: str, *aspects: ReadAspect) -> ReadFailure | None:
        """The recorded read failure of ``resource`` (case-insensitive) for one of ``aspects``, if any."""
        return next((failure for failure in self.read_failures
                     if failure.aspect in aspects and same_arm_id(failure.resource, resource)), None)

    def failures_of(self, aspect: ReadAspect) -> tuple[ReadFailure, ...]:
        return tuple(failure for failure in self.read_failures if failure.aspect is aspect)

    def subscription(self, subscription_id: str) -> Subscription | None:
        return next((sub for sub in self.subscriptions if same_name(sub.subscription_id, subscription_id)), None)

    def user_assigned_identity(self, resource_id: str) -> UserAssignedIdentity | None:
        return next((uai for uai in self.user_assigned_identities if same_arm_id(uai.id, resource_id)), None)

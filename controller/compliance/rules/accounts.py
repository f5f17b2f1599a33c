"""Rules about storage accounts and encryption scopes: CMK-001, 002, 006, 008, 011, 012, 014, 015, 019.

Account-level checks of a key (identity access, adoption) apply to the account in CMK-006 / CMK-012
and to each Key Vault encryption scope in CMK-019, through the same small checks (``_access``,
``_adoption``). A consumer whose key or vault is missing or soft-deleted is reported by CMK-013, not
again here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from controller.compliance.access import CRYPTO_SERVICE_ENCRYPTION_USER, NEEDED_KEY_PERMISSIONS, key_access
from controller.compliance.estate import (
    ReadAspect,
    StorageAccount,
    Vault,
    VaultKey,
    arm_resource_group,
    region,
    same_name,
)
from controller.compliance.findings import Finding
from controller.compliance.resolve import ConsumerView, KeyStatus, find_version, latest_usable
from controller.compliance.rules.context import (
    EXEMPT_TAG,
    REQUIRED_TAG,
    RequireCmk,
    RuleContext,
    RuleSettings,
    Unevaluable,
    az_names,
    finding,
    iso,
    lookup_not_evaluable,
    not_evaluable,
    not_read,
)
from controller.model import ConsumerKind, IdentityAccess, KeyRef
from controller.reasons import Reason

_GEO_REDUNDANT_SKUS = ("grs", "gzrs")  # Standard_GRS, Standard_RAGRS, Standard_GZRS, Standard_RAGZRS


def requires_cmk(account: StorageAccount, settings: RuleSettings) -> bool:
    """Is the account in scope of CMK-001 (tag names and values are case-insensitive)?"""
    if same_name(account.tag(EXEMPT_TAG), "true"):
        return False
    return settings.require_cmk is RequireCmk.ALL or same_name(account.tag(REQUIRED_TAG), "true")


def _enable_cmk_command(account: StorageAccount) -> str:
    return (f"az storage account update {az_names(account.id)} --encryption-key-source Microsoft.Keyvault "
            "--encryption-key-vault https://<vault>.vault.azure.net --encryption-key-name <key> "
            "--key-vault-user-identity-id <user-assigned identity id> (grant that identity Key Vault Crypto "
            "Service Encryption User on the key first)")


def cmk_001_account_uses_cmk(context: RuleContext) -> list[Finding]:
    findings = []
    for account in context.estate.storage_accounts:
        if not requires_cmk(account, context.settings) or account.encryption.uses_key_vault:
            continue
        findings.append(finding(
            "CMK-001", account.id, f"storage account {account.name} does not use a customer-managed key",
            {"reason": Reason.NOT_CMK.value, "keySource": account.encryption.key_source,
             "require_cmk": context.settings.require_cmk.value,
             "tags": {REQUIRED_TAG: account.tag(REQUIRED_TAG), EXEMPT_TAG: account.tag(EXEMPT_TAG)}},
            _enable_cmk_command(account)))
    return findings


# --- the encryption identity ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EncryptionPrincipal:
    """Who the account (and its scopes) reach the key as: ``principal_id`` when it resolves,
    ``problem`` (CMK-002) when it does not; neither when the identity resolves but its principal was
    not reported."""

    source: str  # "user-assigned" or "system-assigned"
    identity_id: str | None
    principal_id: str | None
    problem: Reason | None = None


def encryption_principal(context: RuleContext, account: StorageAccount) -> EncryptionPrincipal:
    wanted = account.encryption.user_assigned_identity
    if wanted:
        attached = account.identity.attached(wanted)
        if attached is None:
            return EncryptionPrincipal("user-assigned", wanted, None, Reason.USER_ASSIGNED_NOT_ATTACHED)
        listed = context.estate.user_assigned_identity(wanted)
        principal = attached.principal_id or (listed.principal_id if listed else None)
        return EncryptionPrincipal("user-assigned", wanted, principal)
    if not account.identity.system_assigned:
        return EncryptionPrincipal("system-assigned", None, None, Reason.SYSTEM_ASSIGNED_OFF)
    return EncryptionPrincipal("system-assigned", None, account.identity.principal_id)


def _uses_key_vault_anywhere(account: StorageAccount) -> bool:
    return account.encryption.uses_key_vault or any(scope.uses_key_vault for scope in account.encryption_scopes or ())


def cmk_002_encryption_identity_resolves(context: RuleContext) -> list[Finding]:
    findings = []
    for account in context.estate.storage_accounts:
        if not _uses_key_vault_anywhere(account):
            continue
        principal = encryption_principal(context, account)
        if principal.problem is None:
            continue
        if principal.problem is Reason.USER_ASSIGNED_NOT_ATTACHED:
            title = f"the encryption identity of {account.name} is not attached to the account"
            remediation = (f"az storage account update {az_names(account.id)} --identity-type "
                           f"SystemAssigned,UserAssigned --user-identity-id {principal.identity_id} "
                           "(attach it), or point encryption.identity.userAssignedIdentity at an attached identity")
        else:
            title = f"{account.name} has no encryption identity: none is set and the system-assigned one is off"
            remediation = (f"az storage account update {az_names(account.id)} --assign-identity "
                           "(then grant it Key Vault Crypto Service Encryption User on the key), or pass "
                           "--key-vault-user-identity-id with an attached user-assigned identity")
        findings.append(finding("CMK-002", account.id, title, {
            "reason": principal.problem.value,
            "encryption.identity.userAssignedIdentity": account.encryption.user_assigned_identity,
            "identity.type": account.identity.type,
            "identity.userAssignedIdentities": tuple(entry.resource_id for entry in account.identity.user_assigned),
        }, remediation))
    return findings


# --- small checks shared by the account rules and CMK-019 -----------------------------------------------


@dataclass(frozen=True, slots=True)
class _Check:
    """One check's outcome: passed (nothing set), failed, not evaluable, or skipped (reported elsewhere)."""

    failed: Reason | None = None
    evidence: Mapping[str, object] = field(default_factory=dict)
    remediation: str = ""
    unevaluable: Unevaluable | None = None


_PASSED = _Check()


def _key_of(context: RuleContext, consumer: ConsumerView) -> _Check | tuple[KeyRef, Vault, VaultKey]:
    """The consumer's key and its vault when it is found in the estate; else the check's outcome."""
    ref = consumer.key.ref
    if ref is None:
        return _Check(unevaluable=Unevaluable(Reason.KEY_URI_INVALID, consumer.key.error,
                                              extra={"key_uri": consumer.key.configured}))
    lookup = context.index.lookup(ref)
    if lookup.status is KeyStatus.NOT_EVALUABLE:
        return _Check(unevaluable=lookup_not_evaluable(lookup))
    located = lookup.located
    if located is None:
        return _PASSED  # CMK-013 reports the missing or soft-deleted key
    return (ref.versionless, *located)


def _access(context: RuleContext, consumer: ConsumerView) -> _Check:
    principal = encryption_principal(context, consumer.account)
    if principal.problem is not None:
        return _Check(Reason.IDENTITY_LACKS_ACCESS, {
            "principal_id": None, "identity": principal.source,
            "detail": f"the encryption identity does not resolve ({principal.problem.value}, CMK-002)"},
            "fix the account's encryption identity (CMK-002)")
    if principal.principal_id is None:
        failure = (context.estate.failure(principal.identity_id, ReadAspect.USER_ASSIGNED_IDENTITIES)
                   if principal.identity_id else None)
        return _Check(unevaluable=Unevaluable(
            Reason.IDENTITY_PRINCIPAL_UNKNOWN, f"the principal of the {principal.source} identity is not reported",
            failure, aspect=ReadAspect.USER_ASSIGNED_IDENTITIES if principal.identity_id else None))
    found = _key_of(context, consumer)
    if isinstance(found, _Check):
        return found
    ref, vault, _ = found
    key_name = ref.name
    subscription = context.estate.subscription(vault.subscription_id)
    result = key_access(vault, key_name, principal.principal_id,
                        role_definitions=context.index.role_definitions, subscription=subscription)
    if result.access is IdentityAccess.GRANTED:
        return _PASSED
    evidence = {"principal_id": principal.principal_id, "identity": principal.source, "vault": vault.id,
                "key": key_name, "permission_model": result.model, "missing": result.missing,
                "granted_by": result.granted_by}
    if result.access is IdentityAccess.UNKNOWN:
        failure = context.estate.failure(vault.id, ReadAspect.ROLE_ASSIGNMENTS, ReadAspect.ROLE_DEFINITION)
        return _Check(unevaluable=Unevaluable(Reason.ACCESS_NOT_EVALUATED, "; ".join(result.unevaluated), failure,
                                              extra={"missing": result.missing}, aspect=ReadAspect.ROLE_ASSIGNMENTS))
    if result.model == "access-policy":
        remediation = (f"az keyvault set-policy {az_names(vault.id)} --object-id {principal.principal_id} "
                       f"--key-permissions {' '.join(NEEDED_KEY_PERMISSIONS)}")
    else:
        remediation = (f"az role assignment create --assignee-object-id {principal.principal_id} "
                       f"--assignee-principal-type ServicePrincipal --role {CRYPTO_SERVICE_ENCRYPTION_USER.guid} "
                       f"--scope {vault.id}/keys/{key_name}")
    return _Check(Reason.IDENTITY_LACKS_ACCESS, evidence, remediation)


def _adoption(context: RuleContext, consumer: ConsumerView) -> _Check:
    found = _key_of(context, consumer)
    if isinstance(found, _Check):
        return found
    ref, _, vault_key = found
    if vault_key.versions is None:
        return _Check(unevaluable=not_read(context.estate, ref.uri, ReadAspect.KEY_VERSIONS,
                                           f"the versions of {ref.uri} were not read"))
    latest = latest_usable(vault_key, context.now)
    if latest is None:
        return _PASSED  # nothing to adopt: CMK-009 reports the unusable version in use
    versioned = f"{ref.uri}/{latest.version}"
    if consumer.pinned_version is not None:
        if same_name(consumer.pinned_version, latest.version):
            return _PASSED
        return _Check(Reason.PINNED_TO_OLD_VERSION, {
            "pinned_version": consumer.pinned_version, "latest_version": latest.version,
            "latest_created": iso(latest.created)}, _set_key_command(consumer, versioned))
    current = consumer.current_version
    if current is None:
        reported = consumer.current.configured if consumer.current else None
        return _Check(unevaluable=Unevaluable(
            Reason.CURRENT_VERSION_UNKNOWN,
            "currentVersionedKeyIdentifier does not name a version of the configured key",
            extra={"currentVersionedKeyIdentifier": reported}))
    if same_name(current, latest.version):
        return _PASSED
    lag = context.now - latest.available_from
    if lag <= context.settings.adoption_window:
        return _PASSED  # Azure Storage polls about once a day: still inside the window
    in_use = find_version(vault_key.versions, current)
    return _Check(Reason.ADOPTION_OVERDUE, {
        "current_version": current, "current_created": iso(in_use.created) if in_use else None,
        "latest_version": latest.version, "latest_available_since": iso(latest.available_from),
        "lag_hours": round(lag.total_seconds() / 3600, 1),
        "adoption_window_hours": context.settings.adoption_window.total_seconds() / 3600,
        "last_key_rotation": iso(consumer.last_key_rotation)},
        _set_key_command(consumer, versioned) + ", then set the versionless key URI back (automatic updates) "
        "once currentVersionedKeyIdentifier shows it")


def _set_key_command(consumer: ConsumerView, key_uri: str) -> str:
    """The az command that points a consumer at ``key_uri`` (versioned pins, versionless unpins)."""
    account = consumer.account
    if consumer.scope is not None:
        return _scope_command(account, consumer.scope.name, f"--key-source Microsoft.KeyVault --key-uri {key_uri}")
    base, _, rest = key_uri.partition("/keys/")
    name, _, version = rest.partition("/")
    return (f"az storage account update {az_names(account.id)} --encryption-key-source Microsoft.Keyvault "
            f"--encryption-key-vault {base} --encryption-key-name {name} --encryption-key-version \"{version}\"")


def _scope_command(account: StorageAccount, scope_name: str, options: str) -> str:
    return (f"az storage account encryption-scope update --account-name {account.name} --resource-group "
            f"{arm_resource_group(account.id)} --name {scope_name} {options}")


def _account_consumers(context: RuleContext) -> list[ConsumerView]:
    return [consumer for consumer in context.index.consumers if consumer.kind is ConsumerKind.ACCOUNT]


def _from_check(rule: str, consumer: ConsumerView, check: _Check, title: str) -> list[Finding]:
    if check.unevaluable is not None:
        return [not_evaluable(rule, consumer.resource_id, check.unevaluable)]
    if check.failed is None:
        return []
    evidence = {"reason": check.failed.value, "key_uri": consumer.key.configured, **check.evidence}
    return [finding(rule, consumer.resource_id, title, evidence, check.remediation)]


def cmk_006_identity_can_use_key(context: RuleContext) -> list[Finding]:
    return [result for consumer in _account_consumers(context)
            for result in _from_check("CMK-006", consumer, _access(context, consumer),
                                      f"the encryption identity of {consumer.name} cannot get, wrap and unwrap "
                                      "its key")]


def cmk_012_latest_version_adopted(context: RuleContext) -> list[Finding]:
    return [result for consumer in _account_consumers(context)
            for result in _from_check("CMK-012", consumer, _adoption(context, consumer),
                                      f"{consumer.name} has not adopted the latest key version")]


def cmk_008_vault_in_account_region(context: RuleContext) -> list[Finding]:
    findings = []
    for consumer in context.index.consumers:
        if consumer.key.ref is None:
            findings.append(not_evaluable("CMK-008", consumer.resource_id, Unevaluable(
                Reason.KEY_URI_INVALID, consumer.key.error, extra={"key_uri": consumer.key.configured})))
            continue
        lookup = context.index.lookup(consumer.key.ref)
        if lookup.vault is None:
            if lookup.status is KeyStatus.NOT_EVALUABLE:
                findings.append(not_evaluable("CMK-008", consumer.resource_id,
                                              lookup_not_evaluable(lookup)))
            continue
        vault = lookup.vault
        if region(vault.location) == region(consumer.account.location):
            continue
        findings.append(finding(
            "CMK-008", consumer.resource_id,
            f"{consumer.name} is in {consumer.account.location} but its key's vault {vault.name} is in "
            f"{vault.location}",
            {"reason": Reason.REGION_MISMATCH.value, "account_location": consumer.account.location,
             "vault_location": vault.location, "vault": vault.id},
            f"an outage of {vault.location} takes the data offline: create a vault in {consumer.account.location} "
            f"(az keyvault create --location {region(consumer.account.location)} --enable-purge-protection true), "
            "create the key there and point the consumer at it, or accept the cross-region dependency"))
    return findings


def cmk_011_versionless_key(context: RuleContext) -> list[Finding]:
    findings = []
    for consumer in context.index.consumers:
        ref = consumer.key.ref
        if ref is None or ref.version is None:
            continue  # an unparseable key URI is CMK-008's and CMK-012's CMK-000
        findings.append(finding(
            "CMK-011", consumer.resource_id, f"{consumer.name} pins key version {ref.version}",
            {"reason": Reason.PINNED_VERSION.value, "key_uri": consumer.key.configured, "key_version": ref.version},
            _set_key_command(consumer, ref.versionless.uri) + " (versionless: automatic version updates)"))
    return findings


def cmk_014_queue_and_table_covered(context: RuleContext) -> list[Finding]:
    findings = []
    for account in context.estate.storage_accounts:
        if not account.encryption.uses_key_vault:
            continue
        queue = account.encryption.queue_key_type or "Service"
        table = account.encryption.table_key_type or "Service"
        uncovered = tuple(name for name, key_type in (("queue", queue), ("table", table))
                          if not same_name(key_type, "Account"))
        if not uncovered:
            continue
        findings.append(finding(
            "CMK-014", account.id, f"the {' and '.join(uncovered)} service of {account.name} is not covered by the CMK",
            {"reason": Reason.SERVICE_KEY_FOR_QUEUE_OR_TABLE.value, "services.queue.keyType": queue,
             "services.table.keyType": table, "uncovered": uncovered},
            "keyType is fixed at creation: create a new account with --encryption-key-type-for-queue Account "
            "--encryption-key-type-for-table Account and move the queue and table data to it"))
    return findings


def cmk_015_geo_redundant_advisory(context: RuleContext) -> list[Finding]:
    findings = []
    for account in context.estate.storage_accounts:
        sku = account.sku.lower()
        if not account.encryption.uses_key_vault or not any(kind in sku for kind in _GEO_REDUNDANT_SKUS):
            continue
        findings.append(finding(
            "CMK-015", account.id, f"{account.name} is geo-redundant ({account.sku}): failover needs the key",
            {"reason": Reason.GEO_REDUNDANT.value, "sku": account.sku, "location": account.location},
            "keep the key available to the secondary region: back it up (az keyvault key backup --vault-name <vault> "
            "--name <key> --file <key>.backup), keep purge protection on, and test failover with the key reachable"))
    return findings


def cmk_019_encryption_scopes(context: RuleContext) -> list[Finding]:
    findings: list[Finding] = []
    consumers = {consumer.resource_id: consumer for consumer in context.index.consumers
                 if consumer.kind is ConsumerKind.SCOPE}
    for account in context.estate.storage_accounts:
        if account.encryption_scopes is None:
            findings.append(not_evaluable("CMK-019", account.id, not_read(
                context.estate, account.id, ReadAspect.ENCRYPTION_SCOPES,
                f"the encryption scopes of {account.name} were not read")))
            continue
        required = requires_cmk(account, context.settings)
        for scope in account.encryption_scopes:
            consumer = consumers.get(scope.id)
            if consumer is None and not required:
                continue
            checks: dict[str, _Check] = {}
            if required and consumer is None:
                checks["source"] = _Check(Reason.SCOPE_SOURCE_NOT_KEY_VAULT, {"source": scope.source}, _scope_command(
                    account, scope.name, "--key-source Microsoft.KeyVault --key-uri https://<vault>.vault.azure.net/keys/<key>"))
            if not same_name(scope.state, "Enabled"):
                checks["state"] = _Check(Reason.SCOPE_DISABLED, {"state": scope.state},
                                         _scope_command(account, scope.name, "--state Enabled"))
            if consumer is not None:
                checks["adoption"] = _adoption(context, consumer)
                checks["identity-access"] = _access(context, consumer)
            findings.extend(_scope_findings(account, scope.id, scope.name, checks))
    return findings


def _scope_findings(account: StorageAccount, scope_id: str, scope_name: str,
                    checks: Mapping[str, _Check]) -> list[Finding]:
    failed = {name: check for name, check in checks.items() if check.failed is not None}
    results = []
    for name, check in checks.items():
        if check.unevaluable is not None:
            cause = check.unevaluable
            results.append(not_evaluable("CMK-019", scope_id, Unevaluable(
                cause.reason, f"{name}: {cause.detail}", cause.failure, cause.extra, cause.aspect)))
    if failed:
        evidence: dict[str, object] = {
            "failed_checks": tuple(failed),
            "reasons": tuple(check.failed.value for check in failed.values() if check.failed is not None)}
        for name, check in failed.items():
            evidence[name] = dict(check.evidence)
        results.append(finding(
            "CMK-019", scope_id, f"encryption scope {account.name}/{scope_name} fails {', '.join(failed)}",
            evidence, "; ".join(check.remediation for check in failed.values())))
    return results

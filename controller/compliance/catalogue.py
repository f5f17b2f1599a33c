"""The rule catalogue's ids, short names and default severities (design RULES.md), for the reports.

Reports name every rule of the catalogue (SARIF's ``tool.driver.rules``, the HTML filter's choices),
including the rules that found nothing in this run, so a reader sees what was checked.
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.model import Severity


@dataclass(frozen=True, slots=True)
class RuleInfo:
    id: str
    name: str  # PascalCase, SARIF's reportingDescriptor.name
    summary: str  # one line: what fails
    default_severity: Severity


RULE_CATALOGUE: tuple[RuleInfo, ...] = (
    RuleInfo("CMK-000", "NotEvaluable", "A rule could not be evaluated: the controller could not read what it needs",
             Severity.HIGH),
    RuleInfo("CMK-001", "AccountWithoutCmk", "Storage account does not use a customer-managed key", Severity.HIGH),
    RuleInfo("CMK-002", "EncryptionIdentityUnresolved", "The account's encryption identity does not resolve",
             Severity.CRITICAL),
    RuleInfo("CMK-003", "VaultSoftDelete", "Vault soft delete is off or its retention is outside 7-90 days",
             Severity.HIGH),
    RuleInfo("CMK-004", "VaultPurgeProtection", "Vault purge protection is off", Severity.HIGH),
    RuleInfo("CMK-005", "UnsupportedKeyType", "Key is not RSA/RSA-HSM of an allowed size", Severity.CRITICAL),
    RuleInfo("CMK-006", "IdentityLacksKeyPermissions",
             "The encryption identity lacks get, wrapKey or unwrapKey on the key", Severity.CRITICAL),
    RuleInfo("CMK-007", "VaultFirewallBlocksStorage",
             "Vault firewall denies by default without bypassing AzureServices", Severity.CRITICAL),
    RuleInfo("CMK-008", "VaultInOtherRegion", "Vault region differs from the account's region", Severity.MEDIUM),
    RuleInfo("CMK-009", "KeyVersionUnusable",
             "Key version in use is disabled, expired, not yet valid, or expires within 30 days", Severity.CRITICAL),
    RuleInfo("CMK-010", "NoRotationPolicy", "Key has no rotation policy rotating within 90 days", Severity.MEDIUM),
    RuleInfo("CMK-011", "PinnedKeyVersion", "Account pins a key version (automatic updates off)", Severity.LOW),
    RuleInfo("CMK-012", "LatestVersionNotAdopted", "Account has not adopted the latest enabled key version",
             Severity.HIGH),
    RuleInfo("CMK-013", "KeyDeleted", "Key or vault is soft-deleted, purged or missing", Severity.CRITICAL),
    RuleInfo("CMK-014", "QueueTableNotCovered", "Queue or table service is not covered by the CMK", Severity.INFO),
    RuleInfo("CMK-015", "GeoRedundantWithCmk", "Geo-redundant account: failover depends on the key's availability",
             Severity.MEDIUM),
    RuleInfo("CMK-016", "VaultAuditLogsOff", "Vault sends no AuditEvent logs anywhere", Severity.MEDIUM),
    RuleInfo("CMK-017", "FailedWrapUnwrap", "Audit logs show failed KeyWrap/KeyUnwrap calls", Severity.CRITICAL),
    RuleInfo("CMK-018", "BlobsOnOldKeyVersion",
             "Client-side-encrypted blobs still wrapped by an old key version past the re-wrap window",
             Severity.MEDIUM),
    RuleInfo("CMK-019", "EncryptionScopeNonCompliant", "An encryption scope fails the account-level checks",
             Severity.HIGH),
    RuleInfo("CMK-020", "KeySharedAcrossBoundaries",
             "One key protects accounts across tenants/subscriptions or too many accounts", Severity.INFO),
)

RULES_BY_ID: dict[str, RuleInfo] = {rule.id: rule for rule in RULE_CATALOGUE}

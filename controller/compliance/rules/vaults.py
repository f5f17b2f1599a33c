"""Rules about Key Vaults: CMK-003, 004, 007, 016, 017. Every vault of the estate is evaluated (the
gatherer decides which vaults are in scope: the managed ones and those consumers use)."""

from __future__ import annotations

from collections.abc import Iterable

from controller.audit import FailureClass
from controller.compliance.estate import (
    AuditFailureGroup,
    DiagnosticSetting,
    ReadAspect,
    Vault,
    same_arm_id,
    same_name,
)
from controller.compliance.findings import Finding
from controller.compliance.rules.context import (
    RuleContext,
    Unevaluable,
    az_names,
    finding,
    iso,
    not_evaluable,
    not_read,
)
from controller.reasons import Reason

#: The soft-delete retention Key Vault accepts, in days.
RETENTION_DAYS = range(7, 91)
#: Retention when ARM does not report it (the service default).
DEFAULT_RETENTION_DAYS = 90
#: The audited key operations Azure Storage performs with a CMK.
STORAGE_KEY_OPERATIONS = ("KeyWrap", "KeyUnwrap")
AUDIT_LOGS_RESOURCE = "audit-logs"

_AUDIT_CATEGORY = "AuditEvent"
_AUDIT_GROUPS = ("audit", "allLogs")

_FAILURE_REMEDIATION = {
    FailureClass.PERMISSION: "grant the caller Key Vault Crypto Service Encryption User on the key (CMK-006)",
    FailureClass.FIREWALL: "let trusted Azure services bypass the vault firewall (CMK-007)",
    FailureClass.KEY_DISABLED: "enable the key version or rotate the key and adopt it (CMK-009)",
    FailureClass.KEY_EXPIRED: "rotate the key and adopt the new version; an expired version cannot wrap (CMK-009)",
    FailureClass.KEY_DELETED: "recover the deleted key: az keyvault key recover (CMK-013)",
    FailureClass.THROTTLED: "reduce the request rate (consumers per key, CMK-020) or spread keys over vaults",
    FailureClass.OTHER: "look up the failed requests in the vault's AuditEvent logs",
}


def cmk_003_soft_delete(context: RuleContext) -> list[Finding]:
    findings = []
    for vault in context.estate.vaults:
        retention = vault.soft_delete_retention_in_days
        effective = DEFAULT_RETENTION_DAYS if retention is None else retention
        if not vault.enable_soft_delete:
            reason = Reason.SOFT_DELETE_OFF
            title = f"vault {vault.name} has soft delete off"
            remediation = (f"az keyvault update {az_names(vault.id)} --enable-soft-delete true "
                           "(properties.enableSoftDelete: true, softDeleteRetentionInDays 7-90)")
        elif effective not in RETENTION_DAYS:
            reason = Reason.RETENTION_OUT_OF_RANGE
            title = f"vault {vault.name} keeps deleted keys {effective} days, outside 7-90"
            remediation = ("set properties.softDeleteRetentionInDays between 7 and 90 (it is fixed once soft delete "
                           "is on: create a vault with az keyvault create --retention-days 90 and move the keys)")
        else:
            continue
        findings.append(finding("CMK-003", vault.id, title, {
            "reason": reason.value, "enableSoftDelete": vault.enable_soft_delete,
            "softDeleteRetentionInDays": retention}, remediation))
    return findings


def cmk_004_purge_protection(context: RuleContext) -> list[Finding]:
    return [finding("CMK-004", vault.id, f"vault {vault.name} has purge protection off",
                    {"reason": Reason.PURGE_PROTECTION_OFF.value,
                     "enablePurgeProtection": vault.enable_purge_protection},
                    f"az keyvault update {az_names(vault.id)} --enable-purge-protection true (irreversible; Azure "
                    "refuses customer-managed keys from a vault without it)")
            for vault in context.estate.vaults if not vault.enable_purge_protection]


def cmk_007_firewall_lets_storage_in(context: RuleContext) -> list[Finding]:
    findings = []
    for vault in context.estate.vaults:
        acls = vault.network_acls
        if acls is None or not acls.denies_by_default or acls.bypasses_azure_services:
            continue
        findings.append(finding(
            "CMK-007", vault.id, f"the firewall of vault {vault.name} blocks Azure Storage",
            {"reason": Reason.FIREWALL_BLOCKS_STORAGE.value, "networkAcls.defaultAction": acls.default_action,
             "networkAcls.bypass": acls.bypass},
            f"az keyvault update {az_names(vault.id)} --bypass AzureServices"))
    return findings


def _sends_audit_events(setting: DiagnosticSetting) -> bool:
    if setting.destination is None:
        return False
    return any(log.enabled and (same_name(log.category, _AUDIT_CATEGORY)
                                or any(same_name(log.category_group, group) for group in _AUDIT_GROUPS))
               for log in setting.logs)


def cmk_016_audit_diagnostics(context: RuleContext) -> list[Finding]:
    findings = []
    for vault in context.estate.vaults:
        if vault.diagnostic_settings is None:
            findings.append(not_evaluable("CMK-016", vault.id, not_read(
                context.estate, vault.id, ReadAspect.DIAGNOSTIC_SETTINGS,
                f"the diagnostic settings of vault {vault.name} were not read")))
            continue
        if any(_sends_audit_events(setting) for setting in vault.diagnostic_settings):
            continue
        findings.append(finding(
            "CMK-016", vault.id, f"vault {vault.name} sends its AuditEvent logs nowhere",
            {"reason": Reason.NO_AUDIT_DIAGNOSTICS.value,
             "diagnostic_settings": tuple(
                 {"name": setting.name, "destination": setting.destination,
                  "enabled_logs": tuple(log.category or log.category_group for log in setting.logs if log.enabled)}
                 for setting in vault.diagnostic_settings)},
            f"az monitor diagnostic-settings create --name cmk-audit --resource {vault.id} --workspace "
            "<Log Analytics workspace id> --logs '[{\"categoryGroup\":\"audit\",\"enabled\":true}]'"))
    return findings


def cmk_017_failed_key_operations(context: RuleContext) -> list[Finding]:
    audit = context.estate.audit
    if audit is None:
        if context.estate.failures_of(ReadAspect.AUDIT_LOGS):
            return []  # each read failure is already a CMK-000 of its own
        return [not_evaluable("CMK-017", AUDIT_LOGS_RESOURCE, Unevaluable(
            Reason.NOT_READ, "the vaults' audit logs were not gathered (no Log Analytics workspace configured)",
            aspect=ReadAspect.AUDIT_LOGS))]
    groups: dict[str, list[AuditFailureGroup]] = {}
    for group in audit.failures:
        if (group.status_code >= 400 and group.count > 0
                and any(same_name(group.operation, operation) for operation in STORAGE_KEY_OPERATIONS)):
            groups.setdefault(group.vault_id.strip().rstrip("/").lower(), []).append(group)
    findings = []
    for vault_key in sorted(groups):
        failed = sorted(groups[vault_key], key=lambda group: (group.key_name.lower(), group.key_version or "",
                                                              group.caller.lower(), group.operation.lower(),
                                                              group.status_code, group.failure_class.value))
        vault = _vault_by_id(context.estate.vaults, failed[0].vault_id)
        resource = vault.id if vault is not None else failed[0].vault_id
        classes = sorted({group.failure_class for group in failed}, key=lambda cls: list(FailureClass).index(cls))
        total = sum(group.count for group in failed)
        findings.append(finding(
            "CMK-017", resource,
            f"{total} failed key operations on vault {resource.rstrip('/').rsplit('/', 1)[-1]}: "
            + ", ".join(cls.value for cls in classes),
            {"reason": Reason.KEY_OPERATIONS_FAILED.value, "since": iso(audit.since), "until": iso(audit.until),
             "source": audit.source, "failed_operations": total, "classes": tuple(cls.value for cls in classes),
             "groups": tuple(_group_evidence(group) for group in failed)},
            "; ".join(_FAILURE_REMEDIATION[cls] for cls in classes)))
    return findings


def _vault_by_id(vaults: Iterable[Vault], vault_id: str) -> Vault | None:
    return next((vault for vault in vaults if same_arm_id(vault.id, vault_id)), None)


def _group_evidence(group: AuditFailureGroup) -> dict[str, object]:
    return {"key": group.key_name, "version": group.key_version, "caller": group.caller,
            "operation": group.operation, "status_code": group.status_code, "class": group.failure_class.value,
            "count": group.count, "first_seen": iso(group.first_seen), "last_seen": iso(group.last_seen)}


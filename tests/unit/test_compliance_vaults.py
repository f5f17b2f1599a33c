"""Vault rules (CMK-003, 004, 007, 016, 017) on hand-built estates."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from controller.audit import FailureClass
from controller.compliance.estate import (
    AuditFailureGroup,
    AuditLog,
    DiagnosticSetting,
    LogSetting,
    NetworkAcls,
    ReadAspect,
    ReadFailure,
)
from controller.compliance.rules.vaults import (
    cmk_003_soft_delete,
    cmk_004_purge_protection,
    cmk_007_firewall_lets_storage_in,
    cmk_016_audit_diagnostics,
    cmk_017_failed_key_operations,
)
from controller.model import Severity
from tests.unit.estate_builders import (
    KEY_NAME,
    NOW,
    PRINCIPAL,
    V1,
    VAULT_ID,
    WORKSPACE,
    estate,
    not_evaluated,
    only,
    run,
    vault,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("soft_delete", "retention", "reason"), [
    (True, 90, None),
    (True, 7, None),
    (True, None, None),  # not reported: the service default, 90
    (True, 6, "RetentionOutOfRange"),
    (True, 91, "RetentionOutOfRange"),
    (True, 0, "RetentionOutOfRange"),
    (False, 90, "SoftDeleteOff"),
])
def test_cmk_003_soft_delete_on_with_retention_7_to_90(soft_delete: bool, retention: int | None,
                                                       reason: str | None) -> None:
    built = estate(vaults=(vault(enable_soft_delete=soft_delete, soft_delete_retention_in_days=retention),))
    findings = run(cmk_003_soft_delete, built)
    if reason is None:
        assert findings == []
        return
    result = only(findings)
    assert (result.rule, result.severity, result.resource) == ("CMK-003", Severity.HIGH, VAULT_ID)
    assert result.evidence == {"reason": reason, "enableSoftDelete": soft_delete,
                               "softDeleteRetentionInDays": retention}
    expected = "--enable-soft-delete true" if reason == "SoftDeleteOff" else "--retention-days 90"
    assert expected in result.remediation


def test_cmk_004_purge_protection_is_reported_even_though_azure_refuses_cmk_without_it() -> None:
    assert run(cmk_004_purge_protection, estate()) == []
    result = only(run(cmk_004_purge_protection, estate(vaults=(vault(enable_purge_protection=False),))))
    assert (result.rule, result.severity, result.resource) == ("CMK-004", Severity.HIGH, VAULT_ID)
    assert result.evidence == {"reason": "PurgeProtectionOff", "enablePurgeProtection": False}
    assert result.remediation.startswith(
        "az keyvault update --name contoso-cmk --resource-group rg-keys --enable-purge-protection true")


@pytest.mark.parametrize(("acls", "fails"), [
    (None, False),
    (NetworkAcls(default_action="Allow", bypass="None"), False),
    (NetworkAcls(default_action="Deny", bypass="AzureServices"), False),
    (NetworkAcls(default_action="deny", bypass="azureservices"), False),
    (NetworkAcls(default_action="Deny", bypass="Logging, AzureServices"), False),
    (NetworkAcls(default_action="Deny", bypass="None"), True),
    (NetworkAcls(default_action="DENY", bypass=""), True),
])
def test_cmk_007_a_deny_firewall_must_bypass_azure_services(acls: NetworkAcls | None, fails: bool) -> None:
    findings = run(cmk_007_firewall_lets_storage_in, estate(vaults=(vault(network_acls=acls),)))
    if not fails:
        assert findings == []
        return
    result = only(findings)
    assert acls is not None
    assert (result.rule, result.severity, result.resource) == ("CMK-007", Severity.CRITICAL, VAULT_ID)
    assert result.evidence == {"reason": "FirewallBlocksStorage", "networkAcls.defaultAction": acls.default_action,
                               "networkAcls.bypass": acls.bypass}
    assert result.remediation == "az keyvault update --name contoso-cmk --resource-group rg-keys --bypass AzureServices"


def setting(*logs: LogSetting, workspace: str | None = WORKSPACE, storage: str | None = None) -> DiagnosticSetting:
    return DiagnosticSetting(name="diag", logs=logs, workspace_id=workspace, storage_account_id=storage)


@pytest.mark.parametrize(("settings", "fails"), [
    ((setting(LogSetting(enabled=True, category="AuditEvent")),), False),
    ((setting(LogSetting(enabled=True, category="auditevent")),), False),
    ((setting(LogSetting(enabled=True, category_group="allLogs")),), False),
    ((setting(LogSetting(enabled=True, category_group="AUDIT"), workspace=None, storage=WORKSPACE),), False),
    ((), True),
    ((setting(LogSetting(enabled=False, category="AuditEvent")),), True),
    ((setting(LogSetting(enabled=True, category="AzurePolicyEvaluationDetails"),
              LogSetting(enabled=True, category_group="metrics-only")),), True),
    ((setting(LogSetting(enabled=True, category="AuditEvent"), workspace=None),), True),
])
def test_cmk_016_audit_events_must_go_somewhere(settings: tuple[DiagnosticSetting, ...], fails: bool) -> None:
    findings = run(cmk_016_audit_diagnostics, estate(vaults=(vault(diagnostic_settings=settings),)))
    if not fails:
        assert findings == []
        return
    result = only(findings)
    assert (result.rule, result.severity, result.resource) == ("CMK-016", Severity.MEDIUM, VAULT_ID)
    assert result.evidence["reason"] == "NoAuditDiagnostics"
    assert result.evidence["diagnostic_settings"] == tuple(
        {"name": "diag", "destination": item.destination,
         "enabled_logs": tuple(log.category or log.category_group for log in item.logs if log.enabled)}
        for item in settings)
    assert f"--resource {VAULT_ID}" in result.remediation
    assert '"categoryGroup":"audit"' in result.remediation


def test_cmk_016_unread_diagnostic_settings_are_not_evaluable() -> None:
    failure = ReadFailure(resource=VAULT_ID, aspect=ReadAspect.DIAGNOSTIC_SETTINGS, reason="denied", status_code=403)
    result = only(run(cmk_016_audit_diagnostics, estate(vaults=(vault(diagnostic_settings=None),),
                                                         read_failures=(failure,))))
    assert (result.rule, result.resource) == ("CMK-000", VAULT_ID)
    [entry] = not_evaluated(result)
    assert (entry["rule"], entry["status_code"], entry["aspect"]) == ("CMK-016", 403, "diagnostic-settings")


def group(*, operation: str = "KeyUnwrap", status: int = 403, failure_class: FailureClass = FailureClass.PERMISSION,
          count: int = 4, vault_id: str = VAULT_ID, caller: str = PRINCIPAL,
          version: str | None = V1) -> AuditFailureGroup:
    return AuditFailureGroup(vault_id=vault_id, key_name=KEY_NAME, key_version=version, caller=caller,
                             operation=operation, status_code=status, failure_class=failure_class, count=count,
                             first_seen=NOW - timedelta(hours=5), last_seen=NOW - timedelta(hours=1))


def audit(*groups: AuditFailureGroup) -> AuditLog:
    return AuditLog(since=NOW - timedelta(days=1), until=NOW, source="AZKVAuditLogs", failures=groups)


def test_cmk_017_passes_when_the_logs_were_gathered_and_show_no_failure() -> None:
    assert run(cmk_017_failed_key_operations, estate(audit=audit())) == []
    ignored = audit(group(operation="KeyGet"), group(status=200), group(status=399), group(count=0))
    assert run(cmk_017_failed_key_operations, estate(audit=ignored)) == []


def test_cmk_017_groups_failures_by_vault_with_classes_and_evidence() -> None:
    throttled = group(operation="keywrap", status=429, failure_class=FailureClass.THROTTLED, count=10,
                      vault_id=VAULT_ID.upper())
    unversioned = group(status=400, failure_class=FailureClass.OTHER, count=1, version=None)
    built = estate(audit=audit(group(), throttled, group(operation="KeyDelete", status=404, count=7), unversioned))
    result = only(run(cmk_017_failed_key_operations, built))
    assert (result.rule, result.severity, result.resource) == ("CMK-017", Severity.CRITICAL, VAULT_ID)
    assert result.evidence["failed_operations"] == 15
    assert result.evidence["classes"] == ("permission", "throttled", "other")
    assert result.evidence["source"] == "AZKVAuditLogs"
    groups = result.evidence["groups"]
    assert [(entry["operation"], entry["status_code"], entry["count"], entry["version"])  # type: ignore[attr-defined]
            for entry in groups] == [("KeyUnwrap", 400, 1, None), ("KeyUnwrap", 403, 4, V1), ("keywrap", 429, 10, V1)]
    assert groups[1]["caller"] == PRINCIPAL  # type: ignore[index]
    assert groups[1]["first_seen"] == (NOW - timedelta(hours=5)).isoformat()  # type: ignore[index]
    assert "Key Vault Crypto Service Encryption User" in result.remediation
    assert "reduce the request rate" in result.remediation
    assert result.title == "15 failed key operations on vault contoso-cmk: permission, throttled, other"
    assert "look up the failed requests" in result.remediation


def test_cmk_017_a_vault_outside_the_estate_is_reported_under_the_logged_id() -> None:
    other = VAULT_ID.replace("contoso-cmk", "elsewhere")
    result = only(run(cmk_017_failed_key_operations, estate(audit=audit(group(vault_id=other)))))
    assert result.resource == other


def test_cmk_017_logs_not_gathered_are_one_cmk_000() -> None:
    result = only(run(cmk_017_failed_key_operations, estate(audit=None)))
    assert (result.rule, result.severity, result.resource) == ("CMK-000", Severity.HIGH, "audit-logs")
    assert not_evaluated(result)[0]["rule"] == "CMK-017"
    assert "Log Analytics Reader on the workspace, and CMK_LOG_ANALYTICS_WORKSPACE set" in result.remediation
    failed_query = ReadFailure(resource=WORKSPACE, aspect=ReadAspect.AUDIT_LOGS, reason="query timed out")
    assert run(cmk_017_failed_key_operations, estate(audit=None, read_failures=(failed_query,))) == []


def test_cmk_017_each_group_of_failures_is_evidence_an_operator_can_look_up() -> None:
    result = only(run(cmk_017_failed_key_operations, estate(audit=audit(group()))))
    assert result.evidence["groups"] == ({
        "key": KEY_NAME, "version": V1, "caller": PRINCIPAL, "operation": "KeyUnwrap", "status_code": 403,
        "class": "permission", "count": 4, "first_seen": (NOW - timedelta(hours=5)).isoformat(),
        "last_seen": (NOW - timedelta(hours=1)).isoformat()},)


def test_cmk_003_titles_and_remediations_say_what_to_run() -> None:
    off = only(run(cmk_003_soft_delete, estate(vaults=(vault(enable_soft_delete=False),))))
    assert off.title == "vault contoso-cmk has soft delete off"
    assert off.remediation == ("az keyvault update --name contoso-cmk --resource-group rg-keys --enable-soft-delete "
                               "true (properties.enableSoftDelete: true, softDeleteRetentionInDays 7-90)")
    short = only(run(cmk_003_soft_delete, estate(vaults=(vault(soft_delete_retention_in_days=6),))))
    assert short.title == "vault contoso-cmk keeps deleted keys 6 days, outside 7-90"
    assert short.remediation == ("set properties.softDeleteRetentionInDays between 7 and 90 (it is fixed once soft "
                                 "delete is on: create a vault with az keyvault create --retention-days 90 and move "
                                 "the keys)")


def test_cmk_004_and_cmk_007_titles_and_remediations_say_what_to_run() -> None:
    purge = only(run(cmk_004_purge_protection, estate(vaults=(vault(enable_purge_protection=False),))))
    assert purge.title == "vault contoso-cmk has purge protection off"
    assert purge.remediation == ("az keyvault update --name contoso-cmk --resource-group rg-keys "
                                 "--enable-purge-protection true (irreversible; Azure refuses customer-managed keys "
                                 "from a vault without it)")
    open_vault = vault()
    closed = replace(vault(network_acls=NetworkAcls(default_action="Deny", bypass="None")),
                     id=VAULT_ID.replace("contoso-cmk", "closed-kv"), name="closed-kv")
    firewall = only(run(cmk_007_firewall_lets_storage_in, estate(vaults=(open_vault, closed))))
    assert (firewall.resource, firewall.title) == (closed.id, "the firewall of vault closed-kv blocks Azure Storage")
    assert firewall.remediation == "az keyvault update --name closed-kv --resource-group rg-keys --bypass AzureServices"


def test_cmk_003_and_cmk_016_evaluate_every_vault_whatever_the_one_before() -> None:
    second_id = VAULT_ID.replace("contoso-cmk", "second-kv")
    second = vault(name="second-kv", vault_id=second_id, enable_soft_delete=False, diagnostic_settings=())
    assert [result.resource for result in run(cmk_003_soft_delete, estate(vaults=(vault(), second)))] == [second_id]
    unread = vault(diagnostic_settings=None)
    findings = run(cmk_016_audit_diagnostics, estate(vaults=(unread, second)))
    assert [(result.rule, result.resource) for result in findings] == [("CMK-000", VAULT_ID), ("CMK-016", second_id)]
    assert not_evaluated(findings[0])[0]["detail"] == "the diagnostic settings of vault contoso-cmk were not read"
    assert findings[1].title == "vault second-kv sends its AuditEvent logs nowhere"

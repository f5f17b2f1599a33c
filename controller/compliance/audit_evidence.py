"""The audit analysis (controller.audit, ``cmkctl audit``) as the estate's audit evidence for CMK-017 (pure)."""

from __future__ import annotations

from controller import audit
from controller.compliance.estate import AuditFailureGroup, AuditLog

#: The operation a group is reported under: a failed unwrap or wrap is what cuts a consumer off.
_PREFERRED = ("KeyUnwrap", "KeyWrap")


def audit_evidence(report: audit.AuditReport) -> AuditLog:
    """One estate failure group per analysed group (its vault by ARM id when the record logged one)."""
    return AuditLog(since=report.start, until=report.end, source=_source(report), failures=tuple(
        AuditFailureGroup(
            vault_id=group.vault_resource_id or group.vault,
            key_name=group.key,
            key_version=group.version or None,
            caller=group.caller or group.caller_app_id or "unknown",
            operation=next((operation for operation in _PREFERRED if operation in group.operations),
                           group.operations[0] if group.operations else ""),
            status_code=group.status_code,
            failure_class=group.failure_class,
            count=group.count,
            first_seen=group.first_seen,
            last_seen=group.last_seen,
        )
        for group in report.groups
    ))


def _source(report: audit.AuditReport) -> str:
    sources = sorted({source.source for source in report.sources})
    return ", ".join(sources) if sources else "audit logs"

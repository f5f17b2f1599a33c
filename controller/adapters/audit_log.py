"""AuditLog on Log Analytics (azure-monitor-query): the vaults' AuditEvent records, resource-specific
table AZKVAuditLogs first, the legacy AzureDiagnostics table when a vault still sends there."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from azure.core.credentials import TokenCredential
from azure.monitor.query import LogsQueryClient, LogsQueryStatus

from controller.adapters.azure_errors import translated
from controller.compliance.estate import AuditFailureGroup, FailureClass, classify_failure
from controller.compliance.estate import AuditLog as EstateAuditLog
from controller.errors import InvalidKeyId, TransientError
from controller.model import KeyRef
from controller.vault_policy import VaultPolicy

#: How far back a successful unwrap counts as evidence that a version is in use.
LOOKBACK = timedelta(days=30)

# KQL string literals are single-quoted; key URIs never contain quotes (parse_key_id guarantees it).
_QUERY = """
union isfuzzy=true
  (AZKVAuditLogs
   | where OperationName == 'KeyUnwrap' and HttpStatusCode < 400 and Id startswith '{prefix}'
   | project TimeGenerated, KeyId = Id),
  (AzureDiagnostics
   | where ResourceProvider == 'MICROSOFT.KEYVAULT' and Category == 'AuditEvent'
   | where OperationName == 'KeyUnwrap' and httpStatusCode_d < 400 and id_s startswith '{prefix}'
   | project TimeGenerated, KeyId = id_s)
| summarize LastUnwrap = max(TimeGenerated) by KeyId
"""


# Failed wrap/unwrap calls of every vault, grouped: CMK-017's evidence (estate.AuditLog).
_FAILURES_QUERY = """
union isfuzzy=true
  (AZKVAuditLogs
   | where OperationName in ('KeyWrap', 'KeyUnwrap') and HttpStatusCode >= 400
   | project TimeGenerated, VaultId = _ResourceId, KeyId = Id, Caller = CallerIpAddress, OperationName,
             Status = HttpStatusCode, ResultSignature, ResultDescription),
  (AzureDiagnostics
   | where ResourceProvider == 'MICROSOFT.KEYVAULT' and Category == 'AuditEvent'
   | where OperationName in ('KeyWrap', 'KeyUnwrap') and httpStatusCode_d >= 400
   | project TimeGenerated, VaultId = _ResourceId, KeyId = id_s, Caller = CallerIPAddress, OperationName,
             Status = toint(httpStatusCode_d), ResultSignature, ResultDescription)
| summarize Failures = count(), FirstSeen = min(TimeGenerated), LastSeen = max(TimeGenerated)
    by VaultId, KeyId, Caller, OperationName, Status, ResultSignature, ResultDescription
"""
#: The window CMK-017 looks back over.
FAILURE_LOOKBACK = timedelta(days=1)


class NoAuditLog:
    """No workspace is configured (CMK_LOG_ANALYTICS_WORKSPACE empty): there is no usage evidence."""

    def last_successful_unwraps(self, key: KeyRef) -> Mapping[str, datetime] | None:
        return None


class LogAnalyticsAuditLog:
    def __init__(self, credential: TokenCredential, *, workspace_id: str, endpoint: str,
                 policy: VaultPolicy) -> None:
        self._client = LogsQueryClient(credential, endpoint=endpoint.rstrip("/") + "/v1")
        self._workspace = workspace_id
        self._policy = policy

    def last_successful_unwraps(self, key: KeyRef) -> Mapping[str, datetime] | None:
        prefix = key.versionless.uri + "/"
        with translated(f"query the audit logs of {key.versionless.uri}"):
            result = self._client.query_workspace(self._workspace, _QUERY.format(prefix=prefix), timespan=LOOKBACK)
        if result.status is not LogsQueryStatus.SUCCESS:
            # A partial answer could miss the one unwrap that matters: not evidence of disuse.
            raise TransientError(f"the audit log query for {key.versionless.uri} returned a partial result")
        latest: dict[str, datetime] = {}
        for table in result.tables:
            for row in table.rows:
                key_id, when = str(row[0]), row[1]
                version = self._policy.parse_key_id(key_id).version
                if version and isinstance(when, datetime) and (version not in latest or when > latest[version]):
                    latest[version] = when
        return latest

    def failed_key_operations(self, now: datetime) -> EstateAuditLog:
        """Failed KeyWrap/KeyUnwrap of the last FAILURE_LOOKBACK, grouped and classified (CMK-017)."""
        since = now - FAILURE_LOOKBACK
        with translated("query the audit logs for failed key operations"):
            result = self._client.query_workspace(self._workspace, _FAILURES_QUERY, timespan=(since, now))
        if result.status is not LogsQueryStatus.SUCCESS:
            raise TransientError("the audit log query for failed key operations returned a partial result")
        groups: dict[tuple[str, str, str | None, str, str, int, FailureClass], list[tuple[int, datetime, datetime]]]
        groups = {}
        for table in result.tables:
            for vault_id, key_id, caller, operation, status, signature, description, count, first, last in table.rows:
                try:
                    key = self._policy.parse_key_id(str(key_id))
                except InvalidKeyId:
                    continue  # a call on something that is not a key of a managed vault
                code = int(status)
                failure = classify_failure(code, str(signature or ""), str(description or ""))
                identity = (str(vault_id), key.name, key.version, str(caller or "unknown"), str(operation), code,
                            failure)
                groups.setdefault(identity, []).append((int(count), first, last))
        return EstateAuditLog(since=since, until=now, source="Log Analytics", failures=tuple(
            AuditFailureGroup(vault_id=vault_id, key_name=key_name, key_version=version, caller=caller,
                              operation=operation, status_code=code, failure_class=failure,
                              count=sum(count for count, _, _ in seen), first_seen=min(first for _, first, _ in seen),
                              last_seen=max(last for _, _, last in seen))
            for (vault_id, key_name, version, caller, operation, code, failure), seen in sorted(
                groups.items(), key=lambda item: tuple(str(part) for part in item[0]))))

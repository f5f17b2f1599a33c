"""AuditLog on Log Analytics (azure-monitor-query): the vaults' AuditEvent records, resource-specific
table AZKVAuditLogs first, the legacy AzureDiagnostics table when a vault still sends there."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from azure.core.credentials import TokenCredential
from azure.monitor.query import LogsQueryClient, LogsQueryStatus

from controller.adapters.azure_errors import translated
from controller.errors import TransientError
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

"""AuditLog on Log Analytics (azure-monitor-query): the vaults' AuditEvent records, resource-specific
table AZKVAuditLogs first, the legacy AzureDiagnostics table when a vault still sends there; and on a
storage-account archive of the same records (``insights-logs-auditevent``, hourly PT1H.json blobs).

Failed wraps and unwraps (``failures``), and each key's latest KeyDelete / KeyPurge / KeyRecover (the
report's ``key_operations``), are aggregated where the records are: in KQL on Log Analytics (the rows
returned grow with the groups and keys, not the records), while streaming on the archive.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta

from azure.core.credentials import TokenCredential
from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError
from azure.monitor.query import LogsQueryClient, LogsQueryPartialResult, LogsQueryStatus, LogsTable
from azure.storage.blob import ContainerClient

from controller import audit
from controller.adapters.azure_errors import translated
from controller.errors import TransientError
from controller.model import KeyRef, VaultOrigin, VaultResourceId
from controller.vault_policy import VaultPolicy

#: Principal (object) id -> the storage accounts that authenticate as it (Inventory.identity_principals).
Principals = Callable[[], Mapping[str, Sequence[str]]]

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

    def failures(self, vaults: Sequence[str], *, start: datetime, end: datetime) -> audit.AuditReport | None:
        return None


class LogAnalyticsAuditLog:
    def __init__(self, credential: TokenCredential, *, workspace_id: str, endpoint: str,
                 policy: VaultPolicy, principals: Principals | None = None,
                 **client_options: object) -> None:
        self._client = LogsQueryClient(credential, endpoint=endpoint.rstrip("/") + "/v1", **client_options)
        self._workspace = workspace_id
        self._policy = policy
        self._principals = principals

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

    def failures(self, vaults: Sequence[str], *, start: datetime, end: datetime) -> audit.AuditReport:
        """Failed KeyWrap/KeyUnwrap/KeyGet of ``vaults`` in [start, end] and their keys' latest deletion or
        recovery, from the table that holds each vault's logs. A partial answer is reported as such
        (``partial``), with the rows it did return."""
        problems: list[str] = []
        found = audit.sources_from_rows(self._query(audit.detection_query(vaults), start, end, problems))
        candidates = audit.groups_from_rows(self._query(audit.failure_query(vaults), start, end, problems))
        # A partial detection may miss a vault whose failures did come back: its groups say where it logs.
        detected = {source.vault for source in found}
        chosen = audit.choose_sources([*found, *(audit.VaultSource(g.vault, g.source, g.count) for g in candidates
                                                 if g.vault not in detected)])
        groups = [group for group in candidates
                  if (source := chosen.get(group.vault)) is not None and source.source == group.source]
        operations = [op for op in audit.key_operations_from_rows(
                          self._query(audit.deletion_query(vaults), start, end, problems))
                      if (source := chosen.get(op.vault)) is not None and source.source == op.source]
        if self._principals is not None:
            groups = audit.attribute_storage_accounts(groups, self._principals())
        return audit.report_of(start, end, groups, sources=chosen.values(), managed_vaults=vaults,
                               partial_detail="; ".join(problems) if problems else None,
                               key_operations=operations)

    def _query(self, kql: str, start: datetime, end: datetime, problems: list[str]) -> list[dict[str, object]]:
        with translated("query the Key Vault audit logs"):
            result = self._client.query_workspace(self._workspace, kql, timespan=(start, end))
        tables: Iterable[LogsTable]
        if isinstance(result, LogsQueryPartialResult):
            error = result.partial_error
            inner = [str(detail.get("innererror", {}).get("message") or detail.get("message") or "")
                     for detail in getattr(error, "details", None) or [] if isinstance(detail, Mapping)]
            problems.append(": ".join(part for part in (getattr(error, "code", "") or "PartialError",
                                                         getattr(error, "message", "") or "", *inner) if part))
            tables = result.partial_data or []
        else:
            tables = result.tables
        return [dict(zip(table.columns, row, strict=False)) for table in tables for row in table.rows]


class ArchiveAuditLog:
    """The vaults' AuditEvent records archived to a storage account by their diagnostic setting.

    Azure Monitor appends them to one blob per vault and hour, ``resourceId=<VAULT ARM ID>/y=/m=/d=/h=/m=00/
    PT1H.json``, one JSON record per line (the older layout wraps them in ``{"records": [...]}``). The
    blobs of the window are listed per day and read in chunks; the aggregation keeps one accumulator per
    group. ``container`` builds the archive's container client when first needed; ``vault_ids`` maps the
    managed vaults to their ARM ids (Inventory.list_vaults): a vault it does not know has no archive
    path, and is reported as a vault without logs.
    """

    def __init__(self, container: Callable[[], ContainerClient], *,
                 vault_ids: Callable[[], Mapping[VaultOrigin, VaultResourceId]],
                 principals: Principals | None = None) -> None:
        self._container_factory = container  # resolving the account's endpoint is I/O: not at start-up
        self._client: ContainerClient | None = None
        self._vault_ids = vault_ids
        self._principals = principals

    @property
    def _container(self) -> ContainerClient:
        if self._client is None:
            self._client = self._container_factory()
        return self._client

    def last_successful_unwraps(self, key: KeyRef) -> Mapping[str, datetime] | None:
        return None  # usage evidence comes from the workspace only

    def failures(self, vaults: Sequence[str], *, start: datetime, end: datetime) -> audit.AuditReport:
        aggregator = audit.FailureAggregator(vaults, start, end)
        problems: list[str] = []
        known = {origin.url: resource_id for origin, resource_id in self._vault_ids().items()}
        for vault in vaults:
            resource_id = known.get(vault)
            if resource_id is not None:
                for name in self._blobs_of(resource_id.id, start, end):
                    self._read(name, aggregator, problems)
        if aggregator.unreadable:
            problems.append(f"{aggregator.unreadable} archived record(s) could not be parsed")
        groups = aggregator.groups()
        if self._principals is not None:
            groups = audit.attribute_storage_accounts(groups, self._principals())
        return audit.report_of(start, end, groups, sources=aggregator.sources(), managed_vaults=vaults,
                               partial_detail="; ".join(problems) if problems else None,
                               key_operations=aggregator.key_operations())

    def _blobs_of(self, vault_resource_id: str, start: datetime, end: datetime) -> Iterator[str]:
        wanted = {audit.archive_prefix(vault_resource_id, hour) for hour in audit.archive_hours(start, end)}
        days = dict.fromkeys(name.rsplit("/h=", 1)[0] + "/" for name in sorted(wanted))
        for day in days:
            with translated(f"list the audit archive under {day}"):
                names = [blob.name for blob in self._container.list_blobs(name_starts_with=day)]
            yield from (name for name in names if name in wanted)

    def _read(self, name: str, aggregator: audit.FailureAggregator, problems: list[str]) -> None:
        try:
            chunks = self._container.download_blob(name).chunks()
            for record in audit.archived_records(chunks):
                aggregator.add_record(record)
        except (HttpResponseError, ServiceRequestError, ServiceResponseError) as err:
            # One unreadable hour must not hide the others: the report says what is missing.
            problems.append(f"{name}: {type(err).__name__} {getattr(err, 'status_code', '') or ''}".rstrip())


class WorkspaceThenArchive:
    """The workspace for the vaults that send their logs there; the archive for the ones that do not."""

    def __init__(self, workspace: LogAnalyticsAuditLog, archive: ArchiveAuditLog) -> None:
        self._workspace = workspace
        self._archive = archive

    def last_successful_unwraps(self, key: KeyRef) -> Mapping[str, datetime] | None:
        return self._workspace.last_successful_unwraps(key)

    def failures(self, vaults: Sequence[str], *, start: datetime, end: datetime) -> audit.AuditReport:
        primary = self._workspace.failures(vaults, start=start, end=end)
        if not primary.vaults_without_logs:
            return primary
        fallback = self._archive.failures(primary.vaults_without_logs, start=start, end=end)
        return audit.merge_reports(primary, fallback)

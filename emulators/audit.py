"""Where Key Vault AuditEvent records go: the diagnostic-log archive and the Log Analytics tables.

Subscribes to the sandbox bus (``SandboxBus.on_audit``); the Key Vault emulator publishes one record
per request, in the resource-log shape Azure writes. As in Azure, a vault's records are kept only
where its diagnostic settings send them (``set_routes``; the ARM emulator's Microsoft.Insights
diagnostic settings call it, emulators/arm/insights.py): a vault without one logs nowhere.

1. Archive to a storage account (``DiagnosticRoute.archive_account``): the account's container
   ``insights-logs-auditevent`` (in Azurite, ``<account>-insights-logs-auditevent``: the layout the
   ARM emulator's blob endpoints serve, emulators/arm/blobproxy.py), one append blob per vault and hour
   at ``resourceId=/SUBSCRIPTIONS/{SUB}/RESOURCEGROUPS/{RG}/PROVIDERS/MICROSOFT.KEYVAULT/VAULTS/{NAME}/
   y=YYYY/m=MM/d=DD/h=HH/m=00/PT1H.json``, one JSON record per line. Records are batched and appended
   by a background thread every ``flush_interval_seconds``, on ``flush()`` and on ``stop()``; a failed
   append is retried at the next flush.
2. Rows of the sandbox's Log Analytics workspace (``DiagnosticRoute.workspace`` names its ARM id,
   ``workspace_resource_id``): ``AZKVAuditLogs`` when the setting's ``logAnalyticsDestinationType`` is
   ``Dedicated``, the legacy ``AzureDiagnostics`` otherwise, each a typed column list
   (``TABLE_COLUMNS``) kept column by column (``emulators.kql.RowLog``) for the Log Analytics query
   emulator. Values are Python values by column type: datetime (aware, UTC), string/guid (str),
   int/long (int), real (float), bool (bool), dynamic (dict or list); missing values are None. A
   setting naming another workspace sends its rows to a workspace the sandbox does not host: dropped.

``publish`` (the bus callback) never blocks on I/O and never raises into the publisher. Every record
is counted per caller whatever the routes (``records_by_caller``: the sandbox's request counters).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import AzureError, ResourceExistsError
from azure.storage.blob import BlobServiceClient

from emulators.bus import AuditRecord, SandboxBus
from emulators.kql import RowLog

logger = logging.getLogger(__name__)

ARCHIVE_CONTAINER = "insights-logs-auditevent"
AZURE_DIAGNOSTICS = "AzureDiagnostics"
AZKV_AUDIT_LOGS = "AZKVAuditLogs"
DEDICATED = "Dedicated"  # logAnalyticsDestinationType of a resource-specific diagnostic setting
SANDBOX_WORKSPACE_ID = "5a9d4e2c-0000-4000-8000-00000000a0d1"
#: The sandbox workspace's ARM id, as a diagnostic setting's ``workspaceId`` names it.
SANDBOX_WORKSPACE_RESOURCE_ID = (
    "/subscriptions/5a9d0000-0000-4000-8000-00000000c0de/resourceGroups/rg-cmk-controller"
    "/providers/Microsoft.OperationalInsights/workspaces/log-cmk-controller"
)
_MAX_APPEND_BYTES = 4 * 1024 * 1024  # one append block
_VAULT_ID = re.compile(
    r"^/subscriptions/(?P<subscription>[^/]+)/resourcegroups/(?P<group>[^/]+)"
    r"/providers/microsoft\.keyvault/vaults/(?P<vault>[^/]+)/?$",
    re.IGNORECASE,
)
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_OBJECT_ID_CLAIM = "http://schemas.microsoft.com/identity/claims/objectidentifier"


class AuditError(ValueError):
    """A record or resource id the sink cannot place."""


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str  # Log Analytics type: datetime, string, guid, int, long, real, bool, dynamic


def _columns(spec: str) -> tuple[Column, ...]:
    return tuple(Column(*item.split(":")) for item in spec.split())


AZURE_DIAGNOSTICS_COLUMNS = _columns(
    """TenantId:string TimeGenerated:datetime ResourceId:string Category:string ResourceGroup:string
    SubscriptionId:string ResourceProvider:string Resource:string ResourceType:string
    OperationName:string OperationVersion:string ResultType:string ResultSignature:string
    ResultDescription:string DurationMs:long CallerIPAddress:string CorrelationId:string
    id_s:string requestUri_s:string httpStatusCode_d:real clientInfo_s:string
    isRbacAuthorized_b:bool isAccessPolicyMatch_b:bool trustedService_s:string
    identity_claim_oid_g:guid identity_claim_appid_g:guid identity_claim_upn_s:string
    identity_claim_http_schemas_microsoft_com_identity_claims_objectidentifier_g:guid
    SourceSystem:string Type:string _ResourceId:string"""
)
AZKV_AUDIT_LOGS_COLUMNS = _columns(
    """TenantId:string TimeGenerated:datetime _ResourceId:string OperationName:string
    OperationVersion:string Category:string ResultType:string ResultSignature:string
    ResultDescription:string DurationMs:long CallerIpAddress:string CorrelationId:string
    Identity:dynamic HttpStatusCode:int Id:string RequestUri:string ClientInfo:string
    IsRbacAuthorized:bool IsAccessPolicyMatch:bool TrustedService:string Properties:dynamic
    SourceSystem:string Type:string"""
)
TABLE_COLUMNS: dict[str, tuple[Column, ...]] = {
    AZURE_DIAGNOSTICS: AZURE_DIAGNOSTICS_COLUMNS,
    AZKV_AUDIT_LOGS: AZKV_AUDIT_LOGS_COLUMNS,
}


@dataclass(frozen=True, slots=True)
class VaultId:
    subscription_id: str
    resource_group: str
    name: str

    @classmethod
    def parse(cls, resource_id: str) -> VaultId:
        match = _VAULT_ID.match(resource_id or "")
        if match is None:
            raise AuditError(f"not a Key Vault resource id: {resource_id!r}")
        return cls(match["subscription"], match["group"], match["vault"])

    @property
    def resource_id(self) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.KeyVault/vaults/{self.name}"
        )

    @property
    def key(self) -> str:
        return self.resource_id.lower()


@dataclass(frozen=True, slots=True)
class DiagnosticRoute:
    """Where one diagnostic setting of a vault sends its AuditEvent records.

    ``workspace``: the ARM id of the Log Analytics workspace (None: none); ``dedicated``: to its
    AZKVAuditLogs table (logAnalyticsDestinationType Dedicated), else to AzureDiagnostics;
    ``archive_account``: the storage account name whose insights-logs-auditevent container gets them.
    """

    workspace: str | None = None
    dedicated: bool = False
    archive_account: str | None = None


def record_time(record: AuditRecord) -> datetime:
    raw = record.get("time")
    if not isinstance(raw, str):
        raise AuditError(f"audit record without a time: {raw!r}")
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError as err:
        raise AuditError(f"audit record time {raw!r} is not ISO 8601") from err
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def archive_blob_name(vault: VaultId, moment: datetime) -> str:
    """The hourly PT1H.json blob Azure Monitor appends a vault's AuditEvent records to."""
    utc = moment.astimezone(UTC)
    return (
        f"resourceId=/SUBSCRIPTIONS/{vault.subscription_id.upper()}/RESOURCEGROUPS/{vault.resource_group.upper()}"
        f"/PROVIDERS/MICROSOFT.KEYVAULT/VAULTS/{vault.name.upper()}"
        f"/y={utc:%Y}/m={utc:%m}/d={utc:%d}/h={utc:%H}/m=00/PT1H.json"
    )


def azure_diagnostics_row(record: AuditRecord, *, workspace_id: str = SANDBOX_WORKSPACE_ID) -> dict[str, Any]:
    vault = VaultId.parse(str(record.get("resourceId", "")))
    properties = _dict(record.get("properties"))
    claims = _dict(_dict(record.get("identity")).get("claim"))
    object_id = claims.get(_OBJECT_ID_CLAIM, claims.get("oid"))
    return {
        "TenantId": workspace_id,
        "TimeGenerated": record_time(record),
        "ResourceId": vault.resource_id.upper(),
        "Category": record.get("category", "AuditEvent"),
        "ResourceGroup": vault.resource_group.upper(),
        "SubscriptionId": vault.subscription_id.upper(),
        "ResourceProvider": "MICROSOFT.KEYVAULT",
        "Resource": vault.name.upper(),
        "ResourceType": "VAULTS",
        "OperationName": _str(record.get("operationName")),
        "OperationVersion": _str(record.get("operationVersion")),
        "ResultType": _str(record.get("resultType")),
        "ResultSignature": _str(record.get("resultSignature")),
        "ResultDescription": _str(record.get("resultDescription")),
        "DurationMs": _int(record.get("durationMs")),
        "CallerIPAddress": _str(record.get("callerIpAddress")),
        "CorrelationId": _str(record.get("correlationId")),
        "id_s": _str(properties.get("id")),
        "requestUri_s": _str(properties.get("requestUri")),
        "httpStatusCode_d": _float(properties.get("httpStatusCode")),
        "clientInfo_s": _str(properties.get("clientInfo")),
        "isRbacAuthorized_b": _bool(properties.get("isRbacAuthorized")),
        "isAccessPolicyMatch_b": _bool(properties.get("isAccessPolicyMatch")),
        "trustedService_s": _str(properties.get("trustedService")),
        "identity_claim_oid_g": _guid(object_id),
        "identity_claim_appid_g": _guid(claims.get("appid")),
        "identity_claim_upn_s": _str(claims.get("upn")),
        "identity_claim_http_schemas_microsoft_com_identity_claims_objectidentifier_g": _guid(object_id),
        "SourceSystem": "Azure",
        "Type": AZURE_DIAGNOSTICS,
        "_ResourceId": vault.key,
    }


def azkv_audit_logs_row(record: AuditRecord, *, workspace_id: str = SANDBOX_WORKSPACE_ID) -> dict[str, Any]:
    vault = VaultId.parse(str(record.get("resourceId", "")))
    properties = _dict(record.get("properties"))
    return {
        "TenantId": workspace_id,
        "TimeGenerated": record_time(record),
        "_ResourceId": vault.key,
        "OperationName": _str(record.get("operationName")),
        "OperationVersion": _str(record.get("operationVersion")),
        "Category": record.get("category", "AuditEvent"),
        "ResultType": _str(record.get("resultType")),
        "ResultSignature": _str(record.get("resultSignature")),
        "ResultDescription": _str(record.get("resultDescription")),
        "DurationMs": _int(record.get("durationMs")),
        "CallerIpAddress": _str(record.get("callerIpAddress")),
        "CorrelationId": _str(record.get("correlationId")),
        "Identity": copy.deepcopy(record.get("identity")),
        "HttpStatusCode": _int(properties.get("httpStatusCode")),
        "Id": _str(properties.get("id")),
        "RequestUri": _str(properties.get("requestUri")),
        "ClientInfo": _str(properties.get("clientInfo")),
        "IsRbacAuthorized": _bool(properties.get("isRbacAuthorized")),
        "IsAccessPolicyMatch": _bool(properties.get("isAccessPolicyMatch")),
        "TrustedService": _str(properties.get("trustedService")),
        "Properties": copy.deepcopy(properties) or None,
        "SourceSystem": "Azure",
        "Type": AZKV_AUDIT_LOGS,
    }


class AuditSink:
    """Diagnostic settings of the sandbox's vaults and the places their audit records land.

    Without ``connection_string`` nothing is archived (rows are still kept). The sink hosts one
    workspace: ``workspace_id`` (its GUID, what queries name) at ``workspace_resource_id``.
    """

    def __init__(
        self,
        bus: SandboxBus | None = None,
        *,
        connection_string: str | None = None,
        workspace_id: str = SANDBOX_WORKSPACE_ID,
        workspace_resource_id: str = SANDBOX_WORKSPACE_RESOURCE_ID,
        flush_interval_seconds: float = 1.0,
    ) -> None:
        self._connection_string = connection_string
        self.workspace_id = workspace_id
        self.workspace_resource_id = workspace_resource_id
        self._flush_interval = flush_interval_seconds
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._routes: dict[str, tuple[DiagnosticRoute, ...]] = {}
        self._logs: dict[str, RowLog] = {name: RowLog(columns) for name, columns in TABLE_COLUMNS.items()}
        self._pending: list[tuple[str, str, str]] = []  # (container, blob name, JSON line), in arrival order
        self._created: set[tuple[str, str]] = set()  # containers ("", name) and blobs (container, name) made
        self._service: BlobServiceClient | None = None
        self._stopping = threading.Event()
        self._flusher: threading.Thread | None = None
        self._by_caller: dict[str, int] = {}
        self.rejected = 0
        self.archived = 0
        if bus is not None:
            self.attach(bus)

    # -- lifecycle -------------------------------------------------------------------------------

    def attach(self, bus: SandboxBus) -> None:
        bus.on_audit(self.publish)

    def start(self) -> AuditSink:
        if self._flusher is not None:
            return self
        if self._connection_string:
            self._service = BlobServiceClient.from_connection_string(self._connection_string)
        self._stopping.clear()
        self._flusher = threading.Thread(target=self._flush_periodically, name="audit-archive", daemon=True)
        self._flusher.start()
        return self

    def stop(self) -> None:
        flusher, self._flusher = self._flusher, None
        self._stopping.set()
        if flusher is not None:
            flusher.join(timeout=30)
        self.flush()
        if self._service is not None:
            self._service.close()
            self._service = None

    def __enter__(self) -> AuditSink:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- diagnostic settings ---------------------------------------------------------------------

    def set_routes(self, vault_resource_id: str, routes: Iterable[DiagnosticRoute]) -> tuple[DiagnosticRoute, ...]:
        """The vault's diagnostic settings now (one route per setting that sends AuditEvent); none: nowhere."""
        vault = VaultId.parse(vault_resource_id)
        chosen = tuple(route for route in routes if route.workspace or route.archive_account)
        with self._lock:
            if chosen:
                self._routes[vault.key] = chosen
            else:
                self._routes.pop(vault.key, None)
        return chosen

    def routes(self, vault_resource_id: str) -> tuple[DiagnosticRoute, ...]:
        vault = VaultId.parse(vault_resource_id)
        with self._lock:
            return self._routes.get(vault.key, ())

    def archive_container(self, account: str) -> str:
        """The Azurite container behind ``account``'s insights-logs-auditevent (emulators/arm/blobproxy.py)."""
        return f"{account.lower()}-{ARCHIVE_CONTAINER}"

    # -- records ---------------------------------------------------------------------------------

    def publish(self, record: AuditRecord) -> None:
        """The bus callback: keep the record as the vault's diagnostic settings say. Never raises."""
        try:
            self._accept(record)
        except Exception as err:  # a bad record must not fail the Key Vault request that logged it
            with self._lock:
                self.rejected += 1
            logger.warning("audit record rejected: %s", err)

    def log(self, table: str) -> RowLog:
        """The workspace table's rows (what the Log Analytics emulator queries)."""
        if table not in TABLE_COLUMNS:
            raise AuditError(f"no table {table!r}: {sorted(TABLE_COLUMNS)}")
        return self._logs[table]

    def rows(self, table: str) -> list[dict[str, Any]]:
        """Copies of the table's rows, in ingestion order."""
        return copy.deepcopy(self.log(table).rows())

    @staticmethod
    def columns(table: str) -> tuple[Column, ...]:
        if table not in TABLE_COLUMNS:
            raise AuditError(f"no table {table!r}: {sorted(TABLE_COLUMNS)}")
        return TABLE_COLUMNS[table]

    def records_by_caller(self, *, reset: bool = False) -> dict[str, int]:
        """Records published per caller object id ("azure": Key Vault's own), whatever the routes."""
        with self._lock:
            counts = dict(self._by_caller)
            if reset:
                self._by_caller.clear()
        return counts

    def flush(self) -> None:
        """Append every pending record to its archive blob now."""
        with self._flush_lock:
            service = self._service
            if service is None:  # not started: records wait for start()
                return
            with self._lock:
                pending, self._pending = self._pending, []
            if not pending:
                return
            by_blob: OrderedDict[tuple[str, str], list[str]] = OrderedDict()
            for container, blob_name, line in pending:
                by_blob.setdefault((container, blob_name), []).append(line)
            failed: list[tuple[str, str, str]] = []
            for (container, blob_name), lines in by_blob.items():
                try:
                    self._append(service, container, blob_name, lines)
                except AzureError as err:
                    logger.warning("audit archive append to %s/%s failed (retried at next flush): %s",
                                   container, blob_name, err)
                    failed.extend((container, blob_name, line) for line in lines)
                else:
                    with self._lock:
                        self.archived += len(lines)
            if failed:
                with self._lock:
                    self._pending[:0] = failed

    # -- internals -------------------------------------------------------------------------------

    def _accept(self, record: AuditRecord) -> None:
        vault = VaultId.parse(str(record.get("resourceId", "")))
        moment = record_time(record)
        claim = _dict(_dict(record.get("identity")).get("claim"))
        caller = str(claim.get("oid") or claim.get(_OBJECT_ID_CLAIM) or "azure")
        routes = self.routes(vault.resource_id)
        tables = {AZKV_AUDIT_LOGS if route.dedicated else AZURE_DIAGNOSTICS for route in routes
                  if route.workspace and route.workspace.lower() == self.workspace_resource_id.lower()}
        new_rows = [(table, (azkv_audit_logs_row if table == AZKV_AUDIT_LOGS else azure_diagnostics_row)(
            record, workspace_id=self.workspace_id)) for table in sorted(tables)]
        accounts = sorted({route.archive_account.lower() for route in routes if route.archive_account})
        line = json.dumps(record, separators=(",", ":"), default=str) if accounts else ""
        with self._lock:
            self._by_caller[caller] = self._by_caller.get(caller, 0) + 1
            if self._connection_string and not self._stopping.is_set():
                blob = archive_blob_name(vault, moment)
                self._pending.extend((self.archive_container(account), blob, line) for account in accounts)
        for table, row in new_rows:
            self._logs[table].append(row)

    def _append(self, service: BlobServiceClient, container_name: str, blob_name: str, lines: list[str]) -> None:
        container = service.get_container_client(container_name)
        if ("", container_name) not in self._created:
            with contextlib.suppress(ResourceExistsError):  # another sink (or an earlier run) created it
                container.create_container()
            self._created.add(("", container_name))
        blob = container.get_blob_client(blob_name)
        if (container_name, blob_name) not in self._created:
            with contextlib.suppress(ResourceExistsError):  # an earlier flush (or sink) created it
                blob.create_append_blob(match_condition=MatchConditions.IfMissing)
            self._created.add((container_name, blob_name))
        chunk: list[bytes] = []
        size = 0
        for line in lines:
            encoded = (line + "\n").encode()
            if chunk and size + len(encoded) > _MAX_APPEND_BYTES:
                blob.append_block(b"".join(chunk))
                chunk, size = [], 0
            chunk.append(encoded)
            size += len(encoded)
        if chunk:
            blob.append_block(b"".join(chunk))

    def _flush_periodically(self) -> None:
        while not self._stopping.wait(self._flush_interval):
            try:
                self.flush()
            except Exception:  # keep archiving; the next flush retries
                logger.exception("audit archive flush failed")


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: object) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value) if isinstance(value, dict | list) else str(value)


def _int(value: object) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return int(float(value)) if isinstance(value, str | int | float) else None
    except ValueError:
        return None


def _float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _bool(value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return None


def _guid(value: object) -> str | None:
    return value.lower() if isinstance(value, str) and _GUID.match(value) else None

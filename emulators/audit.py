"""Where Key Vault AuditEvent records go: the diagnostic-log archive and the Log Analytics tables.

Subscribes to the sandbox bus (``SandboxBus.on_audit``); the Key Vault emulator publishes one record
per request, in the resource-log shape Azure writes. A vault's records are kept only when the vault
has a diagnostic setting (``enable_diagnostics``; the sandbox default is on), the two ways Azure
keeps them:

1. Archive to a storage account (Azurite): container ``insights-logs-auditevent``, one append blob
   per vault and hour at ``resourceId=/SUBSCRIPTIONS/{SUB}/RESOURCEGROUPS/{RG}/PROVIDERS/
   MICROSOFT.KEYVAULT/VAULTS/{NAME}/y=YYYY/m=MM/d=DD/h=HH/m=00/PT1H.json``, one JSON record per line.
   Records are batched and appended by a background thread every ``flush_interval_seconds``, on
   ``flush()`` and on ``stop()``; a failed append is retried at the next flush.
2. Rows of a Log Analytics workspace, in memory: the legacy ``AzureDiagnostics`` table and the
   resource-specific ``AZKVAuditLogs`` table, each with a typed column list (``TABLE_COLUMNS``) for
   the Log Analytics query emulator. Values are Python values by column type: datetime (aware, UTC),
   string/guid (str), int/long (int), real (float), bool (bool), dynamic (dict or list); missing
   values are None.

``publish`` (the bus callback) never blocks on I/O and never raises into the publisher.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import AzureError, ResourceExistsError
from azure.storage.blob import BlobServiceClient, ContainerClient

from emulators.bus import AuditRecord, SandboxBus

logger = logging.getLogger(__name__)

ARCHIVE_CONTAINER = "insights-logs-auditevent"
AZURE_DIAGNOSTICS = "AzureDiagnostics"
AZKV_AUDIT_LOGS = "AZKVAuditLogs"
DEDICATED = "Dedicated"  # logAnalyticsDestinationType of a resource-specific diagnostic setting
SANDBOX_WORKSPACE_ID = "5a9d4e2c-0000-4000-8000-00000000a0d1"
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
class DiagnosticSetting:
    """A vault's diagnostic setting for the AuditEvent category.

    ``destination_type``: None sends workspace rows to both tables (sandbox convenience);
    ``"AzureDiagnostics"`` to the legacy table only; ``"Dedicated"`` to AZKVAuditLogs only.
    """

    vault_resource_id: str
    archive: bool = True
    workspace: bool = True
    destination_type: str | None = None


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
    """Diagnostic settings of the sandbox's vaults and the two places their audit records land.

    Without ``connection_string`` nothing is archived (rows are still kept). ``diagnostics_by_default``
    treats a vault with no explicit setting as archiving to storage and sending to the workspace.
    """

    def __init__(
        self,
        bus: SandboxBus | None = None,
        *,
        connection_string: str | None = None,
        container: str = ARCHIVE_CONTAINER,
        workspace_id: str = SANDBOX_WORKSPACE_ID,
        diagnostics_by_default: bool = True,
        flush_interval_seconds: float = 1.0,
    ) -> None:
        self._connection_string = connection_string
        self._container_name = container
        self.workspace_id = workspace_id
        self._diagnostics_by_default = diagnostics_by_default
        self._flush_interval = flush_interval_seconds
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._settings: dict[str, DiagnosticSetting] = {}
        self._rows: dict[str, list[dict[str, Any]]] = {name: [] for name in TABLE_COLUMNS}
        self._pending: list[tuple[str, str]] = []  # (blob name, JSON line), in arrival order
        self._created_blobs: set[str] = set()
        self._container: ContainerClient | None = None
        self._stopping = threading.Event()
        self._flusher: threading.Thread | None = None
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
            service = BlobServiceClient.from_connection_string(self._connection_string)
            container = service.get_container_client(self._container_name)
            with contextlib.suppress(ResourceExistsError):  # another sink (or an earlier run) created it
                container.create_container()
            self._container = container
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
        if self._container is not None:
            self._container.close()
            self._container = None

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

    def enable_diagnostics(
        self,
        vault_resource_id: str,
        *,
        archive: bool = True,
        workspace: bool = True,
        destination_type: str | None = None,
    ) -> DiagnosticSetting:
        if destination_type not in (None, AZURE_DIAGNOSTICS, DEDICATED):
            raise AuditError(f"destination type {destination_type!r}: None, AzureDiagnostics or Dedicated")
        vault = VaultId.parse(vault_resource_id)
        setting = DiagnosticSetting(vault.resource_id, archive, workspace, destination_type)
        with self._lock:
            self._settings[vault.key] = setting
        return setting

    def disable_diagnostics(self, vault_resource_id: str) -> None:
        self.enable_diagnostics(vault_resource_id, archive=False, workspace=False)

    def diagnostic_setting(self, vault_resource_id: str) -> DiagnosticSetting | None:
        """The vault's effective setting (None: its records are not kept anywhere)."""
        vault = VaultId.parse(vault_resource_id)
        with self._lock:
            setting = self._settings.get(vault.key)
        if setting is None and self._diagnostics_by_default:
            setting = DiagnosticSetting(vault.resource_id)
        if setting is None or not (setting.archive or setting.workspace):
            return None
        return setting

    # -- records ---------------------------------------------------------------------------------

    def publish(self, record: AuditRecord) -> None:
        """The bus callback: keep the record as the vault's diagnostic setting says. Never raises."""
        try:
            self._accept(record)
        except Exception as err:  # a bad record must not fail the Key Vault request that logged it
            with self._lock:
                self.rejected += 1
            logger.warning("audit record rejected: %s", err)

    def rows(self, table: str) -> list[dict[str, Any]]:
        """Copies of the table's rows, in ingestion order."""
        if table not in TABLE_COLUMNS:
            raise AuditError(f"no table {table!r}: {sorted(TABLE_COLUMNS)}")
        with self._lock:
            return copy.deepcopy(self._rows[table])

    @staticmethod
    def columns(table: str) -> tuple[Column, ...]:
        if table not in TABLE_COLUMNS:
            raise AuditError(f"no table {table!r}: {sorted(TABLE_COLUMNS)}")
        return TABLE_COLUMNS[table]

    def flush(self) -> None:
        """Append every pending record to its archive blob now."""
        with self._flush_lock:
            container = self._container
            if container is None:  # not started: records wait for start()
                return
            with self._lock:
                pending, self._pending = self._pending, []
            if not pending:
                return
            by_blob: OrderedDict[str, list[str]] = OrderedDict()
            for blob_name, line in pending:
                by_blob.setdefault(blob_name, []).append(line)
            failed: list[tuple[str, str]] = []
            for blob_name, lines in by_blob.items():
                try:
                    self._append(container, blob_name, lines)
                except AzureError as err:
                    logger.warning("audit archive append to %s failed (retried at next flush): %s", blob_name, err)
                    failed.extend((blob_name, line) for line in lines)
                else:
                    with self._lock:
                        self.archived += len(lines)
            if failed:
                with self._lock:
                    self._pending[:0] = failed

    # -- internals -------------------------------------------------------------------------------

    def _accept(self, record: AuditRecord) -> None:
        vault = VaultId.parse(str(record.get("resourceId", "")))
        setting = self.diagnostic_setting(vault.resource_id)
        if setting is None:
            return
        moment = record_time(record)
        line = json.dumps(record, separators=(",", ":"), default=str) if setting.archive else None
        new_rows: list[tuple[str, dict[str, Any]]] = []
        if setting.workspace:
            if setting.destination_type in (None, AZURE_DIAGNOSTICS):
                new_rows.append((AZURE_DIAGNOSTICS, azure_diagnostics_row(record, workspace_id=self.workspace_id)))
            if setting.destination_type in (None, DEDICATED):
                new_rows.append((AZKV_AUDIT_LOGS, azkv_audit_logs_row(record, workspace_id=self.workspace_id)))
        with self._lock:
            for table, row in new_rows:
                self._rows[table].append(row)
            if line is not None and self._connection_string and not self._stopping.is_set():
                self._pending.append((archive_blob_name(vault, moment), line))

    def _append(self, container: ContainerClient, blob_name: str, lines: list[str]) -> None:
        blob = container.get_blob_client(blob_name)
        if blob_name not in self._created_blobs:
            with contextlib.suppress(ResourceExistsError):  # an earlier flush (or sink) created it
                blob.create_append_blob(match_condition=MatchConditions.IfMissing)
            self._created_blobs.add(blob_name)
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

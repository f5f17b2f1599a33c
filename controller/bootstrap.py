"""Composition root: builds the real adapters from settings once per process; tests override it.

Credentials are managed identity only. The app's own storage (event ledger, rotation ledger, work
queue) is reached the way the Functions host reaches it: identity-based AzureWebJobsStorage__*
settings in Azure (__accountName or __tableServiceUri/__queueServiceUri, __credential=managedidentity,
__clientId); a connection string only for the local storage emulator, where there is no identity.
Everything else (Key Vault, ARM, Resource Graph) uses the controller's managed identity; in the local
sandbox that identity is served by the sandbox's managed-identity endpoint, so the code path is the same.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from azure.core.credentials import TokenCredential
from azure.data.tables import TableClient
from azure.identity import ManagedIdentityCredential
from azure.storage.blob import BlobServiceClient, ContainerClient
from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

from controller import reconciler, rotation
from controller.adapters.alert_channels import EventGridTopicChannel, WebhookChannel
from controller.adapters.alert_ledger import TableAlertLedger
from controller.adapters.audit_checkpoint import TableAuditCheckpoint
from controller.adapters.audit_log import ArchiveAuditLog, LogAnalyticsAuditLog, NoAuditLog, WorkspaceThenArchive
from controller.adapters.blob_store import AzureBlobStore
from controller.adapters.credentials import ArmConnection, controller_credential
from controller.adapters.estate_gatherer import EstateGatherer
from controller.adapters.http_transport import pooled_transport
from controller.adapters.inventory import BlobEndpoints, ConsumerDirectory, Inventory
from controller.adapters.key_vault import KeyVaults
from controller.adapters.key_vault_crypto import VaultClients
from controller.adapters.report_store import BlobReportStore
from controller.adapters.rewrap_backend import AzureRewrapBackend, emulator_blob_services, token_blob_services
from controller.adapters.rewrap_checkpoint import TableRewrapCheckpoint
from controller.adapters.rewrap_jobs import TableRewrapJobLedger
from controller.adapters.rotation_ledger import TableRotationLedger
from controller.adapters.storage_control import StorageControl
from controller.adapters.table_ledger import TableEventLedger
from controller.adapters.work_queue import StorageWorkQueue, work_queue_client
from controller.alert_desk import AlertDesk
from controller.alerts import ChannelKind, ChannelRoute
from controller.errors import SettingsError
from controller.model import VaultOrigin
from controller.ports import AlertChannel, AuditLog, Clock
from controller.rewrap.work import MAX_CONCURRENCY
from controller.service import Dependencies
from controller.settings import Settings, load_settings

_lock = threading.Lock()
_dependencies: Dependencies | None = None
#: Connections to the app's tables kept open per table client: CMK_WRITE_CONCURRENCY's maximum.
LEDGER_CONNECTIONS = 64


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


def dependencies() -> Dependencies:
    """The process-wide dependencies, built on first use from the environment."""
    global _dependencies  # noqa: PLW0603 - one composition root per worker process
    with _lock:
        if _dependencies is None:
            _dependencies = build(os.environ)
        return _dependencies


def override(deps: Dependencies | None) -> None:
    """Replace the process-wide dependencies (tests, the local sandbox); None rebuilds on next use."""
    global _dependencies  # noqa: PLW0603
    with _lock:
        _dependencies = deps


def build(
    environ: Mapping[str, str],
    *,
    credential: TokenCredential | None = None,
    blob_endpoint: str | None = None,
    blob_connection_setting: str | None = None,
) -> Dependencies:
    """The app's dependencies.

    The operator CLI replaces the managed identity with its ``credential`` and may say how the customer
    accounts' blob data is reached: one ``blob_endpoint`` for the account it works on, or the local
    emulator's connection string in the environment variable ``blob_connection_setting`` (Azurite
    serves one account). By default the endpoint is the one the inventory reports for each account.
    """
    settings = load_settings(environ)
    policy = settings.vault_policy
    clock = SystemClock()
    credential = credential or controller_credential(environ)
    storage = AppStorage.from_environ(environ, credential=credential)
    queue = StorageWorkQueue(storage.queue(settings.work_queue))
    arm = ArmConnection(credential, endpoint=settings.arm_endpoint)
    control = StorageControl(arm, policy=policy)
    inventory = Inventory(arm, control, subscriptions=settings.subscriptions, policy=policy)
    notifier = _notifier(settings, storage.table(settings.ledger_table), clock, credential)
    reconcile = reconciler.ReconcileDeps(
        keys=KeyVaults(credential),
        inventory=ConsumerDirectory(inventory, arm),
        control=control,
        ledger=TableRotationLedger(storage.table(settings.ledger_table)),
        queue=queue,
        notifier=notifier,
        clock=clock,
        planner=rotation.PlannerSettings.from_settings(settings),
        limits=reconciler.ExecutionLimits(
            concurrency=settings.write_concurrency,
            time_budget=timedelta(seconds=settings.reconcile_time_budget_seconds),
            owner=f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
            claim_for=timedelta(seconds=settings.claim_lease_seconds),
        ),
    )
    if blob_connection_setting:
        blob_services = emulator_blob_services(_local_connection_string(environ, blob_connection_setting))
    else:
        endpoint = (lambda _account: blob_endpoint) if blob_endpoint else BlobEndpoints(inventory)
        blob_services = token_blob_services(credential, endpoint=endpoint)
    rewrap = AzureRewrapBackend(
        vault_clients=VaultClients(credential, policy=policy, transport=pooled_transport(MAX_CONCURRENCY)),
        blob_service=blob_services,
        checkpoint=TableRewrapCheckpoint(storage.table(settings.ledger_table)),
    )
    audit = _audit_log(settings, credential, inventory, blob_services)
    gatherer = EstateGatherer(
        arm,
        key_vault_credential=credential,
        policy=policy,
        custom_origins=[origin for origin in settings.vaults if VaultOrigin(origin).name is None],
        registered_containers=settings.rewrap_targets,
        blob_stores=lambda account: AzureBlobStore(blob_services(account, 8)),
    )
    return Dependencies(
        settings=settings,
        clock=clock,
        ledger=TableEventLedger(storage.table(settings.ledger_table)),
        notifier=notifier,
        work_queue=queue,
        rewrap=rewrap,
        rewrap_jobs=TableRewrapJobLedger(storage.table(settings.ledger_table), clock=clock),
        reconcile=reconcile,
        blob_stores=lambda account: AzureBlobStore(blob_services(account, 8)),
        audit=audit,
        audit_checkpoint=TableAuditCheckpoint(storage.table(settings.ledger_table)),
        estate=gatherer,
        reports=BlobReportStore(storage.container(settings.report_container)),
        rewrap_page_lease_seconds=float(settings.claim_lease_seconds),
    )


def _audit_log(settings: Settings, credential: TokenCredential, inventory: Inventory,
               blob_services: Callable[[str, int], BlobServiceClient]) -> AuditLog:
    """The workspace, the archive, both (the archive for the vaults the workspace has no logs of), or none."""
    workspace = (
        LogAnalyticsAuditLog(credential, workspace_id=settings.log_analytics_workspace,
                             endpoint=settings.log_analytics_endpoint, policy=settings.vault_policy,
                             principals=inventory.identity_principals)
        if settings.log_analytics_workspace else None
    )
    archive = None
    if (location := settings.audit_archive) is not None:
        def container() -> ContainerClient:
            return blob_services(location.account, 4).get_container_client(location.container)

        archive = ArchiveAuditLog(container, vault_ids=inventory.list_vaults, principals=inventory.identity_principals)
    if workspace is not None and archive is not None:
        return WorkspaceThenArchive(workspace, archive)
    return workspace or archive or NoAuditLog()


def _notifier(settings: Settings, ledger_table: TableClient, clock: Clock,
              credential: TokenCredential) -> AlertDesk:
    """Every alert goes to the log; each configured channel gets those at or above its minimum severity."""
    configured = (
        (ChannelKind.WEBHOOK, settings.alert_webhook_url, settings.alert_webhook_min_severity),
        (ChannelKind.TEAMS, settings.teams_webhook_url, settings.teams_min_severity),
        (ChannelKind.SLACK, settings.slack_webhook_url, settings.slack_min_severity),
    )
    channels: dict[ChannelKind, tuple[ChannelRoute, AlertChannel]] = {
        kind: (ChannelRoute(kind, minimum), WebhookChannel(kind, url)) for kind, url, minimum in configured if url
    }
    if settings.alert_eventgrid_topic:
        channels[ChannelKind.EVENT_GRID] = (
            ChannelRoute(ChannelKind.EVENT_GRID, settings.alert_eventgrid_min_severity),
            EventGridTopicChannel(settings.alert_eventgrid_topic, credential),
        )
    return AlertDesk(TableAlertLedger(ledger_table), channels, clock,
                     realert_after=timedelta(hours=settings.realert_after_hours))


@dataclass(frozen=True, slots=True)
class AppStorage:
    """The function app's own storage account, as the Functions host is configured to reach it."""

    connection_string: str | None
    table_endpoint: str | None
    queue_endpoint: str | None
    credential: TokenCredential | None
    blob_endpoint: str | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], *, credential: TokenCredential | None = None) -> AppStorage:
        if environ.get("AzureWebJobsStorage", "").strip():
            return cls(_local_connection_string(environ, "AzureWebJobsStorage"), None, None, None)
        account = environ.get("AzureWebJobsStorage__accountName", "").strip()
        table = environ.get("AzureWebJobsStorage__tableServiceUri", "").strip() or (
            f"https://{account}.table.core.windows.net" if account else "")
        queue = environ.get("AzureWebJobsStorage__queueServiceUri", "").strip() or (
            f"https://{account}.queue.core.windows.net" if account else "")
        blob = environ.get("AzureWebJobsStorage__blobServiceUri", "").strip() or (
            f"https://{account}.blob.core.windows.net" if account else "")
        if not table or not queue:
            raise SettingsError(
                "AzureWebJobsStorage",
                "is not configured: set AzureWebJobsStorage__accountName (identity-based) or, locally, "
                "the emulator's connection string",
            )
        client_id = environ.get("AzureWebJobsStorage__clientId") or None
        return cls(None, table, queue, credential or ManagedIdentityCredential(client_id=client_id), blob or None)

    def table(self, name: str) -> TableClient:
        # The ledger is written by every writer of a reconcile at once (a claim and intents per consumer).
        transport = pooled_transport(LEDGER_CONNECTIONS)
        if self.connection_string:
            return TableClient.from_connection_string(self.connection_string, table_name=name, transport=transport)
        assert self.table_endpoint is not None and self.credential is not None  # noqa: S101 - from_environ
        return TableClient(self.table_endpoint, table_name=name, credential=self.credential, transport=transport)

    def container(self, name: str) -> ContainerClient:
        if self.connection_string:
            return BlobServiceClient.from_connection_string(self.connection_string).get_container_client(name)
        if self.blob_endpoint is None or self.credential is None:
            raise SettingsError("AzureWebJobsStorage", "names no blob service: set AzureWebJobsStorage__accountName "
                                "or AzureWebJobsStorage__blobServiceUri")
        return ContainerClient(self.blob_endpoint, name, credential=self.credential)

    def queue(self, name: str) -> QueueClient:
        if self.connection_string:
            return work_queue_client(self.connection_string, name)
        assert self.queue_endpoint is not None and self.credential is not None  # noqa: S101 - from_environ
        return QueueClient(self.queue_endpoint, name, credential=self.credential,
                           message_encode_policy=TextBase64EncodePolicy(),
                           message_decode_policy=TextBase64DecodePolicy())


def _local_connection_string(environ: Mapping[str, str], setting: str) -> str:
    """The connection string in ``setting``: a shared key is accepted for the local emulator only."""
    connection = environ.get(setting, "").strip()
    if not connection:
        raise SettingsError(setting, "is empty")
    lowered = connection.lower()
    local = "usedevelopmentstorage=true" in lowered or "devstoreaccount1" in lowered or "127.0.0.1" in lowered
    if "accountkey=" in lowered and not local:
        raise SettingsError(
            setting,
            "a shared-key connection string is only accepted for the local emulator; in Azure the "
            "storage is reached with the identity (AzureWebJobsStorage__* settings, Entra ID)",
        )
    return connection

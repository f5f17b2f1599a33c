"""Key deletion from the audit logs against the sandbox: a key that a storage account uses is deleted through
the unmodified azure-keyvault-keys SDK, the audit timer (service.scheduled_audit) finds the KeyDelete in the
vault's AZKVAuditLogs through the unmodified LogsQueryClient and alerts, critical, naming the account; the
recovery resolves it. The vault logs there because a diagnostic setting (azure-mgmt-monitor) says so: a vault
without one has no rows, and the analysis says its logs are not collected; one naming a storage account
archives the records in its insights-logs-auditevent container, where the archive reader finds the deletion.
Checkpoint and alerts live in a ledger table in Azurite."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import timedelta

import pytest
from azure.data.tables import TableClient
from azure.mgmt.monitor import MonitorManagementClient
from azure.mgmt.monitor.models import DiagnosticSettingsResource, LogSettings
from azure.storage.blob import BlobServiceClient

from controller import service
from controller.adapters.alert_ledger import TableAlertLedger
from controller.adapters.audit_checkpoint import TableAuditCheckpoint
from controller.adapters.audit_log import ArchiveAuditLog, LogAnalyticsAuditLog
from controller.adapters.inventory import ConsumerDirectory, Inventory
from controller.adapters.storage_control import StorageControl
from controller.alert_desk import AlertDesk
from controller.alerts import ChannelKind, ChannelRoute, Transition
from controller.model import Severity, parse_vault_resource_id
from controller.settings import load_settings
from emulators.audit import AZKV_AUDIT_LOGS, AZURE_DIAGNOSTICS, AuditSink
from emulators.azurite import Azurite
from emulators.kql import audit_tables
from emulators.query_endpoints import LogAnalyticsEmulator
from tests.integration.adapter_world import RG, STORAGE_KEY_PERMISSIONS, SUB_A, World, running_arm
from tests.unit.fakes import FakeChannel, fake_dependencies, fake_reconcile_deps

pytestmark = pytest.mark.integration

WORKSPACE = f"/subscriptions/{SUB_A}/resourceGroups/{RG}/providers/Microsoft.OperationalInsights/workspaces/logs"


@dataclass
class Sandbox:
    world: World
    sink: AuditSink
    logs: LogAnalyticsEmulator
    azurite: Azurite

    def new_ledger(self) -> TableClient:
        return TableClient.from_connection_string(self.azurite.connection_string,
                                                  table_name=f"audit{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory, azurite: Azurite) -> Iterator[Sandbox]:
    """One emulated ARM for the module (each test has vaults and a ledger table of its own)."""
    with running_arm(tmp_path_factory.mktemp("audit-deletion")) as (arm, faults), pytest.MonkeyPatch.context() as patch:
        sink = AuditSink(arm.bus, connection_string=azurite.connection_string, workspace_resource_id=WORKSPACE,
                         flush_interval_seconds=3600).start()  # flushed by the test that reads the archive
        arm.audit = sink
        with LogAnalyticsEmulator(arm.ca, tables=audit_tables(sink), workspace_id=sink.workspace_id,
                                  clock=arm.clock) as logs:
            patch.setenv("REQUESTS_CA_BUNDLE", arm.ca_path)  # LogsQueryClient trusts the sandbox CA
            yield Sandbox(World(arm, faults), sink, logs, azurite)
        sink.stop()


def audited_vault_with_key_in_use(world: World, vault: str) -> str:
    """A vault whose diagnostic setting sends AuditEvent to the workspace, and a key an account encrypts with."""
    world.create_vault(vault)
    MonitorManagementClient(world.cred, SUB_A, **world.mgmt_kwargs()).diagnostic_settings.create_or_update(
        world.vaults[vault].id, "audit-to-workspace",
        DiagnosticSettingsResource(workspace_id=WORKSPACE, log_analytics_destination_type="Dedicated",
                                   logs=[LogSettings(category_group="audit", enabled=True)]))
    world.key_client(vault).create_rsa_key("cmk", size=2048)
    world.create_identity(f"id-{vault}")
    world.grant_policy(vault, world.identities[f"id-{vault}"].principal_id, STORAGE_KEY_PERMISSIONS)
    account = world.create_account(uai=f"id-{vault}")
    world.enable_cmk(account, vault, "cmk", uai=f"id-{vault}")
    return str(account.name)


def audit_timer(box: Sandbox, vaults: list[str], ledger: TableClient) -> tuple[service.Dependencies, FakeChannel]:
    """The audit timer's dependencies: the real adapters, its checkpoint and alerts in ``ledger``."""
    world = box.world
    origins = ",".join(world.origin(vault).url for vault in vaults)
    settings = load_settings({"CMK_VAULTS": origins, "CMK_SUBSCRIPTIONS": SUB_A,
                              "CMK_LOG_ANALYTICS_WORKSPACE": box.sink.workspace_id})
    inventory = Inventory(world.connection(), StorageControl(world.connection(), policy=world.policy),
                          subscriptions=(SUB_A,), policy=world.policy)
    channel = FakeChannel()
    desk = AlertDesk(TableAlertLedger(ledger), {ChannelKind.WEBHOOK: (ChannelRoute(ChannelKind.WEBHOOK), channel)},
                     world.arm.clock, realert_after=timedelta(hours=24))
    audit = LogAnalyticsAuditLog(world.cred, workspace_id=box.sink.workspace_id, endpoint=box.logs.endpoint,
                                 policy=world.policy, principals=inventory.identity_principals)
    reconcile = replace(fake_reconcile_deps(clock=world.arm.clock, notifier=desk),
                        inventory=ConsumerDirectory(inventory, world.connection()))
    deps = fake_dependencies(settings, clock=world.arm.clock, notifier=desk, audit=audit, reconcile=reconcile,
                             audit_checkpoint=TableAuditCheckpoint(ledger))
    return deps, channel


def test_a_deleted_key_in_use_is_found_in_the_audit_logs_alerted_and_resolved_by_its_recovery(
        sandbox: Sandbox) -> None:
    world = sandbox.world
    account = audited_vault_with_key_in_use(world, "kv-deleted")
    ledger = sandbox.new_ledger()
    deps, channel = audit_timer(sandbox, ["kv-deleted"], ledger)
    assert service.scheduled_audit(deps).missing_keys == ()  # the first scan: nothing deleted yet
    keys = world.key_client("kv-deleted")

    keys.begin_delete_key("cmk").wait()  # the SDK's poller polls until the deletion completes
    world.arm.keyvault.advance_clock(timedelta(minutes=15))
    deleted = service.scheduled_audit(deps)

    key_id = f"{world.origin('kv-deleted').url}/keys/cmk"
    assert (deleted.outcome, deleted.missing_keys) == (service.AuditScanOutcome.SCANNED, (key_id,))
    (row,) = [row for row in sandbox.sink.rows(AZKV_AUDIT_LOGS) if row["OperationName"] == "KeyDelete"
              and row["_ResourceId"] == world.vaults["kv-deleted"].id.lower()]
    assert (row["Id"], row["HttpStatusCode"], row["ResultSignature"]) == (key_id, 200, "OK")  # as Key Vault logs it
    assert row["RequestUri"].startswith(f"{key_id}?api-version=")
    ((transition, alert),) = [(notice.transition, notice.alert) for notice in channel.received]
    assert (transition, alert.severity, alert.resource) == (Transition.OPENED, Severity.CRITICAL, key_id)
    assert f"account {account}" in alert.message
    assert "az keyvault key recover --vault-name kv-deleted --name cmk" in alert.message

    keys.begin_recover_deleted_key("cmk").wait()
    world.arm.keyvault.advance_clock(timedelta(minutes=15))
    recovered = service.scheduled_audit(deps)

    assert recovered.missing_keys == ()
    # (the recovery poller's GETs answered 404 until the key was back: CMK-017 reports those on their own)
    assert [notice.transition for notice in channel.received if notice.alert.fingerprint == alert.fingerprint] == [
        Transition.OPENED, Transition.RESOLVED]
    assert ledger.get_entity("audit-scan", "checkpoint")["Chunks"] == 1


def test_a_vault_without_a_diagnostic_setting_has_no_rows_and_its_logs_are_reported_missing(
        sandbox: Sandbox) -> None:
    world = sandbox.world
    world.create_vault("kv-silent")
    keys = world.key_client("kv-silent")
    keys.create_rsa_key("cmk", size=2048)
    keys.begin_delete_key("cmk").wait()
    vault_id = world.vaults["kv-silent"].id.lower()

    for table in (AZKV_AUDIT_LOGS, AZURE_DIAGNOSTICS):
        assert [row for row in sandbox.sink.rows(table) if row["_ResourceId"] == vault_id] == []
    deps, channel = audit_timer(sandbox, ["kv-silent"], sandbox.new_ledger())
    result = service.scheduled_audit(deps)
    report = deps.audit.failures(deps.settings.vaults, start=result.start, end=result.end)

    assert result.missing_keys == () and channel.received == []
    assert report is not None and report.vaults_without_logs == (world.origin("kv-silent").url,)
    assert report.key_operations == ()


def test_a_setting_naming_a_storage_account_archives_the_deletion_where_the_archive_reader_finds_it(
        sandbox: Sandbox) -> None:
    world = sandbox.world
    world.create_vault("kv-archived")
    archive_account = world.create_account()
    MonitorManagementClient(world.cred, SUB_A, **world.mgmt_kwargs()).diagnostic_settings.create_or_update(
        world.vaults["kv-archived"].id, "audit-to-archive",
        DiagnosticSettingsResource(storage_account_id=archive_account.id,
                                   logs=[LogSettings(category="AuditEvent", enabled=True)]))
    keys = world.key_client("kv-archived")
    keys.create_rsa_key("cmk", size=2048)
    start = world.arm.clock.now() - timedelta(minutes=1)
    keys.begin_delete_key("cmk").wait()
    sandbox.sink.flush()

    container = BlobServiceClient.from_connection_string(sandbox.azurite.connection_string).get_container_client(
        sandbox.sink.archive_container(archive_account.name))  # the account's insights-logs-auditevent
    origin = world.origin("kv-archived")
    archive = ArchiveAuditLog(lambda: container, vault_ids=lambda: {
        origin: parse_vault_resource_id(world.vaults["kv-archived"].id)})
    report = archive.failures([origin.url], start=start, end=world.arm.clock.now() + timedelta(minutes=1))

    assert [(op.key, op.operation, op.source) for op in report.missing_keys] == [("cmk", "KeyDelete", "archive")]
    assert report.vaults_without_logs == ()
    vault_id = world.vaults["kv-archived"].id.lower()
    assert [row for row in sandbox.sink.rows(AZKV_AUDIT_LOGS) if row["_ResourceId"] == vault_id] == []

"""Audit analysis (CMK-017) against the sandbox: every failure class produced for real on the emulated vaults
through the unmodified Key Vault SDK, then read back and classified from the resource-specific table
(AZKVAuditLogs), the legacy table (AzureDiagnostics) through the unmodified LogsQueryClient, and from the
storage archive in Azurite (insights-logs-auditevent layout) through azure-storage-blob."""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from azure.core.exceptions import HttpResponseError
from azure.core.rest import HttpRequest
from azure.keyvault.keys import KeyClient
from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm
from azure.monitor.query import LogsQueryClient, LogsQueryStatus
from azure.storage.blob import BlobServiceClient, ContainerClient

from controller import audit
from controller.adapters.audit_log import ArchiveAuditLog, LogAnalyticsAuditLog, WorkspaceThenArchive
from controller.audit import FailureClass
from controller.model import VaultOrigin, normalise_origin, parse_vault_resource_id
from controller.settings import SETTINGS
from controller.vault_policy import VaultPolicy
from emulators.audit import (
    AZKV_AUDIT_LOGS,
    AZURE_DIAGNOSTICS,
    SANDBOX_WORKSPACE_RESOURCE_ID,
    AuditSink,
    DiagnosticRoute,
)
from emulators.azurite import Azurite
from emulators.bus import SandboxBus
from emulators.clock import SandboxClock
from emulators.egress_proxy import EgressProxy
from emulators.keyvault import AccessPolicy, KeyVaultEmulator, RoleAssignment, SandboxCredential, VaultState
from emulators.kql import TableSource, audit_tables
from emulators.query_endpoints import LogAnalyticsEmulator
from emulators.sandbox import LOG_ANALYTICS_HOST
from tests.support.egress import through_proxy
from tests.support.keyvault import Admin, client_kwargs

pytestmark = pytest.mark.integration

CONTROLLER = "a0000000-0000-4000-8000-0000000000c1"
CRYPTO_OFFICER = "14b46e9e-c2b7-41b4-b07b-48a6ebf60603"
SERVICE_ENCRYPTION_USER = "e147488a-f6f5-4113-8e2d-b22465e65bf6"
STORAGE_KEY_PERMISSIONS = ["get", "wrapKey", "unwrapKey"]
ALG = KeyWrapAlgorithm.rsa_oaep_256
# One storage account (and its managed identity) per scenario, so each failure is its own group.
IDENTITIES = {
    "k-permission": ("a0000000-0000-4000-8000-000000000001", "stpermission"),
    "k-rbac": ("a0000000-0000-4000-8000-000000000002", "strbac"),
    "k-firewall": ("a0000000-0000-4000-8000-000000000003", "stfirewall"),
    "k-disabled": ("a0000000-0000-4000-8000-000000000004", "stdisabled"),
    "k-expired": ("a0000000-0000-4000-8000-000000000005", "stexpired"),
    "k-deleted": ("a0000000-0000-4000-8000-000000000006", "stdeleted"),
    "k-throttled": ("a0000000-0000-4000-8000-000000000007", "stthrottled"),
}
EXPECTED = {
    "k-permission": FailureClass.PERMISSION,
    "k-rbac": FailureClass.PERMISSION,
    "k-firewall": FailureClass.FIREWALL,
    "k-disabled": FailureClass.KEY_DISABLED,
    "k-expired": FailureClass.KEY_EXPIRED,
    "k-deleted": FailureClass.KEY_DELETED,
    "k-throttled": FailureClass.THROTTLED,
}
PRINCIPALS = {principal: [account] for principal, account in IDENTITIES.values()}


@dataclass
class Sandbox:
    kv: KeyVaultEmulator
    sink: AuditSink
    la: LogAnalyticsEmulator
    container: ContainerClient
    policies: VaultState
    rbac: VaultState
    start: datetime
    end: datetime
    dedicated_workspace: str
    legacy_workspace: str

    @property
    def vaults(self) -> list[str]:
        return [origin(self.policies), origin(self.rbac)]

    def logs(self, workspace: str, **options: object) -> LogAnalyticsAuditLog:
        return LogAnalyticsAuditLog(SandboxCredential(), workspace_id=workspace, endpoint=self.la.endpoint,
                                    policy=VaultPolicy.of(self.vaults), principals=lambda: PRINCIPALS,
                                    connection_verify=self.kv.ca_path, **options)

    def archive(self) -> ArchiveAuditLog:
        ids = {VaultOrigin(origin(state)): parse_vault_resource_id(state.resource_id)
               for state in (self.policies, self.rbac)}
        return ArchiveAuditLog(lambda: self.container, vault_ids=lambda: ids, principals=lambda: PRINCIPALS)


def origin(state: VaultState) -> str:
    return normalise_origin(state.origin)


def crypto(kv: KeyVaultEmulator, key_id: str, principal: str) -> CryptographyClient:
    return CryptographyClient(key_id, kv.credential(principal), **client_kwargs(kv, retry_total=0))


def refused(call: object, *args: object) -> int:
    with pytest.raises(HttpResponseError) as info:
        call(*args)  # type: ignore[operator]
    return info.value.status_code or 0


def produce_failures(kv: KeyVaultEmulator, policies: VaultState, rbac: VaultState) -> None:
    """Each failure class, the way it happens to a storage account: the request is refused by the vault."""
    admin = Admin(kv)
    keys = KeyClient(policies.uri, kv.credential(CONTROLLER), **client_kwargs(kv, retry_total=0))
    created = {name: keys.create_rsa_key(name, size=2048) for name in EXPECTED if name != "k-rbac"}
    rbac_keys = KeyClient(rbac.uri, kv.credential(CONTROLLER), **client_kwargs(kv, retry_total=0))
    created["k-rbac"] = rbac_keys.create_rsa_key("k-rbac", size=2048)
    cek = os.urandom(32)
    wrapped = {name: crypto(kv, key.id, IDENTITIES[name][0]).wrap_key(ALG, cek).encrypted_key
               for name, key in created.items()}

    def unwrap(name: str) -> int:
        return refused(crypto(kv, created[name].id, IDENTITIES[name][0]).unwrap_key, ALG, wrapped[name])

    # permission (access policy): the identity loses unwrapKey
    policies.upsert_access_policy(AccessPolicy(IDENTITIES["k-permission"][0], kv.tenant_id, keys=["get", "wrapKey"]))
    assert unwrap("k-permission") == 403
    # permission (RBAC): the role assignment is removed
    assignment = next(a for a in rbac.role_assignments if a.principal_id == IDENTITIES["k-rbac"][0])
    assert rbac.remove_role_assignment(assignment.id)
    assert unwrap("k-rbac") == 403
    # firewall: default action Deny, the caller's address not in the rules, no trusted-service bypass
    admin.ok("PUT", f"/vaults/{policies.name}/networkAcls", {"defaultAction": "Deny", "bypass": "None",
                                                              "ipRules": [{"value": "203.0.113.0/24"}]})
    assert unwrap("k-firewall") == 403
    admin.ok("PUT", f"/vaults/{policies.name}/networkAcls", {"defaultAction": "Allow", "bypass": "AzureServices"})
    # disabled key version
    keys.update_key_properties("k-disabled", created["k-disabled"].properties.version, enabled=False)
    assert unwrap("k-disabled") == 403
    # expired key version: Key Vault refuses wrapKey after exp (it still unwraps, as for decrypt and verify)
    expired = created["k-expired"]
    keys.update_key_properties("k-expired", expired.properties.version,
                               expires_on=kv.clock.now() - timedelta(hours=1))
    storage = KeyClient(policies.uri, kv.credential(IDENTITIES["k-expired"][0]),
                        **client_kwargs(kv, retry_total=0))
    request = HttpRequest("POST", f"{expired.id}/wrapkey", params={"api-version": "7.5"},
                          json={"alg": str(ALG.value), "value": base64.urlsafe_b64encode(cek).decode().rstrip("=")})
    assert storage.send_request(request).status_code == 403
    # deleted key
    keys.begin_delete_key("k-deleted").wait()
    assert unwrap("k-deleted") == 404
    # throttled: the vault's limit for RSA-2048 software keys lowered to 1 per window
    admin.ok("PUT", f"/vaults/{policies.name}/throttling", {"enabled": True, "limits": {"RSA-2048": {"software": 1}}})
    client = crypto(kv, created["k-throttled"].id, IDENTITIES["k-throttled"][0])
    statuses: list[int] = []
    while 429 not in statuses and len(statuses) < 50:
        try:
            client.unwrap_key(ALG, wrapped["k-throttled"])
            statuses.append(200)
        except HttpResponseError as err:
            statuses.append(err.status_code or 0)
    admin.ok("PUT", f"/vaults/{policies.name}/throttling", {"enabled": False})
    assert 429 in statuses


@pytest.fixture(scope="module")
def sandbox(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    clock = SandboxClock()
    bus = SandboxBus()
    account = f"staudit{uuid.uuid4().hex[:12]}"  # this module's own archive account
    sink = AuditSink(bus, connection_string=azurite.connection_string, flush_interval_seconds=3600)
    dedicated_workspace, legacy_workspace = str(uuid.uuid4()), str(uuid.uuid4())
    with sink, KeyVaultEmulator(clock, bus, directory=tmp_path_factory.mktemp("kv-audit")) as kv:
        storage_policies = [AccessPolicy(principal, kv.tenant_id, keys=list(STORAGE_KEY_PERMISSIONS))
                            for name, (principal, _) in IDENTITIES.items() if name != "k-rbac"]
        policies = kv.add_vault("kv-audit", access_policies=[
            AccessPolicy(CONTROLLER, kv.tenant_id, keys=["all"]), *storage_policies])
        rbac = kv.add_vault("kv-audit-rbac", host="127.0.0.2", rbac=True, role_assignments=[
            RoleAssignment(CONTROLLER, CRYPTO_OFFICER, ""),
            RoleAssignment(IDENTITIES["k-rbac"][0], SERVICE_ENCRYPTION_USER, ""),
        ])
        for vault in (policies, rbac):  # the vaults' diagnostic settings: archive and both tables of the workspace
            sink.set_routes(vault.resource_id, [
                DiagnosticRoute(archive_account=account),
                DiagnosticRoute(workspace=SANDBOX_WORKSPACE_RESOURCE_ID, dedicated=True),
                DiagnosticRoute(workspace=SANDBOX_WORKSPACE_RESOURCE_ID)])
        start = clock.now() - timedelta(minutes=1)
        produce_failures(kv, policies, rbac)
        end = clock.now() + timedelta(minutes=1)
        sink.flush()
        workspaces = {
            dedicated_workspace: audit_tables(sink, [AZKV_AUDIT_LOGS]),
            legacy_workspace: audit_tables(sink, [AZURE_DIAGNOSTICS]),
        }
        service = BlobServiceClient.from_connection_string(azurite.connection_string)
        with LogAnalyticsEmulator(kv.ca, tables=audit_tables(sink), workspace_id=sink.workspace_id,
                                  workspaces=workspaces, clock=clock, public_host=LOG_ANALYTICS_HOST) as la:
            yield Sandbox(kv, sink, la, service.get_container_client(sink.archive_container(account)), policies, rbac,
                          start, end, dedicated_workspace, legacy_workspace)


def classes_by_key(report: audit.AuditReport) -> dict[str, set[FailureClass]]:
    found: dict[str, set[FailureClass]] = {}
    for group in report.groups:
        found.setdefault(group.key, set()).add(group.failure_class)
    return found


def assert_every_class(report: audit.AuditReport, sandbox: Sandbox, source: str) -> None:
    assert not report.partial, report.partial_detail
    assert classes_by_key(report) == {name: {expected} for name, expected in EXPECTED.items()}
    for group in report.groups:
        assert group.source == source
        assert group.storage_accounts == (IDENTITIES[group.key][1],), group
        assert group.vault in sandbox.vaults
        assert sandbox.start <= group.first_seen <= group.last_seen <= sandbox.end
        assert group.count >= 1
    by_key = {g.key: g for g in report.groups if "KeyUnwrap" in g.operations or "KeyWrap" in g.operations}
    assert by_key["k-permission"].status_code == 403 and "does not have keys unwrapKey permission" in (
        by_key["k-permission"].sample_description)
    assert "Caller is not authorized to perform action on resource" in by_key["k-rbac"].sample_description
    assert by_key["k-expired"].operations == ("KeyWrap",)
    assert by_key["k-deleted"].status_code == 404
    assert by_key["k-throttled"].status_code == 429 and by_key["k-throttled"].result_signature == "TooManyRequests"
    assert {s.vault: s.source for s in report.sources} == {vault: source for vault in sandbox.vaults}
    assert report.vaults_without_logs == ()
    # the KeyDelete of k-deleted (through KeyClient.begin_delete_key), found in the same source
    (deletion,) = report.key_operations
    assert (deletion.vault, deletion.key, deletion.operation, deletion.source) == (
        origin(sandbox.policies), "k-deleted", audit.KEY_DELETE, source)
    assert deletion.caller == CONTROLLER and sandbox.start <= deletion.at <= sandbox.end


def test_every_failure_class_is_classified_from_azkvauditlogs(sandbox: Sandbox) -> None:
    report = sandbox.logs(sandbox.dedicated_workspace).failures(sandbox.vaults, start=sandbox.start, end=sandbox.end)
    assert_every_class(report, sandbox, AZKV_AUDIT_LOGS)


def test_the_default_endpoint_is_reached_through_the_sandbox_proxy(sandbox: Sandbox) -> None:
    """CMK_LOG_ANALYTICS_ENDPOINT at its default (https://api.loganalytics.io), as the sandbox runs the product:
    the query goes through the proxy (HTTPS_PROXY) to the emulator, which presents a certificate for that host."""
    with EgressProxy() as proxy, through_proxy(proxy):
        proxy.add_route(sandbox.la.listener_for)
        logs = LogAnalyticsAuditLog(SandboxCredential(), workspace_id=sandbox.dedicated_workspace,
                                    endpoint=next(spec.default for spec in SETTINGS
                                              if spec.name == "CMK_LOG_ANALYTICS_ENDPOINT"),
                                    policy=VaultPolicy.of(sandbox.vaults), principals=lambda: PRINCIPALS,
                                    connection_verify=sandbox.kv.ca_path)
        report = logs.failures(sandbox.vaults, start=sandbox.start, end=sandbox.end)
    assert_every_class(report, sandbox, AZKV_AUDIT_LOGS)
    assert proxy.refused == []


def test_every_failure_class_is_classified_from_azurediagnostics(sandbox: Sandbox) -> None:
    report = sandbox.logs(sandbox.legacy_workspace).failures(sandbox.vaults, start=sandbox.start, end=sandbox.end)
    assert_every_class(report, sandbox, AZURE_DIAGNOSTICS)


def test_every_failure_class_is_classified_from_the_storage_archive(sandbox: Sandbox) -> None:
    report = sandbox.archive().failures(sandbox.vaults, start=sandbox.start, end=sandbox.end)
    assert_every_class(report, sandbox, audit.ARCHIVE)


def test_a_vault_logging_to_both_tables_is_read_from_one_and_counted_once(sandbox: Sandbox) -> None:
    both = sandbox.logs(sandbox.sink.workspace_id).failures(sandbox.vaults, start=sandbox.start, end=sandbox.end)
    dedicated = sandbox.logs(sandbox.dedicated_workspace).failures(sandbox.vaults, start=sandbox.start,
                                                                   end=sandbox.end)
    assert {g.source for g in both.groups} == {AZKV_AUDIT_LOGS}
    assert both.failures == dedicated.failures


def test_the_window_bounds_the_answer(sandbox: Sandbox) -> None:
    later = sandbox.end + timedelta(hours=1)
    report = sandbox.logs(sandbox.dedicated_workspace).failures(sandbox.vaults, start=sandbox.end, end=later)
    assert report.groups == ()
    assert report.vaults_without_logs == tuple(sorted(sandbox.vaults))
    assert sandbox.archive().failures(sandbox.vaults, start=sandbox.end, end=later).groups == ()


def test_a_partial_result_is_reported_with_the_rows_it_has(sandbox: Sandbox) -> None:
    with LogAnalyticsEmulator(sandbox.kv.ca, tables=audit_tables(sandbox.sink, [AZKV_AUDIT_LOGS]),
                              clock=sandbox.kv.clock, max_rows=1) as limited:
        logs = LogAnalyticsAuditLog(SandboxCredential(), workspace_id=limited.workspace_id, endpoint=limited.endpoint,
                                    policy=VaultPolicy.of(sandbox.vaults), connection_verify=sandbox.kv.ca_path)
        report = logs.failures(sandbox.vaults, start=sandbox.start, end=sandbox.end)
    assert report.partial
    assert report.partial_detail is not None and "E_QUERY_RESULT_SET_TOO_LARGE" in report.partial_detail
    assert len(report.groups) == 1  # the one row the service returned, kept and classified
    assert report.groups[0].failure_class is EXPECTED[report.groups[0].key]


def workspace_of(sandbox: Sandbox, rows: list[dict[str, object]]) -> str:
    """A new workspace of the sandbox's Log Analytics holding ``rows`` as its AZKVAuditLogs table."""
    workspace = str(uuid.uuid4())
    table = TableSource.of(AZKV_AUDIT_LOGS, AuditSink.columns(AZKV_AUDIT_LOGS), lambda: rows)
    sandbox.la.add_workspace(workspace, [table])
    return workspace


def test_the_archive_fills_in_for_vaults_the_workspace_has_no_logs_of(sandbox: Sandbox) -> None:
    rbac_id = sandbox.rbac.resource_id.lower()
    workspace = workspace_of(sandbox, [r for r in sandbox.sink.rows(AZKV_AUDIT_LOGS) if r["_ResourceId"] == rbac_id])
    report = WorkspaceThenArchive(sandbox.logs(workspace), sandbox.archive()).failures(
        sandbox.vaults, start=sandbox.start, end=sandbox.end)
    assert {s.vault: s.source for s in report.sources} == {
        origin(sandbox.rbac): AZKV_AUDIT_LOGS, origin(sandbox.policies): audit.ARCHIVE}
    assert classes_by_key(report) == {name: {expected} for name, expected in EXPECTED.items()}
    assert not report.partial and report.vaults_without_logs == ()


def test_rows_returned_stay_per_group_however_many_records(sandbox: Sandbox) -> None:
    """The aggregation runs in KQL: 2,000 failures of one group come back as one row."""
    template = next(r for r in sandbox.sink.rows(AZKV_AUDIT_LOGS)
                    if r["HttpStatusCode"] == 404 and r["OperationName"] in ("KeyGet", "KeyWrap", "KeyUnwrap"))
    workspace = workspace_of(sandbox, [dict(template) for _ in range(2000)])
    with LogsQueryClient(SandboxCredential(), endpoint=sandbox.la.endpoint + "/v1",
                         connection_verify=sandbox.kv.ca_path) as client:
        result = client.query_workspace(workspace, audit.failure_query(sandbox.vaults),
                                        timespan=(sandbox.start, sandbox.end))
    assert result.status is LogsQueryStatus.SUCCESS
    (table,) = result.tables
    assert len(table.rows) == 1
    assert dict(zip(table.columns, table.rows[0], strict=True))["Count"] == 2000

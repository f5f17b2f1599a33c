"""The audit analysis' pure core (controller/audit.py): classification from Key Vault's own wording, the
KQL builders, the aggregation of archived records, the report and its renderings, service.scan_audit."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from controller import audit, service
from controller.audit import AuditFailureGroup, FailureClass, VaultSource
from controller.errors import InvalidInput, SettingsError
from controller.model import Severity
from controller.settings import load_settings
from tests.unit.fakes import FakeAuditLog, FakeClock, fake_dependencies

pytestmark = pytest.mark.unit

VAULT = "https://kv-cmk.vault.azure.net"
OTHER_VAULT = "https://kv-other.vault.azure.net"
VAULT_ID = ("/subscriptions/5f2a1c3e-0000-4000-8000-000000000001/resourcegroups/rg-cmk"
            "/providers/microsoft.keyvault/vaults/kv-cmk")
VERSION = "0123456789abcdef0123456789abcdef"
STORAGE_MI = "3c1f9a57-8d2e-4b6a-9f10-2e7d5c4b3a21"
CALLER = f"appid=0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d;oid={STORAGE_MI};iss=https://sts.windows.net/72f988bf-0000-4000-8000-000000000001/"
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)

# (status, resultSignature, resultDescription as Key Vault writes it, operation) -> class
WORDINGS = [
    pytest.param(403, "Forbidden",
                 f"The user, group or application '{CALLER}' does not have keys unwrapKey permission on key vault "
                 "'kv-cmk;location=westeurope'. For help resolving this issue, please see "
                 "https://go.microsoft.com/fwlink/?linkid=2125287", "KeyUnwrap", FailureClass.PERMISSION,
                 id="access-policy"),
    pytest.param(403, "Forbidden",
                 "Caller is not authorized to perform action on resource.\r\nIf role assignments, deny assignments or "
                 "role definitions were changed recently, please observe propagation time.\r\n"
                 f"Caller: {CALLER}\r\nAction: 'Microsoft.KeyVault/vaults/keys/unwrap/action'\r\n"
                 f"Resource: '{VAULT_ID}/keys/cmk'\r\nAssignment: (not found)\r\n"
                 "DecisionReason: 'DeniedWithNoValidRBAC' \r\nVault: kv-cmk;location=westeurope\r\n",
                 "KeyUnwrap", FailureClass.PERMISSION, id="rbac"),
    pytest.param(403, "Forbidden",
                 "Client address is not authorized and caller is not a trusted service.\r\nClient address: "
                 f"203.0.113.7\r\nCaller: {CALLER}\r\nVault: kv-cmk;location=westeurope",
                 "KeyWrap", FailureClass.FIREWALL, id="firewall"),
    pytest.param(403, "Forbidden",
                 "Public network access is disabled and request is not from a trusted service nor via an approved "
                 "private link.", "KeyUnwrap", FailureClass.FIREWALL, id="public-network-disabled"),
    pytest.param(403, "Forbidden", "Operation unwrapKey is not allowed on a disabled key.", "KeyUnwrap",
                 FailureClass.KEY_DISABLED, id="disabled-unwrap"),
    pytest.param(403, "Forbidden", "Operation get is not allowed on a disabled key.", "KeyGet",
                 FailureClass.KEY_DISABLED, id="disabled-get"),
    pytest.param(403, "Forbidden", "Operation wrapKey is not allowed on an expired key.", "KeyWrap",
                 FailureClass.KEY_EXPIRED, id="expired"),
    pytest.param(403, "Forbidden", "Operation wrapKey is not allowed on a key that is not yet valid.", "KeyWrap",
                 FailureClass.KEY_EXPIRED, id="not-yet-valid"),
    pytest.param(404, "NotFound",
                 f"A key with (name/id) cmk/{VERSION} was not found in this key vault. If you recently deleted this "
                 "key you may be able to recover it using the correct recovery command. For help resolving this "
                 "issue, please see https://go.microsoft.com/fwlink/?linkid=2125182", "KeyUnwrap",
                 FailureClass.KEY_DELETED, id="deleted"),
    pytest.param(429, "TooManyRequests",
                 "Request was not processed because too many requests were received. Reason: RSA-2048 software keys "
                 "allow 4000 operations per 10 seconds.", "KeyUnwrap", FailureClass.THROTTLED, id="throttled"),
    pytest.param(429, "TooManyRequests", "", "KeyWrap", FailureClass.THROTTLED, id="throttled-no-description"),
    pytest.param(0, "TooManyRequests", "", "KeyWrap", FailureClass.THROTTLED, id="throttled-signature-only"),
    pytest.param(404, "NotFound", "", "KeyGet", FailureClass.KEY_DELETED, id="not-found-no-description"),
    pytest.param(0, "Not Found", "", "KeyGet", FailureClass.KEY_DELETED, id="not-found-phrase-signature"),
    pytest.param(403, "Forbidden", "Access denied", "KeyUnwrap", FailureClass.PERMISSION, id="bare-403"),
    pytest.param(403, "Forbidden", "Operation unwrapKey is not permitted on this key.", "KeyUnwrap",
                 FailureClass.OTHER, id="key-ops"),
    pytest.param(401, "Unauthorized", "AKV10032: Invalid issuer.", "KeyUnwrap", FailureClass.OTHER, id="401"),
    pytest.param(500, "InternalServerError", "", "KeyWrap", FailureClass.OTHER, id="500"),
]


@pytest.mark.parametrize(("status", "signature", "description", "operation", "expected"), WORDINGS)
def test_each_wording_key_vault_writes_is_classified(status, signature, description, operation, expected):
    verdict = audit.classify(status, signature, description, operation)
    assert verdict.failure_class is expected
    assert verdict.cause


def test_access_policy_and_rbac_denials_name_their_model_in_the_cause():
    policy = audit.classify(403, "Forbidden", WORDINGS[0].values[2], "KeyUnwrap")
    rbac = audit.classify(403, "Forbidden", WORDINGS[1].values[2], "KeyUnwrap")
    assert "access policy" in policy.cause
    assert "RBAC" in rbac.cause


@pytest.mark.parametrize("failure_class", list(FailureClass))
def test_every_class_has_a_remediation_naming_a_command_or_property(failure_class):
    text = failure_class.remediation
    assert text
    if failure_class is not FailureClass.OTHER and failure_class is not FailureClass.THROTTLED:
        assert "az " in text
    assert isinstance(failure_class.severity, Severity)


def test_a_deleted_key_is_critical_and_throttling_medium():
    assert FailureClass.KEY_DELETED.severity is Severity.CRITICAL
    assert FailureClass.PERMISSION.severity is Severity.HIGH
    assert FailureClass.THROTTLED.severity is Severity.MEDIUM


# --- KQL ------------------------------------------------------------------------------------------


def test_the_failure_query_aggregates_in_kql_over_both_tables_for_the_managed_vaults_only():
    query = audit.failure_query([VAULT, OTHER_VAULT])
    assert "AZKVAuditLogs" in query and "AzureDiagnostics" in query
    assert "ResourceProvider == 'MICROSOFT.KEYVAULT'" in query
    assert f"where Vault in ('{VAULT}', '{OTHER_VAULT}')" in query
    assert "| summarize Count = count(), FirstSeen = min(TimeGenerated), LastSeen = max(TimeGenerated)" in query
    assert ("by Source, Vault, VaultResourceId, KeyName, KeyVersion, Caller, StatusCode, ResultSignature, Marker"
            in query)
    assert "'KeyWrap', 'KeyUnwrap', 'KeyGet'" in query
    assert "HttpStatusCode >= 400" in query and "httpStatusCode_d >= 400" in query
    # the description is reduced to the phrases classify() reads: grouping stays bounded
    assert "take_any(ResultDescription)" in query
    assert "contains 'client address is not authorized and caller is not a trusted service'" in query


def test_the_detection_query_counts_records_per_table_and_vault():
    query = audit.detection_query([VAULT])
    assert query.rstrip().endswith("| summarize Records = count() by Source, Vault")
    assert "HttpStatusCode >= 400" not in query


def test_the_deletion_query_keeps_each_keys_latest_successful_delete_purge_or_recover():
    query = audit.deletion_query([VAULT])
    assert "'KeyDelete', 'KeyPurge', 'KeyRecover'" in query
    assert "HttpStatusCode < 400" in query and "httpStatusCode_d < 400" in query  # a refused purge changes nothing
    assert "extract('/(?:deleted)?keys/([^/?]+)', 1, ObjectId)" in query  # /keys/<name> and /deletedkeys/<name>
    assert query.rstrip().endswith("| summarize arg_max(TimeGenerated, OperationName, Caller, CallerApp)"
                                   " by Source, Vault, VaultResourceId, KeyName")
    operations = audit.key_operations_from_rows([
        {"Source": "AZKVAuditLogs", "Vault": VAULT, "VaultResourceId": "/x", "KeyName": "CMK",
         "TimeGenerated": "2026-11-30T10:00:00.1234567Z", "OperationName": "KeyPurge", "Caller": "ABC"},
        {"Source": "AZKVAuditLogs", "Vault": VAULT, "KeyName": "other", "TimeGenerated": None,
         "OperationName": "KeyDelete"},
        {"Source": "AZKVAuditLogs", "Vault": VAULT, "KeyName": "other", "TimeGenerated": "2026-11-30T10:00:00Z",
         "OperationName": "KeyCreate"},
    ])
    assert [(op.key, op.operation, op.caller, op.key_id) for op in operations] == [
        ("cmk", "KeyPurge", "abc", f"{VAULT}/keys/cmk")]


def test_deleted_keys_are_in_the_table_and_the_json():
    deleted = audit.KeyOperation(VAULT, "/x", "cmk", audit.KEY_DELETE, NOW, STORAGE_MI, "", "AZKVAuditLogs")
    recovered = audit.KeyOperation(VAULT, "/x", "back", audit.KEY_RECOVER, NOW, STORAGE_MI, "", "AZKVAuditLogs")
    report = audit.report_of(NOW - timedelta(hours=1), NOW, [], managed_vaults=[VAULT],
                             key_operations=[recovered, deleted])
    assert report.missing_keys == (deleted,)
    text = audit.render_table(report)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "  KeyDelete  kv-cmk/cmk at" in text and "  KeyRecover kv-cmk/back at" in text
    document = json.loads(audit.render_json(report))
    assert {(op["key"], op["operation"]) for op in document["keyOperations"]} == {
        ("cmk", "KeyDelete"), ("back", "KeyRecover")}


def test_kql_string_literals_are_escaped():
    assert "'https://x\\'y'" in audit.detection_query(["https://x'y"])


def test_a_query_needs_vaults():
    with pytest.raises(InvalidInput):
        audit.failure_query([])


def row(**overrides: object) -> dict[str, object]:
    values: dict[str, object] = {
        "Source": "AZKVAuditLogs", "Vault": VAULT, "VaultResourceId": VAULT_ID, "KeyName": "cmk",
        "KeyVersion": VERSION.upper(), "Caller": STORAGE_MI.upper(),
        "CallerApp": "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
        "StatusCode": 403, "ResultSignature": "Forbidden", "Marker": "m6", "Count": 7,
        "FirstSeen": "2026-11-30T04:21:07.1234567Z", "LastSeen": datetime(2026, 11, 30, 9, 0, tzinfo=UTC),
        "Operations": '["KeyWrap","KeyUnwrap"]', "SampleDescription": WORDINGS[0].values[2],
    }
    values.update(overrides)
    return values


def test_rows_become_classified_groups():
    (group,) = audit.groups_from_rows([row()])
    assert group.failure_class is FailureClass.PERMISSION
    assert group.count == 7
    assert group.operations == ("KeyUnwrap", "KeyWrap")
    assert group.first_seen == datetime(2026, 11, 30, 4, 21, 7, 123456, tzinfo=UTC)
    assert group.caller == STORAGE_MI and group.version == VERSION
    assert group.key_id == f"{VAULT}/keys/cmk/{VERSION}"
    assert group.storage_account is None
    assert f"az keyvault set-policy --name kv-cmk --object-id {STORAGE_MI} --key-permissions" in group.remediation
    assert f"--scope {VAULT_ID}." in group.remediation


def test_a_remediation_names_the_groups_key_and_version():
    (group,) = audit.groups_from_rows([row(StatusCode=403, SampleDescription="Operation unwrapKey is not allowed on a "
                                                                             "disabled key.")])
    assert group.failure_class is FailureClass.KEY_DISABLED
    assert (f"az keyvault key set-attributes --vault-name kv-cmk --name cmk --version {VERSION} --enabled true"
            in group.remediation)


def test_a_row_without_times_is_not_a_group():
    assert audit.groups_from_rows([row(FirstSeen=None)]) == []


def test_the_dedicated_table_wins_when_a_vault_sends_to_both():
    chosen = audit.choose_sources([
        VaultSource(VAULT, "AzureDiagnostics", 10), VaultSource(VAULT, "AZKVAuditLogs", 10),
        VaultSource(OTHER_VAULT, "AzureDiagnostics", 3), VaultSource("https://kv-empty.vault.azure.net",
                                                                     "AZKVAuditLogs", 0),
    ])
    assert {vault: source.source for vault, source in chosen.items()} == {
        VAULT: "AZKVAuditLogs", OTHER_VAULT: "AzureDiagnostics"}


def test_callers_are_mapped_to_the_storage_accounts_using_their_identity():
    principals = audit.principal_accounts([
        ("stsystem", {"type": "SystemAssigned", "principalId": STORAGE_MI.upper()}),
        ("stshared1", {"type": "UserAssigned", "userAssignedIdentities": {"/x/uai": {"principalId": "p-shared"}}}),
        ("stshared2", {"type": "SystemAssigned,UserAssigned", "principal_id": "p-own",
                       "user_assigned_identities": {"/x/uai": {"principal_id": "p-shared"}}}),
        ("stnone", None),
    ])
    assert principals == {STORAGE_MI: ("stsystem",), "p-shared": ("stshared1", "stshared2"), "p-own": ("stshared2",)}
    groups = audit.attribute_storage_accounts(audit.groups_from_rows([row(), row(Caller="P-SHARED"), row(Caller="")]),
                                              principals)
    assert [g.storage_accounts for g in groups] == [("stsystem",), ("stshared1", "stshared2"), ()]
    assert [g.storage_account for g in groups] == ["stsystem", None, None]


def test_the_report_orders_by_severity_and_lists_vaults_without_logs():
    groups = audit.groups_from_rows([
        row(StatusCode=429, ResultSignature="TooManyRequests", SampleDescription="", Count=50),
        row(StatusCode=404, ResultSignature="NotFound", SampleDescription="", Count=1),
        row(Count=3),
    ])
    report = audit.report_of(NOW - timedelta(hours=24), NOW, groups, sources=[VaultSource(VAULT, "AZKVAuditLogs", 9)],
                             managed_vaults=[VAULT, OTHER_VAULT])
    assert [g.failure_class for g in report.groups] == [FailureClass.KEY_DELETED, FailureClass.PERMISSION,
                                                        FailureClass.THROTTLED]
    assert report.failures == 54
    assert report.vaults_without_logs == (OTHER_VAULT,)
    assert report.window == timedelta(hours=24)
    assert not report.partial


def test_merging_takes_the_archive_only_for_vaults_the_workspace_has_no_logs_of():
    start = NOW - timedelta(hours=1)
    primary = audit.report_of(start, NOW, audit.groups_from_rows([row()]),
                              sources=[VaultSource(VAULT, "AZKVAuditLogs", 5)], managed_vaults=[VAULT, OTHER_VAULT])
    archived = audit.groups_from_rows([row(Vault=OTHER_VAULT, Source="archive"), row(Source="archive")])
    fallback = audit.report_of(start, NOW, archived, sources=[VaultSource(OTHER_VAULT, "archive", 2)],
                               managed_vaults=[OTHER_VAULT], partial_detail="one blob unreadable")
    merged = audit.merge_reports(primary, fallback)
    assert sorted((g.vault, g.source) for g in merged.groups) == [(VAULT, "AZKVAuditLogs"), (OTHER_VAULT, "archive")]
    assert merged.vaults_without_logs == ()
    assert merged.partial and merged.partial_detail == "one blob unreadable"


# --- the archive ----------------------------------------------------------------------------------


def record(minutes: int, *, status: int = 403, operation: str = "KeyUnwrap", description: str = "",
           vault: str = VAULT, caller: str = STORAGE_MI) -> dict[str, object]:
    return {
        "time": (NOW - timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z"),
        "resourceId": VAULT_ID.upper(), "operationName": operation, "category": "AuditEvent",
        "resultSignature": {200: "OK", 403: "Forbidden", 404: "NotFound", 429: "TooManyRequests"}[status],
        "resultDescription": description,
        "identity": {"claim": {"http://schemas.microsoft.com/identity/claims/objectidentifier": caller}},
        "properties": {"id": f"{vault}/keys/cmk/{VERSION}", "httpStatusCode": status},
    }


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("size", [1, 7, 64, 100_000])
def test_json_lines_are_read_across_any_chunk_boundary(size):
    records = [record(m) for m in range(5)]
    data = b"".join(json.dumps(r).encode() + b"\n" for r in records)
    assert list(audit.archived_records(chunked(data, size))) == records


@pytest.mark.parametrize("size", [3, 100_000])
def test_the_older_records_wrapper_is_read(size):
    records = [record(m) for m in range(3)]
    data = (" \n" + json.dumps({"records": records}, indent=1)).encode()
    assert list(audit.archived_records(chunked(data, size))) == records


def test_an_unparseable_line_is_counted_not_fatal():
    aggregator = audit.FailureAggregator([VAULT], NOW - timedelta(hours=1), NOW)
    data = json.dumps(record(1)).encode() + b"\n{not json\n" + json.dumps(record(2)).encode()
    for item in audit.archived_records([data]):
        aggregator.add_record(item)
    assert aggregator.unreadable == 1
    assert [g.count for g in aggregator.groups()] == [2]


def test_the_aggregator_groups_like_the_kql_inside_the_window_and_vaults():
    aggregator = audit.FailureAggregator([VAULT], NOW - timedelta(hours=1), NOW)
    disabled = "Operation unwrapKey is not allowed on a disabled key."
    firewall = "Client address is not authorized and caller is not a trusted service.\r\nClient address: 10.0.0.1"
    for item in [
        record(5, description=disabled), record(15, description=disabled, operation="KeyWrap"),
        record(10, description=firewall), record(11, description=firewall.replace("10.0.0.1", "10.0.0.2")),
        record(20, status=200), record(30, status=403, operation="KeyCreate"),
        record(90, description=disabled),  # outside the window
        record(5, description=disabled, vault=OTHER_VAULT),  # not a managed vault
    ]:
        aggregator.add_record(item)
    groups = {g.failure_class: g for g in aggregator.groups()}
    assert set(groups) == {FailureClass.KEY_DISABLED, FailureClass.FIREWALL}
    assert groups[FailureClass.KEY_DISABLED].count == 2
    assert groups[FailureClass.KEY_DISABLED].operations == ("KeyUnwrap", "KeyWrap")
    assert groups[FailureClass.KEY_DISABLED].first_seen == NOW - timedelta(minutes=15)
    assert groups[FailureClass.KEY_DISABLED].last_seen == NOW - timedelta(minutes=5)
    assert groups[FailureClass.FIREWALL].count == 2  # two addresses, one cause: one group
    assert groups[FailureClass.FIREWALL].source == "archive"
    assert aggregator.sources() == [VaultSource(VAULT, "archive", 6)]


def test_the_archive_blobs_of_a_window_are_azures_hourly_layout():
    hours = audit.archive_hours(datetime(2026, 11, 30, 22, 30, tzinfo=UTC), datetime(2026, 12, 1, 0, 10, tzinfo=UTC))
    assert [h.hour for h in hours] == [22, 23, 0]
    assert audit.archive_prefix(VAULT_ID, hours[-1]) == (
        "resourceId=/SUBSCRIPTIONS/5F2A1C3E-0000-4000-8000-000000000001/RESOURCEGROUPS/RG-CMK/PROVIDERS/"
        "MICROSOFT.KEYVAULT/VAULTS/KV-CMK/y=2026/m=12/d=01/h=00/m=00/PT1H.json")


# --- window and renderings ------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "hours"), [("24h", 24), ("1h", 1), ("7d", 168), ("30d", 720), (" 48H ", 48)])
def test_since_accepts_hours_and_days(text, hours):
    assert audit.parse_since(text) == timedelta(hours=hours)


@pytest.mark.parametrize("text", ["0h", "721h", "31d", "24", "h", "-1h", "1.5h", "", "1_0h", "\u0663d"])
def test_since_refuses_anything_else(text):
    with pytest.raises(InvalidInput):
        audit.parse_since(text)


def sample_report(*, partial: str | None = None) -> audit.AuditReport:
    groups = audit.attribute_storage_accounts(audit.groups_from_rows([
        row(),
        row(StatusCode=404, ResultSignature="NotFound", SampleDescription="", KeyName="a-very-long-key-name-x" * 3),
        row(Caller="", CallerApp=""),
    ]), {STORAGE_MI: ["stcontosoprodwesteurope1"]})
    return audit.report_of(NOW - timedelta(hours=24), NOW, groups, sources=[VaultSource(VAULT, "AZKVAuditLogs", 40)],
                           managed_vaults=[VAULT, OTHER_VAULT], partial_detail=partial)


def test_the_table_fits_80_columns_and_says_what_to_do():
    text = audit.render_table(sample_report(partial="PartialError: Query result set has exceeded the internal "
                                                    "record count limit 500000 (E_QUERY_RESULT_SET_TOO_LARGE)"))
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert any(line.startswith("PARTIAL RESULT:") for line in lines)
    assert any(line.startswith("key_deleted ") for line in lines)
    assert any(line.startswith("permission: Grant the caller") for line in lines)
    assert "stcontosoprodwe..." in text  # the caller's storage account, cut to its column
    assert "21 failed request(s) in 3 group(s)" in text
    assert "https://kv-other.vault.azure.net" in text


def test_wide_prints_vaults_keys_versions_and_callers_whole():
    report = sample_report()
    text = audit.render_table(report, wide=True)
    assert "stcontosoprodwesteurope1" in text and "..." not in text
    assert all(f"{group.vault}/{group.key}/{group.version}".rstrip("/") in text for group in report.groups)
    assert max(len(line) for line in text.splitlines()) > 80


def test_an_empty_report_says_so():
    text = audit.render_table(audit.report_of(NOW - timedelta(hours=1), NOW, [], managed_vaults=[]))
    assert "No failed KeyWrap, KeyUnwrap or KeyGet." in text


def test_json_is_one_document_with_every_group():
    document = json.loads(audit.render_json(sample_report(partial="PartialError: x")))
    assert document["partial"] is True and document["partialDetail"] == "PartialError: x"
    assert document["failures"] == 21 and len(document["groups"]) == 3
    assert document["byClass"] == {"key_deleted": 7, "permission": 14}
    first = document["groups"][0]
    assert first["class"] == "key_deleted" and first["severity"] == "critical"
    assert document["vaultsWithoutLogs"] == [OTHER_VAULT]
    assert document["window"]["hours"] == 24


# --- the use case ---------------------------------------------------------------------------------


def test_scan_audit_asks_for_the_configured_window_over_the_managed_vaults():
    settings = load_settings({"CMK_VAULTS": f"{VAULT},{OTHER_VAULT}", "CMK_AUDIT_WINDOW_HOURS": "6"})
    log = FakeAuditLog(failure_groups=audit.groups_from_rows([row()]), partial_detail="PartialError: limit")
    clock = FakeClock(NOW)
    report = service.scan_audit(fake_dependencies(settings, audit=log, clock=clock))
    assert log.asked == [((VAULT, OTHER_VAULT), NOW - timedelta(hours=6), NOW)]
    assert report is not None and report.partial and report.groups[0].count == 7


def test_scan_audit_takes_an_explicit_window_and_checks_it():
    settings = load_settings({"CMK_VAULTS": VAULT})
    log = FakeAuditLog(failure_groups=[])
    deps = fake_dependencies(settings, audit=log, clock=FakeClock(NOW))
    service.scan_audit(deps, timedelta(days=2))
    assert log.asked[0][1] == NOW - timedelta(days=2)
    with pytest.raises(InvalidInput):
        service.scan_audit(deps, timedelta(days=31))


def test_scan_audit_without_an_audit_log_returns_none():
    settings = load_settings({"CMK_VAULTS": VAULT})
    assert service.scan_audit(fake_dependencies(settings, audit=FakeAuditLog())) is None


def test_group_fields_are_self_contained_for_the_compliance_rules():
    (group,) = audit.groups_from_rows([row()])
    assert isinstance(group, AuditFailureGroup)
    document = group.as_json()
    assert document["keyId"] == f"{VAULT}/keys/cmk/{VERSION}"
    assert document["remediation"] == group.remediation and document["severity"] == "high"


# --- settings -------------------------------------------------------------------------------------


def test_the_audit_settings_default_to_no_archive_and_a_day():
    settings = load_settings({"CMK_VAULTS": VAULT})
    assert settings.audit_archive is None
    assert settings.audit_window_hours == 24


def test_the_archive_setting_is_an_account_and_a_container():
    settings = load_settings({"CMK_VAULTS": VAULT, "CMK_AUDIT_ARCHIVE": "staudit/insights-logs-auditevent",
                              "CMK_AUDIT_WINDOW_HOURS": "720"})
    assert settings.audit_archive is not None
    assert (settings.audit_archive.account, settings.audit_archive.container) == ("staudit", "insights-logs-auditevent")
    assert str(settings.audit_archive) == "staudit/insights-logs-auditevent"
    assert settings.audit_window_hours == 720


@pytest.mark.parametrize(("name", "value"), [
    ("CMK_AUDIT_ARCHIVE", "staudit"), ("CMK_AUDIT_ARCHIVE", "St-Audit/logs"), ("CMK_AUDIT_ARCHIVE", "staudit/"),
    ("CMK_AUDIT_WINDOW_HOURS", "0"), ("CMK_AUDIT_WINDOW_HOURS", "721"), ("CMK_AUDIT_WINDOW_HOURS", "a day"),
])
def test_invalid_audit_settings_are_refused_by_name(name, value):
    with pytest.raises(SettingsError) as info:
        load_settings({"CMK_VAULTS": VAULT, name: value})
    assert name in str(info.value)

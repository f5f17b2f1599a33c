"""Log Analytics emulator: real KQL over the audit tables (AzureDiagnostics, AZKVAuditLogs), through the
unmodified LogsQueryClient. Rows come from synthetic AuditEvent records through emulators.audit.AuditSink,
so the tables have the columns the sandbox's vaults produce."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError
from azure.monitor.query import LogsQueryClient, LogsQueryPartialResult, LogsQueryResult, LogsQueryStatus

from emulators.audit import SANDBOX_WORKSPACE_RESOURCE_ID, AuditSink, DiagnosticRoute
from emulators.clock import SandboxClock
from emulators.keyvault.ca import SandboxCA
from emulators.keyvault.credential import SandboxCredential
from emulators.kql import KqlEngine, RowLog, TableSource, audit_tables
from emulators.query_endpoints import LogAnalyticsEmulator, parse_timespan

pytestmark = pytest.mark.integration

SUB = "11111111-1111-4111-8111-111111111111"
VAULT_ID = f"/subscriptions/{SUB}/resourceGroups/rg-keys/providers/Microsoft.KeyVault/vaults/kv-cmk"
OTHER_VAULT_ID = f"/subscriptions/{SUB}/resourceGroups/rg-keys/providers/Microsoft.KeyVault/vaults/kv-other"
STORAGE_APP = "0a0a0a0a-1111-4222-8333-444444444444"
CONTROLLER_APP = "0b0b0b0b-1111-4222-8333-444444444444"
FAILED_WRAPS = (
    "AZKVAuditLogs"
    ' | where OperationName in ("KeyWrap","KeyUnwrap") and HttpStatusCode >= 400'
    " | project TimeGenerated, _ResourceId, OperationName, HttpStatusCode, ResultSignature, Id, CallerIpAddress,"
    " Identity, ClientInfo"
)

# (minutes ago, vault, operation, status, caller app)
EVENTS = [
    (5, VAULT_ID, "KeyUnwrap", 403, STORAGE_APP),
    (10, VAULT_ID, "KeyUnwrap", 200, STORAGE_APP),
    (20, VAULT_ID, "KeyWrap", 429, STORAGE_APP),
    (30, VAULT_ID, "KeyGet", 404, CONTROLLER_APP),
    (50, OTHER_VAULT_ID, "KeyWrap", 200, STORAGE_APP),
    (90, VAULT_ID, "KeyUnwrap", 401, STORAGE_APP),
    (180, OTHER_VAULT_ID, "KeyUnwrap", 403, STORAGE_APP),
    (600, VAULT_ID, "KeyCreate", 200, CONTROLLER_APP),
]
STATUS_TEXT = {200: "OK", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 429: "TooManyRequests"}


def audit_event(now: datetime, event: tuple[int, str, str, int, str]) -> dict[str, Any]:
    """An AuditEvent resource-log record, as the Key Vault emulator publishes it."""
    minutes_ago, vault_id, operation, status, app = event
    vault_name = vault_id.rsplit("/", 1)[1]
    key_id = f"https://{vault_name}.vault.azure.net/keys/cmk/0123456789abcdef0123456789abcdef"
    return {
        "time": (now - timedelta(minutes=minutes_ago)).isoformat(),
        "resourceId": vault_id,
        "operationName": operation,
        "operationVersion": "7.5",
        "category": "AuditEvent",
        "resultType": "Success" if status < 400 else STATUS_TEXT[status],
        "resultSignature": STATUS_TEXT[status],
        "resultDescription": "",
        "durationMs": 12,
        "callerIpAddress": "10.1.2.3",
        "correlationId": str(uuid.uuid4()),
        "identity": {"claim": {"appid": app, "http://schemas.microsoft.com/identity/claims/objectidentifier": app}},
        "properties": {
            "id": key_id,
            "requestUri": f"{key_id}/{operation.lower()}?api-version=7.5",
            "httpStatusCode": status,
            "clientInfo": "azsdk-python-keyvault-keys/4.11",
            "isRbacAuthorized": True,
            "isAccessPolicyMatch": False,
            "trustedService": "AzureStorage" if app == STORAGE_APP else None,
        },
    }


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> SandboxCA:
    return SandboxCA(tmp_path_factory.mktemp("la-ca"))


@pytest.fixture(scope="module")
def clock() -> SandboxClock:
    return SandboxClock()


def filled_sink(clock: SandboxClock) -> AuditSink:
    sink = AuditSink()
    for vault in (VAULT_ID, OTHER_VAULT_ID):  # two diagnostic settings each: to both tables of the workspace
        sink.set_routes(vault, [DiagnosticRoute(workspace=SANDBOX_WORKSPACE_RESOURCE_ID, dedicated=True),
                                DiagnosticRoute(workspace=SANDBOX_WORKSPACE_RESOURCE_ID)])
    now = clock.now()
    for event in EVENTS:
        sink.publish(audit_event(now, event))
    assert sink.rejected == 0
    return sink


@pytest.fixture(scope="module")
def sink(clock: SandboxClock) -> AuditSink:
    return filled_sink(clock)


@pytest.fixture(scope="module")
def la(ca: SandboxCA, sink: AuditSink, clock: SandboxClock) -> Iterator[LogAnalyticsEmulator]:
    with LogAnalyticsEmulator(ca, tables=audit_tables(sink), workspace_id=sink.workspace_id, clock=clock) as running:
        yield running


@pytest.fixture(scope="module")
def client(la: LogAnalyticsEmulator, ca: SandboxCA) -> Iterator[LogsQueryClient]:
    with LogsQueryClient(SandboxCredential(), endpoint=la.endpoint + "/v1", connection_verify=str(ca.ca_path)) as logs:
        yield logs


def ok(result: LogsQueryResult | LogsQueryPartialResult) -> LogsQueryResult:
    assert isinstance(result, LogsQueryResult), result
    assert result.status == LogsQueryStatus.SUCCESS
    return result


def error_body(err: HttpResponseError) -> dict[str, Any]:
    assert err.response is not None
    return json.loads(err.response.text())


def test_failed_wrap_unwrap_query_from_azkvauditlogs(client: LogsQueryClient, la: LogAnalyticsEmulator) -> None:
    result = ok(client.query_workspace(la.workspace_id, FAILED_WRAPS, timespan=None))

    table = result.tables[0]
    assert table.name == "PrimaryResult"
    assert table.columns == [
        "TimeGenerated",
        "_ResourceId",
        "OperationName",
        "HttpStatusCode",
        "ResultSignature",
        "Id",
        "CallerIpAddress",
        "Identity",
        "ClientInfo",
    ]
    assert table.columns_types == [
        "datetime",
        "string",
        "string",
        "int",
        "string",
        "string",
        "string",
        "dynamic",
        "string",
    ]
    got = sorted((row["_ResourceId"], row["OperationName"], row["HttpStatusCode"]) for row in table.rows)
    assert got == sorted(
        (vault.lower(), op, status)
        for _, vault, op, status, _ in EVENTS
        if op in ("KeyWrap", "KeyUnwrap") and status >= 400
    )
    first = table.rows[0]
    assert isinstance(first["TimeGenerated"], datetime)
    assert json.loads(first["Identity"])["claim"]["appid"] == STORAGE_APP  # dynamic arrives as JSON text


def test_summarize_countif_and_count_by_vault(client: LogsQueryClient, la: LogAnalyticsEmulator) -> None:
    query = (
        "AZKVAuditLogs | where OperationName in ('KeyWrap', 'KeyUnwrap')"
        " | summarize failures = countif(HttpStatusCode >= 400), total = count() by _ResourceId"
        " | order by _ResourceId asc"
    )

    table = ok(client.query_workspace(la.workspace_id, query, timespan=None)).tables[0]

    assert table.columns_types == ["string", "long", "long"]
    assert [list(row) for row in table.rows] == [[VAULT_ID.lower(), 3, 4], [OTHER_VAULT_ID.lower(), 1, 2]]


def test_azure_diagnostics_keeps_its_own_column_names(client: LogsQueryClient, la: LogAnalyticsEmulator) -> None:
    query = (
        'AzureDiagnostics | where ResourceProvider == "MICROSOFT.KEYVAULT" and Category == "AuditEvent"'
        ' | where OperationName in ("KeyWrap", "KeyUnwrap") and httpStatusCode_d >= 400'
        " | project TimeGenerated, Resource, OperationName, httpStatusCode_d, ResultSignature, id_s,"
        " CallerIPAddress, identity_claim_appid_g"
        " | order by TimeGenerated desc"
    )

    table = ok(client.query_workspace(la.workspace_id, query, timespan=None)).tables[0]

    assert table.columns_types == ["datetime", "string", "string", "real", "string", "string", "string", "guid"]
    assert [(row["Resource"], row["httpStatusCode_d"]) for row in table.rows] == [
        ("KV-CMK", 403.0),
        ("KV-CMK", 429.0),
        ("KV-CMK", 401.0),
        ("KV-OTHER", 403.0),
    ]
    assert table.rows[0]["identity_claim_appid_g"] == STORAGE_APP
    assert table.rows[0]["id_s"].startswith("https://kv-cmk.vault.azure.net/keys/cmk/")


def test_timespan_scopes_time_generated(client: LogsQueryClient, la: LogAnalyticsEmulator, clock: SandboxClock) -> None:
    last_hour = ok(client.query_workspace(la.workspace_id, FAILED_WRAPS, timespan=timedelta(hours=1))).tables[0]
    now = clock.now()
    window = ok(
        client.query_workspace(
            la.workspace_id, FAILED_WRAPS, timespan=(now - timedelta(minutes=120), now - timedelta(minutes=15))
        )
    ).tables[0]

    assert sorted(row["HttpStatusCode"] for row in last_hour.rows) == [403, 429]
    assert sorted(row["HttpStatusCode"] for row in window.rows) == [401, 429]


def test_ago_reads_the_sandbox_clock(ca: SandboxCA) -> None:
    clock = SandboxClock()
    sink = filled_sink(clock)
    query = "AZKVAuditLogs | where TimeGenerated > ago(1h) | count"
    with (
        LogAnalyticsEmulator(ca, tables=audit_tables(sink), clock=clock) as la,
        LogsQueryClient(SandboxCredential(), endpoint=la.endpoint + "/v1", connection_verify=str(ca.ca_path)) as logs,
    ):
        before = ok(logs.query_workspace(la.workspace_id, query, timespan=None)).tables[0].rows[0][0]
        clock.advance(timedelta(days=2))
        after = ok(logs.query_workspace(la.workspace_id, query, timespan=None)).tables[0].rows[0][0]
        windowed = ok(logs.query_workspace(la.workspace_id, "AZKVAuditLogs | count", timespan=timedelta(days=1)))

    assert before == sum(1 for minutes, *_ in EVENTS if minutes < 60)
    assert after == 0
    assert windowed.tables[0].rows[0][0] == 0


def test_too_many_rows_is_a_partial_result(client: LogsQueryClient, la: LogAnalyticsEmulator) -> None:
    la.service.max_rows = 2
    try:
        result = client.query_workspace(la.workspace_id, "AZKVAuditLogs | project OperationName", timespan=None)
    finally:
        la.service.max_rows = 500_000

    assert isinstance(result, LogsQueryPartialResult)
    assert result.status == LogsQueryStatus.PARTIAL
    assert len(result.partial_data[0].rows) == 2
    assert result.partial_error is not None
    assert result.partial_error.code == "PartialError"
    assert "E_QUERY_RESULT_SET_TOO_LARGE" in str(result.partial_error.details)


def test_syntax_error_fails_the_query(client: LogsQueryClient, la: LogAnalyticsEmulator) -> None:
    with pytest.raises(HttpResponseError) as caught:
        client.query_workspace(la.workspace_id, "AZKVAuditLogs | where OperationName ==", timespan=None)

    assert caught.value.status_code == 400
    error = error_body(caught.value)["error"]
    assert (error["code"], error["message"]) == ("BadArgumentError", "The request had some invalid properties")
    assert error["innererror"]["code"] == "SyntaxError"


def test_unknown_column_is_a_semantic_error(client: LogsQueryClient, la: LogAnalyticsEmulator) -> None:
    with pytest.raises(HttpResponseError) as caught:
        client.query_workspace(la.workspace_id, "AZKVAuditLogs | where NoSuchColumn > 1", timespan=None)

    inner = error_body(caught.value)["error"]["innererror"]
    assert inner["code"] == "SemanticError"
    assert inner["innererror"]["message"] == "Failed to resolve scalar expression named 'NoSuchColumn'"


def test_unsupported_construct_fails_rather_than_answering(client: LogsQueryClient, la: LogAnalyticsEmulator) -> None:
    with pytest.raises(HttpResponseError) as caught:
        client.query_workspace(la.workspace_id, "AZKVAuditLogs | evaluate bag_unpack(Identity)", timespan=None)

    assert caught.value.status_code == 400
    error = error_body(caught.value)["error"]
    assert error["code"] == "BadArgumentError"
    assert error["innererror"]["innererror"]["code"] == "SandboxUnsupportedKql"


def test_unknown_workspace_is_not_found(client: LogsQueryClient) -> None:
    with pytest.raises(HttpResponseError) as unknown:
        client.query_workspace(str(uuid.uuid4()), "AZKVAuditLogs | count", timespan=None)
    with pytest.raises(HttpResponseError) as not_a_guid:
        client.query_workspace("my-workspace", "AZKVAuditLogs | count", timespan=None)

    assert unknown.value.status_code == 404
    assert error_body(unknown.value)["error"]["code"] == "WorkspaceNotFoundError"
    assert not_a_guid.value.status_code == 404
    assert error_body(not_a_guid.value)["error"]["code"] == "PathNotFoundError"


def test_additional_workspaces_union_their_tables(client: LogsQueryClient, la: LogAnalyticsEmulator) -> None:
    other = str(uuid.uuid4())
    extra_row = {"TimeGenerated": datetime.now().astimezone(), "OperationName": "KeyWrap", "HttpStatusCode": 500}
    la.add_workspace(
        other,
        [
            TableSource.of(
                "AZKVAuditLogs",
                [("TimeGenerated", "datetime"), ("OperationName", "string"), ("HttpStatusCode", "int")],
                lambda: [extra_row],
            )
        ],
    )

    result = ok(
        client.query_workspace(
            la.workspace_id,
            "AZKVAuditLogs | where HttpStatusCode >= 500 | count",
            timespan=None,
            additional_workspaces=[other],
        )
    )

    assert result.tables[0].rows[0][0] == 1


@pytest.mark.parametrize(
    ("text", "start_minutes", "end_minutes"),
    [
        ("PT1H", -60, 0),
        ("P1DT2H", -26 * 60, 0),
        ("PT5400.0S", -90, 0),
        ("2026-01-01T00:00:00Z/2026-01-01T02:00:00Z", None, None),
        ("2026-01-01T00:00:00Z/PT30M", None, None),
    ],
)
def test_parse_timespan(text: str, start_minutes: int | None, end_minutes: int | None) -> None:
    now = datetime.fromisoformat("2026-06-01T12:00:00+00:00")

    start, end = parse_timespan(text, now)

    if start_minutes is not None and end_minutes is not None:
        assert (start, end) == (now + timedelta(minutes=start_minutes), now + timedelta(minutes=end_minutes))
    else:
        assert start == datetime.fromisoformat("2026-01-01T00:00:00+00:00")
        assert end > start


def test_malformed_timespan_is_a_bad_argument(la: LogAnalyticsEmulator, ca: SandboxCA) -> None:
    request = urllib.request.Request(  # noqa: S310 - https to the local emulator
        f"{la.endpoint}/v1/workspaces/{la.workspace_id}/query",
        data=json.dumps({"query": "AZKVAuditLogs | count", "timespan": "yesterday"}).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer sbx.test"},
        method="POST",
    )

    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, context=ssl.create_default_context(cafile=str(ca.ca_path)), timeout=10)  # noqa: S310

    assert caught.value.code == 400
    error = json.loads(caught.value.read())["error"]
    assert (error["code"], error["innererror"]["code"]) == ("BadArgumentError", "InvalidTimespan")


def test_query_batch_answers_each_query_as_alone_with_the_unmodified_client(
        client: LogsQueryClient, la: LogAnalyticsEmulator) -> None:
    from azure.monitor.query import LogsBatchQuery, LogsQueryError

    alone = ok(client.query_workspace(la.workspace_id, FAILED_WRAPS, timespan=None))
    answers = client.query_batch([
        LogsBatchQuery(la.workspace_id, FAILED_WRAPS, timespan=None),
        LogsBatchQuery(la.workspace_id, "AZKVAuditLogs | summarize count()", timespan=timedelta(days=3650)),
        LogsBatchQuery(la.workspace_id, "AZKVAuditLogs | where", timespan=None),
        LogsBatchQuery(str(uuid.uuid4()), "AZKVAuditLogs", timespan=None),
    ])
    first, counted, broken, unknown = answers
    assert first.status == LogsQueryStatus.SUCCESS
    assert [list(row) for row in first.tables[0].rows] == [list(row) for row in alone.tables[0].rows]
    assert counted.status == LogsQueryStatus.SUCCESS and counted.tables[0].rows[0][0] == len(EVENTS)
    assert isinstance(broken, LogsQueryError) and broken.code == "BadArgumentError"
    assert isinstance(unknown, LogsQueryError) and unknown.code == "WorkspaceNotFoundError"


class CountingLog(RowLog):
    """A RowLog that remembers which ranges of rows were spooled into DuckDB."""

    def __init__(self) -> None:
        super().__init__([("TimeGenerated", "datetime"), ("OperationName", "string"), ("Identity", "dynamic")])
        self.spooled: list[tuple[int, int]] = []

    def ndjson(self, start: int, stop: int) -> str:
        self.spooled.append((start, stop))
        return super().ndjson(start, stop)


def test_a_row_log_is_loaded_once_then_only_what_was_appended_and_timespans_filter_in_duckdb() -> None:
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    first, second = CountingLog(), CountingLog()  # one log per workspace, unioned as one table
    first.extend({"TimeGenerated": now - timedelta(hours=hours), "OperationName": "KeyUnwrap",
                  "Identity": {"claim": {"oid": "a"}}} for hours in (1, 30))
    second.append({"TimeGenerated": now - timedelta(minutes=5), "OperationName": "KeyWrap"})
    engine = KqlEngine([TableSource.of_logs("AZKVAuditLogs", [first, second])])
    try:
        count = "AZKVAuditLogs | summarize count() by OperationName, Caller = tostring(Identity.claim.oid)"
        # (tostring of a null is "", as in Kusto)
        assert sorted(engine.query(count).rows) == [["KeyUnwrap", "a", 2], ["KeyWrap", "", 1]]
        first.append({"TimeGenerated": now, "OperationName": "KeyDelete"})
        day = (now - timedelta(hours=24), now)
        assert sorted(engine.query("AZKVAuditLogs | project OperationName", time_range=day).rows) == [
            ["KeyDelete"], ["KeyUnwrap"], ["KeyWrap"]]
        assert first.spooled == [(0, 2), (2, 3)] and second.spooled == [(0, 1)]
    finally:
        engine.close()

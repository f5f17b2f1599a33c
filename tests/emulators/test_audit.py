"""Audit sinks: Key Vault AuditEvent records in the Azurite archive and as Log Analytics rows."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient

from emulators.audit import (
    ARCHIVE_CONTAINER,
    AZKV_AUDIT_LOGS,
    AZURE_DIAGNOSTICS,
    SANDBOX_WORKSPACE_RESOURCE_ID,
    TABLE_COLUMNS,
    AuditError,
    AuditSink,
    DiagnosticRoute,
)
from emulators.azurite import Azurite
from emulators.bus import AuditRecord, SandboxBus

pytestmark = pytest.mark.integration

SUBSCRIPTION_ID = "5f2a1c3e-0000-4000-8000-000000000001"
OBJECT_ID = "3c1f9a57-8d2e-4b6a-9f10-2e7d5c4b3a21"
APP_ID = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "datetime": (datetime,),
    "string": (str,),
    "guid": (str,),
    "int": (int,),
    "long": (int,),
    "real": (float,),
    "bool": (bool,),
    "dynamic": (dict, list),
}


#: The storage account the archiving diagnostic settings name (its container in Azurite: staudit-insights-...).
ACCOUNT = "staudit"
#: What a vault's diagnostic settings say, as emulators/arm/insights.py passes them: archive to ACCOUNT,
#: and to the sandbox workspace's two tables (one setting with each destination type).
EVERYWHERE = (DiagnosticRoute(archive_account=ACCOUNT),
              DiagnosticRoute(workspace=SANDBOX_WORKSPACE_RESOURCE_ID, dedicated=True),
              DiagnosticRoute(workspace=SANDBOX_WORKSPACE_RESOURCE_ID))


def logged(sink: AuditSink, vault: str) -> str:
    """A new vault whose diagnostic settings send its audit records everywhere."""
    sink.set_routes(vault_id(vault), EVERYWHERE)
    return vault


def vault_id(vault: str) -> str:
    return f"/subscriptions/{SUBSCRIPTION_ID}/resourceGroups/rg-cmk/providers/Microsoft.KeyVault/vaults/{vault}"


def audit_record(
    vault: str, *, time_: str = "2026-11-30T04:21:07.1234567Z", operation: str = "KeyUnwrap", status: int = 200
) -> AuditRecord:
    """A Key Vault AuditEvent in the resource-log shape Azure writes."""
    return {
        "time": time_,
        "resourceId": vault_id(vault).upper(),
        "operationName": operation,
        "operationVersion": "7.6",
        "category": "AuditEvent",
        "resultType": "Success" if status < 400 else "Forbidden",
        "resultSignature": "OK" if status < 400 else "Forbidden",
        "resultDescription": "" if status < 400 else "Operation unwrapKey is not permitted on this key.",
        "durationMs": "16",
        "callerIpAddress": "10.1.2.3",
        "correlationId": str(uuid.uuid4()),
        "identity": {
            "claim": {
                "http://schemas.microsoft.com/identity/claims/objectidentifier": OBJECT_ID,
                "appid": APP_ID,
            }
        },
        "properties": {
            "id": f"https://{vault}.vault.azure.net/keys/storage-kek/0123456789abcdef0123456789abcdef",
            "requestUri": f"https://{vault}.vault.azure.net/keys/storage-kek/0123/unwrapkey?api-version=7.6",
            "httpStatusCode": status,
            "clientInfo": "azsdk-python-keyvault-keys/4.11.3 Python/3.11.7",
            "isRbacAuthorized": False,
            "isAccessPolicyMatch": status < 400,
            "trustedService": "Microsoft.Storage",
        },
    }


def unique_vault() -> str:
    return f"kv-{uuid.uuid4().hex[:10]}"


def archive_prefix(vault: str) -> str:
    return (
        f"resourceId=/SUBSCRIPTIONS/{SUBSCRIPTION_ID.upper()}/RESOURCEGROUPS/RG-CMK"
        f"/PROVIDERS/MICROSOFT.KEYVAULT/VAULTS/{vault.upper()}/"
    )


def read_lines(container: ContainerClient, blob_name: str) -> list[dict[str, Any]]:
    text = container.download_blob(blob_name).readall().decode()
    return [json.loads(line) for line in text.splitlines() if line]


@pytest.fixture
def bus() -> SandboxBus:
    return SandboxBus()


@pytest.fixture
def archive(azurite: Azurite) -> ContainerClient:
    # The account's insights-logs-auditevent container, where Azurite keeps it (emulators/arm/blobproxy.py).
    return BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client(
        f"{ACCOUNT}-{ARCHIVE_CONTAINER}")


@pytest.fixture
def sink(bus: SandboxBus, azurite: Azurite) -> Iterator[AuditSink]:
    # A long interval: these tests flush explicitly, so batching never races an assertion.
    with AuditSink(bus, connection_string=azurite.connection_string, flush_interval_seconds=60) as running:
        yield running


def test_records_are_archived_as_json_lines_in_hourly_append_blobs(
    sink: AuditSink, bus: SandboxBus, archive: ContainerClient
) -> None:
    vault = logged(sink, unique_vault())
    first = audit_record(vault)
    second = audit_record(vault, time_="2026-11-30T04:59:59.9999999Z", operation="KeyWrap")
    next_hour = audit_record(vault, time_="2026-11-30T05:00:00.0000001Z", status=403)
    for record in (first, second, next_hour):
        bus.publish_audit(record)
    sink.flush()

    prefix = archive_prefix(vault)
    blobs = {blob.name: blob for blob in archive.list_blobs(name_starts_with=prefix)}
    hour_04 = f"{prefix}y=2026/m=11/d=30/h=04/m=00/PT1H.json"
    hour_05 = f"{prefix}y=2026/m=11/d=30/h=05/m=00/PT1H.json"
    assert set(blobs) == {hour_04, hour_05}
    assert blobs[hour_04].blob_type == "AppendBlob"
    assert read_lines(archive, hour_04) == [first, second]
    assert read_lines(archive, hour_05) == [next_hour]


def test_later_batches_append_to_the_same_blob_and_stop_flushes(
    bus: SandboxBus, azurite: Azurite, archive: ContainerClient
) -> None:
    vault = unique_vault()
    records = [audit_record(vault, operation=f"Key{n}") for n in ("Get", "Wrap", "Unwrap")]
    with AuditSink(bus, connection_string=azurite.connection_string, flush_interval_seconds=60) as sink:
        logged(sink, vault)
        bus.publish_audit(records[0])
        sink.flush()
        bus.publish_audit(records[1])
        sink.flush()
        bus.publish_audit(records[2])  # still pending: stop() must write it
    assert sink.archived == 3
    blob_name = f"{archive_prefix(vault)}y=2026/m=11/d=30/h=04/m=00/PT1H.json"
    assert read_lines(archive, blob_name) == records


def test_background_flush_archives_without_being_asked(
    bus: SandboxBus, azurite: Azurite, archive: ContainerClient
) -> None:
    vault = unique_vault()
    with AuditSink(bus, connection_string=azurite.connection_string, flush_interval_seconds=0.05) as sink:
        logged(sink, vault)
        bus.publish_audit(audit_record(vault))
        deadline = time.monotonic() + 10
        while sink.archived == 0:
            assert time.monotonic() < deadline, "the background flush did not run"
            time.sleep(0.02)
    assert len(list(archive.list_blobs(name_starts_with=archive_prefix(vault)))) == 1


def test_rows_carry_exactly_the_typed_columns_of_both_tables(sink: AuditSink, bus: SandboxBus) -> None:
    vault = logged(sink, unique_vault())
    record = audit_record(vault, status=403)
    bus.publish_audit(record)

    for table in (AZURE_DIAGNOSTICS, AZKV_AUDIT_LOGS):
        columns = sink.columns(table)
        [row] = [r for r in sink.rows(table) if vault in r["_ResourceId"]]
        assert list(row) == [column.name for column in columns]
        for column in columns:
            value = row[column.name]
            assert value is None or isinstance(value, PYTHON_TYPES[column.type]), (table, column, value)

    [legacy] = [r for r in sink.rows(AZURE_DIAGNOSTICS) if vault in r["_ResourceId"]]
    assert legacy["TimeGenerated"] == datetime(2026, 11, 30, 4, 21, 7, 123456, tzinfo=UTC)
    assert legacy["ResourceId"] == vault_id(vault).upper()
    assert legacy["_ResourceId"] == vault_id(vault).lower()
    assert (legacy["Resource"], legacy["ResourceGroup"]) == (vault.upper(), "RG-CMK")
    assert (legacy["ResourceProvider"], legacy["ResourceType"], legacy["Category"]) == (
        "MICROSOFT.KEYVAULT",
        "VAULTS",
        "AuditEvent",
    )
    assert (legacy["OperationName"], legacy["ResultType"], legacy["ResultSignature"]) == (
        "KeyUnwrap",
        "Forbidden",
        "Forbidden",
    )
    assert legacy["httpStatusCode_d"] == 403.0
    assert legacy["id_s"] == record["properties"]["id"]
    assert legacy["requestUri_s"] == record["properties"]["requestUri"]
    assert (legacy["identity_claim_oid_g"], legacy["identity_claim_appid_g"]) == (OBJECT_ID, APP_ID)
    assert (legacy["CallerIPAddress"], legacy["DurationMs"]) == ("10.1.2.3", 16)
    assert legacy["CorrelationId"] == record["correlationId"]
    assert legacy["clientInfo_s"] == record["properties"]["clientInfo"]
    assert (legacy["isRbacAuthorized_b"], legacy["isAccessPolicyMatch_b"]) == (False, False)

    [dedicated] = [r for r in sink.rows(AZKV_AUDIT_LOGS) if vault in r["_ResourceId"]]
    assert dedicated["_ResourceId"] == vault_id(vault).lower()
    assert (dedicated["OperationName"], dedicated["HttpStatusCode"], dedicated["ResultSignature"]) == (
        "KeyUnwrap",
        403,
        "Forbidden",
    )
    assert dedicated["Identity"] == record["identity"]
    properties = record["properties"]
    assert (dedicated["Id"], dedicated["RequestUri"]) == (properties["id"], properties["requestUri"])
    assert (dedicated["CallerIpAddress"], dedicated["ClientInfo"]) == ("10.1.2.3", properties["clientInfo"])
    assert (dedicated["IsRbacAuthorized"], dedicated["IsAccessPolicyMatch"], dedicated["TrustedService"]) == (
        False,
        False,
        "Microsoft.Storage",
    )
    assert (dedicated["DurationMs"], dedicated["Category"], dedicated["OperationVersion"]) == (16, "AuditEvent", "7.6")


def test_only_vaults_with_a_diagnostic_setting_are_kept(
    bus: SandboxBus, azurite: Azurite, archive: ContainerClient
) -> None:
    archived_only, dedicated_only, elsewhere, silent = (unique_vault() for _ in range(4))
    other_workspace = SANDBOX_WORKSPACE_RESOURCE_ID.replace("log-cmk-controller", "log-elsewhere")
    with AuditSink(bus, connection_string=azurite.connection_string, flush_interval_seconds=60) as sink:
        sink.set_routes(vault_id(archived_only), [DiagnosticRoute(archive_account=ACCOUNT)])
        sink.set_routes(vault_id(dedicated_only), [DiagnosticRoute(workspace=SANDBOX_WORKSPACE_RESOURCE_ID.upper(),
                                                                   dedicated=True)])
        sink.set_routes(vault_id(elsewhere), [DiagnosticRoute(workspace=other_workspace)])
        for vault in (archived_only, dedicated_only, elsewhere, silent):
            bus.publish_audit(audit_record(vault))
        sink.flush()
        legacy = {row["Resource"] for row in sink.rows(AZURE_DIAGNOSTICS)}
        dedicated = {row["_ResourceId"] for row in sink.rows(AZKV_AUDIT_LOGS)}
        assert sink.routes(vault_id(silent)) == ()
        assert sum(sink.records_by_caller().values()) == 4  # every request is counted, logged or not
    assert legacy == set()  # the other workspace's rows are not the sandbox workspace's
    assert dedicated == {vault_id(dedicated_only).lower()}
    assert len(list(archive.list_blobs(name_starts_with=archive_prefix(archived_only)))) == 1
    for unarchived in (dedicated_only, elsewhere, silent):
        assert list(archive.list_blobs(name_starts_with=archive_prefix(unarchived))) == []


def test_removing_the_diagnostic_settings_stops_collection(sink: AuditSink, bus: SandboxBus) -> None:
    vault = logged(sink, unique_vault())
    bus.publish_audit(audit_record(vault))
    sink.set_routes(vault_id(vault), [])
    bus.publish_audit(audit_record(vault))
    assert len([r for r in sink.rows(AZKV_AUDIT_LOGS) if vault in r["_ResourceId"]]) == 1
    assert sink.routes(vault_id(vault)) == ()


def test_a_malformed_record_is_rejected_without_failing_the_publisher(sink: AuditSink, bus: SandboxBus) -> None:
    bus.publish_audit({"time": "not a time", "resourceId": vault_id(logged(sink, unique_vault()))})
    bus.publish_audit({"time": "2026-11-30T04:21:07Z", "resourceId": "/subscriptions/x/storageAccounts/y"})
    assert sink.rejected == 2


def test_tables_and_settings_are_checked() -> None:
    assert set(TABLE_COLUMNS) == {AZURE_DIAGNOSTICS, AZKV_AUDIT_LOGS}
    sink = AuditSink()
    with pytest.raises(AuditError):
        sink.rows("AzureActivity")
    with pytest.raises(AuditError):
        sink.set_routes("/subscriptions/x/resourceGroups/y/providers/Microsoft.Storage/storageAccounts/z", EVERYWHERE)

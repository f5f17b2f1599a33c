"""A key rotated in the emulated vault reaches on_key_event through Event Grid and the local Functions host.

Emulated Key Vault -> SandboxBus -> Event Grid delivery (handshake first) -> local Functions host ->
on_key_event -> the ledger in Azurite; the vault's audit records land in the archive and the rows. The vault
is at its Azure host name (https://kv-e2e.vault.azure.net) through the sandbox's proxy, which the host's
environment names, as the sandbox's env file does.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from azure.data.tables import TableClient
from azure.keyvault.keys import KeyClient
from azure.storage.blob import ContainerClient

from emulators.audit import AZKV_AUDIT_LOGS, SANDBOX_WORKSPACE_RESOURCE_ID, AuditSink, DiagnosticRoute
from emulators.bus import SandboxBus
from emulators.clock import SandboxClock
from emulators.egress_proxy import EgressProxy
from emulators.eventgrid import EventGridEmulator, WebhookSubscription
from emulators.functions_host import LocalFunctionsHost
from emulators.keyvault import KeyVaultEmulator
from tests.e2e.polling import wait_for
from tests.support.egress import proxy_settings, through_proxy

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
OPERATOR = "0a000000-0000-0000-0000-0000000000a1"
ARCHIVE_ACCOUNT = f"stlogs{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def sandbox(azurite, tmp_path_factory):
    clock, bus = SandboxClock(), SandboxBus()
    table = f"ledger{uuid.uuid4().hex[:8]}"
    with (
        EgressProxy() as proxy,
        KeyVaultEmulator(clock, bus, directory=tmp_path_factory.mktemp("kv"), proxy=proxy) as keyvault,
        through_proxy(proxy),
        EventGridEmulator(bus, clock=clock, dead_letter_connection_string=azurite.connection_string) as eventgrid,
        AuditSink(bus, connection_string=azurite.connection_string, flush_interval_seconds=0.2) as audit,
    ):
        vault = keyvault.add_vault("kv-e2e", access_policies=[{"objectId": OPERATOR, "permissions": {"keys": ["all"]}}])
        # the vault's diagnostic settings: to the workspace (resource-specific table) and to a storage archive
        audit.set_routes(vault.resource_id, [DiagnosticRoute(workspace=SANDBOX_WORKSPACE_RESOURCE_ID, dedicated=True),
                                             DiagnosticRoute(archive_account=ARCHIVE_ACCOUNT)])
        values = {
            "AzureWebJobsStorage": azurite.connection_string,
            "CMK_VAULTS": vault.origin,  # https://kv-e2e.vault.azure.net
            **proxy_settings(proxy),
            "CMK_LEDGER_TABLE": table,
            "CMK_WORK_QUEUE": f"work-{uuid.uuid4().hex[:8]}",
            "CMK_SWEEP_SCHEDULE": "0 0 */6 * * *",
            "CMK_AUDIT_SCHEDULE": "0 */15 * * * *",
        }
        with LocalFunctionsHost(ROOT, values, work_dir=tmp_path_factory.mktemp("host")) as host:
            status = eventgrid.create_subscription(WebhookSubscription(
                name="on-key-event", endpoint_url=host.eventgrid_webhook("on_key_event"), topic=vault.resource_id,
                included_event_types=("Microsoft.KeyVault.KeyNewVersionCreated", "Microsoft.KeyVault.KeyNearExpiry",
                                      "Microsoft.KeyVault.KeyExpired"),
                dead_letter_container="deadletter", retry_time_scale=0.001,
            ))
            assert status.provisioning_state == "Succeeded"
            yield {"keyvault": keyvault, "vault": vault, "eventgrid": eventgrid, "audit": audit,
                   "ledger": TableClient.from_connection_string(azurite.connection_string, table_name=table),
                   "azurite": azurite, "proxy": proxy}


def test_rotation_events_reach_on_key_event_and_are_claimed(sandbox):
    assert sandbox["vault"].uri == "https://kv-e2e.vault.azure.net/"
    keys = KeyClient(sandbox["vault"].uri, sandbox["keyvault"].credential(OPERATOR),
                     connection_verify=sandbox["keyvault"].ca_path)
    created = keys.create_rsa_key("storage-cmk", size=2048)
    rotated = keys.rotate_key("storage-cmk")
    assert created.properties.version != rotated.properties.version

    eventgrid = sandbox["eventgrid"]
    assert eventgrid.wait_until_idle(60)
    records = [record for record in eventgrid.deliveries("on-key-event")
               if record.event_type == "Microsoft.KeyVault.KeyNewVersionCreated"]
    assert len(records) == 2
    assert all(record.state == "delivered" for record in records)

    def claimed() -> set[str]:
        return {entity["EventId"] for entity in sandbox["ledger"].list_entities()
                if entity["PartitionKey"].startswith("event-")}  # the table also holds alert states

    assert wait_for(lambda: {record.event_id for record in records} <= claimed())
    assert sandbox["proxy"].refused == []


def test_the_vault_audit_trail_is_archived_and_queryable(sandbox):
    audit = sandbox["audit"]
    audit.flush()
    operations = {row["OperationName"] for row in audit.rows(AZKV_AUDIT_LOGS)}
    assert {"KeyCreate", "KeyRotate"} <= operations
    archive = ContainerClient.from_connection_string(sandbox["azurite"].connection_string,
                                                     audit.archive_container(ARCHIVE_ACCOUNT))
    lines = [json.loads(line) for blob in archive.list_blobs()
             for line in archive.download_blob(blob.name).readall().decode().splitlines() if line]
    assert {"KeyCreate", "KeyRotate"} <= {record["operationName"] for record in lines}
    assert all(record["category"] == "AuditEvent" for record in lines)

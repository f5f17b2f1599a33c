"""The sandbox's service faults (emulators/faults.py): the SANDBOX_FAULTS text, seeded draws, and each
fault as the unmodified SDK clients meet it from the emulated Key Vault, the emulated ARM and Azurite
behind the storage fault proxy, in the shapes of the vendored specs."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError
from azure.data.tables import TableClient
from azure.keyvault.keys import KeyClient
from azure.mgmt.storage import StorageManagementClient
from azure.mgmt.storage.models import StorageAccountUpdateParameters
from azure.storage.blob import BlobSasPermissions, BlobServiceClient, generate_blob_sas
from azure.storage.queue import QueueClient

from emulators.arm import ArmEmulator
from emulators.azurite import ACCOUNT_KEY, ACCOUNT_NAME, Azurite
from emulators.bus import SandboxBus
from emulators.clock import SandboxClock
from emulators.faults import FaultInjector, FaultPlan, FaultProfile
from emulators.keyvault import KeyVaultEmulator
from emulators.storage_fault_proxy import StorageFaultProxy
from tests.support.arm_contract import storage_contract
from tests.support.keyvault import client_kwargs
from tests.support.keyvault_contract import KeysContract, find_spec

pytestmark = pytest.mark.integration

CONTROLLER = "e0000000-0000-0000-0000-00000000fa17"
SUB = "5ca1e000-0000-4000-8000-0000000000f1"


# ---- the settings text and the draws ---------------------------------------------------------------------


def test_the_text_names_each_services_faults_latency_retry_after_and_the_seed() -> None:
    assert FaultPlan.parse("") is None
    assert FaultPlan.parse("off") is None
    assert FaultPlan.parse("standby") == FaultPlan(profiles={})
    plan = FaultPlan.parse("vault.429=0.3, vault.500=0.05,vault.reset=0.02,vault.latency=0.01,vault.retry-after=2,"
                           "arm.409=0.1,storage.lost-answer=0.01,seed=14")
    assert plan is not None and plan.seed == 14
    assert plan.profile("vault") == FaultProfile("vault", {"429": 0.3, "500": 0.05, "reset": 0.02}, 0.01, 2)
    assert plan.profile("arm").rates == {"409": 0.1}
    assert plan.profile("storage").rates == {"lost-answer": 0.01}


@pytest.mark.parametrize(("text", "complaint"), [
    ("queue.500=0.1", "unknown service"),
    ("vault.409=0.1", "cannot inject '409'"),
    ("storage.429=0.1", "cannot inject '429'"),
    ("arm.500=1.5", "not a rate"),
    ("vault.429=0.7,vault.500=0.4", "more than 1"),
    ("vault.429", "is not <service>.<fault>"),
    ("vault.429=often", "is not <service>.<fault>"),
    ("vault.latency=-1", "non-negative"),
])
def test_a_wrong_text_is_refused_naming_the_setting(text: str, complaint: str) -> None:
    with pytest.raises(ValueError, match="SANDBOX_FAULTS") as refused:
        FaultPlan.parse(text)
    assert complaint in str(refused.value)


def test_draws_are_seeded_follow_the_rates_and_spare_reads_the_write_only_faults() -> None:
    def draws(seed: int) -> list[str | None]:
        faults = FaultInjector(FaultProfile("arm", {"409": 0.2, "412": 0.1, "503": 0.1}), seed=seed)
        return [getattr(faults.draw(write=True), "kind", None) for _ in range(5000)]

    first = draws(1)
    assert first == draws(1)
    assert first != draws(2)
    counts = Counter(first)
    assert 800 <= counts["409"] <= 1200 and 350 <= counts["412"] <= 650 and 350 <= counts["503"] <= 650
    reads = FaultInjector(FaultProfile("arm", {"409": 0.5, "412": 0.5}), seed=1)
    assert {reads.draw(write=False) for _ in range(200)} == {None}
    assert reads.report()["requests"] == 200 and reads.report()["injected"] == {}


# ---- Key Vault ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyvault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyVaultEmulator]:
    with KeyVaultEmulator(SandboxClock(), SandboxBus(), directory=tmp_path_factory.mktemp("kv-faults")) as kv:
        kv.add_vault("kv-faults", access_policies=[{"objectId": CONTROLLER, "permissions": {"keys": ["all"]}}])
        yield kv
        kv.faults = None


def key_client(kv: KeyVaultEmulator) -> KeyClient:
    return KeyClient(kv.vault("kv-faults").uri, kv.credential(CONTROLLER), **client_kwargs(kv, retry_total=0))


@pytest.mark.parametrize(("kind", "code", "retry_after"), [
    ("429", "Throttled", "3"), ("503", "ServiceUnavailable", "3"), ("500", "InternalServerError", None),
])
def test_the_vault_answers_a_fault_in_key_vaults_error_shape(keyvault: KeyVaultEmulator, kind: str, code: str,
                                                            retry_after: str | None) -> None:
    client = key_client(keyvault)
    client.create_rsa_key("calm")
    keyvault.faults = FaultInjector(FaultProfile("vault", {kind: 1.0}, retry_after_seconds=3))
    try:
        with pytest.raises(HttpResponseError) as refused:
            client.get_key("calm")
    finally:
        keyvault.faults = None
    response = refused.value.response
    assert response is not None and refused.value.status_code == int(kind)
    assert response.json()["error"]["code"] == code
    KeysContract(find_spec()).validate("GetKey", int(kind), response.json())
    assert response.headers.get("Retry-After") == retry_after
    assert client.get_key("calm").name == "calm"  # faults off: answered again


def test_a_vault_reset_drops_the_request_and_a_lost_answer_drops_only_the_answer(keyvault: KeyVaultEmulator) -> None:
    client = key_client(keyvault)
    keyvault.faults = FaultInjector(FaultProfile("vault", {"reset": 1.0}))
    try:
        with pytest.raises((ServiceRequestError, ServiceResponseError)):
            client.create_rsa_key("never")
        keyvault.faults = FaultInjector(FaultProfile("vault", {"lost-answer": 1.0}))
        with pytest.raises((ServiceRequestError, ServiceResponseError)):
            client.create_rsa_key("happened")
        report = keyvault.faults.report()
    finally:
        keyvault.faults = None
    assert report["injected"] == {"lost-answer": 1}
    assert client.get_key("happened").name == "happened"
    with pytest.raises(HttpResponseError, match="KeyNotFound"):
        client.get_key("never")


# ---- ARM ------------------------------------------------------------------------------------------------


def test_arm_answers_conflicts_to_writes_only_in_arms_error_shape(tmp_path: Path) -> None:
    keyvault = KeyVaultEmulator(SandboxClock(), SandboxBus(), directory=tmp_path)
    with ArmEmulator(keyvault=keyvault, storage_tick_seconds=3600) as arm:
        arm.ensure_resource_group(SUB, "rg")
        client = StorageManagementClient(arm.credential(CONTROLLER), SUB, base_url=arm.url,
                                         connection_verify=arm.ca_path, retry_total=0,
                                         credential_scopes=["https://management.azure.com/.default"])
        refusals = {}
        with client:
            for kind in ("409", "412", "503"):
                arm.faults = FaultInjector(FaultProfile("arm", {kind: 1.0}, retry_after_seconds=2))
                with pytest.raises(HttpResponseError) as refused:
                    client.storage_accounts.update("rg", "stfaults", StorageAccountUpdateParameters(tags={"a": "b"}))
                refusals[kind] = refused.value
            arm.faults = FaultInjector(FaultProfile("arm", {"409": 0.5, "412": 0.5}))
            assert list(client.storage_accounts.list()) == []  # a read meets no conflict
    contract = storage_contract()
    for kind, error in refusals.items():
        assert error.status_code == int(kind) and error.response is not None
        contract.validate("StorageAccounts_Update", int(kind), error.response.json())
        assert error.response.headers.get("Retry-After") == ("2" if kind == "503" else None)
    assert {kind: error.response.json()["error"]["code"] for kind, error in refusals.items()  # type: ignore[union-attr]
            } == {"409": "AnotherOperationInProgress", "412": "PreconditionFailed", "503": "ServiceUnavailable"}


# ---- Azurite behind the storage fault proxy -------------------------------------------------------------


@pytest.fixture(scope="module")
def proxy(azurite: Azurite) -> Iterator[StorageFaultProxy]:
    running = StorageFaultProxy(azurite.endpoints).start()
    yield running
    running.stop()


def test_without_faults_the_proxy_passes_blob_queue_and_table_requests_through(proxy: StorageFaultProxy) -> None:
    suffix = uuid.uuid4().hex[:10]
    connection = proxy.endpoints.connection_string
    container = BlobServiceClient.from_connection_string(connection).create_container(f"through-{suffix}")
    container.upload_blob("a.txt", b"through", metadata={"m": "1"})
    assert container.download_blob("a.txt").readall() == b"through"
    # A copy within the account: Azurite checks the source (on the proxy's origin) with a request of its own.
    source = container.get_blob_client("a.txt")
    sas = generate_blob_sas(ACCOUNT_NAME, container.container_name, "a.txt", account_key=ACCOUNT_KEY,
                            permission=BlobSasPermissions(read=True), expiry=datetime.now(UTC) + timedelta(hours=1))
    assert container.get_blob_client("b.txt").start_copy_from_url(f"{source.url}?{sas}")["copy_status"] == "success"
    assert container.download_blob("b.txt").readall() == b"through"
    assert [blob.name for blob in container.list_blobs()] == ["a.txt", "b.txt"]
    queue = QueueClient.from_connection_string(connection, f"through-{suffix}")
    queue.create_queue()
    queue.send_message("ping")
    assert [message.content for message in queue.receive_messages()] == ["ping"]
    table = TableClient.from_connection_string(connection, f"through{suffix}")
    table.create_table()
    table.upsert_entity({"PartitionKey": "p", "RowKey": "r", "n": 1})
    assert table.get_entity("p", "r")["n"] == 1


def test_the_proxy_answers_storage_errors_in_each_services_shape(proxy: StorageFaultProxy) -> None:
    suffix = uuid.uuid4().hex[:10]
    connection = proxy.endpoints.connection_string
    blobs = BlobServiceClient.from_connection_string(connection, retry_total=0)
    table = TableClient.from_connection_string(connection, f"busy{suffix}", retry_total=0)
    proxy.injector = FaultInjector(FaultProfile("storage", {"503": 1.0}, retry_after_seconds=2))
    try:
        with pytest.raises(HttpResponseError) as blob_refused:
            blobs.create_container(f"busy-{suffix}")
        with pytest.raises(HttpResponseError) as table_refused:
            table.create_table()
        proxy.injector = FaultInjector(FaultProfile("storage", {"500": 1.0}))
        with pytest.raises(HttpResponseError) as internal:
            blobs.create_container(f"busy-{suffix}")
    finally:
        proxy.injector = FaultInjector(FaultProfile("storage"))
    assert blob_refused.value.status_code == 503 and blob_refused.value.error_code == "ServerBusy"
    assert blob_refused.value.response is not None and blob_refused.value.response.headers["Retry-After"] == "2"
    assert table_refused.value.status_code == 503 and table_refused.value.error_code == "ServerBusy"
    assert internal.value.status_code == 500 and internal.value.error_code == "InternalError"


def test_a_storage_reset_loses_the_request_and_a_lost_answer_only_the_answer(proxy: StorageFaultProxy) -> None:
    suffix = uuid.uuid4().hex[:10]
    connection = proxy.endpoints.connection_string
    blobs = BlobServiceClient.from_connection_string(connection, retry_total=0)
    container = blobs.create_container(f"dropped-{suffix}")
    try:
        proxy.injector = FaultInjector(FaultProfile("storage", {"reset": 1.0}))
        with pytest.raises((ServiceRequestError, ServiceResponseError)):
            container.upload_blob("never", b"x")
        proxy.injector = FaultInjector(FaultProfile("storage", {"lost-answer": 1.0}))
        with pytest.raises((ServiceRequestError, ServiceResponseError)):
            container.upload_blob("happened", b"y")
    finally:
        proxy.injector = FaultInjector(FaultProfile("storage"))
    assert sorted(blob.name for blob in container.list_blobs()) == ["happened"]

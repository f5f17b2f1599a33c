"""Azurite management: start on free loopback ports, real SDK clients work, stop leaves no process."""

from __future__ import annotations

import os
import uuid

import pytest
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueServiceClient

from emulators.azurite import ACCOUNT_NAME, Azurite, AzuriteError

pytestmark = pytest.mark.integration


def test_session_azurite_serves_blob_queue_and_table(azurite: Azurite) -> None:
    suffix = uuid.uuid4().hex[:12]
    blobs = BlobServiceClient.from_connection_string(azurite.connection_string)
    container = blobs.create_container(f"probe-{suffix}")
    container.upload_blob("hello.txt", b"hello")
    assert container.download_blob("hello.txt").readall() == b"hello"

    queues = QueueServiceClient.from_connection_string(azurite.connection_string)
    queue = queues.create_queue(f"probe-{suffix}")
    queue.send_message("ping")
    assert [message.content for message in queue.receive_messages()] == ["ping"]

    tables = TableServiceClient.from_connection_string(azurite.connection_string)
    table = tables.create_table(f"probe{suffix}")
    table.create_entity({"PartitionKey": "p", "RowKey": "r", "value": 1})
    assert table.get_entity("p", "r")["value"] == 1


def test_endpoints_are_loopback_with_the_well_known_account(azurite: Azurite) -> None:
    endpoints = azurite.endpoints
    for url in (endpoints.blob, endpoints.queue, endpoints.table):
        assert url.startswith("http://127.0.0.1:")
        assert url.endswith(f"/{ACCOUNT_NAME}")
    assert len({endpoints.blob, endpoints.queue, endpoints.table}) == 3
    assert f"BlobEndpoint={endpoints.blob};" in azurite.connection_string
    assert f"AccountName={ACCOUNT_NAME};" in azurite.connection_string


def test_context_manager_stops_the_process_group_and_removes_its_workspace() -> None:
    with Azurite() as azurite:
        pid = azurite.pid
        location = azurite.location
        assert pid is not None and location is not None and location.exists()
        BlobServiceClient.from_connection_string(azurite.connection_string).create_container("probe")
    assert not azurite.is_running()
    assert not location.exists()
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # no process of that group is left
    with pytest.raises(AzuriteError):
        _ = azurite.connection_string


def test_in_memory_azurite_needs_no_workspace() -> None:
    with Azurite(in_memory=True) as azurite:
        assert azurite.location is None
        blobs = BlobServiceClient.from_connection_string(azurite.connection_string)
        blobs.create_container("probe").upload_blob("x", b"x")
    assert not azurite.is_running()


def test_missing_executable_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(AzuriteError, match="npm ci"):
        Azurite(executable=tmp_path / "nope", location=tmp_path).start()

"""Azurite's account at its Azure host names (emulators/storage_hosts.py): the connection string as the portal
shows it, through the sandbox's egress proxy, with TLS under the account's names and its secondary location."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.core.exceptions import ServiceRequestError
from azure.storage.blob import BlobServiceClient

from emulators.azurite import Azurite
from emulators.egress_proxy import EgressProxy
from emulators.keyvault import SandboxCA
from emulators.storage_hosts import BlobHostRelay, azure_connection_string, blob_hosts

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def routed(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EgressProxy, Path]]:
    ca = SandboxCA(tmp_path_factory.mktemp("storage-hosts-ca"))
    with EgressProxy() as proxy:
        relay = BlobHostRelay(ca, azurite.endpoints).start()
        proxy.add_route(relay.listener_for)
        try:
            yield proxy, ca.ca_path
        finally:
            relay.stop()


def client(routed: tuple[EgressProxy, Path], connection: str) -> BlobServiceClient:
    proxy, ca_path = routed
    return BlobServiceClient.from_connection_string(connection, connection_verify=str(ca_path),
                                                    proxies={"https": proxy.url}, retry_total=0)


def test_the_portal_connection_string_reaches_azurite_at_the_account_host_name(routed, azurite):
    service = client(routed, azure_connection_string(azurite.endpoints.account_name, azurite.endpoints.account_key))
    assert service.url == f"https://{blob_hosts(azurite.endpoints.account_name)[0]}/"
    container = service.create_container("storage-hosts")
    try:
        container.upload_blob("hello.txt", b"through the account's own host name")
        assert container.download_blob("hello.txt").readall() == b"through the account's own host name"
        assert [blob.name for blob in container.list_blobs()] == ["hello.txt"]
    finally:
        container.delete_container()


def test_service_stats_are_read_from_the_secondary_location_the_sdk_derives(routed, azurite):
    service = client(routed, azure_connection_string(azurite.endpoints.account_name, azurite.endpoints.account_key))
    assert service.secondary_hostname == blob_hosts(azurite.endpoints.account_name)[1]
    assert service.get_service_stats()["geo_replication"]["status"] == "live"


def test_another_account_is_no_service_of_the_sandbox(routed, azurite):
    service = client(routed, azure_connection_string("someoneelse", azurite.endpoints.account_key))
    with pytest.raises(ServiceRequestError):
        service.get_service_properties()
    assert routed[0].refused[-1].target == "someoneelse.blob.core.windows.net:443"

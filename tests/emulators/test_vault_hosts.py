"""Vaults at their Azure host names: the sandbox's egress proxy, the Key Vault challenge with the check on, and
the loopback origins that keep answering (emulators/egress_proxy.py, KeyVaultEmulator(proxy=...)).

The proxy must never connect anywhere a route does not lead: every refusal here is checked against a loopback
listener that records any connection made to it (tests/support/loopback_listener.py).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from azure.core.exceptions import ServiceRequestError
from azure.keyvault.keys import KeyClient

from controller.adapters.key_vault_crypto import VaultClients, VaultKeyUnwrapper, fetch_public_wrapper
from controller.rewrap.wrapping import RSA_OAEP_256
from controller.vault_policy import VaultPolicy
from emulators.bus import SandboxBus
from emulators.clock import SandboxClock
from emulators.egress_proxy import EgressProxy
from emulators.keyvault import KeyVaultEmulator, VaultState
from tests.support.egress import through_proxy
from tests.support.keyvault import Recorder
from tests.support.loopback_listener import LoopbackListener

pytestmark = pytest.mark.integration

CONTROLLER = "c0000000-0000-4000-8000-0000000000b1"


@dataclass
class Hosts:
    proxy: EgressProxy
    kv: KeyVaultEmulator
    vault: VaultState
    recorder: Recorder

    def client(self, url: str | None = None) -> KeyClient:
        """The unmodified KeyClient, challenge check at its default (on), through the proxy."""
        return KeyClient(url or self.vault.uri, self.kv.credential(CONTROLLER), connection_verify=self.kv.ca_path,
                         proxies={"https": self.proxy.url}, retry_total=0)


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    bus = SandboxBus()
    recorder = Recorder().attach(bus)
    with (
        EgressProxy() as proxy,
        KeyVaultEmulator(SandboxClock(), bus, directory=tmp_path_factory.mktemp("hosts-kv"), proxy=proxy) as kv,
    ):
        vault = kv.add_vault("kv-hosts", access_policies=[{"objectId": CONTROLLER, "permissions": {"keys": ["all"]}}])
        yield Hosts(proxy, kv, vault, recorder)


def connect(proxy: EgressProxy, request: bytes) -> bytes:
    """Send one request head to the proxy and read its whole answer."""
    with socket.create_connection((proxy.host, proxy.port), timeout=10) as client:
        client.sendall(request)
        answer = b""
        while chunk := client.recv(4096):
            answer += chunk
    return answer


def test_the_vault_is_at_its_azure_host_name_and_answers_the_challenge_as_azure_does(hosts: Hosts) -> None:
    assert hosts.vault.uri == "https://kv-hosts.vault.azure.net/"
    with hosts.client() as client:
        key = client.create_rsa_key("hosts-key", size=2048)
        rotated = client.rotate_key("hosts-key")
    assert key.id == f"https://kv-hosts.vault.azure.net/keys/hosts-key/{key.properties.version}"
    assert rotated.properties.vault_url == "https://kv-hosts.vault.azure.net"
    event = hosts.recorder.events_of("KeyNewVersionCreated", "hosts-key")[-1]
    assert event.data["Id"] == rotated.id  # events name the Azure host name too
    challenges = [a for a in hosts.recorder.audits_of("Authentication", status=401)
                  if a["properties"]["requestUri"].startswith("https://kv-hosts.vault.azure.net/")]
    assert challenges  # the first request of the client was answered with the challenge, then retried with a token
    assert hosts.proxy.refused == []


def test_an_upper_case_vault_host_reaches_the_same_vault(hosts: Hosts) -> None:
    with hosts.client() as client:
        client.create_rsa_key("case-key", size=2048)
    with hosts.client("https://KV-HOSTS.VAULT.AZURE.NET/") as upper:
        key = upper.get_key("case-key")
    assert key.id is not None and key.id.startswith("https://kv-hosts.vault.azure.net/keys/case-key/")


def test_the_loopback_origin_still_answers_with_its_own_ids(hosts: Hosts) -> None:
    assert hosts.vault.listen_origin.startswith("https://127.0.0.1:")
    with KeyClient(hosts.vault.listen_origin, hosts.kv.credential(CONTROLLER), connection_verify=hosts.kv.ca_path,
                   verify_challenge_resource=False, retry_total=0) as client:  # an IP address has no parent domain
        key = client.create_rsa_key("loopback-key", size=2048)
    assert key.id == f"{hosts.vault.listen_origin}/keys/loopback-key/{key.properties.version}"
    with hosts.client() as client:  # the same key, named by the Azure host name when asked there
        again = client.get_key("loopback-key")
    assert again.id == f"https://kv-hosts.vault.azure.net/keys/loopback-key/{key.properties.version}"


def test_the_product_crypto_adapters_work_through_the_proxy(hosts: Hosts) -> None:
    """VaultClients as bootstrap builds them (no client options): the proxy from HTTPS_PROXY, the check on."""
    with hosts.client() as client:
        kid = str(client.create_rsa_key("wrap-key", size=2048).id)
    with through_proxy(hosts.proxy):
        clients = VaultClients(hosts.kv.credential(CONTROLLER), policy=VaultPolicy.of([hosts.vault.uri]),
                               connection_verify=hosts.kv.ca_path)
        wrapped = fetch_public_wrapper(clients, kid).wrap(RSA_OAEP_256, b"k" * 32)
        assert VaultKeyUnwrapper(clients).unwrap(kid, RSA_OAEP_256, wrapped) == b"k" * 32
    assert hosts.proxy.refused == []


@pytest.mark.parametrize(("request_head", "status_line"), [
    (b"CONNECT contoso.vault.azure.net:443 HTTP/1.1\r\nHost: contoso.vault.azure.net:443\r\n\r\n",  # no such vault
     b"HTTP/1.1 502 DNS: contoso.vault.azure.net does not resolve"),
    (b"CONNECT kv-hosts.vault.azure.net:8443 HTTP/1.1\r\n\r\n",  # a sandbox vault, another port
     b"HTTP/1.1 403 Forbidden"),
    (b"CONNECT management.azure.com:443 HTTP/1.1\r\n\r\n",  # Azure, not emulated through the proxy
     b"HTTP/1.1 502 DNS: management.azure.com does not resolve"),
    (b"CONNECT example.com:443 HTTP/1.1\r\n\r\n", b"HTTP/1.1 502 DNS: example.com does not resolve"),
    (b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n",  # plain HTTP forwarding: never
     b"HTTP/1.1 405 Method Not Allowed"),
], ids=["unknown-vault", "other-port", "arm", "internet", "plain-http"])
def test_the_proxy_refuses_what_is_not_the_sandbox(hosts: Hosts, request_head: bytes, status_line: bytes) -> None:
    """A name no sandbox service has is the client's DNS failure (the proxy resolves for its clients)."""
    before = len(hosts.proxy.refused)
    answer = connect(hosts.proxy, request_head)
    assert answer.split(b"\r\n", 1)[0] == status_line
    assert len(hosts.proxy.refused) == before + 1


def test_a_refused_target_is_never_connected_to() -> None:
    """A loopback listener the proxy has no route to is asked for by address: nothing connects to it, whether
    the route table is empty or names only other hosts."""
    with LoopbackListener() as listener, EgressProxy() as proxy:
        proxy.add_route(lambda host, port: ("127.0.0.1", listener.port) if host == "kv-only.vault.azure.net" else None)
        for target, status_line in ((listener.origin, b"HTTP/1.1 403 Forbidden"),
                                    (f"localhost:{listener.port}", b"HTTP/1.1 403 Forbidden"),
                                    ("kv-other.vault.azure.net:443", b"HTTP/1.1 502 DNS: kv-other.vault.azure.net")):
            answer = connect(proxy, f"CONNECT {target} HTTP/1.1\r\n\r\n".encode())
            assert answer.startswith(status_line)
        assert listener.connections == []
        assert connect(proxy, b"CONNECT kv-only.vault.azure.net:443 HTTP/1.1\r\n\r\n").startswith(
            b"HTTP/1.1 200 Connection Established")
        assert len(listener.wait_for(1)) == 1  # the listener does record what reaches it


def test_the_sdk_fails_at_once_for_a_vault_the_sandbox_does_not_have(hosts: Hosts) -> None:
    with hosts.client("https://contoso.vault.azure.net/") as client, pytest.raises(ServiceRequestError):
        client.get_key("anything")
    assert hosts.proxy.refused[-1].target == "contoso.vault.azure.net:443"

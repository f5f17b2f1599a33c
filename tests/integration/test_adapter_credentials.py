"""The controller's managed identity credential against the sandbox's App Service-style identity endpoint
(emulators/identity_endpoint.py), and through it the emulated Key Vault: the same code path as in Azure."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.keyvault.keys import KeyClient

from controller.adapters.credentials import ArmConnection, controller_client_id, controller_credential
from controller.adapters.key_vault import KeyVaultKeys
from controller.model import KeyRef, parse_vault_origin
from emulators.egress_proxy import EgressProxy
from emulators.identity_endpoint import ManagedIdentityEndpoint
from emulators.keyvault import KeyVaultEmulator
from emulators.keyvault.credential import Principal, decode_token
from tests.support.egress import through_proxy

pytestmark = pytest.mark.integration

CLIENT_ID = "0c0c0c0c-0000-4000-8000-00000000c11d"
OBJECT_ID = "0b0b0b0b-0000-4000-8000-00000000000b"
SYSTEM_OBJECT_ID = "0a0a0a0a-0000-4000-8000-00000000000a"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[ManagedIdentityEndpoint]:
    identities = {
        CLIENT_ID: Principal(OBJECT_ID, appid=CLIENT_ID),
        "system": Principal(SYSTEM_OBJECT_ID),
    }
    with ManagedIdentityEndpoint(identities, default_client_id="system") as running:
        yield running


@pytest.fixture
def identity_env(endpoint: ManagedIdentityEndpoint, monkeypatch: pytest.MonkeyPatch) -> ManagedIdentityEndpoint:
    for name in (
        "MSI_ENDPOINT",
        "MSI_SECRET",
        "IDENTITY_SERVER_THUMBPRINT",
        "IMDS_ENDPOINT",
        "AZURE_POD_IDENTITY_AUTHORITY_HOST",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in endpoint.environ().items():
        monkeypatch.setenv(name, value)
    return endpoint


def test_client_id_comes_from_azure_client_id_then_the_host_storage_setting() -> None:
    assert controller_client_id({"AZURE_CLIENT_ID": " a ", "AzureWebJobsStorage__clientId": "b"}) == "a"
    assert controller_client_id({"AzureWebJobsStorage__clientId": "b"}) == "b"
    assert controller_client_id({}) is None


def test_user_assigned_identity_token_from_the_endpoint(identity_env: ManagedIdentityEndpoint) -> None:
    credential = controller_credential({"AZURE_CLIENT_ID": CLIENT_ID})
    token = credential.get_token("https://vault.azure.net/.default")
    claims = decode_token(token.token)
    assert (claims.oid, claims.appid, claims.aud) == (OBJECT_ID, CLIENT_ID, "https://vault.azure.net")
    assert identity_env.requests[-1] == {
        "api-version": "2019-08-01",
        "resource": "https://vault.azure.net",
        "client_id": CLIENT_ID,
    }


def test_system_assigned_identity_without_a_client_id(identity_env: ManagedIdentityEndpoint) -> None:
    token = controller_credential({}).get_token("https://management.azure.com/.default")
    assert decode_token(token.token).oid == SYSTEM_OBJECT_ID
    assert "client_id" not in identity_env.requests[-1]


def test_an_unknown_client_id_gets_no_token(identity_env: ManagedIdentityEndpoint) -> None:
    with pytest.raises(ClientAuthenticationError):
        controller_credential({"AZURE_CLIENT_ID": "not-assigned"}).get_token("https://vault.azure.net/.default")


def test_a_wrong_identity_header_gets_no_token(
    identity_env: ManagedIdentityEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IDENTITY_HEADER", "wrong")
    with pytest.raises(ClientAuthenticationError):
        controller_credential({"AZURE_CLIENT_ID": CLIENT_ID}).get_token("https://vault.azure.net/.default")


def test_arm_connection_asks_for_the_endpoints_audience() -> None:
    connection = ArmConnection(credential=controller_credential({}), endpoint="https://management.chinacloudapi.cn/")
    options = connection.client_options()
    assert options["base_url"] == "https://management.chinacloudapi.cn"
    assert options["credential_scopes"] == ["https://management.chinacloudapi.cn/.default"]


def test_the_managed_identity_reads_the_emulated_vault(
    identity_env: ManagedIdentityEndpoint, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """At the vault's Azure host name through the sandbox's proxy: the vault's challenge names
    https://vault.azure.net, the client checks it (on, as in the product) and asks the identity endpoint for
    a token for it."""
    with (
        EgressProxy() as proxy,
        KeyVaultEmulator(directory=tmp_path_factory.mktemp("identity-kv"), proxy=proxy) as kv,
        through_proxy(proxy),
    ):
        vault = kv.add_vault("kv-identity", access_policies=[{"objectId": OBJECT_ID, "permissions": {"keys": ["all"]}}])
        origin = parse_vault_origin(vault.uri)
        assert origin.url == "https://kv-identity.vault.azure.net"
        credential = controller_credential({"AZURE_CLIENT_ID": CLIENT_ID})
        sdk = KeyClient(vault.uri, credential, connection_verify=kv.ca_path)
        sdk.create_rsa_key("mi-key", size=2048)
        with KeyVaultKeys(origin, credential, connection_verify=kv.ca_path, retry_total=0) as keys:
            state = keys.get_key_state(KeyRef(origin, "mi-key"))
        assert len(state.versions) == 1

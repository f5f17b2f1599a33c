"""The controller's credential: its managed identity, and nothing else (no secrets, no certificates).

In Azure the function app runs as a user-assigned identity whose client id is AZURE_CLIENT_ID (the
infra sets it, and AzureWebJobsStorage__clientId to the same value). In the local sandbox the same
ManagedIdentityCredential talks to emulators/identity_endpoint.py through the App Service protocol
(IDENTITY_ENDPOINT + IDENTITY_HEADER), so the code path is identical; only the endpoint differs.
azure-identity reads those two variables from the process environment when the credential is built.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from azure.core.credentials import AccessToken, TokenCredential
from azure.core.exceptions import ClientAuthenticationError
from azure.core.pipeline.transport import RequestsTransport
from azure.identity import AzureCliCredential, ManagedIdentityCredential

from controller.adapters.arm_pacing import ArmPacer
from controller.adapters.http_transport import pooled_transport

#: Where the identity's client id is read from, first match wins. Unset: the system-assigned identity.
CLIENT_ID_SETTINGS: tuple[str, ...] = ("AZURE_CLIENT_ID", "AzureWebJobsStorage__clientId")
#: ARM requests one process keeps connections open for (CMK_WRITE_CONCURRENCY's maximum, with room for
#: the inventory's listings and the host's other invocations).
ARM_CONNECTIONS = 96


def controller_client_id(environ: Mapping[str, str]) -> str | None:
    for name in CLIENT_ID_SETTINGS:
        value = environ.get(name, "").strip()
        if value:
            return value
    return None


def controller_credential(environ: Mapping[str, str]) -> TokenCredential:
    """ManagedIdentityCredential for the controller's (user-assigned, else system-assigned) identity."""
    return ManagedIdentityCredential(client_id=controller_client_id(environ))


def operator_credential(environ: Mapping[str, str]) -> TokenCredential:
    """For `cmkctl` run by a person: their Azure CLI login, or the managed identity where one exists (a
    jump host, an app's environment, the sandbox's identity endpoint). Never a stored secret."""
    managed = ("the managed identity", ManagedIdentityCredential(client_id=controller_client_id(environ),
                                                                 retry_total=1))
    cli = ("the Azure CLI login", AzureCliCredential())
    # Where an identity endpoint is configured (App Service, Functions, the sandbox) it is the one meant.
    attempts = (managed, cli) if environ.get("IDENTITY_ENDPOINT") else (cli, managed)
    return OperatorCredential(attempts)


class OperatorCredential:
    """Tries each credential in turn; when none gives a token, one line says which were tried, why each
    failed, and how to log in (instead of the SDK's chain of warnings)."""

    def __init__(self, attempts: Sequence[tuple[str, TokenCredential]]) -> None:
        self._attempts = tuple(attempts)

    def get_token(self, *scopes: str, claims: str | None = None, tenant_id: str | None = None,
                  enable_cae: bool = False, **kwargs: Any) -> AccessToken:
        return self._first(lambda credential: credential.get_token(
            *scopes, claims=claims, tenant_id=tenant_id, enable_cae=enable_cae, **kwargs))

    def _first(self, request: Callable[[TokenCredential], AccessToken]) -> AccessToken:
        failures = []
        for name, credential in self._attempts:
            try:
                return request(credential)
            except ClientAuthenticationError as err:  # CredentialUnavailableError included
                failures.append(f"{name}: {_first_line(err)}")
        raise ClientAuthenticationError(
            "no credential gave a token (" + "; ".join(failures) + "). Log in with `az login`, or run where the "
            "controller's managed identity is available")


def _first_line(err: ClientAuthenticationError) -> str:
    text = str(err.message or err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]


@dataclass(frozen=True, slots=True)
class ArmConnection:
    """How the management clients reach Azure Resource Manager (CMK_ARM_ENDPOINT) and authenticate.

    Tokens are requested for ``<endpoint>/.default``: the public cloud's, another cloud's or the
    sandbox's ARM audience, whichever endpoint is configured. Every client built from one connection
    shares its ``pacer`` (arm_pacing.py): ARM's throttling budget is per subscription, not per client;
    and its ``transport``, one pool of connections (a client closed does not close it).
    """

    credential: TokenCredential
    endpoint: str = "https://management.azure.com"
    connection_verify: str | bool = True
    retry_total: int = 3
    pacer: ArmPacer = field(default_factory=ArmPacer, compare=False)
    #: Connections to ARM kept open for reuse, shared by every client of the connection: as many as its
    #: requests in flight at once (a reconcile's writers, CMK_WRITE_CONCURRENCY, up to 64; the inventory's
    #: scope listings; other invocations of the same process).
    connections: int = ARM_CONNECTIONS
    transport: RequestsTransport = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # True means "the default trust", which pooled_transport takes from the environment (the sandbox's CA).
        verify = {} if self.connection_verify is True else {"connection_verify": self.connection_verify}
        object.__setattr__(self, "transport", pooled_transport(self.connections, **verify))

    @property
    def scope(self) -> str:
        return self.endpoint.rstrip("/") + "/.default"

    def close(self) -> None:
        """Close the shared connections (the clients built from this connection cannot be used after)."""
        self.transport.session.close()

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments shared by every azure-mgmt-* client (and ResourceGraphClient)."""
        return {
            "base_url": self.endpoint.rstrip("/"),
            "credential_scopes": [self.scope],
            "transport": self.transport,
            "retry_total": self.retry_total,
            "per_retry_policies": [self.pacer.policy()],
        }

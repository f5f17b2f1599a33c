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
from azure.identity import AzureCliCredential, ManagedIdentityCredential

from controller.adapters.arm_pacing import ArmPacer

#: Where the identity's client id is read from, first match wins. Unset: the system-assigned identity.
CLIENT_ID_SETTINGS: tuple[str, ...] = ("AZURE_CLIENT_ID", "AzureWebJobsStorage__clientId")


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
    shares its ``pacer`` (arm_pacing.py): ARM's throttling budget is per subscription, not per client.
    """

    credential: TokenCredential
    endpoint: str = "https://management.azure.com"
    connection_verify: str | bool = True
    retry_total: int = 3
    pacer: ArmPacer = field(default_factory=ArmPacer, compare=False)

    @property
    def scope(self) -> str:
        return self.endpoint.rstrip("/") + "/.default"

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments shared by every azure-mgmt-* client (and ResourceGraphClient)."""
        return {
            "base_url": self.endpoint.rstrip("/"),
            "credential_scopes": [self.scope],
            "connection_verify": self.connection_verify,
            "retry_total": self.retry_total,
            "per_retry_policies": [self.pacer.policy()],
        }

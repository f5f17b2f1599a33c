"""An App Service-style managed identity endpoint for the sandbox (IDENTITY_ENDPOINT + IDENTITY_HEADER).

azure-identity's ManagedIdentityCredential uses this protocol when both environment variables are
set, so the controller runs the same code path in the sandbox as in Azure; only the token differs (a
SandboxCredential-format token, see emulators/keyvault/credential.py, for the principal whose client
id is requested)::

    with ManagedIdentityEndpoint({CLIENT_ID: Principal(OID, appid=CLIENT_ID)}) as endpoint:
        os.environ.update(endpoint.environ())      # IDENTITY_ENDPOINT, IDENTITY_HEADER
        ManagedIdentityCredential(client_id=CLIENT_ID).get_token("https://vault.azure.net/.default")

``GET <endpoint>?api-version=2019-08-01&resource=<audience>[&client_id=<id>]`` with the header
``X-IDENTITY-HEADER: <secret>`` answers ``{"access_token", "expires_on", "resource", "token_type",
"client_id"}``. Without ``client_id`` the default principal (the system-assigned identity) is used.
A wrong or missing header -> 401, an unknown client id or a missing resource -> 400 (the service's
exact bodies are not verified; azure-identity only reads the status). Plain HTTP on loopback only,
like the real endpoint (which is local to the App Service sandbox).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping

from aiohttp import web

from emulators.background import ServerThread
from emulators.keyvault.credential import TOKEN_LIFETIME_S, Principal, audience_from_scopes, encode_token

API_VERSION = "2019-08-01"
PATH = "/msi/token"


class ManagedIdentityEndpoint:
    """Issues sandbox tokens for the managed identities in ``identities`` (client id -> principal)."""

    def __init__(
        self,
        identities: Mapping[str, Principal],
        *,
        default_client_id: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.identities = {client_id.lower(): principal for client_id, principal in identities.items()}
        if default_client_id is not None and default_client_id.lower() not in self.identities:
            raise ValueError(f"default client id {default_client_id} is not one of the identities")
        self.default_client_id = default_client_id.lower() if default_client_id else None
        self.secret = secrets.token_urlsafe(24)
        self.host = host
        self.port = port
        self.requests: list[dict[str, str]] = []  # query of every token request, for tests
        self._server = ServerThread("identity-endpoint")

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}{PATH}"

    def environ(self) -> dict[str, str]:
        """The environment variables that point ManagedIdentityCredential at this endpoint."""
        return {"IDENTITY_ENDPOINT": self.endpoint, "IDENTITY_HEADER": self.secret}

    def add_identity(self, client_id: str, principal: Principal) -> None:
        self.identities[client_id.lower()] = principal

    # ---- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> ManagedIdentityEndpoint:
        if self._server.running:
            return self
        app = web.Application()
        app.router.add_get(PATH, self._token)
        self.port = self._server.listen(app, self.host, self.port)
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> ManagedIdentityEndpoint:
        return self.start()

    def __exit__(self, *args: object) -> None:
        self.stop()

    # ---- the protocol -------------------------------------------------------------------------------
    async def _token(self, request: web.Request) -> web.Response:
        query = dict(request.query)
        self.requests.append(query)
        if not secrets.compare_digest(request.headers.get("X-IDENTITY-HEADER", ""), self.secret):
            return _error(401, "the X-IDENTITY-HEADER header is missing or wrong")
        if query.get("api-version") != API_VERSION:
            return _error(400, f"api-version must be {API_VERSION}")
        resource = query.get("resource", "")
        if not resource:
            return _error(400, "resource is required")
        client_id = (query.get("client_id") or self.default_client_id or "").lower()
        if query.get("principal_id") or query.get("mi_res_id"):
            return _error(400, "the sandbox selects identities by client_id only")
        principal = self.identities.get(client_id)
        if principal is None:
            return _error(400, "no managed identity with that client id is assigned to this app")
        audience = audience_from_scopes((resource,))
        expires_on = int(time.time()) + TOKEN_LIFETIME_S
        token = encode_token(principal, audience=audience, expires_on=expires_on)
        return web.json_response(
            {
                "access_token": token,
                "expires_on": str(expires_on),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": client_id,
            }
        )


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"statusCode": status, "message": message}, status=status)

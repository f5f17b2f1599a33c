"""Sandbox tokens: a TokenCredential whose token names the principal, and the emulator's decoder.

A sandbox token is ``sbx.<base64url(JSON)>``; the JSON carries the claims the emulated vault needs:
``oid`` (object id), ``appid``, ``tid`` (tenant), ``aud`` (derived from the requested scope),
``ip`` (the caller's public IP as the firewall sees it) and ``trusted_service`` (true for a trusted
Azure service such as Azure Storage reaching the vault through its managed identity). Nothing is signed:
the sandbox is a test double, not a security boundary.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from azure.core.credentials import AccessToken, AccessTokenInfo

TOKEN_PREFIX = "sbx."  # noqa: S105 - a marker, not a secret
DEFAULT_TENANT_ID = "72f988bf-86f1-41af-91ab-2d7cd011db47"
DEFAULT_CALLER_IP = "10.1.2.3"
TOKEN_LIFETIME_S = 3600


def _b64url_encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def audience_from_scopes(scopes: tuple[str, ...]) -> str:
    """'https://vault.azure.net/.default' -> 'https://vault.azure.net' (what Entra ID puts in aud)."""
    if not scopes:
        return ""
    scope = scopes[0]
    for suffix in ("/.default", "/user_impersonation"):
        if scope.endswith(suffix):
            return scope[: -len(suffix)]
    return scope


@dataclass(frozen=True, slots=True)
class Principal:
    """The identity and network attributes a sandbox token carries."""

    oid: str
    appid: str | None = None
    tid: str = DEFAULT_TENANT_ID
    ip: str = DEFAULT_CALLER_IP
    trusted_service: bool = False
    name: str | None = None
    aud: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def claims(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "oid": self.oid,
            "appid": self.appid,
            "tid": self.tid,
            "ip": self.ip,
            "trusted_service": self.trusted_service,
            "aud": self.aud,
        }
        if self.name:
            body["name"] = self.name
        body.update(self.extra)
        return body


def encode_token(principal: Principal, *, audience: str | None = None, expires_on: int | None = None) -> str:
    claims = principal.claims()
    if audience is not None:
        claims["aud"] = audience
    claims["exp"] = expires_on if expires_on is not None else int(time.time()) + TOKEN_LIFETIME_S
    return TOKEN_PREFIX + _b64url_encode(json.dumps(claims, separators=(",", ":")).encode())


class InvalidToken(ValueError):
    """The bearer value is not a sandbox token."""


def decode_token(token: str) -> Principal:
    if not token.startswith(TOKEN_PREFIX):
        raise InvalidToken("not a sandbox token")
    try:
        claims = json.loads(_b64url_decode(token[len(TOKEN_PREFIX) :]))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise InvalidToken("malformed sandbox token") from exc
    if not isinstance(claims, dict) or not isinstance(claims.get("oid"), str) or not claims["oid"]:
        raise InvalidToken("sandbox token without oid")
    known = {"oid", "appid", "tid", "ip", "trusted_service", "aud", "name", "exp"}
    return Principal(
        oid=claims["oid"],
        appid=claims.get("appid"),
        tid=str(claims.get("tid") or DEFAULT_TENANT_ID),
        ip=str(claims.get("ip") or ""),
        trusted_service=bool(claims.get("trusted_service", False)),
        name=claims.get("name"),
        aud=str(claims.get("aud") or ""),
        extra={k: v for k, v in claims.items() if k not in known},
    )


class SandboxCredential:
    """A synchronous azure-core TokenCredential (get_token and get_token_info) for one sandbox principal.

    ``SandboxCredential(oid)`` for the controller's identity; ``SandboxCredential(oid, trusted_service=True)``
    for a storage account's managed identity (Azure Storage is a trusted service for the vault firewall).
    Works with every Azure SDK client (Key Vault, ARM, Log Analytics) because it is only a bearer string.
    """

    def __init__(
        self,
        oid: str | None = None,
        *,
        appid: str | None = None,
        tenant_id: str = DEFAULT_TENANT_ID,
        ip: str = DEFAULT_CALLER_IP,
        trusted_service: bool = False,
        name: str | None = None,
    ) -> None:
        self.principal = Principal(
            oid=oid or str(uuid.uuid4()),
            appid=appid,
            tid=tenant_id,
            ip=ip,
            trusted_service=trusted_service,
            name=name,
        )

    @property
    def object_id(self) -> str:
        return self.principal.oid

    def _token(self, scopes: tuple[str, ...]) -> tuple[str, int]:
        expires_on = int(time.time()) + TOKEN_LIFETIME_S
        return encode_token(self.principal, audience=audience_from_scopes(scopes), expires_on=expires_on), expires_on

    def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        token, expires_on = self._token(scopes)
        return AccessToken(token, expires_on)

    def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        token, expires_on = self._token(scopes)
        return AccessTokenInfo(token, expires_on)

    def close(self) -> None:
        return None

    def __enter__(self) -> SandboxCredential:
        return self

    def __exit__(self, *args: object) -> None:
        return None


class AsyncSandboxCredential(SandboxCredential):
    """The asyncio flavour (azure.core.credentials_async.AsyncTokenCredential protocol)."""

    async def get_token(  # type: ignore[override]
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        token, expires_on = self._token(scopes)
        return AccessToken(token, expires_on)

    async def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:  # type: ignore[override]
        token, expires_on = self._token(scopes)
        return AccessTokenInfo(token, expires_on)

    async def close(self) -> None:  # type: ignore[override]
        return None

    async def __aenter__(self) -> AsyncSandboxCredential:
        return self

    async def __aexit__(self, *args: object) -> None:
        return None

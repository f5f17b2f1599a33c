"""Each emulated storage account's blob endpoint: an HTTPS proxy in front of Azurite.

Design (chosen for the sandbox, documented in emulators/arm/__init__.py):

* Every account gets its own origin, ``https://127.0.0.1:<port>/<account>`` (path-style, the form
  azure-storage-blob uses for 127.0.0.1 and Azurite), served with the sandbox CA.
* All accounts share Azurite's development account ``devstoreaccount1``; account ``acct``'s container
  ``data`` is Azurite's container ``acct-data``. Container names in list results and list prefixes are
  translated both ways, so clients only ever see their own containers. (Container names are limited to
  63 - len(account) - 1 characters as a consequence.)
* Clients authenticate with the account's shared key (``list_keys``; the SharedKey signature is checked
  against key1/key2 with the string-to-sign of the Blob service, 403 AuthenticationFailed otherwise), a
  bearer token (present and a sandbox token; Storage data-plane RBAC is not enforced) or a SAS (present;
  its signature is not checked). The proxy forwards to Azurite with an account SAS of devstoreaccount1
  instead of the client's credentials.
* Before forwarding, the account's CMK state is consulted: while the storage service cannot unwrap the
  root key, every request answers 403 with Azure's error code (KeyVaultEncryptionKeyNotFound ...), the
  same for requests naming an encryption scope whose key is inaccessible.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, unquote

import aiohttp
from aiohttp import web

SAS_PARAMS = {
    "sv",
    "ss",
    "srt",
    "sp",
    "se",
    "st",
    "spr",
    "sig",
    "sr",
    "si",
    "sip",
    "skoid",
    "sktid",
    "skt",
    "ske",
    "sks",
    "skv",
    "saoid",
    "suoid",
    "scid",
    "sdd",
    "ses",
    "rscc",
    "rscd",
    "rsce",
    "rscl",
    "rsct",
}
HOP_HEADERS = {"host", "authorization", "content-length", "transfer-encoding", "connection", "keep-alive"}
RESPONSE_DROP = {"content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding", "server"}

Gate = Callable[[str | None], tuple[str, str] | None]  # encryption scope -> (code, message) or None
SIGNED_HEADERS = ("content-encoding", "content-language", "content-length", "content-md5", "content-type", "date",
                  "if-modified-since", "if-match", "if-none-match", "if-unmodified-since", "range")  # fmt: skip


def shared_key_string_to_sign(request: web.Request, account: str) -> str:
    """The Blob service's SharedKey string-to-sign (2009-09-19 and later), as azure-storage-blob builds it."""
    from azure.storage.blob._shared.authentication import _storage_header_sort

    headers = {k.lower(): v for k, v in request.headers.items() if v}
    if headers.get("content-length") == "0":
        del headers["content-length"]
    # azure-storage-blob signs Range as an empty line (it sends x-ms-range instead).
    signed = "\n".join("" if name == "range" else headers.get(name, "") for name in SIGNED_HEADERS) + "\n"
    x_ms = _storage_header_sort([(k, v) for k, v in headers.items() if k.startswith("x-ms-")])
    canonical_headers = "".join(f"{k}:{v}\n" for k, v in x_ms)
    resource = f"/{account}" + request.raw_path.split("?", 1)[0]
    query = "".join(f"\n{k.lower()}:{unquote(v)}" for k, v in sorted(request.query.items()))
    return request.method + "\n" + signed + canonical_headers + resource + query


def shared_key_signature(string_to_sign: str, key: str) -> str:
    digest = hmac.new(base64.b64decode(key), string_to_sign.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def storage_error(status: int, code: str, message: str) -> web.Response:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"
    request_id = str(uuid.uuid4())
    body = (
        '<?xml version="1.0" encoding="utf-8"?>'
        f"<Error><Code>{code}</Code><Message>{message}\nRequestId:{request_id}\nTime:{now}</Message></Error>"
    )
    return web.Response(
        status=status,
        body=body.encode(),
        content_type="application/xml",
        headers={"x-ms-error-code": code, "x-ms-request-id": request_id, "x-ms-version": "2025-01-05"},
    )


class BlobProxy:
    """aiohttp handling for one account's blob endpoint."""

    def __init__(
        self, account: str, azurite_blob: str, azurite_sas: str, gate: Gate, keys: Callable[[], list[str]]
    ) -> None:
        self.account = account
        self.keys = keys
        self.prefix = f"{account}-"
        self.azurite_blob = azurite_blob.rstrip("/")  # http://127.0.0.1:port/devstoreaccount1
        self.azurite_sas = azurite_sas
        self.gate = gate
        self.origin = ""  # https://127.0.0.1:port, once listening
        self.session: aiohttp.ClientSession | None = None
        self.app = web.Application(client_max_size=256 * 1024 * 1024)
        self.app.router.add_route("*", "/{tail:.*}", self.handle)

    @property
    def endpoint(self) -> str:
        return f"{self.origin}/{self.account}/"

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    def _authenticate(self, request: web.Request) -> web.Response | None:
        """None when the request may proceed, else the error response Azure gives."""
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme == "SharedKey":
            account, _, signature = value.partition(":")
            string_to_sign = shared_key_string_to_sign(request, self.account)
            if account == self.account and any(
                hmac.compare_digest(signature, shared_key_signature(string_to_sign, key)) for key in self.keys()
            ):
                return None
            return storage_error(
                403,
                "AuthenticationFailed",
                "Server failed to authenticate the request. Make sure the value of Authorization header is formed "
                "correctly including the signature.",
            )
        if scheme.lower() == "bearer" and value.strip():
            return None
        if scheme == "SharedKeyLite" or "sig" in request.query:
            return None
        return storage_error(
            401,
            "NoAuthenticationInformation",
            "Server failed to authenticate the request. Please refer to the information in the www-authenticate"
            " header.",
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        segments = request.path.split("/", 3)  # ['', account, container?, blob?]
        if len(segments) < 2 or segments[1] != self.account:
            return storage_error(400, "InvalidUri", "The requested URI does not represent any resource on the server.")
        refused = self._authenticate(request)
        if refused is not None:
            return refused
        blocked = self.gate(request.headers.get("x-ms-encryption-scope"))
        if blocked is not None:
            return storage_error(403, *blocked)
        container = segments[2] if len(segments) > 2 else ""
        rest = "/" + segments[3] if len(segments) > 3 else ""
        target = self.azurite_blob + ("/" + self.prefix + container + rest if container else "/")
        query = [(k, v) for k, v in request.query.items() if k not in SAS_PARAMS]
        listing_containers = not container and request.query.get("comp") == "list"
        if listing_containers:
            query = [(k, v) for k, v in query if k != "prefix"]
            query.append(("prefix", self.prefix + request.query.get("prefix", "")))
        query_string = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in query)
        url = target + "?" + "&".join(filter(None, [query_string, self.azurite_sas]))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        source = headers.get("x-ms-copy-source")
        if source and self.origin and source.startswith(f"{self.origin}/{self.account}/"):
            tail = source[len(f"{self.origin}/{self.account}/") :].split("?", 1)[0]
            headers["x-ms-copy-source"] = f"{self.azurite_blob}/{self.prefix}{tail}?{self.azurite_sas}"
        body = await request.read()
        if self.session is None:
            self.session = aiohttp.ClientSession(auto_decompress=False)
        try:
            async with self.session.request(
                request.method,
                url,
                headers=headers,
                data=body or None,
                allow_redirects=False,
                skip_auto_headers=["Content-Type"],
            ) as upstream:
                payload = await upstream.read()
                out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in RESPONSE_DROP}
                if request.method == "HEAD" and "Content-Length" in upstream.headers:
                    out_headers["Content-Length"] = upstream.headers["Content-Length"]  # the blob's size
                if request.query.get("comp") == "list" and upstream.status == 200:
                    payload = self._rewrite_listing(payload, listing_containers)
                return web.Response(status=upstream.status, body=payload, headers=out_headers)
        except aiohttp.ClientConnectionError:
            # The storage behind dropped the connection (the sandbox's storage fault proxy): so does the account's
            # endpoint, rather than invent an answer the client could mistake for Azure's.
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError from None

    def _rewrite_listing(self, payload: bytes, containers: bool) -> bytes:
        text = payload.decode("utf-8")
        public = f"{self.origin}/{self.account}/"
        text = re.sub(r'ServiceEndpoint="[^"]*"', f'ServiceEndpoint="{public}"', text)
        prefix = re.escape(self.prefix)
        text = re.sub(rf'ContainerName="{prefix}', 'ContainerName="', text)
        if containers:
            text = re.sub(rf"<Name>{prefix}", "<Name>", text)
            text = re.sub(rf"<Prefix>{prefix}", "<Prefix>", text)
            text = re.sub(rf"<Marker>{prefix}", "<Marker>", text)
            text = re.sub(rf"<NextMarker>{prefix}", "<NextMarker>", text)
        return text.encode("utf-8")


def azurite_account_sas(account_name: str, account_key: str) -> str:
    """An account SAS over devstoreaccount1 for every service, resource type and permission (ten years)."""
    from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

    return generate_account_sas(
        account_name,
        account_key,
        resource_types=ResourceTypes(service=True, container=True, object=True),
        permission=AccountSasPermissions(
            read=True,
            write=True,
            delete=True,
            list=True,
            add=True,
            create=True,
            update=True,
            process=True,
            tag=True,
            filter_by_tags=True,
            set_immutability_policy=True,
            delete_previous_version=True,
            permanent_delete=True,
        ),
        expiry=datetime.now(UTC) + timedelta(days=3650),
        start=datetime.now(UTC) - timedelta(days=1),
    )


def endpoints_of(azurite: Any) -> tuple[str, str, str]:
    """(blob url, account name, account key) from an Azurite, AzuriteEndpoints or a plain blob URL."""
    from emulators.azurite import ACCOUNT_KEY, ACCOUNT_NAME

    if isinstance(azurite, str):
        return azurite, ACCOUNT_NAME, ACCOUNT_KEY
    endpoints = getattr(azurite, "endpoints", azurite)
    return endpoints.blob, endpoints.account_name, endpoints.account_key

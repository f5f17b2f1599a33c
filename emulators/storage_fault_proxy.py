"""Azurite behind a fault proxy: Storage's failures, seeded, on loopback (emulators/faults.py).

One plain-HTTP origin per Azurite service (blob, queue, table) forwards every request unchanged (the
client's SharedKey signature included: the path and the signed headers are kept) and answers with
Azurite's answer, unless the ``storage`` injector draws a fault for it:

* 503 ``ServerBusy`` (with ``Retry-After``) or 500 ``InternalError``, in the service's error shape: the
  XML ``<Error><Code>`` body of Blob and Queue, Table's JSON ``odata.error``, with ``x-ms-error-code``
  (the codes and messages are Storage's documented common REST error codes);
* ``reset``: the connection is dropped before Azurite sees the request;
* ``lost-answer``: Azurite carries the request out, then the connection is dropped before its answer.

``endpoints`` is an ``AzuriteEndpoints`` (emulators/azurite.py) for the proxy, so whatever takes
Azurite's takes the proxy's instead: the function app's ``AzureWebJobsStorage`` and the emulated
storage accounts' blob endpoints (emulators/arm/blobproxy.py) in a sandbox started with ``SANDBOX_FAULTS``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from emulators.arm.blobproxy import storage_error
from emulators.azurite import AzuriteEndpoints
from emulators.background import ServerThread
from emulators.faults import LOST_ANSWER, RESET, Fault, FaultInjector, FaultProfile

SERVICES = ("blob", "queue", "table")
# Host is kept: Azurite copies a blob only from a source on the host the request names (the proxy's).
HOP_HEADERS = {"content-length", "transfer-encoding", "connection", "keep-alive"}
#: Azurite's own look at a copy source (it checks access with a request of its own, through the proxy): a
#: copy happens inside the service, where no fault reaches.
SERVICE_INTERNAL_AGENT = "axios/"
RESPONSE_DROP = {"content-length", "transfer-encoding", "connection", "keep-alive"}
_ERRORS = {
    503: ("ServerBusy", "The server is currently unable to receive requests. Please retry your request."),
    500: ("InternalError", "The server encountered an internal error. Please retry the request."),
}


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def table_error(status: int, code: str, message: str) -> web.Response:
    """The Table service's JSON error (``odata.error``), as Azure Tables answers with minimal metadata."""
    request_id = str(uuid.uuid4())
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"
    body = {"odata.error": {"code": code, "message": {"lang": "en-US",
                                                      "value": f"{message}\nRequestId:{request_id}\nTime:{now}"}}}
    return web.Response(status=status, body=json.dumps(body).encode(),
                        content_type="application/json", charset="utf-8",
                        headers={"x-ms-error-code": code, "x-ms-request-id": request_id})


def fault_response(service: str, fault: Fault) -> web.Response:
    code, message = _ERRORS[fault.status or 500]
    response = (table_error if service == "table" else storage_error)(fault.status or 500, code, message)
    response.headers.update(fault.retry_after_headers())
    return response


class StorageFaultProxy:
    """The three proxies in front of one Azurite; ``injector`` may be replaced while they run."""

    def __init__(self, azurite: AzuriteEndpoints, *, host: str = "127.0.0.1",
                 injector: FaultInjector | None = None) -> None:
        self.azurite = azurite
        self.host = host
        self.injector = injector or FaultInjector(FaultProfile("storage"))
        self._server = ServerThread("storage-fault-proxy")
        self._session: aiohttp.ClientSession | None = None
        self._endpoints: AzuriteEndpoints | None = None

    @property
    def endpoints(self) -> AzuriteEndpoints:
        if self._endpoints is None:
            raise RuntimeError("the storage fault proxy is not running")
        return self._endpoints

    def start(self) -> StorageFaultProxy:
        if self._endpoints is not None:
            return self
        urls = {}
        for service in SERVICES:
            upstream = getattr(self.azurite, service)
            app = web.Application(client_max_size=256 * 1024 * 1024)
            app.router.add_route("*", "/{tail:.*}", self._handler(service, _origin(upstream)))
            port = self._server.listen(app, self.host, 0)
            urls[service] = f"http://{self.host}:{port}{urlsplit(upstream).path}"
        self._endpoints = AzuriteEndpoints(urls["blob"], urls["queue"], urls["table"],
                                           self.azurite.account_name, self.azurite.account_key)
        return self

    def stop(self) -> None:
        if self._server.running:
            self._server.stop(self._close())
        self._endpoints = None

    async def _close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _handler(self, service: str, upstream: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            if request.headers.get("User-Agent", "").startswith(SERVICE_INTERNAL_AGENT):
                return await self._forward(request, upstream)
            injector = self.injector
            delay = injector.latency()
            if delay > 0:
                await asyncio.sleep(delay)
            fault = injector.draw(write=request.method not in ("GET", "HEAD"))
            if fault is not None and fault.kind == RESET:
                _drop(request)
            if fault is not None and fault.status is not None:
                return fault_response(service, fault)
            response = await self._forward(request, upstream)
            if fault is not None and fault.kind == LOST_ANSWER:
                _drop(request)
            return response

        return handle

    async def _forward(self, request: web.Request, upstream: str) -> web.Response:
        if self._session is None:
            self._session = aiohttp.ClientSession(auto_decompress=False)
        headers = {name: value for name, value in request.headers.items() if name.lower() not in HOP_HEADERS}
        body = await request.read()
        async with self._session.request(request.method, upstream + request.raw_path, headers=headers,
                                          data=body or None, allow_redirects=False,
                                          skip_auto_headers=["Content-Type"]) as answer:
            payload = await answer.read()
            out = {name: value for name, value in answer.headers.items() if name.lower() not in RESPONSE_DROP}
            if request.method == "HEAD" and "Content-Length" in answer.headers:
                out["Content-Length"] = answer.headers["Content-Length"]
            return web.Response(status=answer.status, body=payload, headers=out)


def _drop(request: web.Request) -> None:
    """End the connection without an answer, as a reset does."""
    if request.transport is not None:
        request.transport.abort()
    raise asyncio.CancelledError

"""The sandbox's HTTPS forward proxy: how unmodified clients reach emulated services under Azure's host names.

Some clients cannot be pointed at another endpoint by configuration (``LogsQueryClient`` always queries
``https://api.loganalytics.io``), and the Key Vault clients check that a vault's 401 challenge names a resource
its host is a subdomain of (``https://vault.azure.net``), which a loopback origin (``https://127.0.0.1:<port>``)
can never be. Clients honour ``HTTPS_PROXY`` / ``NO_PROXY`` (azure-core's requests and aiohttp transports),
so the sandbox's env file points them here for the Azure host names it emulates and at the loopback
emulators directly for everything else.

The proxy answers ``CONNECT <host>:443`` for the hosts a route names (``<vault>.vault.azure.net`` of the
vaults that exist, ``api.loganalytics.io``) with a tunnel to the emulator on loopback. It does not terminate
TLS: the emulator presents a certificate for the Azure host name issued by the sandbox CA, so the client
checks the same name it would in Azure, end to end. Any other target is refused with an HTTP error before
anything is connected: nothing ever leaves the machine through it. A host name no route knows (a vault that
does not exist, any internet host) is answered as the DNS failure it would be for the client:
``502 DNS: <host> does not resolve``; an address, a known name on another port or any method but CONNECT
with a 403 or 405.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from emulators.background import StreamServer

log = logging.getLogger(__name__)

#: A route: the loopback (host, port) that serves ``host:port`` under its Azure name, or None.
Route = Callable[[str, int], "tuple[str, int] | None"]
_MAX_HEADER_BYTES = 8192
_LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True, slots=True)
class Refusal:
    target: str
    reason: str


class EgressProxy(StreamServer):
    """``with EgressProxy() as proxy: proxy.add_route(route)``; clients use ``proxy.url`` as HTTPS_PROXY."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__("egress-proxy", host, port)
        self._routes: list[Route] = []
        self._lock = threading.Lock()
        self._refused: list[Refusal] = []

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def refused(self) -> list[Refusal]:
        """Every CONNECT (or other request) refused so far: what a client tried to reach outside the sandbox."""
        with self._lock:
            return list(self._refused)

    def add_route(self, route: Route) -> None:
        with self._lock:
            self._routes.append(route)

    def resolve(self, host: str, port: int) -> tuple[str, int] | None:
        """The loopback listener serving ``host:port``; None when no route names it (never a non-loopback one)."""
        with self._lock:
            routes = list(self._routes)
        for route in routes:
            target = route(host.lower().rstrip("."), port)
            if target is not None:
                if target[0] not in _LOOPBACK:
                    raise ValueError(f"a sandbox route must lead to loopback, not {target[0]}")
                return target
        return None

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        if len(head) > _MAX_HEADER_BYTES:
            await self._refuse(writer, 431, "Request Header Fields Too Large", "?", "the request head is too long")
            return
        method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
        target = rest.rsplit(" ", 1)[0]
        if method != "CONNECT":
            await self._refuse(writer, 405, "Method Not Allowed", target,
                               "the sandbox proxy only tunnels HTTPS (CONNECT) to the sandbox's services")
            return
        host, _, port_text = target.rpartition(":")
        host = host.strip("[]")
        upstream = self.resolve(host, int(port_text)) if port_text.isdigit() and host else None
        if upstream is None and _is_host_name(host) and self.resolve(host, 443) is None:
            # No service of the sandbox has that name: as the proxy resolves names for its clients, this is
            # their DNS failure (Azure's DNS has no record of a vault that does not exist). HTTP clients report
            # only the status line of a refused CONNECT, so the reason phrase says it, naming the host.
            await self._refuse(writer, 502, f"DNS: {host} does not resolve", target,
                               f"{host} does not resolve: no service of this sandbox has that name "
                               "(the sandbox never reaches the internet)")
            return
        if upstream is None:
            await self._refuse(writer, 403, "Forbidden", target,
                               f"{target} is not a service of this sandbox: the sandbox never reaches the internet")
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*upstream)
        except OSError as err:
            await self._refuse(writer, 502, "Bad Gateway", target, f"the sandbox service for {target} is down: {err}")
            return
        writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        await writer.drain()
        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            up_writer.close()

    async def _refuse(self, writer: asyncio.StreamWriter, status: int, phrase: str, target: str, reason: str) -> None:
        with self._lock:
            self._refused.append(Refusal(target, reason))
        log.warning("egress proxy refused %s: %s", target, reason)
        body = (reason + "\n").encode()
        writer.write(f"HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                     "Connection: close\r\n\r\n".encode() + body)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()


def _is_host_name(host: str) -> bool:
    """A DNS name (not an address literal, not the loopback's own name): what a resolver would look up."""
    if host.lower() in _LOOPBACK:
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return bool(host)
    return False


async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copy ``source`` to ``sink`` until either side closes (the relays' one byte pump)."""
    try:
        while chunk := await source.read(65536):
            sink.write(chunk)
            await sink.drain()
    except OSError:  # a reset or broken pipe ends the tunnel like a close
        pass
    finally:
        with contextlib.suppress(Exception):
            sink.close()

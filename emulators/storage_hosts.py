"""Azurite's blob service under the account's Azure host names: ``https://<account>.blob.core.windows.net``.

Clients written for Azure build their storage URLs from the account name (``EndpointSuffix=core.windows.net``
connection strings, ``https://{account}.blob.core.windows.net`` in code) and derive the secondary location of
a read-access geo-redundant account from it (``<account>-secondary.blob.core.windows.net``). Azurite listens
on plain HTTP on loopback, but reads the account from a production-style Host header (and "-secondary" after
it as the account's secondary location), so all that is missing is TLS under those names: this relay
terminates TLS with a certificate of the sandbox CA for both names and passes the bytes to Azurite unchanged.
The egress proxy routes ``CONNECT <name>:443`` here (``listener_for``); nothing else is served.

    relay = BlobHostRelay(ca, azurite.endpoints).start()
    proxy.add_route(relay.listener_for)
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Protocol
from urllib.parse import urlsplit

from emulators.azurite import AzuriteEndpoints
from emulators.background import StreamServer
from emulators.egress_proxy import pipe

#: The public cloud's blob host suffix: what the SDKs' connection strings default to.
BLOB_HOST_SUFFIX = "blob.core.windows.net"
SECONDARY_SUFFIX = "-secondary"


class _ServerCA(Protocol):
    def server_ssl_context(self, *hosts: str) -> ssl.SSLContext: ...


def blob_hosts(account: str) -> tuple[str, str]:
    """The primary and the secondary (RA-GRS) blob host names of ``account`` in the public cloud."""
    return f"{account}.{BLOB_HOST_SUFFIX}", f"{account}{SECONDARY_SUFFIX}.{BLOB_HOST_SUFFIX}"


def azure_connection_string(account_name: str, account_key: str) -> str:
    """An account's connection string as the Azure portal shows it: the SDKs build the host names from it."""
    return (f"DefaultEndpointsProtocol=https;AccountName={account_name};AccountKey={account_key};"
            "EndpointSuffix=core.windows.net")


class BlobHostRelay(StreamServer):
    """TLS for ``<account>[-secondary].blob.core.windows.net`` in front of Azurite's blob port, on loopback."""

    def __init__(self, ca: _ServerCA, endpoints: AzuriteEndpoints, *, host: str = "127.0.0.1") -> None:
        blob = urlsplit(endpoints.blob)
        self._upstream = (blob.hostname or "127.0.0.1", blob.port or 80)
        self.hosts = blob_hosts(endpoints.account_name)
        super().__init__("blob-host-relay", host, ssl_context=ca.server_ssl_context(*self.hosts))

    def listener_for(self, host: str, port: int) -> tuple[str, int] | None:
        """The egress proxy's route: this relay, for the account's blob host names on 443."""
        if host not in self.hosts or port != 443 or not self.running:
            return None
        return self.host, self.port

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            return  # Azurite is gone: the client sees the connection closed, as for a dead service
        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        except asyncio.CancelledError:
            pass  # the relay stops: the connection ends with it (cancelled by stop, which awaits it)
        finally:
            up_writer.close()

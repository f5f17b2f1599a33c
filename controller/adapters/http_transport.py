"""One requests transport per pool of connections: sized for the workers that share it.

requests keeps 10 connections per host by default: with more workers than that, every extra request
opens (and then discards) a fresh connection, which over TLS costs a handshake and a read of the CA
bundle on both sides (it was the largest share of a rotation's CPU in the function app).
"""

from __future__ import annotations

import os
from typing import Any

import requests
from azure.core.pipeline.transport import RequestsTransport

_PROXY_SETTINGS = tuple(
    name for base in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY") for name in (base, base.lower())
)
_CA_BUNDLE_SETTINGS = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


def pooled_transport(connections: int, **transport_kwargs: Any) -> RequestsTransport:
    """A requests transport whose pool keeps ``connections`` connections per host.

    One transport can serve several clients (``session_owner`` False: closing one client does not close
    the shared session). Connection options such as ``connection_verify`` belong to the transport:
    clients given a transport ignore their own.
    """
    session = requests.Session()
    if not any(os.environ.get(name) for name in _PROXY_SETTINGS):
        # With trust_env, requests re-reads the environment (proxies, CA bundle, .netrc) on every
        # request: a measurable share of a metadata write. Without a proxy to honour, read the CA
        # bundle once here instead (and never apply .netrc credentials to Azure requests).
        session.trust_env = False
        bundle = next((os.environ[name] for name in _CA_BUNDLE_SETTINGS if os.environ.get(name)), None)
        if bundle and "connection_verify" not in transport_kwargs:
            transport_kwargs = {**transport_kwargs, "connection_verify": bundle}
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=max(10, connections))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return RequestsTransport(session=session, session_owner=False, **transport_kwargs)

"""Clients of emulated vaults at their Azure host names: the sandbox's proxy in the test process's environment.

``KeyVaultEmulator(proxy=proxy)`` serves each vault at ``https://<name>.vault.azure.net`` through ``proxy``
(emulators/egress_proxy.py); the product's adapters and the SDK clients find the proxy where they find it in
the sandbox, in HTTPS_PROXY, and reach every loopback emulator directly (NO_PROXY), so the Key Vault challenge
check stays on as in Azure.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from emulators.egress_proxy import EgressProxy
from emulators.sandbox import NO_PROXY


def proxy_settings(proxy: EgressProxy) -> dict[str, str]:
    """What the sandbox's env file sets (both spellings: urllib and aiohttp prefer the lower-case one)."""
    return {"HTTPS_PROXY": proxy.url, "https_proxy": proxy.url, "NO_PROXY": NO_PROXY, "no_proxy": NO_PROXY}


@contextlib.contextmanager
def through_proxy(proxy: EgressProxy) -> Iterator[None]:
    """The process environment points HTTPS clients at ``proxy`` for the duration of the block."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in proxy_settings(proxy).items():
            patch.setenv(name, value)
        yield

"""What every resource provider module of the ARM emulator shares: the request, route shapes, path patterns.

A provider (``resource_groups``, ``identities``, ``storage_accounts``, ``vaults``, ``authorization``,
``insights``) exposes ``routes()``: (methods, path pattern, handler) triples. The router
(``emulator.ArmEmulator``) matches a request path against every pattern, case-insensitively, and calls
the handler with the pattern's groups while holding its lock, so handlers never lock themselves. A
handler whose change needs a call outside the sandbox's state first (the storage service validating a
customer-managed key in the vault) answers ``Deferred``: the router runs its ``check`` without holding
its lock (other requests go on meanwhile, as in Azure), then its ``commit`` under the lock.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from emulators.keyvault.credential import Principal

SEG = r"([^/]+)"
SUB = rf"/subscriptions/{SEG}"
RG = rf"{SUB}/resourcegroups/{SEG}"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    caller: Principal | None = None  # who sent it (the resource events' claims)
    url: str = ""


@dataclass(frozen=True)
class Deferred:
    """A change prepared under the router's lock on a private copy: ``check`` (outbound calls, e.g. to a
    vault; raises ArmError to refuse) runs without the lock, ``commit`` publishes the copy under it."""

    check: Callable[[], None]
    commit: Callable[[], tuple[int, Any]]


Handler = Callable[..., "tuple[int, Any] | Deferred"]
Route = tuple[tuple[str, ...], str, Handler]


def new_id() -> str:
    return str(uuid.uuid4())

"""What every resource provider module of the ARM emulator shares: the request, route shapes, path patterns.

A provider (``resource_groups``, ``identities``, ``storage_accounts``, ``vaults``, ``authorization``,
``insights``) exposes ``routes()``: (methods, path pattern, handler) triples. The router
(``emulator.ArmEmulator``) matches a request path against every pattern, case-insensitively, and calls
the handler with the pattern's groups while holding its lock, so handlers never lock themselves.
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


Handler = Callable[..., tuple[int, Any]]
Route = tuple[tuple[str, ...], str, Handler]


def new_id() -> str:
    return str(uuid.uuid4())

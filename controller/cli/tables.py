"""Tables for a person at a terminal: at most 80 columns, long identifiers shortened; ``--wide`` prints
them whole (and as wide as they need), for copying an id or a wide terminal."""

from __future__ import annotations

import argparse
from typing import IO

from rich.console import Console

#: A person's terminal is assumed to be at least this wide; no table needs more without --wide.
TABLE_WIDTH = 80
#: With --wide a table is as wide as its longest cells, never folded.
_UNBOUNDED = 10_000
#: A key version (32 hex digits) shortened to its first characters, as git shortens a commit.
SHORT_VERSION = 8


def add_wide_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wide", action="store_true",
                        help="print ids whole (key versions, resource ids) instead of fitting 80 columns")


def console(*, wide: bool, file: IO[str] | None = None) -> Console:
    """A console for one table: 80 columns, or unbounded with --wide; colour only on a terminal."""
    return Console(file=file, width=_UNBOUNDED if wide else TABLE_WIDTH, soft_wrap=False)


def version(text: str | None, *, wide: bool) -> str:
    """A key version, its first 8 characters unless --wide (enough to tell versions apart in one key)."""
    if not text:
        return "-"
    return text if wide or len(text) <= SHORT_VERSION + 4 else text[:SHORT_VERSION]


def resource(resource_id: str, *, wide: bool) -> str:
    """An ARM id as its type and name (``storageAccounts/st1``; a child with its parent's name:
    ``st1/encryptionScopes/s1``), whole with --wide; anything else as it is."""
    if wide or not resource_id.startswith("/subscriptions/"):
        return resource_id
    parts = resource_id.strip("/").split("/")
    lowered = [part.lower() for part in parts]
    if "providers" not in lowered:
        return resource_id
    pairs = parts[lowered.index("providers") + 2:]
    if len(pairs) < 2 or len(pairs) % 2:
        return resource_id
    last = "/".join(pairs[-2:])
    return last if len(pairs) == 2 else f"{pairs[1]}/{last}"


def key(uri: str, *, wide: bool) -> str:
    """A key identifier as ``<vault>/<key>[/<version>]`` (the vault's host name up to its first dot),
    whole with --wide."""
    if wide or "/keys/" not in uri:
        return uri
    origin, _, rest = uri.partition("/keys/")
    host = origin.split("://", 1)[-1]
    vault = host.split(".", 1)[0] if ".vault." in host or ".managedhsm." in host else host
    name, _, key_version = rest.strip("/").partition("/")
    return "/".join(part for part in (vault, name, version(key_version, wide=False) if key_version else "") if part)

"""Re-wrap jobs as queue work: the work item, its validation, and splitting a job into items.

A job (re-wrap or rewrite every blob of some containers, optionally under some prefixes, onto one key
version) is split into one work item per (account, container, prefix). A worker runs one item within
a time budget (controller/rewrap/budget.py): the walker checkpoints after every page, so when the
budget is spent the worker stops before the next page and enqueues the item's continuation; the next
worker resumes at the checkpointed listing marker. Continuations therefore carry no marker of their
own (the checkpoint is the single source of truth, guarded by ETags); they carry a sequence number, so
a redelivered continuation of a job that has since completed is recognised and dropped instead of
starting over.

Prefixes of one job must not overlap (none may start with another): overlapping items would list the
same blobs twice.
"""

from __future__ import annotations

import enum
import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from controller.errors import InvalidInput, InvalidKeyId
from controller.vault_policy import VaultPolicy

WORK_KIND = "rewrap"
MAX_CONCURRENCY = 64
MAX_PREFIX_CHARS = 1024
_STORAGE_ACCOUNT = re.compile(r"[a-z0-9]{3,24}")
_CONTAINER = re.compile(r"(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]|\$root")
_ENCRYPTION_SCOPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{1,61}[A-Za-z0-9]")


class RewrapMode(enum.StrEnum):
    #: Replace only the wrapped content key (metadata); the data never moves.
    REWRAP = "rewrap"
    #: Re-encrypt the data with a fresh content key (suspected content-key compromise).
    REWRITE = "rewrite"


@dataclass(frozen=True, slots=True)
class RewrapWorkItem:
    """One unit of fan-out work: one container (and prefix) of one account, onto one key version."""

    account: str
    container: str
    prefix: str | None
    key_id: str
    mode: RewrapMode = RewrapMode.REWRAP
    concurrency: int = 8
    dry_run: bool = False
    #: 0 for the first slice of the item, n for its n-th continuation.
    sequence: int = 0
    #: Rewrite mode only: the encryption scope the new copies are written under (None: the account's).
    encryption_scope: str | None = None
    #: Many workers, one container: this item is the job's lister, which turns the listing into page
    #: items for any number of workers (controller/rewrap/pages.py) instead of working the blobs itself.
    scale_out: bool = False

    def continuation(self) -> RewrapWorkItem:
        return replace(self, sequence=self.sequence + 1)

    def to_message(self) -> dict[str, object]:
        message: dict[str, object] = {
            "kind": WORK_KIND,
            "account": self.account,
            "container": self.container,
            "prefix": self.prefix,
            "key_id": self.key_id,
            "mode": self.mode.value,
            "concurrency": self.concurrency,
            "dry_run": self.dry_run,
            "sequence": self.sequence,
        }
        if self.encryption_scope is not None:
            message["encryption_scope"] = self.encryption_scope
        if self.scale_out:
            message["scale_out"] = True
        return message

    def as_json(self) -> dict[str, object]:
        return {name: value for name, value in self.to_message().items() if name != "kind"}


_FIELDS = frozenset({
    "kind", "account", "container", "prefix", "key_id", "mode", "concurrency", "dry_run", "sequence",
    "encryption_scope", "scale_out",
})


def parse_work_item(message: Mapping[str, object], *, policy: VaultPolicy) -> RewrapWorkItem:
    """Validate a ``rewrap`` work item; the target key must be a versioned key of an allowed vault.

    Raises InvalidInput naming the offending field.
    """
    unknown = sorted(set(message) - _FIELDS)
    if unknown:
        raise InvalidInput(f"rewrap work item has unknown field {unknown[0][:64]!r}")
    account = _string(message, "account")
    if not _STORAGE_ACCOUNT.fullmatch(account):
        raise InvalidInput("rewrap work item: 'account' is not a storage account name")
    container = _string(message, "container")
    if not _CONTAINER.fullmatch(container):
        raise InvalidInput("rewrap work item: 'container' is not a container name")
    prefix = message.get("prefix")
    if prefix is not None and (not isinstance(prefix, str) or not prefix or len(prefix) > MAX_PREFIX_CHARS):
        raise InvalidInput("rewrap work item: 'prefix' must be a non-empty string or null")
    key_id = _string(message, "key_id")
    try:
        key = policy.allowed_key(key_id)
    except InvalidKeyId as err:
        raise InvalidInput(f"rewrap work item: key {key_id[:256]!r}: {err}") from err
    if not key.is_versioned:
        raise InvalidInput("rewrap work item: 'key_id' must name a key version")
    mode_name = message.get("mode", RewrapMode.REWRAP.value)
    if mode_name not in tuple(RewrapMode):
        raise InvalidInput("rewrap work item: 'mode' must be rewrap or rewrite")
    mode = RewrapMode(str(mode_name))
    concurrency = message.get("concurrency", 8)
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or not 1 <= concurrency <= MAX_CONCURRENCY:
        raise InvalidInput(f"rewrap work item: 'concurrency' must be 1-{MAX_CONCURRENCY}")
    dry_run = message.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise InvalidInput("rewrap work item: 'dry_run' must be a boolean")
    sequence = message.get("sequence", 0)
    if isinstance(sequence, bool) or not isinstance(sequence, int) or sequence < 0:
        raise InvalidInput("rewrap work item: 'sequence' must be a non-negative integer")
    scope = message.get("encryption_scope")
    if scope is not None and (not isinstance(scope, str) or not _ENCRYPTION_SCOPE.fullmatch(scope)):
        raise InvalidInput("rewrap work item: 'encryption_scope' must be an encryption scope name or null")
    if scope is not None and mode is not RewrapMode.REWRITE:
        raise InvalidInput("rewrap work item: 'encryption_scope' needs mode rewrite (re-wrap does not move data)")
    scale_out = message.get("scale_out", False)
    if not isinstance(scale_out, bool):
        raise InvalidInput("rewrap work item: 'scale_out' must be a boolean")
    if scale_out and dry_run:
        raise InvalidInput("rewrap work item: a dry run is not scaled out (it writes nothing to share)")
    return RewrapWorkItem(
        account=account,
        container=container,
        prefix=prefix,
        key_id=key.uri,
        mode=mode,
        concurrency=concurrency,
        dry_run=dry_run,
        sequence=sequence,
        encryption_scope=scope,
        scale_out=scale_out,
    )


def _string(message: Mapping[str, object], name: str) -> str:
    value = message.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"rewrap work item: {name!r} must be a non-empty string")
    return value


def split_job(
    *,
    targets: Iterable[tuple[str, str]],
    key_id: str,
    prefixes: Sequence[str] = (),
    mode: RewrapMode = RewrapMode.REWRAP,
    concurrency: int = 8,
    dry_run: bool = False,
    encryption_scope: str | None = None,
    scale_out: bool = False,
) -> list[RewrapWorkItem]:
    """One work item per (account, container) and prefix (or one per container without prefixes).

    Raises InvalidInput when a prefix overlaps another: those items would list the same blobs.
    """
    ordered = sorted(set(prefixes))
    for first, second in itertools.pairwise(ordered):
        if second.startswith(first):
            raise InvalidInput(f"prefixes {first!r} and {second!r} overlap")
    if any(not prefix for prefix in ordered):
        raise InvalidInput("an empty prefix overlaps every other")
    items: list[RewrapWorkItem] = []
    seen: set[tuple[str, str]] = set()
    for account, container in targets:
        if (account, container) in seen:
            continue
        seen.add((account, container))
        item_prefixes: list[str | None] = list(ordered) or [None]
        for prefix in item_prefixes:
            items.append(
                RewrapWorkItem(
                    account=account,
                    container=container,
                    prefix=prefix,
                    key_id=key_id,
                    mode=mode,
                    concurrency=concurrency,
                    dry_run=dry_run,
                    encryption_scope=encryption_scope,
                    scale_out=scale_out,
                )
            )
    return items

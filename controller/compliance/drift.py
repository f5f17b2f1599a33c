"""Drift in seconds: which resources a batch of resource events makes the controller re-read, and the
re-evaluation of only their rules (pure).

A resource event (controller/resource_events.py) names one vault, one storage account or one scope of
role assignments. Re-evaluating a rule needs more than that resource: the accounts that use a vault's
keys, the vaults an account's keys live in. ``select`` decides, from the subscriptions' cheap listings
(accounts with their encryption settings, vaults with their URIs), what the gatherer reads in full;
``evaluate_drift`` runs the rules that a partial estate can decide and says exactly what it decided
(``Coverage``), so that the alert desk resolves only alerts of resources that were re-evaluated.

What a partial estate decides (the rest is left to the sweep, whose alerts it never touches):
    accounts read in full (encryption scopes included)     every account-level and scope rule
    vaults read in full                                    every vault rule
    keys of a vault whose account-level consumers were all  every key rule (CMK-005, 009, 010, 013),
    read (the touched vault's; a deleted vault's)           as far as account-level consumers go
Never: CMK-017 (audit logs), CMK-018 (blob census) and CMK-020 (key sharing across the estate), which
need the whole estate or other sources.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from controller.compliance.estate import Estate, StorageAccount
from controller.compliance.findings import Finding
from controller.compliance.resolve import account_key_uri
from controller.compliance.rules.catalogue import CATALOGUE, Rule, evaluate
from controller.compliance.rules.context import RuleSettings
from controller.errors import InvalidKeyId
from controller.model import normalise_origin
from controller.resource_events import DriftTarget, TargetKind

#: Rules that need more than the touched resources (the audit logs, the census, the whole estate).
SWEEP_ONLY_RULES = frozenset({"CMK-017", "CMK-018", "CMK-020"})
DRIFT_RULES: tuple[Rule, ...] = tuple(rule for rule in CATALOGUE if rule.id not in SWEEP_ONLY_RULES)


def _lower_id(resource_id: str) -> str:
    return resource_id.strip().rstrip("/").lower()


def _under(resource: str, scope: str) -> bool:
    return resource == scope or resource.startswith(scope + "/")


@dataclass(frozen=True, slots=True)
class DriftFocus:
    """What a batch of events touched: vault ids, account ids, and subscription or resource-group
    scopes whose every vault is touched (a role assignment there). All lower case."""

    vaults: frozenset[str] = frozenset()
    accounts: frozenset[str] = frozenset()
    scopes: frozenset[str] = frozenset()

    @classmethod
    def of(cls, targets: Iterable[DriftTarget]) -> DriftFocus:
        chosen = list(targets)
        return cls(
            vaults=frozenset(_lower_id(t.resource_id) for t in chosen if t.kind is TargetKind.VAULT),
            accounts=frozenset(_lower_id(t.resource_id) for t in chosen if t.kind is TargetKind.ACCOUNT),
            scopes=frozenset(_lower_id(t.resource_id) for t in chosen if t.kind is TargetKind.SCOPE),
        )

    def touches_vault(self, vault_id: str) -> bool:
        lowered = _lower_id(vault_id)
        return lowered in self.vaults or any(_under(lowered, scope) for scope in self.scopes)

    def as_json(self) -> dict[str, object]:
        return {"vaults": sorted(self.vaults), "accounts": sorted(self.accounts), "scopes": sorted(self.scopes)}


@dataclass(frozen=True, slots=True)
class ListedVault:
    """A vault as the subscription's vault listing names it: enough to map key URIs to vaults."""

    id: str
    vault_uri: str


@dataclass(frozen=True, slots=True)
class Selection:
    """What the gatherer reads in full. ``complete_origins``: vault origins whose account-level
    consumers are all among ``accounts``; ``unlisted_complete``: the same holds for key URIs naming
    no listed vault (a touched vault is gone, so every account pointing nowhere is read)."""

    vaults: frozenset[str]
    accounts: frozenset[str]
    complete_origins: frozenset[str]
    unlisted_complete: bool
    gone: frozenset[str]  # touched resources that no listing names any more (deleted)


def _origin(uri: str | None) -> str | None:
    if not uri:
        return None
    try:
        return normalise_origin(uri.strip().rstrip("/"))
    except InvalidKeyId:
        return None


def _key_uri_origin(key_uri: str) -> str | None:
    """The origin of the vault a key URI (``https://host/keys/name[/version]``) names."""
    return _origin(key_uri.partition("/keys/")[0])


def account_origin(account: StorageAccount) -> str | None:
    """The origin of the vault holding the account's own (account-level) key, when it uses one."""
    if not account.encryption.uses_key_vault:
        return None
    uri = account_key_uri(account)
    return _key_uri_origin(uri) if uri else None


def select(focus: DriftFocus, accounts: Sequence[StorageAccount], vaults: Sequence[ListedVault]) -> Selection:
    """The vaults and accounts to read in full, from the listings of the subscriptions in scope."""
    by_origin = {origin: vault for vault in vaults if (origin := _origin(vault.vault_uri)) is not None}
    listed_ids = {_lower_id(vault.id) for vault in vaults}
    listed_accounts = {_lower_id(account.id) for account in accounts}
    chosen_vaults = {_lower_id(vault.id) for vault in vaults if focus.touches_vault(vault.id)}
    gone = {vault for vault in focus.vaults if vault not in listed_ids}
    gone |= {account for account in focus.accounts if account not in listed_accounts}
    chosen_accounts = {_lower_id(account.id) for account in accounts if _lower_id(account.id) in focus.accounts}
    for account in accounts:  # the touched accounts' own vaults
        origin = account_origin(account)
        if _lower_id(account.id) in focus.accounts and origin in by_origin:
            chosen_vaults.add(_lower_id(by_origin[origin].id))
    complete = {origin for origin, vault in by_origin.items() if _lower_id(vault.id) in chosen_vaults}
    unlisted_complete = any(vault in gone for vault in focus.vaults)
    for account in accounts:  # every account-level consumer of those vaults (and of a vanished one)
        origin = account_origin(account)
        if origin is None:
            continue
        if origin in complete or (unlisted_complete and origin not in by_origin):
            chosen_accounts.add(_lower_id(account.id))
    return Selection(frozenset(chosen_vaults), frozenset(chosen_accounts), frozenset(complete),
                     unlisted_complete, frozenset(gone))


def scope_vaults(accounts: Iterable[StorageAccount], vaults: Sequence[ListedVault]) -> frozenset[str]:
    """The listed vaults that the encryption scopes of ``accounts`` use (read once scopes are known)."""
    by_origin = {origin: vault for vault in vaults if (origin := _origin(vault.vault_uri)) is not None}
    found = set()
    for account in accounts:
        for scope in account.encryption_scopes or ():
            origin = _key_uri_origin(scope.key_uri) if scope.uses_key_vault and scope.key_uri else None
            if origin in by_origin:
                found.add(_lower_id(by_origin[origin].id))
    return frozenset(found)


@dataclass(frozen=True, slots=True)
class Coverage:
    """The (rule, resource) pairs one re-evaluation decided: alerts outside it are left alone."""

    rules: frozenset[str]
    resources: frozenset[str]  # lower-case ARM ids: the resource and everything below it
    complete_origins: frozenset[str]
    listed_origins: frozenset[str]
    unlisted_complete: bool

    def covers(self, rule: str | None, resource: str) -> bool:
        if rule is None or rule.upper() not in self.rules:
            return False
        lowered = _lower_id(resource)
        if lowered.startswith("https://"):  # a key URI: complete when all its consumers were read
            origin = _key_uri_origin(lowered)
            if origin is None:
                return False
            return origin in self.complete_origins or (self.unlisted_complete and origin not in self.listed_origins)
        return any(_under(lowered, covered) for covered in self.resources)


def coverage_of(estate: Estate, selection: Selection, listed: Sequence[ListedVault]) -> Coverage:
    resources = {_lower_id(account.id) for account in estate.storage_accounts}
    resources |= {_lower_id(vault.id) for vault in estate.vaults}
    resources |= selection.gone
    listed_origins = frozenset(origin for vault in listed if (origin := _origin(vault.vault_uri)) is not None)
    return Coverage(
        rules=frozenset(rule.id for rule in DRIFT_RULES),
        resources=frozenset(resources),
        complete_origins=selection.complete_origins,
        listed_origins=listed_origins,
        unlisted_complete=selection.unlisted_complete,
    )


@dataclass(frozen=True, slots=True)
class FocusedEstate:
    """A partial estate (what a focus touches, read in full) and what it can decide."""

    estate: Estate
    coverage: Coverage


@dataclass(frozen=True, slots=True)
class DriftResult:
    findings: tuple[Finding, ...]
    coverage: Coverage


#: Our clock and Azure Resource Manager's may disagree a little: a re-read covers events older than its start by this.
RE_READ_MARGIN = timedelta(seconds=30)
#: Completed re-reads an instance remembers.
REMEMBERED_RE_READS = 32


class CompletedReReads:
    """This instance's completed drift re-reads: when each started reading Azure and what it read in full.

    An event is a trigger, never the truth: an account event older than a completed re-read of that
    account is covered by it (Azure's state it read already held the change), so a burst of events (an
    estate being built, one event per account written) does not re-read the same vault and its
    consumers once per event."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done: deque[tuple[datetime, frozenset[str]]] = deque(maxlen=REMEMBERED_RE_READS)

    def record(self, started: datetime, coverage: Coverage) -> None:
        with self._lock:
            self._done.append((started, coverage.resources))

    def covers(self, target: DriftTarget, event_time: datetime | None) -> bool:
        if target.kind is not TargetKind.ACCOUNT or event_time is None:
            return False
        resource = _lower_id(target.resource_id)
        with self._lock:
            return any(started - RE_READ_MARGIN > event_time and resource in read for started, read in self._done)


def evaluate_drift(estate: Estate, coverage: Coverage, settings: RuleSettings, now: datetime) -> DriftResult:
    """The drift rules over a partial estate; only findings the partial estate decides are kept."""
    found = evaluate(estate, settings, now, rules=DRIFT_RULES)
    return DriftResult(tuple(result for result in found if coverage.covers(result.rule, result.resource)), coverage)

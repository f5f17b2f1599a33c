"""The rule catalogue in RULES.md order, ``evaluate`` over one estate, and the sweep's summary (pure).

Every CMK-000 for one resource (read failures, and each rule that could not be evaluated for it) is
merged into one finding, so that the fingerprint (rule and resource) stays unique per sweep.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from controller.compliance.estate import Estate
from controller.compliance.findings import Finding
from controller.compliance.resolve import index
from controller.compliance.rules import accounts, data, keys, vaults
from controller.compliance.rules.context import (
    NOT_EVALUABLE,
    RuleContext,
    RuleSettings,
    finding,
    read_failure_finding,
)
from controller.model import Severity


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    summary: str
    check: Callable[[RuleContext], list[Finding]]


def cmk_000_read_failures(context: RuleContext) -> list[Finding]:
    return [read_failure_finding(failure) for failure in context.estate.read_failures]


CATALOGUE: tuple[Rule, ...] = (
    Rule("CMK-000", "something needed to evaluate a rule could not be read", cmk_000_read_failures),
    Rule("CMK-001", "storage account in scope uses a customer-managed key", accounts.cmk_001_account_uses_cmk),
    Rule("CMK-002", "the encryption identity resolves", accounts.cmk_002_encryption_identity_resolves),
    Rule("CMK-003", "vault soft delete on, retention 7-90 days", vaults.cmk_003_soft_delete),
    Rule("CMK-004", "vault purge protection on", vaults.cmk_004_purge_protection),
    Rule("CMK-005", "key is RSA 2048/3072/4096, at least the minimum size", keys.cmk_005_key_type_and_size),
    Rule("CMK-006", "the encryption identity can get, wrap and unwrap the key", accounts.cmk_006_identity_can_use_key),
    Rule("CMK-007", "the vault firewall lets Azure Storage in", vaults.cmk_007_firewall_lets_storage_in),
    Rule("CMK-008", "vault in the account's region", accounts.cmk_008_vault_in_account_region),
    Rule("CMK-009", "the key version in use is enabled, valid and not expiring soon",
         keys.cmk_009_version_in_use_valid),
    Rule("CMK-010", "the key rotates within the maximum age", keys.cmk_010_rotation_policy),
    Rule("CMK-011", "the consumer uses a versionless key", accounts.cmk_011_versionless_key),
    Rule("CMK-012", "the account adopted the latest key version", accounts.cmk_012_latest_version_adopted),
    Rule("CMK-013", "the key and its vault exist and are not soft-deleted", keys.cmk_013_key_exists),
    Rule("CMK-014", "queue and table services are covered by the CMK", accounts.cmk_014_queue_and_table_covered),
    Rule("CMK-015", "geo-redundant CMK account (advisory)", accounts.cmk_015_geo_redundant_advisory),
    Rule("CMK-016", "the vault sends AuditEvent logs somewhere", vaults.cmk_016_audit_diagnostics),
    Rule("CMK-017", "no failed KeyWrap/KeyUnwrap in the audit window", vaults.cmk_017_failed_key_operations),
    Rule("CMK-018", "registered containers' blobs are wrapped by the latest version", data.cmk_018_blobs_rewrapped),
    Rule("CMK-019", "encryption scopes pass the account-level checks", accounts.cmk_019_encryption_scopes),
    Rule("CMK-020", "one key is not shared across tenants, subscriptions or too many accounts",
         keys.cmk_020_key_isolation),
)


def evaluate(estate: Estate, settings: RuleSettings, now: datetime,
             *, rules: Sequence[Rule] = CATALOGUE) -> list[Finding]:
    """Every rule of ``rules`` (the catalogue) over ``estate``: findings sorted by severity, rule and
    resource."""
    context = RuleContext.of(estate, settings, now)
    found = [result for rule in rules for result in rule.check(context)]
    merged = [result for result in found if result.rule != NOT_EVALUABLE] + merge_not_evaluable(
        [result for result in found if result.rule == NOT_EVALUABLE])
    return sorted(merged, key=sort_key)


def sort_key(result: Finding) -> tuple[int, str, str]:
    return (result.severity.rank, result.rule, result.resource.lower())


def merge_not_evaluable(results: Sequence[Finding]) -> list[Finding]:
    """One CMK-000 per resource (case-insensitive), with every entry of the merged ones."""
    groups: dict[str, list[Finding]] = {}
    for result in results:
        groups.setdefault(result.resource.strip().rstrip("/").lower(), []).append(result)
    merged = []
    for group in groups.values():
        if len(group) == 1:
            merged.append(group[0])
            continue
        entries = sorted((entry for result in group for entry in _entries(result)),
                         key=lambda entry: sorted((key, str(value)) for key, value in entry.items()))
        unique = [entry for position, entry in enumerate(entries) if entry not in entries[:position]]
        rules = sorted({str(entry["rule"]) for entry in unique if "rule" in entry})
        title = (f"{', '.join(rules)} could not be evaluated" if rules
                 else "; ".join(sorted({result.title for result in group})))
        remediation = "; ".join(sorted({result.remediation for result in group}))
        merged.append(finding(NOT_EVALUABLE, min(result.resource for result in group), title,
                              {"not_evaluated": tuple(unique)}, remediation))
    return merged


def _entries(result: Finding) -> tuple[Mapping[str, object], ...]:
    entries = result.evidence.get("not_evaluated")
    return entries if isinstance(entries, tuple) else ()


@dataclass(frozen=True, slots=True)
class Summary:
    """Per run: counts by severity and rule, how many resources were evaluated, which could not be
    (CMK-000 resources) and which rules could not be evaluated somewhere; per key, who uses which
    version."""

    by_severity: Mapping[str, int]
    by_rule: Mapping[str, int]
    resources_evaluated: int
    not_evaluable: tuple[str, ...]
    rules_not_evaluable: tuple[str, ...]
    versions_in_use: Mapping[str, Mapping[str, tuple[str, ...]]]

    def as_json(self) -> dict[str, object]:
        return {
            "by_severity": dict(self.by_severity),
            "by_rule": dict(self.by_rule),
            "resources_evaluated": self.resources_evaluated,
            "not_evaluable": list(self.not_evaluable),
            "rules_not_evaluable": list(self.rules_not_evaluable),
            "versions_in_use": {key: {version: list(users) for version, users in versions.items()}
                                for key, versions in self.versions_in_use.items()},
        }


def summarise(estate: Estate, findings: Sequence[Finding]) -> Summary:
    lookups = index(estate)
    severities = Counter(result.severity for result in findings)
    rules = Counter(result.rule for result in findings)
    not_evaluable = [result for result in findings if result.rule == NOT_EVALUABLE]
    scopes = sum(len(account.encryption_scopes or ()) for account in estate.storage_accounts)
    evaluated = (len(estate.storage_accounts) + scopes + len(estate.vaults) + len(lookups.key_uses)
                 + len(estate.container_census))
    versions: dict[str, dict[str, tuple[str, ...]]] = {}
    for use in lookups.key_uses:
        users: dict[str, list[str]] = {}
        for consumer in use.consumers:
            users.setdefault(consumer.version_in_use or "unknown", []).append(consumer.resource_id)
        versions[use.uri] = {version: tuple(sorted(ids)) for version, ids in sorted(users.items())}
    return Summary(
        by_severity={severity.value: severities.get(severity, 0) for severity in Severity},
        by_rule=dict(sorted(rules.items())),
        resources_evaluated=evaluated,
        not_evaluable=tuple(sorted({result.resource for result in not_evaluable}, key=str.lower)),
        rules_not_evaluable=tuple(sorted({str(entry["rule"]) for result in not_evaluable
                                          for entry in _entries(result) if "rule" in entry})),
        versions_in_use=versions,
    )

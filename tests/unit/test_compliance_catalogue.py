"""The catalogue as a whole: evaluate's order and CMK-000 merging, the summary, and properties
(fingerprints survive case changes; evaluate is deterministic whatever the listing order)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.compliance.estate import (
    EncryptionScope,
    Estate,
    ManagedIdentity,
    ReadAspect,
    ReadFailure,
    StorageAccount,
    Vault,
)
from controller.compliance.findings import Finding, fingerprint_of
from controller.compliance.rules import CATALOGUE, RuleSettings, evaluate, summarise
from controller.compliance.rules.catalogue import merge_not_evaluable
from controller.compliance.rules.context import (
    DEFAULT_SEVERITY,
    Unevaluable,
    not_evaluable,
    read_failure_finding,
)
from controller.model import RotationLifetimeAction, Severity
from controller.reasons import Reason
from tests.unit.estate_builders import (
    KEY_URI,
    NOW,
    SUB,
    V1,
    V2,
    VAULT_ID,
    VAULT_URI,
    account,
    account_id,
    census,
    estate,
    key_version,
    not_evaluated,
    only,
    rotation_policy,
    scope,
    vault,
    vault_key,
)

pytestmark = pytest.mark.unit

#: RULES.md's default severities.
RULES_MD = {
    "CMK-000": "high", "CMK-001": "high", "CMK-002": "critical", "CMK-003": "high", "CMK-004": "high",
    "CMK-005": "critical", "CMK-006": "critical", "CMK-007": "critical", "CMK-008": "medium", "CMK-009": "critical",
    "CMK-010": "medium", "CMK-011": "low", "CMK-012": "high", "CMK-013": "critical", "CMK-014": "info",
    "CMK-015": "medium", "CMK-016": "medium", "CMK-017": "critical", "CMK-018": "medium", "CMK-019": "high",
    "CMK-020": "info",
}


def test_the_catalogue_has_every_rule_once_in_order_with_its_default_severity() -> None:
    assert [rule.id for rule in CATALOGUE] == [f"CMK-{number:03d}" for number in range(21)]
    assert {rule: severity.value for rule, severity in DEFAULT_SEVERITY.items()} == RULES_MD


def test_a_compliant_estate_has_no_finding() -> None:
    built = estate(accounts=(account(scopes=(scope(),)),), container_census=(census({V2: 4}),))
    assert evaluate(built, RuleSettings(), NOW) == []


NOTIFY_ONLY = RotationLifetimeAction("Notify", time_before_expiry="P30D")


def broken_estate(spell: Callable[[str], str] = str) -> Estate:
    """An estate failing several rules; ``spell`` changes the case of every id and URI."""
    plain = account("plain", key_source="Microsoft.Storage", uai=None, identity=ManagedIdentity())
    lagging = account("lagging", current=f"{KEY_URI}/{V1}", sku="Standard_RAGRS",
                      scopes=(scope("s1", "lagging", state="Disabled"),))
    pinned = account("pinned", key_version=V1, current=f"{KEY_URI}/{V1}", queue=None)
    unread = account("unread", scopes=None)
    accounts = tuple(_respell_account(built, spell) for built in (plain, lagging, pinned, unread))
    weak_vault = vault(enable_purge_protection=False, diagnostic_settings=None,
                       keys=(vault_key(versions=(key_version(V1, age=timedelta(days=200)),
                                                 key_version(V2, age=timedelta(days=100))),
                                       policy=rotation_policy(NOTIFY_ONLY)),))
    vaults = (replace(weak_vault, id=spell(weak_vault.id), vault_uri=spell(weak_vault.vault_uri)),)
    failures = (ReadFailure(resource=spell(VAULT_ID), aspect=ReadAspect.DIAGNOSTIC_SETTINGS, reason="Forbidden",
                            status_code=403),
                ReadFailure(resource=spell(account_id("unread")), aspect=ReadAspect.ENCRYPTION_SCOPES,
                            reason="throttled", status_code=429))
    return estate(accounts=accounts, vaults=vaults, read_failures=failures, audit=None)


def _respell_account(built: StorageAccount, spell: Callable[[str], str]) -> StorageAccount:
    properties = built.encryption.key_vault_properties
    if properties is not None:
        properties = replace(properties, key_vault_uri=spell(VAULT_URI), key_name=spell(properties.key_name or ""),
                             current_versioned_key_identifier=spell(properties.current_versioned_key_identifier or ""))
    scopes = None if built.encryption_scopes is None else tuple(
        _respell_scope(item, spell) for item in built.encryption_scopes)
    return replace(built, id=spell(built.id), encryption=replace(built.encryption, key_vault_properties=properties),
                   encryption_scopes=scopes)


def _respell_scope(item: EncryptionScope, spell: Callable[[str], str]) -> EncryptionScope:
    return replace(item, id=spell(item.id), key_uri=spell(item.key_uri or ""),
                   current_versioned_key_identifier=spell(item.current_versioned_key_identifier or ""))


def test_evaluate_sorts_by_severity_rule_and_resource_and_merges_cmk_000_per_resource() -> None:
    findings = evaluate(broken_estate(), RuleSettings(), NOW)
    keys = [(result.severity, result.rule, result.resource) for result in findings]
    lagging, pinned, plain = account_id("lagging"), account_id("pinned"), account_id("plain")
    assert keys == [
        (Severity.HIGH, "CMK-000", account_id("unread")),  # "/" sorts before letters
        (Severity.HIGH, "CMK-000", VAULT_ID),
        (Severity.HIGH, "CMK-000", "audit-logs"),
        (Severity.HIGH, "CMK-001", plain),
        (Severity.HIGH, "CMK-004", VAULT_ID),
        (Severity.HIGH, "CMK-012", lagging),
        (Severity.HIGH, "CMK-012", pinned),
        (Severity.HIGH, "CMK-019", f"{lagging}/encryptionScopes/s1"),
        (Severity.MEDIUM, "CMK-010", KEY_URI),
        (Severity.MEDIUM, "CMK-015", lagging),
        (Severity.LOW, "CMK-011", pinned),
        (Severity.INFO, "CMK-014", pinned),
    ]
    merged_vault = next(result for result in findings if result.rule == "CMK-000" and result.resource == VAULT_ID)
    entries = not_evaluated(merged_vault)
    assert len(entries) == 2
    assert {entry.get("rule") for entry in entries} == {None, "CMK-016"}
    assert all(entry["status_code"] == 403 for entry in entries)
    assert merged_vault.title == "CMK-016 could not be evaluated"
    merged_account = next(result for result in findings if result.resource == account_id("unread"))
    assert [entry.get("rule") for entry in not_evaluated(merged_account)] in ([None, "CMK-019"], ["CMK-019", None])
    json.dumps([result.as_json() for result in findings])  # evidence is JSON as it stands


def test_every_read_failure_is_a_cmk_000_naming_what_and_why() -> None:
    failure = ReadFailure(resource=f"/subscriptions/{SUB}", aspect=ReadAspect.STORAGE_ACCOUNTS,
                          reason="AuthorizationFailed", status_code=403)
    [result] = [item for item in evaluate(estate(read_failures=(failure,)), RuleSettings(), NOW)]
    assert (result.rule, result.severity, result.resource) == ("CMK-000", Severity.HIGH, f"/subscriptions/{SUB}")
    assert result.title == "could not read storage-accounts (HTTP 403)"
    assert not_evaluated(result) == [{"aspect": "storage-accounts", "read_error": "AuthorizationFailed",
                                      "status_code": 403}]
    assert "Reader on the resource" in result.remediation


def test_read_failures_of_one_resource_merge_into_one_cmk_000_whatever_their_order() -> None:
    target = account_id("acct1")
    failures = (ReadFailure(resource=target, aspect=ReadAspect.ACCOUNT, reason="gone", status_code=404),
                ReadFailure(resource=target.upper(), aspect=ReadAspect.ENCRYPTION_SCOPES, reason="slow",
                            status_code=429))
    results = [evaluate(estate(read_failures=order), RuleSettings(), NOW) for order in (failures, failures[::-1])]
    assert results[0] == results[1]
    merged = only(results[0])
    assert merged.resource == target.upper()  # the smallest spelling, whatever the order
    assert merged.title == "could not read account (HTTP 404); could not read encryption-scopes (HTTP 429)"
    assert [entry["status_code"] for entry in not_evaluated(merged)] == [404, 429]


def test_summary_counts_and_versions_in_use() -> None:
    built = broken_estate()
    findings = evaluate(built, RuleSettings(), NOW)
    summary = summarise(built, findings)
    assert summary.by_severity == {"critical": 0, "high": 8, "medium": 2, "low": 1, "info": 1}
    assert summary.by_rule["CMK-000"] == 3
    assert summary.by_rule["CMK-012"] == 2
    assert sum(summary.by_rule.values()) == len(findings)
    # 4 accounts + 1 scope + 1 vault + 1 key in use
    assert summary.resources_evaluated == 7
    assert summary.not_evaluable == (account_id("unread"), VAULT_ID, "audit-logs")
    assert summary.rules_not_evaluable == ("CMK-016", "CMK-017", "CMK-019")
    assert summary.versions_in_use == {KEY_URI: {
        V1: (account_id("lagging"), account_id("pinned")),
        V2: (f"{account_id('lagging')}/encryptionScopes/s1", account_id("unread"))}}
    json.dumps(summary.as_json())


def test_summary_counts_the_census_and_names_consumers_of_an_unknown_version() -> None:
    built = estate(accounts=(account(current=None),), container_census=(census({V2: 4}),))
    summary = summarise(built, evaluate(built, RuleSettings(), NOW))
    assert summary.as_json() == {
        "by_severity": {"critical": 0, "high": 2, "medium": 0, "low": 0, "info": 0},
        "by_rule": {"CMK-000": 2},
        "resources_evaluated": 4,  # the account, the vault, the key in use and the census
        "not_evaluable": [account_id("acct1"), KEY_URI],
        "rules_not_evaluable": ["CMK-009", "CMK-012"],
        "versions_in_use": {KEY_URI: {"unknown": [account_id("acct1")]}},
    }


def group_id(name: str) -> str:
    return f"/subscriptions/{SUB}/resourceGroups/{name}"


def test_findings_and_not_evaluable_resources_sort_case_insensitively() -> None:
    """"_" sorts before letters in lower case and after them in upper case: the order is lower case's."""
    names = ("rgb", "rg_a", "RGC")
    failures = tuple(ReadFailure(resource=group_id(name), aspect=ReadAspect.STORAGE_ACCOUNTS, reason="Forbidden",
                                 status_code=403) for name in names)
    built = estate(accounts=(), vaults=(), read_failures=failures)
    findings = evaluate(built, RuleSettings(), NOW)
    expected = [group_id("rg_a"), group_id("rgb"), group_id("RGC")]
    assert [result.resource for result in findings] == expected
    assert list(summarise(built, findings).not_evaluable) == expected


VAULT_X = VAULT_ID.replace("contoso-cmk", "keysX")  # a vault name may end in an upper-case X


def test_cmk_000s_of_one_resource_merge_whatever_its_spelling_and_keep_every_remediation() -> None:
    forbidden = ReadFailure(resource=VAULT_X + "/", aspect=ReadAspect.KEYS, reason="Forbidden", status_code=403)
    unread = Unevaluable(Reason.NOT_READ, "not reported", aspect=ReadAspect.ROLE_ASSIGNMENTS)
    alone = read_failure_finding(ReadFailure(resource="audit-logs", aspect=ReadAspect.AUDIT_LOGS, reason="slow"))
    merged = merge_not_evaluable([
        alone,
        read_failure_finding(forbidden),
        not_evaluable("CMK-016", VAULT_X.upper(), unread),
        not_evaluable("CMK-006", VAULT_X.lower(), unread),
    ])
    assert merged[0] == alone
    [vault_finding] = merged[1:]
    assert vault_finding.resource == VAULT_X.upper()
    assert vault_finding.title == "CMK-006, CMK-016 could not be evaluated"
    assert vault_finding.remediation == "; ".join(sorted({
        read_failure_finding(forbidden).remediation, not_evaluable("CMK-016", VAULT_X, unread).remediation}))
    assert [entry.get("rule") for entry in not_evaluated(vault_finding)] == [None, "CMK-006", "CMK-016"]


def test_a_cmk_000_without_entries_merges_as_none() -> None:
    bare = Finding("CMK-000", Severity.HIGH, VAULT_ID, "could not read the vault", {}, "retry")
    listed = Finding("CMK-000", Severity.HIGH, VAULT_ID, "odd", {"not_evaluated": [{"rule": "CMK-004"}]}, "retry")
    other = not_evaluable("CMK-016", VAULT_ID, Unevaluable(Reason.NOT_READ, "not reported"))
    [merged] = merge_not_evaluable([bare, listed, other])
    assert not_evaluated(merged) == not_evaluated(other)  # a list is not this code's evidence: no entries
    assert merged.title == "CMK-016 could not be evaluated"
    [no_rules] = merge_not_evaluable([bare, listed])
    assert no_rules.title == "could not read the vault; odd"
    assert not_evaluated(no_rules) == []


def test_evaluate_needs_an_aware_clock_and_valid_settings() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        evaluate(estate(), RuleSettings(), datetime(2026, 12, 3, 12, 0))
    with pytest.raises(ValueError, match="min_rsa_key_size"):
        RuleSettings(min_rsa_key_size=1024)
    with pytest.raises(ValueError, match="adoption_window"):
        RuleSettings(adoption_window=timedelta(0))
    with pytest.raises(ValueError, match="max_accounts_per_key"):
        RuleSettings(max_accounts_per_key=0)
    assert RuleSettings(max_accounts_per_key=1, min_rsa_key_size=4096).max_accounts_per_key == 1


# --- properties ------------------------------------------------------------------------------------------

SPELLINGS: dict[str, Callable[[str], str]] = {"as is": str, "upper": str.upper, "lower": str.lower,
                                              "swapcase": str.swapcase}


@settings(max_examples=200, deadline=None)
@given(resource=st.sampled_from([VAULT_ID, KEY_URI, account_id("acct1"), "acct1/secrets", "audit-logs"]),
       flips=st.lists(st.booleans(), min_size=1, max_size=200), trailing_slash=st.booleans())
def test_fingerprints_are_stable_under_case_changes(resource: str, flips: list[bool], trailing_slash: bool) -> None:
    respelled = "".join(char.swapcase() if flips[index % len(flips)] else char for index, char in enumerate(resource))
    respelled += "/" if trailing_slash else ""
    assert fingerprint_of("CMK-006", respelled) == fingerprint_of("cmk-006", resource)
    assert Finding("CMK-006", Severity.CRITICAL, respelled, "t").fingerprint == fingerprint_of("CMK-006", resource)
    assert fingerprint_of("CMK-006", resource) != fingerprint_of("CMK-012", resource)


@settings(max_examples=20, deadline=None)
@given(spelling=st.sampled_from(sorted(SPELLINGS)))
def test_findings_keep_their_fingerprints_whatever_the_case_azure_reports_ids_in(spelling: str) -> None:
    baseline = evaluate(broken_estate(), RuleSettings(), NOW)
    respelled = evaluate(broken_estate(SPELLINGS[spelling]), RuleSettings(), NOW)
    assert [(result.rule, result.severity, result.fingerprint) for result in respelled] == [
        (result.rule, result.severity, result.fingerprint) for result in baseline]


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_evaluate_is_deterministic_whatever_the_listing_order(data: st.DataObject) -> None:
    built = broken_estate()
    accounts: list[StorageAccount] = data.draw(st.permutations(built.storage_accounts))
    failures: list[ReadFailure] = data.draw(st.permutations(built.read_failures))
    extra_vault: Vault = vault(name="spare-vault", vault_id=VAULT_ID.replace("contoso-cmk", "spare-vault"),
                               vault_uri="https://spare-vault.vault.azure.net/", enable_purge_protection=False)
    vaults: list[Vault] = data.draw(st.permutations((*built.vaults, extra_vault)))
    shuffled = replace(built, storage_accounts=tuple(accounts), read_failures=tuple(failures), vaults=tuple(vaults))
    ordered = replace(built, vaults=(*built.vaults, extra_vault))
    first = [result.as_json() for result in evaluate(shuffled, RuleSettings(), NOW)]
    assert first == [result.as_json() for result in evaluate(shuffled, RuleSettings(), NOW)]
    assert first == [result.as_json() for result in evaluate(ordered, RuleSettings(), NOW)]


def test_a_read_failure_without_a_status_says_so_and_names_the_access_it_needs() -> None:
    failure = ReadFailure(resource=KEY_URI, aspect=ReadAspect.KEY_VERSIONS, reason="connection reset")
    [result] = [item for item in evaluate(estate(read_failures=(failure,)), RuleSettings(), NOW)
                if item.resource == KEY_URI and item.title.startswith("could not read")]
    assert result.title == "could not read key-versions"
    assert result.remediation == ("give the controller's identity list and get key permissions (or Key Vault Reader) "
                                  "on the vault, or fix the error named in the evidence; the next sweep evaluates it "
                                  "again")


READ_AGAIN = ", or fix the error named in the evidence; the next sweep evaluates it again"


def test_a_rule_not_evaluable_for_want_of_a_read_names_the_failed_read_and_its_access() -> None:
    failure = ReadFailure(resource=VAULT_ID, aspect=ReadAspect.ROLE_DEFINITION, reason="Forbidden", status_code=403)
    cause = Unevaluable(Reason.ACCESS_NOT_EVALUATED, "role definition r1 was not read", failure,
                        aspect=ReadAspect.ROLE_ASSIGNMENTS)
    result = not_evaluable("CMK-006", VAULT_ID, cause)
    assert result.title == "CMK-006 could not be evaluated"
    assert not_evaluated(result) == [{"rule": "CMK-006", "reason": "AccessNotEvaluated",
                                      "detail": "role definition r1 was not read", "aspect": "role-definition",
                                      "read_error": "Forbidden", "status_code": 403}]
    assert result.remediation == ("give the controller's identity Microsoft.Authorization/roleDefinitions/read "
                                  "(Reader)" + READ_AGAIN)


@pytest.mark.parametrize("aspect", [None, ReadAspect.ACCOUNT])
def test_without_a_known_access_to_grant_the_remediation_asks_for_reader(aspect: ReadAspect | None) -> None:
    result = not_evaluable("CMK-005", VAULT_ID, Unevaluable(Reason.NOT_READ, "not reported", aspect=aspect))
    assert result.remediation == "give the controller's identity Reader on the resource" + READ_AGAIN

"""Key and data rules (CMK-005, 009, 010, 013, 018, 020) on hand-built estates."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from controller.compliance.estate import ReadAspect, ReadFailure, Subscription
from controller.compliance.rules import RuleSettings
from controller.compliance.rules.data import cmk_018_blobs_rewrapped
from controller.compliance.rules.keys import (
    cmk_005_key_type_and_size,
    cmk_009_version_in_use_valid,
    cmk_010_rotation_policy,
    cmk_013_key_exists,
    cmk_020_key_isolation,
    parse_duration,
)
from controller.model import KeyVersionInfo, RotationLifetimeAction, Severity
from tests.unit.estate_builders import (
    KEY_NAME,
    KEY_URI,
    NOW,
    SUB,
    SUB2,
    TENANT,
    TENANT2,
    V1,
    V2,
    V3,
    VAULT_ID,
    VAULT_ORIGIN,
    VERSIONS,
    account,
    account_id,
    census,
    deleted_key,
    deleted_vault,
    estate,
    key_version,
    not_evaluated,
    only,
    rotation_policy,
    run,
    scope,
    vault,
    vault_key,
)

pytestmark = pytest.mark.unit

ACCOUNT = account_id("acct1")
A_KEY_URI = f"{VAULT_ORIGIN}/keys/a-key"
A_VAULT = "https://a-vault.vault.azure.net"


def with_key(**key: object) -> object:
    return estate(vaults=(vault(keys=(vault_key(**key),)),))  # type: ignore[arg-type]


# --- CMK-005 --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kty", "size", "settings", "reason"), [
    ("RSA", 3072, RuleSettings(), None),
    ("rsa-hsm", 4096, RuleSettings(), None),
    ("RSA", 2048, RuleSettings(), None),
    ("EC", 256, RuleSettings(), "UnsupportedKeyType"),
    ("EC-HSM", 384, RuleSettings(), "UnsupportedKeyType"),
    ("oct", 256, RuleSettings(), "UnsupportedKeyType"),
    ("RSA", 1024, RuleSettings(), "UnsupportedKeySize"),
    ("RSA", 2560, RuleSettings(), "UnsupportedKeySize"),
    ("RSA", 2048, RuleSettings(min_rsa_key_size=3072), "KeySizeBelowMinimum"),
    ("RSA-HSM", 3072, RuleSettings(min_rsa_key_size=4096), "KeySizeBelowMinimum"),
    ("EC", None, RuleSettings(), "UnsupportedKeyType"),
])
def test_cmk_005_keys_must_be_rsa_of_a_supported_size(kty: str, size: int | None, settings: RuleSettings,
                                                      reason: str | None) -> None:
    findings = run(cmk_005_key_type_and_size, with_key(kty=kty, key_size=size), settings=settings)  # type: ignore[arg-type]
    if reason is None:
        assert findings == []
        return
    result = only(findings)
    assert (result.rule, result.severity, result.resource) == ("CMK-005", Severity.CRITICAL, KEY_URI)
    assert result.evidence == {"reason": reason, "kty": kty, "key_size": size,
                               "minimum_size": settings.min_rsa_key_size}
    described = f"{kty} {size}" if size is not None else kty  # no size reported: none shown
    assert result.title == (f"key storage-cmk is {described}: storage needs RSA of 2048, 3072, 4096 bits, "
                            f"at least {settings.min_rsa_key_size}")
    kty_option = "RSA-HSM" if kty.upper().endswith("-HSM") else "RSA"
    assert result.remediation == (
        f"az keyvault key create --vault-name contoso-cmk --name storage-cmk --kty {kty_option} "
        f"--size {settings.min_rsa_key_size} (a new version of the same key; versionless consumers adopt it, pinned "
        "ones must be updated)")


def test_cmk_005_an_rsa_key_without_a_size_is_not_evaluable() -> None:
    result = only(run(cmk_005_key_type_and_size, with_key(key_size=None)))  # type: ignore[arg-type]
    assert (result.rule, result.resource) == ("CMK-000", KEY_URI)
    assert not_evaluated(result)[0]["rule"] == "CMK-005"
    assert not_evaluated(result)[0]["detail"] == "the size of RSA key storage-cmk was not reported"


def test_cmk_005_each_key_is_judged_on_its_own() -> None:
    """In URI order: a-vault's key (vault not read), a-key (no size), b-key (fine), storage-cmk (EC)."""
    unread_vault = vault(name="a-vault", vault_id=VAULT_ID.replace("contoso-cmk", "a-vault"),
                         vault_uri=f"{A_VAULT}/", keys=None)
    built = estate(
        accounts=(account("acct0", key_name="a-key"), account("acct1"),
                  account("acct2", key_name="b-key"),
                  account("acct3", key_vault_uri=f"{A_VAULT}/", current=f"{A_VAULT}/keys/{KEY_NAME}/{V2}")),
        vaults=(vault(keys=(vault_key("a-key", key_size=None), vault_key("b-key"), vault_key(kty="EC"))),
                unread_vault))
    unread_key, sizeless, ec = run(cmk_005_key_type_and_size, built)
    assert (unread_key.resource, [entry["rule"] for entry in not_evaluated(unread_key)]) == (
        f"{A_VAULT}/keys/{KEY_NAME}", ["CMK-005"])
    assert (sizeless.rule, sizeless.resource) == ("CMK-000", A_KEY_URI)
    assert (ec.rule, ec.resource, ec.evidence["reason"]) == ("CMK-005", KEY_URI, "UnsupportedKeyType")


def test_key_rules_use_the_versionless_uri_with_a_lower_case_host() -> None:
    shouting = estate(accounts=(account(key_vault_uri="HTTPS://CONTOSO-CMK.VAULT.AZURE.NET/"),),
                      vaults=(vault(keys=(vault_key(kty="EC"),)),))
    assert only(run(cmk_005_key_type_and_size, shouting)).resource == KEY_URI


# --- CMK-009 --------------------------------------------------------------------------------------------


def latest(**attributes: object) -> tuple[KeyVersionInfo, ...]:
    return (VERSIONS[0], key_version(V2, age=timedelta(days=30), **attributes))  # type: ignore[arg-type]


@pytest.mark.parametrize(("versions", "settings", "reason", "severity"), [
    (VERSIONS, RuleSettings(), None, None),
    (latest(expires=NOW + timedelta(days=60)), RuleSettings(), None, None),
    (latest(enabled=False), RuleSettings(), "VersionDisabled", Severity.CRITICAL),
    (latest(expires=NOW - timedelta(minutes=1)), RuleSettings(), "VersionExpired", Severity.CRITICAL),
    (latest(expires=NOW), RuleSettings(), "VersionExpired", Severity.CRITICAL),
    (latest(not_before=NOW + timedelta(hours=1)), RuleSettings(), "VersionNotYetValid", Severity.CRITICAL),
    (latest(not_before=NOW + timedelta(microseconds=1)), RuleSettings(), "VersionNotYetValid", Severity.CRITICAL),
    (latest(not_before=NOW), RuleSettings(), None, None),
    (latest(expires=NOW + timedelta(days=10)), RuleSettings(), "VersionExpiresSoon", Severity.MEDIUM),
    (latest(expires=NOW + timedelta(days=30)), RuleSettings(), "VersionExpiresSoon", Severity.MEDIUM),
    (latest(expires=NOW + timedelta(days=10)), RuleSettings(expiry_warning=timedelta(days=5)), None, None),
])
def test_cmk_009_the_version_in_use_must_be_usable(
    versions: tuple[KeyVersionInfo, ...], settings: RuleSettings, reason: str | None, severity: Severity | None
) -> None:
    findings = run(cmk_009_version_in_use_valid, with_key(versions=versions), settings=settings)  # type: ignore[arg-type]
    if reason is None:
        assert findings == []
        return
    result = only(findings)
    assert (result.rule, result.severity, result.resource) == ("CMK-009", severity, KEY_URI)
    assert result.evidence["reason"] == reason
    [problem] = result.evidence["versions"]  # type: ignore[misc]
    assert problem["version"] == V2
    assert problem["used_by"] == (ACCOUNT,)
    assert problem["expires"] == (versions[1].expires.isoformat() if versions[1].expires else None)
    assert problem["not_before"] == (versions[1].not_before.isoformat() if versions[1].not_before else None)
    assert problem["enabled"] is versions[1].enabled
    expected = {
        "VersionDisabled": f"az keyvault key set-attributes --vault-name contoso-cmk --name storage-cmk --version {V2} "
                           "--enabled true",
        "VersionExpired": "az keyvault key rotate --vault-name contoso-cmk --name storage-cmk",
        "VersionExpiresSoon": "az keyvault key rotate --vault-name contoso-cmk --name storage-cmk",
        "VersionNotYetValid": f"move the consumers of {V2} to a valid version",
    }[reason]
    assert expected in result.remediation
    assert result.title == ("storage-cmk: the key version in use expires soon" if reason == "VersionExpiresSoon"
                            else "storage-cmk: the key version in use is disabled, expired or not yet valid")


def test_cmk_009_reports_every_version_in_use_and_is_critical_if_any_is() -> None:
    versions = (key_version(V1, age=timedelta(days=60), expires=NOW + timedelta(days=3)),
                key_version(V2, age=timedelta(days=30), enabled=False))
    pinned = account("acct2", key_version=V1, current=f"{KEY_URI}/{V1}")
    built = estate(accounts=(account(), pinned), vaults=(vault(keys=(vault_key(versions=versions),)),))
    result = only(run(cmk_009_version_in_use_valid, built))
    assert result.severity is Severity.CRITICAL
    assert result.evidence["reason"] == "VersionDisabled"
    assert [(p["version"], p["reason"], p["used_by"]) for p in result.evidence["versions"]] == [  # type: ignore[attr-defined]
        (V1, "VersionExpiresSoon", (account_id("acct2"),)), (V2, "VersionDisabled", (ACCOUNT,))]
    assert result.title == "storage-cmk: the key version in use is disabled, expired or not yet valid"
    assert result.remediation == (
        f"az keyvault key rotate --vault-name contoso-cmk --name storage-cmk and let the consumers of {V1} adopt the "
        f"new version (update pinned ones); az keyvault key set-attributes --vault-name contoso-cmk --name storage-cmk "
        f"--version {V2} --enabled true")


def test_cmk_009_consumers_whose_version_is_unknown_or_unlisted_are_not_evaluable() -> None:
    built = estate(accounts=(account(current=None), account("acct2", current=f"{KEY_URI}/{V3}")))
    unknown, unlisted = run(cmk_009_version_in_use_valid, built)
    assert unknown.resource == unlisted.resource == KEY_URI
    [entry] = not_evaluated(unknown)
    assert (entry["rule"], entry["reason"], entry["consumers"]) == ("CMK-009", "CurrentVersionUnknown", (ACCOUNT,))
    assert entry["detail"] == "consumers report no version of the key in use"
    [entry] = not_evaluated(unlisted)
    assert (entry["rule"], entry["reason"], entry["versions"], entry["consumers"]) == (
        "CMK-009", "VersionNotListed", (V3,), (account_id("acct2"),))
    assert entry["detail"] == "versions in use are not among the versions the vault lists"


def test_cmk_009_an_unlisted_version_does_not_hide_the_problems_of_the_next() -> None:
    """Versions are reported in lower case, whatever case the consumer spells them in, and in order."""
    unlisted, zero = "0a" * 16, "0" * 32  # zero sorts before V2, "0a…" after it
    built = estate(accounts=(account("acct0", current=f"{KEY_URI}/{unlisted.upper()}"), account("acct1"),
                             account("acct2", current=f"{KEY_URI}/{zero}")),
                   vaults=(vault(keys=(vault_key(versions=latest(enabled=False)),)),))
    not_listed, disabled = run(cmk_009_version_in_use_valid, built)
    [entry] = not_evaluated(not_listed)
    assert (entry["versions"], entry["consumers"]) == ((zero, unlisted), (account_id("acct2"), account_id("acct0")))
    assert (disabled.rule, disabled.evidence["reason"]) == ("CMK-009", "VersionDisabled")


def test_cmk_009_each_key_is_judged_on_its_own() -> None:
    """In URI order: a-vault's key (vault not read), a-key (versions not read), storage-cmk (disabled)."""
    unread_vault = vault(name="a-vault", vault_id=VAULT_ID.replace("contoso-cmk", "a-vault"),
                         vault_uri=f"{A_VAULT}/", keys=None)
    built = estate(
        accounts=(account("acct0", key_name="a-key"), account("acct1"),
                  account("acct3", key_vault_uri=f"{A_VAULT}/", current=f"{A_VAULT}/keys/{KEY_NAME}/{V2}")),
        vaults=(vault(keys=(vault_key("a-key", versions=None), vault_key(versions=latest(enabled=False)))),
                unread_vault))
    unread_key, versionless, disabled = run(cmk_009_version_in_use_valid, built)
    assert (unread_key.resource, [entry["rule"] for entry in not_evaluated(unread_key)]) == (
        f"{A_VAULT}/keys/{KEY_NAME}", ["CMK-009"])
    assert versionless.resource == A_KEY_URI
    [entry] = not_evaluated(versionless)
    assert (entry["rule"], entry["detail"]) == ("CMK-009", f"the versions of {A_KEY_URI} were not read")
    assert (disabled.rule, disabled.resource, disabled.evidence["reason"]) == ("CMK-009", KEY_URI, "VersionDisabled")


def test_cmk_009_unlisted_versions_are_not_evaluable() -> None:
    failure = ReadFailure(resource=KEY_URI.upper(), aspect=ReadAspect.KEY_VERSIONS, reason="Forbidden", status_code=403)
    built = estate(vaults=(vault(keys=(vault_key(versions=None),)),), read_failures=(failure,))
    [entry] = not_evaluated(only(run(cmk_009_version_in_use_valid, built)))
    assert (entry["status_code"], entry["aspect"]) == (403, "key-versions")


def test_cmk_009_a_pinned_version_counts_when_azure_reports_no_current_one() -> None:
    built = estate(accounts=(account(key_version=V2, current=None),),
                   vaults=(vault(keys=(vault_key(versions=latest(enabled=False)),)),))
    assert only(run(cmk_009_version_in_use_valid, built)).evidence["reason"] == "VersionDisabled"


# --- CMK-010 --------------------------------------------------------------------------------------------

OLD = (key_version(V1, age=timedelta(days=200)), key_version(V2, age=timedelta(days=120)))
NOTIFY = RotationLifetimeAction("Notify", time_before_expiry="P30D")


@pytest.mark.parametrize(("policy", "versions", "settings", "fails"), [
    (rotation_policy(), OLD, RuleSettings(), False),
    (rotation_policy(RotationLifetimeAction("rotate", time_after_create="p3m")), OLD, RuleSettings(), False),
    (rotation_policy(RotationLifetimeAction("Rotate", time_before_expiry="P30D"), expires_after="P90D"), OLD,
     RuleSettings(), False),
    (rotation_policy(RotationLifetimeAction("Rotate", time_before_expiry="P30D"), expires_after="P1Y"), OLD,
     RuleSettings(), True),
    (rotation_policy(RotationLifetimeAction("Rotate", time_before_expiry="P30D"), expires_after=None), OLD,
     RuleSettings(), True),
    (rotation_policy(RotationLifetimeAction("Notify", time_after_create="P30D")), OLD, RuleSettings(), True),
    (rotation_policy(RotationLifetimeAction("Rotate", time_after_create="P1Y")), OLD, RuleSettings(), True),
    (rotation_policy(RotationLifetimeAction("Rotate", time_after_create="P1Y")), VERSIONS, RuleSettings(), False),
    (rotation_policy(RotationLifetimeAction("Notify", time_before_expiry="P30D")), VERSIONS,
     RuleSettings(rotation_max_age=timedelta(days=20)), True),
    (rotation_policy(), OLD, RuleSettings(rotation_max_age=timedelta(days=60)), True),
    (rotation_policy(NOTIFY), (key_version(V2, age=timedelta(days=90)),), RuleSettings(), False),
    (rotation_policy(NOTIFY), (key_version(V2, age=timedelta(days=90, seconds=1)),), RuleSettings(), True),
    (rotation_policy(NOTIFY), (*OLD, key_version(V3, age=timedelta(days=10), enabled=False)), RuleSettings(), True),
])
def test_cmk_010_keys_rotate_within_the_maximum_age(policy: object, versions: tuple[KeyVersionInfo, ...],
                                                    settings: RuleSettings, fails: bool) -> None:
    findings = run(cmk_010_rotation_policy, with_key(policy=policy, versions=versions), settings=settings)  # type: ignore[arg-type]
    if not fails:
        assert findings == []
        return
    result = only(findings)
    assert (result.rule, result.severity, result.resource) == ("CMK-010", Severity.MEDIUM, KEY_URI)
    assert result.evidence["reason"] == "NoTimelyRotation"
    assert result.evidence["current_version"] == V2  # the newest enabled version
    current = next(info for info in versions if info.version == V2)
    assert result.evidence["age_days"] == (NOW - current.created).days
    assert result.evidence["max_age_days"] == settings.rotation_max_age.days
    assert f'"timeAfterCreate":"P{settings.rotation_max_age.days}D"' in result.remediation
    assert result.remediation.startswith(
        "az keyvault key rotation-policy update --vault-name contoso-cmk --name storage-cmk --value ")


def test_cmk_010_unread_policy_and_invalid_durations_are_not_evaluable() -> None:
    unread = only(run(cmk_010_rotation_policy, with_key(policy_read=False)))  # type: ignore[arg-type]
    assert not_evaluated(unread)[0]["aspect"] == "rotation-policy"
    assert not_evaluated(unread)[0]["detail"] == f"the rotation-policy of {KEY_URI} was not read"
    assert "getrotationpolicy" in unread.remediation
    invalid = rotation_policy(RotationLifetimeAction("Rotate", time_after_create="ninety days"))
    invalid_policy = only(run(cmk_010_rotation_policy, with_key(policy=invalid)))  # type: ignore[arg-type]
    assert invalid_policy.resource == KEY_URI
    [entry] = not_evaluated(invalid_policy)
    assert (entry["rule"], entry["reason"]) == ("CMK-010", "DurationInvalid")
    assert entry["detail"] == "'ninety days' is not an ISO 8601 duration"


def test_cmk_010_a_key_that_cannot_be_judged_does_not_stop_the_keys_after_it() -> None:
    """Keys are judged in URI order: a-vault's key (vault not read), a-key (policy unreadable) and
    storage-cmk (not rotated) each get their own verdict."""
    failure = ReadFailure(resource=A_KEY_URI, aspect=ReadAspect.ROTATION_POLICY, reason="Forbidden", status_code=403)
    unread_vault = vault(name="a-vault", vault_id=VAULT_ID.replace("contoso-cmk", "a-vault"),
                         vault_uri=f"{A_VAULT}/", keys=None)
    built = estate(
        accounts=(account("acct0", key_name="a-key"), account("acct1"),
                  account("acct2", key_vault_uri=f"{A_VAULT}/", current=f"{A_VAULT}/keys/{KEY_NAME}/{V2}")),
        vaults=(vault(keys=(vault_key("a-key", policy_read=False), vault_key(policy=rotation_policy(NOTIFY),
                                                                              versions=OLD))), unread_vault),
        read_failures=(failure,))
    unread_key, unreadable_policy, stale = run(cmk_010_rotation_policy, built)
    assert (unreadable_policy.rule, unreadable_policy.resource) == ("CMK-000", A_KEY_URI)
    assert not_evaluated(unreadable_policy) == [{
        "rule": "CMK-010", "reason": "NotRead", "detail": f"the rotation-policy of {A_KEY_URI} was not read",
        "aspect": "rotation-policy", "read_error": "Forbidden", "status_code": 403}]
    assert (unread_key.rule, unread_key.resource) == ("CMK-000", f"{A_VAULT}/keys/{KEY_NAME}")
    assert [entry["rule"] for entry in not_evaluated(unread_key)] == ["CMK-010"]
    assert (stale.rule, stale.resource) == ("CMK-010", KEY_URI)


@pytest.mark.parametrize("first", [
    vault_key("a-key", policy=rotation_policy(RotationLifetimeAction("Rotate", time_after_create="ninety days"))),
    vault_key("a-key", versions=OLD,
              policy=rotation_policy(RotationLifetimeAction("Rotate", time_after_create="P30D"))),
    vault_key("a-key", policy=rotation_policy(NOTIFY), versions=(key_version(V1, age=timedelta(days=200),
                                                                             enabled=False),)),
    vault_key("a-key", policy=rotation_policy(NOTIFY), versions=VERSIONS),
])
def test_cmk_010_each_key_is_judged_on_its_own(first: object) -> None:
    """Whatever decided the first key (an invalid duration, a timely policy, no enabled version, a young
    version), the next one is still judged."""
    stale = vault_key(policy=rotation_policy(NOTIFY), versions=OLD)
    built = estate(accounts=(account("acct0", key_name="a-key"), account("acct1")),
                   vaults=(vault(keys=(first, stale)),))  # type: ignore[arg-type]
    findings = run(cmk_010_rotation_policy, built)
    assert [(result.rule, result.resource) for result in findings][-1] == ("CMK-010", KEY_URI)
    assert findings[-1].title == "key storage-cmk is not rotated within 90 days and its version is 120 days old"
    assert findings[-1].evidence["rotate_actions"] == ()  # a Notify action rotates nothing


def test_cmk_010_evidence_and_remediation_in_full() -> None:
    late = rotation_policy(RotationLifetimeAction("Rotate", time_before_expiry="P30D"), expires_after="P1Y")
    result = only(run(cmk_010_rotation_policy, with_key(policy=late, versions=OLD)))  # type: ignore[arg-type]
    assert result.evidence == {
        "reason": "NoTimelyRotation", "rotate_actions": ({"timeAfterCreate": None, "timeBeforeExpiry": "P30D"},),
        "expiryTime": "P1Y", "current_version": V2, "current_version_created": (NOW - timedelta(days=120)).isoformat(),
        "age_days": 120, "max_age_days": 90}
    assert result.remediation == (
        "az keyvault key rotation-policy update --vault-name contoso-cmk --name storage-cmk --value "
        '\'{"lifetimeActions":[{"trigger":{"timeAfterCreate":"P90D"},"action":{"type":"Rotate"}},'
        '{"trigger":{"timeBeforeExpiry":"P30D"},"action":{"type":"Notify"}}],"attributes":{"expiryTime":"P2Y"}}\'')


def test_cmk_010_unread_versions_are_named_as_such() -> None:
    [entry] = not_evaluated(only(run(cmk_010_rotation_policy, with_key(versions=None))))  # type: ignore[arg-type]
    assert (entry["rule"], entry["aspect"]) == ("CMK-010", "key-versions")
    assert entry["detail"] == f"the key-versions of {KEY_URI} was not read"


@pytest.mark.parametrize(("text", "days"), [
    ("P90D", 90), ("p90d", 90), ("P2Y", 730), ("P3M", 90), ("P1Y6M", 545), ("P2W", 14), ("PT36H", 1.5),
    ("P1DT12H", 1.5), ("PT90M", 1 / 16), ("PT5400S", 1 / 16), ("P1DT1H1M1S", 1 + (3600 + 60 + 1) / 86400),
])
def test_iso_durations(text: str, days: float) -> None:
    assert parse_duration(text) == timedelta(days=days)


@pytest.mark.parametrize("text", ["", "P", "90D", "PT", "P1DT", "P-1D", "P1.5D", "P1D2"])
def test_invalid_durations_are_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_duration(text)


# --- CMK-013 --------------------------------------------------------------------------------------------


def test_cmk_013_passes_when_the_key_exists() -> None:
    assert run(cmk_013_key_exists, estate()) == []


def test_cmk_013_soft_deleted_key_with_days_until_purge() -> None:
    built = estate(accounts=(account(key_vault_uri="https://CONTOSO-CMK.vault.azure.net/"),),
                   vaults=(vault(keys=(), deleted_keys=(deleted_key(purge_in=timedelta(days=12, hours=3)),)),))
    result = only(run(cmk_013_key_exists, built))
    assert (result.rule, result.severity, result.resource) == ("CMK-013", Severity.CRITICAL, KEY_URI)
    assert result.evidence["reason"] == "KeySoftDeleted"
    assert result.evidence["days_until_purge"] == 12
    assert result.evidence["consumers"] == (ACCOUNT,)
    assert result.remediation == "az keyvault key recover --vault-name contoso-cmk --name storage-cmk"


@pytest.mark.parametrize(("vaults", "deleted_vaults", "failures", "reason"), [
    ((vault(keys=()),), (), (), "KeyMissing"),
    ((), (deleted_vault(),), (), "VaultSoftDeleted"),
    ((), (), (), "VaultMissing"),
])
def test_cmk_013_missing_or_deleted_keys_and_vaults(vaults: tuple[object, ...], deleted_vaults: tuple[object, ...],
                                                    failures: tuple[ReadFailure, ...], reason: str) -> None:
    built = estate(vaults=vaults, deleted_vaults=deleted_vaults, read_failures=failures)  # type: ignore[arg-type]
    result = only(run(cmk_013_key_exists, built))
    assert (result.rule, result.severity, result.resource) == ("CMK-013", Severity.CRITICAL, KEY_URI)
    assert result.evidence["reason"] == reason
    if reason == "VaultSoftDeleted":
        assert result.evidence["days_until_purge"] == 5
        assert result.evidence["vault_id"] == VAULT_ID
        assert result.remediation == "az keyvault recover --name contoso-cmk --location westeurope"
    else:
        assert "az keyvault key restore" in result.remediation


@pytest.mark.parametrize(("vaults", "deleted_vaults", "failures", "aspect"), [
    ((vault(keys=(), deleted_keys=None),), (), (), "deleted-keys"),
    ((vault(keys=None),), (), (), "keys"),
    ((), None, (), "deleted-vaults"),
    ((), (), (ReadFailure(resource=f"/subscriptions/{SUB}", aspect=ReadAspect.VAULTS, reason="boom"),), "vaults"),
])
def test_cmk_013_cannot_call_a_key_missing_without_the_listings(
    vaults: tuple[object, ...], deleted_vaults: tuple[object, ...] | None, failures: tuple[ReadFailure, ...],
    aspect: str
) -> None:
    built = estate(vaults=vaults, deleted_vaults=deleted_vaults, read_failures=failures)  # type: ignore[arg-type]
    result = only(run(cmk_013_key_exists, built))
    assert (result.rule, result.resource) == ("CMK-000", KEY_URI)
    [entry] = not_evaluated(result)
    assert entry["rule"] == "CMK-013"
    assert entry["aspect"] == aspect


OTHER_VAULT_ID = VAULT_ID.replace("contoso-cmk", "other-vault")


@pytest.mark.parametrize(("deleted_vaults", "failures", "expected"), [
    ((replace(deleted_vault(), name="other-vault", vault_id=OTHER_VAULT_ID),), (), "VaultMissing"),
    ((), (ReadFailure(resource=OTHER_VAULT_ID, aspect=ReadAspect.VAULT, reason="denied"),), "VaultMissing"),
    ((), (ReadFailure(resource=VAULT_ID.upper(), aspect=ReadAspect.VAULT, reason="denied"),), "CMK-000"),
    ((replace(deleted_vault(), name="CONTOSO-CMK"),), (), "VaultSoftDeleted"),
])
def test_cmk_013_only_the_key_s_own_vault_counts(deleted_vaults: tuple[object, ...],
                                                 failures: tuple[ReadFailure, ...], expected: str) -> None:
    built = estate(vaults=(), deleted_vaults=deleted_vaults, read_failures=failures)  # type: ignore[arg-type]
    result = only(run(cmk_013_key_exists, built))
    assert (result.rule if expected == "CMK-000" else result.evidence["reason"]) == expected


def test_cmk_013_a_sandbox_vault_is_never_matched_to_a_deleted_cloud_vault() -> None:
    origin = "https://127.0.0.1:8443"
    built = estate(accounts=(account(key_vault_uri=origin),), vaults=(), deleted_vaults=(deleted_vault(),),
                   custom_origins=(origin,))
    result = only(run(cmk_013_key_exists, built))
    assert (result.resource, result.evidence["reason"]) == (f"{origin}/keys/storage-cmk", "VaultMissing")


def test_cmk_013_also_covers_keys_of_registered_containers() -> None:
    other = "https://contoso-cmk.vault.azure.net/keys/blob-kek"
    built = estate(container_census=(census({V1: 3}, key_uri=other),))
    result = only(run(cmk_013_key_exists, built))
    assert (result.resource, result.evidence["reason"]) == (other, "KeyMissing")
    assert result.evidence["containers"] == ("acct1/secrets",)
    assert result.evidence["consumers"] == ()


def test_cmk_013_a_key_used_by_accounts_and_containers_is_one_finding_and_the_others_are_still_judged() -> None:
    """In URI order: a-key exists, storage-cmk is missing (an account and a container use it, in any case
    spelling), and a container naming no key URI at all is CMK-018's, not a stop."""
    built = estate(accounts=(account("acct0", key_name="a-key"), account("acct1")),
                   vaults=(vault(keys=(vault_key("a-key"),)),),
                   container_census=(census({V1: 1}, container="unparseable", key_uri="not a key uri"),
                                     census({V1: 3}, key_uri=KEY_URI.upper().replace("HTTPS", "https"))))
    result = only(run(cmk_013_key_exists, built))
    assert (result.resource, result.evidence["reason"]) == (KEY_URI, "KeyMissing")
    assert (result.evidence["consumers"], result.evidence["containers"]) == ((ACCOUNT,), ("acct1/secrets",))


ON_VAULT = {"consumers": (ACCOUNT,), "containers": (), "vault": VAULT_ORIGIN}


@pytest.mark.parametrize(("vaults", "deleted_vaults", "title", "evidence", "remediation"), [
    ((vault(keys=(), deleted_keys=(deleted_key(),)),), (),
     "key storage-cmk is soft-deleted: its consumers cannot reach it",
     {"reason": "KeySoftDeleted", "deleted_on": (NOW - timedelta(days=78)).isoformat(),
      "scheduled_purge": (NOW + timedelta(days=12)).isoformat(), "days_until_purge": 12},
     "az keyvault key recover --vault-name contoso-cmk --name storage-cmk"),
    ((), (deleted_vault(),),
     "the vault of key storage-cmk is soft-deleted: its consumers cannot reach it",
     {"reason": "VaultSoftDeleted", "vault_id": VAULT_ID, "deletion_date": (NOW - timedelta(days=85)).isoformat(),
      "scheduled_purge": (NOW + timedelta(days=5)).isoformat(), "days_until_purge": 5},
     "az keyvault recover --name contoso-cmk --location westeurope"),
    ((vault(keys=()),), (),
     "key storage-cmk does not exist (purged or never created): data is inaccessible", {"reason": "KeyMissing"},
     "restore the key from a backup (az keyvault key restore --vault-name contoso-cmk --file <backup>), or point "
     "the consumers at an existing key"),
    ((), (),
     f"the vault {VAULT_ORIGIN} of key storage-cmk does not exist (purged or never created)",
     {"reason": "VaultMissing"},
     "restore the vault's keys from backups into a vault (az keyvault key restore), or point the consumers at an "
     "existing key"),
])
def test_cmk_013_says_what_is_gone_and_how_to_get_it_back(vaults: tuple[object, ...],
                                                         deleted_vaults: tuple[object, ...], title: str,
                                                         evidence: dict[str, object], remediation: str) -> None:
    result = only(run(cmk_013_key_exists, estate(vaults=vaults, deleted_vaults=deleted_vaults)))  # type: ignore[arg-type]
    assert (result.title, result.evidence, result.remediation) == (title, {**ON_VAULT, **evidence}, remediation)


def test_cmk_013_a_key_that_cannot_be_judged_does_not_stop_the_keys_after_it() -> None:
    unread_vault = vault(name="a-vault", vault_id=VAULT_ID.replace("contoso-cmk", "a-vault"),
                         vault_uri=f"{A_VAULT}/", keys=None)
    built = estate(accounts=(account("acct1"),
                             account("acct3", key_vault_uri=f"{A_VAULT}/", current=f"{A_VAULT}/keys/{KEY_NAME}/{V2}")),
                   vaults=(vault(keys=()), unread_vault))
    unread_key, missing = run(cmk_013_key_exists, built)
    assert (unread_key.rule, unread_key.resource) == ("CMK-000", f"{A_VAULT}/keys/{KEY_NAME}")
    assert (missing.rule, missing.resource, missing.evidence["reason"]) == ("CMK-013", KEY_URI, "KeyMissing")


def test_cmk_013_managed_hsm_keys_are_not_evaluable() -> None:
    hsm = "https://contoso-hsm.managedhsm.azure.net/"
    result = only(run(cmk_013_key_exists, estate(accounts=(account(key_vault_uri=hsm),))))
    [entry] = not_evaluated(result)
    assert result.resource == "https://contoso-hsm.managedhsm.azure.net/keys/storage-cmk"
    assert entry["detail"] == "Managed HSM keys are not gathered"


# --- CMK-020 --------------------------------------------------------------------------------------------


def test_cmk_020_names_the_shared_key_and_goes_on_past_isolated_ones() -> None:
    """a-key is used once; storage-cmk by three accounts in two subscriptions, one of them unknown to
    the estate (its tenant is not guessed)."""
    unknown_sub = "00000000-0000-0000-0000-0000000000c3"
    accounts = (account("acct0", key_name="a-key"), account("acct1"), account("acct2"),
                account("acct3", subscription=unknown_sub))
    findings = run(cmk_020_key_isolation, estate(accounts=accounts), settings=RuleSettings(max_accounts_per_key=2))
    result = only(findings)
    assert (result.resource, result.title) == (KEY_URI, "key storage-cmk protects 3 accounts in 2 subscriptions")
    assert result.evidence == {
        "reasons": ("KeySharedAcrossSubscriptions", "KeySharedByTooManyAccounts"), "accounts": 3,
        "max_accounts": 2, "subscriptions": (SUB, unknown_sub), "tenants": (TENANT,)}
    assert result.remediation == (
        "use one key per tenant and subscription, shared by at most 2 accounts: az keyvault key create "
        "--vault-name <vault> --name <key> --kty RSA --size 3072, then move accounts to it (az storage account "
        "update --encryption-key-name <key>)")


def test_cmk_020_one_account_and_its_scopes_are_isolated() -> None:
    assert run(cmk_020_key_isolation, estate(accounts=(account(scopes=(scope(),)),))) == []


@pytest.mark.parametrize(("subscriptions", "tenant2", "limit", "reasons"), [
    ((SUB, SUB2), TENANT, 50, ("KeySharedAcrossSubscriptions",)),
    ((SUB, SUB2), TENANT2, 50, ("KeySharedAcrossTenants", "KeySharedAcrossSubscriptions")),
    ((SUB, SUB, SUB), TENANT, 2, ("KeySharedByTooManyAccounts",)),
    ((SUB, SUB), TENANT, 2, ()),
])
def test_cmk_020_isolation_advisory(subscriptions: tuple[str, ...], tenant2: str, limit: int,
                                    reasons: tuple[str, ...]) -> None:
    accounts = tuple(account(f"acct{number}", subscription=sub) for number, sub in enumerate(subscriptions))
    subs = (Subscription(subscription_id=SUB, tenant_id=TENANT),
            Subscription(subscription_id=SUB2.upper(), tenant_id=tenant2))
    built = estate(accounts=accounts, subscriptions=subs)
    findings = run(cmk_020_key_isolation, built, settings=RuleSettings(max_accounts_per_key=limit))
    if not reasons:
        assert findings == []
        return
    result = only(findings)
    assert (result.rule, result.severity, result.resource) == ("CMK-020", Severity.INFO, KEY_URI)
    assert result.evidence["reasons"] == reasons
    assert result.evidence["accounts"] == len(subscriptions)
    assert result.evidence["subscriptions"] == tuple(sorted(set(subscriptions)))
    assert f"at most {limit} accounts" in result.remediation
    assert result.evidence["tenants"] == tuple(sorted({TENANT, tenant2}))


# --- CMK-018 --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("blobs", "versions", "settings", "stale"), [
    ({V2: 5}, VERSIONS, RuleSettings(), None),
    ({V1: 0, V2: 5}, VERSIONS, RuleSettings(), None),
    ({V1: 3, V2: 5}, VERSIONS, RuleSettings(), 3),
    ({V1.upper(): 3}, VERSIONS, RuleSettings(), 3),
    ({V1: 3}, (VERSIONS[0], key_version(V2, age=timedelta(hours=3))), RuleSettings(), None),
    ({V1: 3}, (VERSIONS[0], key_version(V2, age=timedelta(hours=24))), RuleSettings(), None),
    ({V1: 3}, (VERSIONS[0], key_version(V2, age=timedelta(hours=24, seconds=1))), RuleSettings(), 3),
    ({V1: 3}, (VERSIONS[0], key_version(V2, age=timedelta(hours=3))), RuleSettings(rewrap_window=timedelta(hours=2)),
     3),
])
def test_cmk_018_blobs_must_be_rewrapped_after_the_window(
    blobs: dict[str, int], versions: tuple[KeyVersionInfo, ...], settings: RuleSettings, stale: int | None
) -> None:
    built = estate(vaults=(vault(keys=(vault_key(versions=versions),)),), container_census=(census(blobs),))
    findings = run(cmk_018_blobs_rewrapped, built, settings=settings)
    if stale is None:
        assert findings == []
        return
    result = only(findings)
    assert (result.rule, result.severity, result.resource) == ("CMK-018", Severity.MEDIUM, "acct1/secrets")
    assert result.evidence["stale_blobs"] == stale
    assert result.evidence["latest_version"] == V2
    assert result.evidence["blobs_per_version"][V1] == 3  # type: ignore[index]
    assert result.remediation == (f"cmkctl rewrap --account acct1 --container secrets --key {KEY_URI} "
                                  f"--to-version {V2}")


@pytest.mark.parametrize(("built_census", "reason"), [
    (census(None), "NotRead"),
    (census({V1: 1}, key_uri="https://elsewhere.example.com/keys/k"), "KeyUriInvalid"),
])
def test_cmk_018_not_evaluable(built_census: object, reason: str) -> None:
    result = only(run(cmk_018_blobs_rewrapped, estate(container_census=(built_census,))))  # type: ignore[arg-type]
    [entry] = not_evaluated(result)
    assert (result.resource, entry["rule"], entry["reason"]) == ("acct1/secrets", "CMK-018", reason)


def test_cmk_018_reports_containers_in_name_order() -> None:
    built = estate(container_census=(census(None, account_name="acct2"), census(None, account_name="acct1")))
    assert [result.resource for result in run(cmk_018_blobs_rewrapped, built)] == ["acct1/secrets", "acct2/secrets"]


LETTERED_OLD, LETTERED_NEW = "ab" * 16, "cd" * 16


def test_cmk_018_every_container_is_decided_on_its_own() -> None:
    """One container that cannot be decided never hides the next: each is reported (or not) on its own."""
    other_origin = "https://other-kv.vault.azure.net"
    other = vault(name="other-kv", vault_id=VAULT_ID.replace("contoso-cmk", "other-kv"), vault_uri=f"{other_origin}/",
                  keys=None)
    disabled = (key_version(V1, age=timedelta(days=3), enabled=False),)
    keys = (vault_key(), vault_key("unlisted", versions=None), vault_key("disabled", versions=disabled))
    censuses = (
        census(None, container="a-uncounted"),
        census({V1: 1}, container="b-invalid", key_uri="https://elsewhere.example.com/keys/k"),
        census({V1: 1}, container="c-keys-unread", key_uri=f"{other_origin}/keys/k"),
        census({V1: 1}, container="d-missing", key_uri=f"{KEY_URI}-gone"),
        census({V1: 1}, container="e-versions-unread", key_uri=KEY_URI.replace(KEY_NAME, "unlisted")),
        census({V1: 1}, container="f-no-usable", key_uri=KEY_URI.replace(KEY_NAME, "disabled")),
        census({V2: 3}, container="f2-current"),
        census({V1: 2, V2: 1, V3: 0}, container="g-stale"),
        census({LETTERED_OLD.upper(): 2, LETTERED_NEW: 1}, container="h-any-case",
               key_uri=KEY_URI.replace(KEY_NAME, "lettered")),
    )
    lettered = (key_version(LETTERED_OLD, age=timedelta(days=60)), key_version(LETTERED_NEW, age=timedelta(days=30)))
    keys = (*keys, vault_key("lettered", versions=lettered))
    unlisted_uri = KEY_URI.replace(KEY_NAME, "unlisted")
    failures = (ReadFailure(resource="acct1/a-uncounted", aspect=ReadAspect.BLOB_CENSUS, reason="Forbidden"),
                ReadFailure(resource=unlisted_uri, aspect=ReadAspect.KEY_VERSIONS, reason="Throttled"))
    built = estate(vaults=(vault(keys=keys), other), container_census=censuses, read_failures=failures)
    findings = run(cmk_018_blobs_rewrapped, built)
    assert [result.resource for result in findings] == [
        "acct1/a-uncounted", "acct1/b-invalid", "acct1/c-keys-unread", "acct1/e-versions-unread",
        "acct1/f-no-usable", "acct1/g-stale", "acct1/h-any-case"]
    entries = [only(not_evaluated(result)) for result in findings[:5]]
    assert all(entry["rule"] == "CMK-018" for entry in entries)
    assert [(entry["reason"], entry.get("aspect")) for entry in entries] == [
        ("NotRead", "blob-census"), ("KeyUriInvalid", None), ("NotRead", "keys"), ("NotRead", "key-versions"),
        ("NoUsableVersion", None)]
    assert entries[0]["detail"] == "the blobs of acct1/a-uncounted were not counted"
    assert (entries[0]["read_error"], entries[3]["read_error"]) == ("Forbidden", "Throttled")
    assert entries[1]["key_uri"] == "https://elsewhere.example.com/keys/k"
    assert "elsewhere.example.com" in str(entries[1]["detail"])
    assert entries[3]["detail"] == f"the versions of {KEY_URI.replace(KEY_NAME, 'unlisted')} were not read"
    assert entries[4]["detail"] == (f"{KEY_URI.replace(KEY_NAME, 'disabled')} has no enabled, valid version to "
                                    "re-wrap to")
    stale = findings[5]
    assert (stale.rule, stale.title) == ("CMK-018", f"2 blobs in acct1/g-stale are still wrapped by an old version of "
                                                    f"{KEY_NAME}")
    assert stale.evidence == {
        "reason": "BlobsWrappedByOldVersion", "key": KEY_URI, "latest_version": V2,
        "latest_available_since": (NOW - timedelta(days=30)).isoformat(), "blobs_per_version": {V1: 2, V2: 1},
        "stale_blobs": 2, "rewrap_window_hours": 24.0}
    # Version ids compare in any case: only the old version's blobs are stale.
    assert findings[6].evidence["blobs_per_version"] == {LETTERED_OLD: 2, LETTERED_NEW: 1}
    assert findings[6].evidence["stale_blobs"] == 2


def test_cmk_013_a_soft_deleted_key_without_a_purge_date_has_no_countdown() -> None:
    undated = replace(deleted_key(), scheduled_purge=None)
    result = only(run(cmk_013_key_exists, estate(vaults=(vault(keys=(), deleted_keys=(undated,)),))))
    assert (result.evidence["scheduled_purge"], result.evidence["days_until_purge"]) == (None, None)

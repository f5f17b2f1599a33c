"""Account and encryption-scope rules (CMK-001, 002, 006, 008, 011, 012, 014, 015, 019) on hand-built estates."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from controller.compliance.access import NEEDED_DATA_ACTIONS
from controller.compliance.estate import (
    AttachedIdentity,
    ManagedIdentity,
    ReadAspect,
    ReadFailure,
    UserAssignedIdentity,
)
from controller.compliance.rules import RequireCmk, RuleSettings
from controller.compliance.rules.accounts import (
    cmk_001_account_uses_cmk,
    cmk_002_encryption_identity_resolves,
    cmk_006_identity_can_use_key,
    cmk_008_vault_in_account_region,
    cmk_011_versionless_key,
    cmk_012_latest_version_adopted,
    cmk_014_queue_and_table_covered,
    cmk_015_geo_redundant_advisory,
    cmk_019_encryption_scopes,
)
from controller.model import Severity
from tests.unit.estate_builders import (
    KEY_NAME,
    KEY_URI,
    NOW,
    PRINCIPAL,
    SUB,
    SYSTEM_PRINCIPAL,
    UAI_ID,
    V1,
    V2,
    V3,
    VAULT_ID,
    VAULT_ORIGIN,
    VERSIONS,
    access_policy,
    account,
    account_id,
    assignment,
    estate,
    key_version,
    not_evaluated,
    only,
    run,
    scope,
    vault,
    vault_key,
)

pytestmark = pytest.mark.unit

ACCOUNT = account_id("acct1")
SCOPE = f"{ACCOUNT}/encryptionScopes/scope1"
TAGGED = RuleSettings(require_cmk=RequireCmk.TAGGED)


# --- CMK-001 --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("key_source", "tags", "settings", "fails"), [
    ("Microsoft.Keyvault", {}, RuleSettings(), False),
    ("microsoft.keyvault", {}, RuleSettings(), False),
    ("MICROSOFT.KEYVAULT", {}, RuleSettings(), False),
    ("Microsoft.Storage", {}, RuleSettings(), True),
    ("Microsoft.Storage", {"cmk-exempt": "true"}, RuleSettings(), False),
    ("Microsoft.Storage", {"CMK-Exempt": "TRUE"}, RuleSettings(), False),
    ("Microsoft.Storage", {"cmk-exempt": "false"}, RuleSettings(), True),
    ("Microsoft.Storage", {}, TAGGED, False),
    ("Microsoft.Storage", {"cmk-required": "true"}, TAGGED, True),
    ("Microsoft.Storage", {"Cmk-Required": "True"}, TAGGED, True),
    ("Microsoft.Storage", {"cmk-required": "no"}, TAGGED, False),
    ("Microsoft.Storage", {"cmk-required": "true", "cmk-exempt": "true"}, TAGGED, False),
])
def test_cmk_001_accounts_in_scope_must_use_key_vault(
    key_source: str, tags: dict[str, str], settings: RuleSettings, fails: bool
) -> None:
    built = estate(accounts=(account(key_source=key_source, tags=tags),))
    findings = run(cmk_001_account_uses_cmk, built, settings=settings)
    if not fails:
        assert findings == []
        return
    result = only(findings)
    assert (result.rule, result.severity, result.resource) == ("CMK-001", Severity.HIGH, ACCOUNT)
    assert result.evidence["keySource"] == "Microsoft.Storage"
    assert result.evidence["require_cmk"] == settings.require_cmk.value
    spelled = {name.lower(): value for name, value in tags.items()}  # tag names compare case-insensitively
    assert result.evidence["tags"] == {"cmk-required": spelled.get("cmk-required"),
                                       "cmk-exempt": spelled.get("cmk-exempt")}
    assert result.title == "storage account acct1 does not use a customer-managed key"
    assert result.evidence["reason"] == "NotCustomerManaged"
    assert result.remediation == (
        "az storage account update --name acct1 --resource-group rg-data --encryption-key-source Microsoft.Keyvault "
        "--encryption-key-vault https://<vault>.vault.azure.net --encryption-key-name <key> "
        "--key-vault-user-identity-id <user-assigned identity id> (grant that identity Key Vault Crypto Service "
        "Encryption User on the key first)")


# --- CMK-002 --------------------------------------------------------------------------------------------

SYSTEM_ONLY = ManagedIdentity(type="SystemAssigned", principal_id=SYSTEM_PRINCIPAL)


@pytest.mark.parametrize(("uai", "identity", "reason"), [
    (UAI_ID, None, None),
    (UAI_ID.upper(), None, None),
    (UAI_ID, ManagedIdentity(type="SystemAssigned, UserAssigned", principal_id=SYSTEM_PRINCIPAL,
                             user_assigned=(AttachedIdentity(resource_id=UAI_ID.lower(), principal_id=PRINCIPAL),)),
     None),
    (UAI_ID, ManagedIdentity(type="None"), "UserAssignedIdentityNotAttached"),
    (UAI_ID, SYSTEM_ONLY, "UserAssignedIdentityNotAttached"),
    (UAI_ID, ManagedIdentity(type="SystemAssigned", user_assigned=(AttachedIdentity(resource_id=UAI_ID),)),
     "UserAssignedIdentityNotAttached"),
    (UAI_ID.replace("cmk-id", "other-id"), None, "UserAssignedIdentityNotAttached"),
    (None, SYSTEM_ONLY, None),
    (None, ManagedIdentity(type="systemassigned", principal_id=SYSTEM_PRINCIPAL), None),
    (None, None, "SystemAssignedIdentityOff"),
    (None, ManagedIdentity(type="None"), "SystemAssignedIdentityOff"),
])
def test_cmk_002_the_encryption_identity_must_resolve(
    uai: str | None, identity: ManagedIdentity | None, reason: str | None
) -> None:
    built_account = account(uai=uai) if identity is None else account(uai=uai, identity=identity)
    findings = run(cmk_002_encryption_identity_resolves, estate(accounts=(built_account,)))
    if reason is None:
        assert findings == []
        return
    result = only(findings)
    assert (result.rule, result.severity, result.resource) == ("CMK-002", Severity.CRITICAL, ACCOUNT)
    assert result.evidence["reason"] == reason
    assert result.evidence["encryption.identity.userAssignedIdentity"] == uai
    assert result.evidence["identity.type"] == built_account.identity.type
    attached = tuple(entry.resource_id for entry in built_account.identity.user_assigned)
    assert result.evidence["identity.userAssignedIdentities"] == attached
    names = "--name acct1 --resource-group rg-data"
    if reason == "UserAssignedIdentityNotAttached":
        assert result.title == "the encryption identity of acct1 is not attached to the account"
        assert result.remediation == (
            f"az storage account update {names} --identity-type SystemAssigned,UserAssigned --user-identity-id {uai} "
            "(attach it), or point encryption.identity.userAssignedIdentity at an attached identity")
    else:
        assert result.title == "acct1 has no encryption identity: none is set and the system-assigned one is off"
        assert result.remediation == (
            f"az storage account update {names} --assign-identity (then grant it Key Vault Crypto Service Encryption "
            "User on the key), or pass --key-vault-user-identity-id with an attached user-assigned identity")


def test_cmk_002_judges_every_account() -> None:
    """A Microsoft-managed account and a resolving one do not stop the accounts after them."""
    plain = account("acct0", key_source="Microsoft.Storage", uai=None, identity=ManagedIdentity())
    broken = account("acct2", uai=None, identity=ManagedIdentity(type="None"))
    findings = run(cmk_002_encryption_identity_resolves, estate(accounts=(plain, account("acct1"), broken)))
    assert [result.resource for result in findings] == [account_id("acct2")]


def test_cmk_002_ignores_accounts_without_any_key_vault_encryption() -> None:
    plain = account(key_source="Microsoft.Storage", uai=None, identity=ManagedIdentity())
    assert run(cmk_002_encryption_identity_resolves, estate(accounts=(plain,))) == []


def test_cmk_002_applies_to_an_account_whose_scopes_use_key_vault() -> None:
    plain = account(key_source="Microsoft.Storage", uai=None, identity=ManagedIdentity(), scopes=(scope(),))
    result = only(run(cmk_002_encryption_identity_resolves, estate(accounts=(plain,))))
    assert result.evidence["reason"] == "SystemAssignedIdentityOff"


# --- CMK-006 --------------------------------------------------------------------------------------------


def test_cmk_006_passes_with_the_builtin_role_on_the_vault() -> None:
    assert run(cmk_006_identity_can_use_key, estate()) == []


@pytest.mark.parametrize("key_vault_uri", [
    "https://CONTOSO-CMK.VAULT.AZURE.NET/", "https://contoso-cmk.vault.azure.net", "https://Contoso-Cmk.vault.azure.net:443/",
])
def test_cmk_006_resolves_key_uris_whatever_their_spelling(key_vault_uri: str) -> None:
    built = estate(accounts=(account(key_vault_uri=key_vault_uri, key_name=KEY_NAME.upper()),),
                   vaults=(vault(role_assignments=()),))
    result = only(run(cmk_006_identity_can_use_key, built))
    assert result.rule == "CMK-006"
    assert result.evidence["vault"] == VAULT_ID


def test_cmk_006_fails_when_no_role_grants_the_data_actions() -> None:
    built = estate(vaults=(vault(role_assignments=(assignment(f"/subscriptions/{SUB}/resourceGroups/rg-keys2"),)),))
    result = only(run(cmk_006_identity_can_use_key, built))
    assert (result.rule, result.severity, result.resource) == ("CMK-006", Severity.CRITICAL, ACCOUNT)
    assert result.evidence["reason"] == "IdentityLacksAccess"
    assert result.evidence["principal_id"] == PRINCIPAL
    assert result.evidence["permission_model"] == "rbac"
    assert result.evidence["missing"] == ("Microsoft.KeyVault/vaults/keys/read",
                                          "Microsoft.KeyVault/vaults/keys/wrap/action",
                                          "Microsoft.KeyVault/vaults/keys/unwrap/action")
    assert result.remediation == (
        f"az role assignment create --assignee-object-id {PRINCIPAL} --assignee-principal-type ServicePrincipal "
        f"--role e147488a-f6f5-4113-8e2d-b22465e65bf6 --scope {VAULT_ID}/keys/{KEY_NAME}")


@pytest.mark.parametrize(("permissions", "missing"), [
    (("Get", "WrapKey", "UnwrapKey"), None),
    (("all",), None),
    (("get", "wrapKey"), ("unwrapKey",)),
    (("list",), ("get", "wrapKey", "unwrapKey")),
])
def test_cmk_006_access_policy_vaults(permissions: tuple[str, ...], missing: tuple[str, ...] | None) -> None:
    policy_vault = vault(enable_rbac_authorization=False, role_assignments=None,
                         access_policies=(access_policy(PRINCIPAL, *permissions),))
    findings = run(cmk_006_identity_can_use_key, estate(vaults=(policy_vault,)))
    if missing is None:
        assert findings == []
        return
    result = only(findings)
    assert result.evidence["permission_model"] == "access-policy"
    assert result.evidence["missing"] == missing
    assert result.remediation == (f"az keyvault set-policy --name contoso-cmk --resource-group rg-keys --object-id "
                                  f"{PRINCIPAL} --key-permissions get wrapKey unwrapKey")


def test_cmk_006_the_system_assigned_principal_needs_its_own_grant() -> None:
    system = account(uai=None, identity=ManagedIdentity(type="SystemAssigned", principal_id=SYSTEM_PRINCIPAL))
    result = only(run(cmk_006_identity_can_use_key, estate(accounts=(system,))))
    assert result.evidence["principal_id"] == SYSTEM_PRINCIPAL
    assert result.evidence["identity"] == "system-assigned"
    granted = estate(accounts=(system,), vaults=(vault(role_assignments=(assignment(principal=SYSTEM_PRINCIPAL),)),))
    assert run(cmk_006_identity_can_use_key, granted) == []


@pytest.mark.parametrize(("attached_principal", "listed_principal", "outcome"), [
    (PRINCIPAL, None, "granted"),
    (None, PRINCIPAL, "granted"),  # the identity's own resource names the principal
    (None, None, "unknown"),
])
def test_cmk_006_the_user_assigned_principal_comes_from_the_account_or_the_identity_resource(
    attached_principal: str | None, listed_principal: str | None, outcome: str
) -> None:
    identity = ManagedIdentity(type="UserAssigned", user_assigned=(
        AttachedIdentity(resource_id=UAI_ID, principal_id=attached_principal),))
    identities = () if listed_principal is None else (UserAssignedIdentity(id=UAI_ID.upper(),
                                                                            principal_id=listed_principal),)
    built = estate(accounts=(account(identity=identity),), user_assigned_identities=identities)
    findings = run(cmk_006_identity_can_use_key, built)
    if outcome == "granted":
        assert findings == []
        return
    [entry] = not_evaluated(only(findings))
    assert (entry["rule"], entry["reason"]) == ("CMK-006", "IdentityPrincipalUnknown")
    assert entry["detail"] == "the principal of the user-assigned identity is not reported"
    assert entry["aspect"] == "user-assigned-identities"
    failure = ReadFailure(resource=UAI_ID, aspect=ReadAspect.USER_ASSIGNED_IDENTITIES, reason="denied", status_code=403)
    with_failure = run(cmk_006_identity_can_use_key, replace(built, read_failures=(failure,)))
    assert not_evaluated(only(with_failure))[0]["status_code"] == 403


def test_cmk_006_an_unreported_system_assigned_principal_is_not_evaluable() -> None:
    system = account(uai=None, identity=ManagedIdentity(type="SystemAssigned"))
    [entry] = not_evaluated(only(run(cmk_006_identity_can_use_key, estate(accounts=(system,)))))
    assert entry["detail"] == "the principal of the system-assigned identity is not reported"


def test_cmk_006_an_identity_that_does_not_resolve_has_no_access() -> None:
    result = only(run(cmk_006_identity_can_use_key, estate(accounts=(account(identity=ManagedIdentity()),))))
    assert (result.rule, result.severity) == ("CMK-006", Severity.CRITICAL)
    assert result.evidence["principal_id"] is None
    assert "UserAssignedIdentityNotAttached" in str(result.evidence["detail"])


def test_cmk_006_unread_role_assignments_are_not_evaluable_with_the_read_error() -> None:
    failure = ReadFailure(resource=VAULT_ID.upper(), aspect=ReadAspect.ROLE_ASSIGNMENTS, reason="Forbidden",
                          status_code=403)
    built = estate(vaults=(vault(role_assignments=None),), read_failures=(failure,))
    result = only(run(cmk_006_identity_can_use_key, built))
    assert (result.rule, result.severity, result.resource) == ("CMK-000", Severity.HIGH, ACCOUNT)
    [entry] = not_evaluated(result)
    assert entry["rule"] == "CMK-006"
    assert entry["reason"] == "AccessNotEvaluated"
    assert entry["status_code"] == 403
    assert entry["read_error"] == "Forbidden"
    assert "Microsoft.Authorization/roleAssignments/read" in result.remediation


def test_cmk_006_an_unparseable_key_uri_is_not_evaluable() -> None:
    built = estate(accounts=(account(key_vault_uri="https://contoso.example.com/"),))
    [entry] = not_evaluated(only(run(cmk_006_identity_can_use_key, built)))
    assert entry["reason"] == "KeyUriInvalid"
    assert entry["key_uri"] == "https://contoso.example.com/keys/storage-cmk"


@pytest.mark.parametrize(("key_vault_uri", "key_name"), [(None, KEY_NAME), (VAULT_ORIGIN, None), (VAULT_ORIGIN, "")])
def test_cmk_006_an_account_naming_no_vault_or_key_is_not_evaluable(key_vault_uri: str | None,
                                                                    key_name: str | None) -> None:
    built = estate(accounts=(account(key_vault_uri=key_vault_uri, key_name=key_name),))
    [entry] = not_evaluated(only(run(cmk_006_identity_can_use_key, built)))
    assert (entry["reason"], entry["key_uri"]) == ("KeyUriInvalid", "")
    assert entry["detail"] == "encryption.keyvaultproperties names no key vault URI and key name"


def test_cmk_006_unread_keys_are_not_evaluable_and_missing_keys_are_left_to_cmk_013() -> None:
    unread = estate(vaults=(vault(keys=None),))
    [entry] = not_evaluated(only(run(cmk_006_identity_can_use_key, unread)))
    assert (entry["reason"], entry["detail"]) == ("NotRead", "the keys of vault contoso-cmk were not read")
    missing = estate(vaults=(vault(keys=()),))
    assert run(cmk_006_identity_can_use_key, missing) == []


def test_cmk_006_accepts_sandbox_origins_named_by_the_estate() -> None:
    origin = "https://127.0.0.1:8443"
    sandbox_vault = vault(vault_uri=origin + "/")
    built = estate(accounts=(account(key_vault_uri=origin.upper()),), vaults=(sandbox_vault,),
                   custom_origins=(origin,))
    assert run(cmk_006_identity_can_use_key, built) == []


# --- CMK-008 --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("account_location", "vault_location", "fails"), [
    ("West Europe", "westeurope", False),
    ("westeurope", "WestEurope", False),
    ("west europe", "West Europe", False),
    ("West Europe", "northeurope", True),
])
def test_cmk_008_vault_region_compares_without_spaces_or_case(
    account_location: str, vault_location: str, fails: bool
) -> None:
    built = estate(accounts=(account(location=account_location, scopes=(scope(),)),),
                   vaults=(vault(location=vault_location),))
    findings = run(cmk_008_vault_in_account_region, built)
    if not fails:
        assert findings == []
        return
    assert [result.resource for result in findings] == [ACCOUNT, SCOPE]
    for result in findings:
        assert (result.rule, result.severity) == ("CMK-008", Severity.MEDIUM)
        assert result.evidence == {"reason": "RegionMismatch", "account_location": account_location,
                                   "vault_location": vault_location, "vault": VAULT_ID}
        assert "az keyvault create --location westeurope" in result.remediation


def test_cmk_008_not_evaluable_when_the_vault_listing_failed() -> None:
    failure = ReadFailure(resource=f"/subscriptions/{SUB}", aspect=ReadAspect.VAULTS, reason="timeout")
    result = only(run(cmk_008_vault_in_account_region, estate(vaults=(), read_failures=(failure,))))
    [entry] = not_evaluated(result)
    assert (result.resource, entry["rule"], entry["read_error"]) == (ACCOUNT, "CMK-008", "timeout")


def test_cmk_008_an_invalid_key_uri_is_not_evaluable_and_the_next_consumer_is_still_judged() -> None:
    built = estate(accounts=(account("acct0", key_vault_uri="http://contoso-cmk.vault.azure.net/"),
                             account("acct1", location="North Europe")))
    invalid, mismatch = run(cmk_008_vault_in_account_region, built)
    assert (invalid.rule, invalid.resource) == ("CMK-000", account_id("acct0"))
    assert not_evaluated(invalid) == [{
        "rule": "CMK-008", "reason": "KeyUriInvalid",
        "detail": "vault origin 'http://contoso-cmk.vault.azure.net' must use https",
        "key_uri": "http://contoso-cmk.vault.azure.net/keys/storage-cmk"}]
    assert (mismatch.rule, mismatch.resource) == ("CMK-008", ACCOUNT)


def test_cmk_006_and_cmk_012_titles_name_the_account() -> None:
    denied = estate(vaults=(vault(role_assignments=()),))
    assert only(run(cmk_006_identity_can_use_key, denied)).title == (
        "the encryption identity of acct1 cannot get, wrap and unwrap its key")
    lagging = estate(accounts=(account(current=f"{KEY_URI}/{V1}"),))
    assert only(run(cmk_012_latest_version_adopted, lagging)).title == "acct1 has not adopted the latest key version"


def test_cmk_012_evidence_and_remediation_in_full() -> None:
    result = only(run(cmk_012_latest_version_adopted, estate(accounts=(account(current=f"{KEY_URI}/{V1}"),))))
    assert result.evidence == {
        "reason": "AdoptionOverdue", "key_uri": KEY_URI, "current_version": V1,
        "current_created": (NOW - timedelta(days=60)).isoformat(), "latest_version": V2,
        "latest_available_since": (NOW - timedelta(days=30)).isoformat(), "lag_hours": 720.0,
        "adoption_window_hours": 24.0, "last_key_rotation": None}
    pin = ("az storage account update --name acct1 --resource-group rg-data --encryption-key-source Microsoft.Keyvault "
           f"--encryption-key-vault {VAULT_ORIGIN} --encryption-key-name storage-cmk --encryption-key-version \"{V2}\"")
    then = "then set the versionless key URI back (automatic updates) once currentVersionedKeyIdentifier shows it"
    assert result.remediation == f"{pin}, {then}"


def test_cmk_012_pins_a_key_named_keys_in_its_own_vault() -> None:
    built = estate(accounts=(account(key_name="keys", current=f"{VAULT_ORIGIN}/keys/keys/{V1}"),),
                   vaults=(vault(keys=(vault_key("keys"),)),))
    assert (f"--encryption-key-vault {VAULT_ORIGIN} --encryption-key-name keys --encryption-key-version \"{V2}\""
            in only(run(cmk_012_latest_version_adopted, built)).remediation)


def test_cmk_008_judges_every_consumer_and_says_what_to_do() -> None:
    """Same region, a missing vault (CMK-013's), then a mismatch: the mismatch is still found."""
    built = estate(accounts=(account("acct0"),
                             account("acct1", key_vault_uri="https://gone-cmk.vault.azure.net/",
                                     current="https://gone-cmk.vault.azure.net/keys/storage-cmk/" + V2),
                             account("acct2", location="North Europe")))
    result = only(run(cmk_008_vault_in_account_region, built))
    assert result.resource == account_id("acct2")
    assert result.title == "acct2 is in North Europe but its key's vault contoso-cmk is in westeurope"
    assert result.remediation == (
        "an outage of westeurope takes the data offline: create a vault in North Europe (az keyvault create "
        "--location northeurope --enable-purge-protection true), create the key there and point the consumer at "
        "it, or accept the cross-region dependency")


def test_cmk_006_evidence_in_full() -> None:
    denied = only(run(cmk_006_identity_can_use_key, estate(vaults=(vault(role_assignments=()),))))
    assert denied.evidence == {
        "reason": "IdentityLacksAccess", "key_uri": KEY_URI, "principal_id": PRINCIPAL, "identity": "user-assigned",
        "vault": VAULT_ID, "key": KEY_NAME, "permission_model": "rbac", "missing": NEEDED_DATA_ACTIONS,
        "granted_by": ()}
    detached = account(identity=ManagedIdentity(type="None"))
    unresolved = only(run(cmk_006_identity_can_use_key, estate(accounts=(detached,))))
    assert unresolved.evidence == {
        "reason": "IdentityLacksAccess", "key_uri": KEY_URI, "principal_id": None, "identity": "user-assigned",
        "detail": "the encryption identity does not resolve (UserAssignedIdentityNotAttached, CMK-002)"}
    assert unresolved.remediation == "fix the account's encryption identity (CMK-002)"
    no_identity = account(uai=None, identity=ManagedIdentity(type="None"))
    assert only(run(cmk_006_identity_can_use_key, estate(accounts=(no_identity,)))).evidence["identity"] == (
        "system-assigned")
    unread_role = "/x/roleDefinitions/c0ffee00-0000-4000-8000-000000000001"
    unknown = only(run(cmk_006_identity_can_use_key, estate(vaults=(vault(role_assignments=(assignment(
        role=unread_role),)),))))
    assert not_evaluated(unknown) == [{
        "rule": "CMK-006", "reason": "AccessNotEvaluated", "detail": f"role definition {unread_role} was not read",
        "missing": NEEDED_DATA_ACTIONS, "aspect": "role-assignments"}]


# --- CMK-011 --------------------------------------------------------------------------------------------


def test_cmk_011_unpins_a_key_named_keys_in_its_own_vault() -> None:
    """The vault is what precedes the first "/keys/" of the key URI, even for a key called keys."""
    built = estate(accounts=(account(key_name="keys", key_version=V2, current=f"{VAULT_ORIGIN}/keys/keys/{V2}"),),
                   vaults=(vault(keys=(vault_key("keys"),)),))
    assert only(run(cmk_011_versionless_key, built)).remediation == (
        "az storage account update --name acct1 --resource-group rg-data --encryption-key-source Microsoft.Keyvault "
        f"--encryption-key-vault {VAULT_ORIGIN} --encryption-key-name keys --encryption-key-version \"\" "
        "(versionless: automatic version updates)")


def test_cmk_011_reports_pinned_accounts_and_scopes() -> None:
    built = estate(accounts=(account(key_version=V2.upper(), scopes=(scope(key_uri=f"{KEY_URI}/{V2}/"),)),))
    account_finding, scope_finding = run(cmk_011_versionless_key, built)
    assert (account_finding.rule, account_finding.severity) == ("CMK-011", Severity.LOW)
    assert account_finding.resource == ACCOUNT
    assert account_finding.evidence["key_version"] == V2
    assert account_finding.evidence["key_uri"] == f"{KEY_URI}/{V2.upper()}"
    assert account_finding.title == f"acct1 pins key version {V2}"
    assert account_finding.remediation.endswith('--encryption-key-version "" (versionless: automatic version updates)')
    assert account_finding.evidence["reason"] == "PinnedVersion"
    assert (f"--encryption-key-vault {VAULT_ORIGIN} --encryption-key-name {KEY_NAME} --encryption-key-version \"\""
            in account_finding.remediation)
    assert scope_finding.resource == SCOPE
    assert (f"az storage account encryption-scope update --account-name acct1 --resource-group rg-data --name scope1 "
            f"--key-source Microsoft.KeyVault --key-uri {KEY_URI}") in scope_finding.remediation


def test_cmk_011_passes_versionless_consumers() -> None:
    assert run(cmk_011_versionless_key, estate(accounts=(account(key_version=""),))) == []


# --- CMK-012 --------------------------------------------------------------------------------------------

RECENT = (key_version(V1, age=timedelta(days=60)), key_version(V2, age=timedelta(hours=3)))


@pytest.mark.parametrize(("versions", "key_version_", "current", "settings", "reason"), [
    (VERSIONS, None, f"{KEY_URI}/{V2}", RuleSettings(), None),
    (VERSIONS, None, f"{KEY_URI.upper()}/{V2.upper()}", RuleSettings(), None),
    (VERSIONS, None, f"{KEY_URI}/{V1}", RuleSettings(), "AdoptionOverdue"),
    (RECENT, None, f"{KEY_URI}/{V1}", RuleSettings(), None),
    ((VERSIONS[0], key_version(V2, age=timedelta(hours=24))), None, f"{KEY_URI}/{V1}", RuleSettings(), None),
    ((VERSIONS[0], key_version(V2, age=timedelta(hours=24, seconds=1))), None, f"{KEY_URI}/{V1}", RuleSettings(),
     "AdoptionOverdue"),
    ((VERSIONS[0], key_version(V2, age=timedelta(days=3), not_before=NOW - timedelta(hours=2))), None,
     f"{KEY_URI}/{V1}", RuleSettings(), None),  # available only since its not-before time
    (RECENT, None, f"{KEY_URI}/{V1}", RuleSettings(adoption_window=timedelta(hours=2)), "AdoptionOverdue"),
    ((*VERSIONS, key_version(V3, age=timedelta(days=1), not_before=NOW + timedelta(days=1))), None,
     f"{KEY_URI}/{V2}", RuleSettings(), None),
    ((key_version(V1, age=timedelta(days=60)), key_version(V2, age=timedelta(days=30), enabled=False)), None,
     f"{KEY_URI}/{V1}", RuleSettings(), None),
    (VERSIONS, V2, f"{KEY_URI}/{V2}", RuleSettings(), None),
    (VERSIONS, V1, f"{KEY_URI}/{V1}", RuleSettings(), "PinnedToOldVersion"),
    (RECENT, V1, f"{KEY_URI}/{V1}", RuleSettings(), "PinnedToOldVersion"),
])
def test_cmk_012_the_latest_usable_version_must_be_adopted(
    versions: tuple[object, ...], key_version_: str | None, current: str, settings: RuleSettings, reason: str | None
) -> None:
    built = estate(accounts=(account(key_version=key_version_, current=current),),
                   vaults=(vault(keys=(vault_key(versions=versions),)),))  # type: ignore[arg-type]
    findings = run(cmk_012_latest_version_adopted, built, settings=settings)
    if reason is None:
        assert findings == []
        return
    result = only(findings)
    assert (result.rule, result.severity, result.resource) == ("CMK-012", Severity.HIGH, ACCOUNT)
    assert result.evidence["reason"] == reason
    assert result.evidence["latest_version"] == V2
    assert f"--encryption-key-version \"{V2}\"" in result.remediation
    if reason == "AdoptionOverdue":
        assert result.evidence["current_version"] == V1
        assert result.evidence["lag_hours"] == pytest.approx((NOW - versions[1].created).total_seconds() / 3600, 0.1)  # type: ignore[attr-defined]
        assert "set the versionless key URI back" in result.remediation
    else:
        assert result.evidence["pinned_version"] == V1


@pytest.mark.parametrize(("uses", "reason"), [("newer", None), ("older", "AdoptionOverdue")])
def test_cmk_012_of_two_versions_made_in_one_second_the_keys_current_one_is_the_latest(
        uses: str, reason: str | None) -> None:
    """Key Vault reports creation in seconds: the version names (random) must not decide which is newer."""
    older, newer = "f" * 32, "0" * 31 + "1"
    versions = (key_version(older, age=timedelta(days=3)), key_version(newer, age=timedelta(days=3)))
    current = {"newer": newer, "older": older}[uses]
    built = estate(accounts=(account(current=f"{KEY_URI}/{current}"),),
                   vaults=(vault(keys=(vault_key(versions=versions, current_version=newer),)),))
    findings = run(cmk_012_latest_version_adopted, built)
    assert [(finding.evidence["reason"], finding.evidence["latest_version"]) for finding in findings] == (
        [] if reason is None else [(reason, newer)])


@pytest.mark.parametrize("current", [None, "https://contoso-cmk.vault.azure.net/keys/other-key/" + V2])
def test_cmk_012_an_unreported_current_version_is_not_evaluable(current: str | None) -> None:
    built = estate(accounts=(account(current=current),))
    [entry] = not_evaluated(only(run(cmk_012_latest_version_adopted, built)))
    assert (entry["rule"], entry["reason"]) == ("CMK-012", "CurrentVersionUnknown")
    assert entry["currentVersionedKeyIdentifier"] == current


def test_cmk_012_unlisted_versions_are_not_evaluable() -> None:
    built = estate(vaults=(vault(keys=(vault_key(versions=None),)),))
    [entry] = not_evaluated(only(run(cmk_012_latest_version_adopted, built)))
    assert entry["detail"] == f"the versions of {KEY_URI} were not read"


def test_cmk_012_does_not_judge_scopes_cmk_019_does() -> None:
    built = estate(accounts=(account(scopes=(scope(current=f"{KEY_URI}/{V1}"),)),))
    assert run(cmk_012_latest_version_adopted, built) == []
    assert only(run(cmk_019_encryption_scopes, built)).evidence["failed_checks"] == ("adoption",)


# --- CMK-014 / CMK-015 ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("queue", "table", "uncovered"), [
    ("Account", "Account", ()),
    ("account", "ACCOUNT", ()),
    ("Service", "Account", ("queue",)),
    (None, None, ("queue", "table")),
    ("Account", "Service", ("table",)),
])
def test_cmk_014_queue_and_table_need_account_keys(queue: str | None, table: str | None,
                                                   uncovered: tuple[str, ...]) -> None:
    findings = run(cmk_014_queue_and_table_covered, estate(accounts=(account(queue=queue, table=table),)))
    if not uncovered:
        assert findings == []
        return
    result = only(findings)
    assert (result.rule, result.severity, result.resource) == ("CMK-014", Severity.INFO, ACCOUNT)
    assert result.evidence["uncovered"] == uncovered
    assert result.evidence["services.queue.keyType"] == (queue or "Service")
    assert result.evidence["services.table.keyType"] == (table or "Service")
    assert result.title == f"the {' and '.join(uncovered)} service of acct1 is not covered by the CMK"
    assert "--encryption-key-type-for-queue Account --encryption-key-type-for-table Account" in result.remediation


def test_cmk_014_ignores_accounts_without_cmk() -> None:
    plain = account(key_source="Microsoft.Storage", queue=None, table=None)
    assert run(cmk_014_queue_and_table_covered, estate(accounts=(plain,))) == []


@pytest.mark.parametrize(("sku", "key_source", "fails"), [
    ("Standard_LRS", "Microsoft.Keyvault", False),
    ("Standard_ZRS", "Microsoft.Keyvault", False),
    ("Standard_GRS", "Microsoft.Keyvault", True),
    ("Standard_RAGRS", "Microsoft.Keyvault", True),
    ("standard_gzrs", "Microsoft.Keyvault", True),
    ("Standard_RAGZRS", "Microsoft.Keyvault", True),
    ("Standard_RAGRS", "Microsoft.Storage", False),
])
def test_cmk_015_geo_redundant_cmk_accounts_are_advised(sku: str, key_source: str, fails: bool) -> None:
    findings = run(cmk_015_geo_redundant_advisory, estate(accounts=(account(sku=sku, key_source=key_source),)))
    if not fails:
        assert findings == []
        return
    result = only(findings)
    assert (result.rule, result.severity, result.resource) == ("CMK-015", Severity.MEDIUM, ACCOUNT)
    assert result.evidence == {"reason": "GeoRedundant", "sku": sku, "location": "West Europe"}
    assert result.title == f"acct1 is geo-redundant ({sku}): failover needs the key"
    assert result.remediation == (
        "keep the key available to the secondary region: back it up (az keyvault key backup --vault-name <vault> "
        "--name <key> --file <key>.backup), keep purge protection on, and test failover with the key reachable")


# --- CMK-019 --------------------------------------------------------------------------------------------


def test_cmk_019_names_every_failed_check_and_joins_their_remediation() -> None:
    built = estate(accounts=(account(scopes=(scope(state="Disabled", current=f"{KEY_URI}/{V1}"),)),))
    result = only(run(cmk_019_encryption_scopes, built))
    assert result.title == "encryption scope acct1/scope1 fails state, adoption"
    command = "az storage account encryption-scope update --account-name acct1 --resource-group rg-data --name scope1"
    assert result.remediation == (
        f"{command} --state Enabled; {command} --key-source Microsoft.KeyVault --key-uri {KEY_URI}/{V2}, then set "
        "the versionless key URI back (automatic updates) once currentVersionedKeyIdentifier shows it")


def test_cmk_019_a_check_it_cannot_decide_names_the_failed_read() -> None:
    failure = ReadFailure(resource=f"/subscriptions/{SUB}", aspect=ReadAspect.VAULTS, reason="timeout", status_code=503)
    built = estate(accounts=(account(scopes=(scope(),)),), vaults=(), read_failures=(failure,))
    entries = [entry for result in run(cmk_019_encryption_scopes, built) for entry in not_evaluated(result)]
    assert {(entry["rule"], entry["aspect"], entry["read_error"], entry["status_code"]) for entry in entries} == {
        ("CMK-019", "vaults", "timeout", 503)}
    assert f"adoption: vault {VAULT_ORIGIN} is not in the estate and a vault listing failed" in [
        entry["detail"] for entry in entries]


def test_cmk_019_a_scope_with_storage_keys_in_a_required_account_names_its_source_and_the_fix() -> None:
    """The Microsoft-managed scope of a not-required account is skipped, and the next account still judged."""
    untagged = account("acct0", scopes=(scope("plain", "acct0", source="Microsoft.Storage", key_uri=None),))
    required = account("acct1", tags={"cmk-required": "true"},
                       scopes=(scope("plain", source="Microsoft.Storage", key_uri=None),))
    result = only(run(cmk_019_encryption_scopes, estate(accounts=(untagged, required)), settings=TAGGED))
    assert (result.resource, result.evidence["source"]) == (f"{ACCOUNT}/encryptionScopes/plain",
                                                           {"source": "Microsoft.Storage"})
    assert result.title == "encryption scope acct1/plain fails source"
    assert result.remediation == (
        "az storage account encryption-scope update --account-name acct1 --resource-group rg-data --name plain "
        "--key-source Microsoft.KeyVault --key-uri https://<vault>.vault.azure.net/keys/<key>")


def test_cmk_019_unread_scopes_are_named() -> None:
    [entry] = not_evaluated(only(run(cmk_019_encryption_scopes, estate(accounts=(account(scopes=None),)))))
    assert (entry["rule"], entry["detail"]) == ("CMK-019", "the encryption scopes of acct1 were not read")


def test_cmk_019_a_compliant_scope_passes() -> None:
    assert run(cmk_019_encryption_scopes, estate(accounts=(account(scopes=(scope(),)),))) == []


@pytest.mark.parametrize(("built_scope", "settings", "failed", "remediation"), [
    (scope(state="Disabled"), RuleSettings(), ("state",), "--name scope1 --state Enabled"),
    (scope(state="disabled", current=f"{KEY_URI}/{V1}"), RuleSettings(), ("state", "adoption"), "--state Enabled"),
    (scope(source="Microsoft.Storage", key_uri=None, current=None), RuleSettings(), ("source",),
     "--key-source Microsoft.KeyVault --key-uri https://<vault>.vault.azure.net/keys/<key>"),
    (scope(key_uri=f"{KEY_URI}/{V1}", current=f"{KEY_URI}/{V1}"), RuleSettings(), ("adoption",),
     f"--key-uri {KEY_URI}/{V2}"),
])
def test_cmk_019_names_the_failed_sub_checks(
    built_scope: object, settings: RuleSettings, failed: tuple[str, ...], remediation: str
) -> None:
    built = estate(accounts=(account(scopes=(built_scope,)),))  # type: ignore[arg-type]
    result = only(run(cmk_019_encryption_scopes, built, settings=settings))
    assert (result.rule, result.severity, result.resource) == ("CMK-019", Severity.HIGH, SCOPE)
    assert result.evidence["failed_checks"] == failed
    assert remediation in result.remediation
    if "state" in failed:
        assert result.evidence["state"] == {"state": built_scope.state}  # type: ignore[attr-defined]


def test_cmk_019_a_storage_key_scope_is_fine_when_the_account_is_not_required() -> None:
    plain_scope = scope(source="Microsoft.Storage", key_uri=None, current=None)
    untagged = account(scopes=(plain_scope,))
    assert run(cmk_019_encryption_scopes, estate(accounts=(untagged,)), settings=TAGGED) == []
    exempt = account(scopes=(plain_scope,), tags={"cmk-exempt": "true"})
    assert run(cmk_019_encryption_scopes, estate(accounts=(exempt,))) == []


def test_cmk_019_key_vault_scopes_are_checked_even_when_the_account_is_not_required() -> None:
    untagged = account(key_source="Microsoft.Storage", scopes=(scope(state="Disabled"),
                                                               scope("plain", source="Microsoft.Storage", key_uri=None,
                                                                     current=None, state="Disabled")))
    result = only(run(cmk_019_encryption_scopes, estate(accounts=(untagged,)), settings=TAGGED))
    assert (result.resource, result.evidence["failed_checks"]) == (SCOPE, ("state",))


def test_cmk_019_identity_access_of_a_scope() -> None:
    built = estate(accounts=(account(scopes=(scope(),)),), vaults=(vault(role_assignments=()),))
    result = only(run(cmk_019_encryption_scopes, built))
    assert result.evidence["failed_checks"] == ("identity-access",)
    assert result.evidence["reasons"] == ("IdentityLacksAccess",)
    assert result.evidence["identity-access"]["principal_id"] == PRINCIPAL  # type: ignore[index]
    assert f"--scope {VAULT_ID}/keys/{KEY_NAME}" in result.remediation


def test_cmk_019_unread_scopes_and_unevaluable_sub_checks_are_cmk_000() -> None:
    failure = ReadFailure(resource=ACCOUNT, aspect=ReadAspect.ENCRYPTION_SCOPES, reason="throttled", status_code=429)
    unread = estate(accounts=(account(scopes=None),), read_failures=(failure,))
    result = only(run(cmk_019_encryption_scopes, unread))
    assert (result.rule, result.resource) == ("CMK-000", ACCOUNT)
    assert not_evaluated(result)[0]["status_code"] == 429
    no_current = estate(accounts=(account(scopes=(scope(current=None),)),))
    result = only(run(cmk_019_encryption_scopes, no_current))
    assert (result.rule, result.resource) == ("CMK-000", SCOPE)
    [entry] = not_evaluated(result)
    assert entry["rule"] == "CMK-019"
    assert str(entry["detail"]).startswith("adoption: ")


def test_cmk_019_scope_of_a_different_account_casing_keeps_its_own_id() -> None:
    upper = replace(scope(), id=SCOPE.upper())
    built = estate(accounts=(account(scopes=(replace(upper, state="Disabled"),)),))
    assert only(run(cmk_019_encryption_scopes, built)).resource == SCOPE.upper()

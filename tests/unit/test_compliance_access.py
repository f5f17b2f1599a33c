"""Key access evaluation (access policies and RBAC) over a gathered vault, table-driven."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.compliance.access import (
    NEEDED_DATA_ACTIONS,
    action_matches,
    key_access,
    scope_covers,
)
from controller.compliance.estate import RoleAssignment, RoleDefinition, RolePermission, Subscription
from controller.model import IdentityAccess
from tests.unit.estate_builders import (
    CRYPTO_USER_ROLE,
    KEY_NAME,
    PRINCIPAL,
    SUB,
    TENANT,
    VAULT_ID,
    access_policy,
    assignment,
    vault,
)

pytestmark = pytest.mark.unit

READ, WRAP, UNWRAP = NEEDED_DATA_ACTIONS
SUBSCRIPTION = Subscription(subscription_id=SUB, tenant_id=TENANT, management_groups=("mg-data", TENANT))
CUSTOM_ROLE_ID = (f"/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/"
                  "c0ffee00-0000-4000-8000-000000000001")


def custom_role(*data_actions: str, not_data_actions: tuple[str, ...] = ()) -> RoleDefinition:
    return RoleDefinition(id=CUSTOM_ROLE_ID, role_name="cmk custom",
                          permissions=(RolePermission(data_actions=data_actions, not_data_actions=not_data_actions),))


def definitions(*roles: RoleDefinition) -> dict[str, RoleDefinition]:
    return {role.guid: role for role in roles}


@pytest.mark.parametrize(("pattern", "action", "expected"), [
    ("Microsoft.KeyVault/vaults/keys/read", READ, True),
    ("microsoft.keyvault/VAULTS/keys/READ", READ, True),
    ("Microsoft.KeyVault/vaults/keys/*", WRAP, True),
    ("Microsoft.KeyVault/vaults/*", UNWRAP, True),
    ("*", READ, True),
    ("Microsoft.KeyVault/vaults/keys/*/action", WRAP, True),
    ("Microsoft.KeyVault/vaults/keys/*/action", READ, False),
    ("Microsoft.KeyVault/vaults/secrets/*", READ, False),
    ("Microsoft.KeyVault/vaults/keys/read", WRAP, False),
    ("Microsoft.KeyVault/vaults/keys/rea", READ, False),  # no implicit prefix match
    ("Microsoft.KeyVault/vaults/keys/[r]ead", READ, False),  # brackets are literal, not a character class
])
def test_action_patterns_match_with_wildcards_case_insensitively(pattern: str, action: str, expected: bool) -> None:
    assert action_matches(pattern, action) is expected


KEY_SCOPE = f"{VAULT_ID}/keys/{KEY_NAME}"
RG = f"/subscriptions/{SUB}/resourceGroups/rg-keys"


@pytest.mark.parametrize(("scope", "groups", "expected"), [
    ("/", None, True),
    (f"/subscriptions/{SUB}", None, True),
    (f"/SUBSCRIPTIONS/{SUB.upper()}/", None, True),
    (RG, None, True),
    (RG.replace("rg-keys", "RG-KEYS"), None, True),
    (RG.replace("rg-keys", "rg-keys2"), None, False),  # a sibling group whose name starts the same
    (RG.replace("rg-keys", "rg-key"), None, False),
    (VAULT_ID, None, True),
    (KEY_SCOPE, None, True),
    (f"{VAULT_ID}/keys/{KEY_NAME}-2", None, False),
    (f"{VAULT_ID}2", None, False),
    ("/subscriptions/00000000-0000-0000-0000-0000000000b9", None, False),
    ("/providers/Microsoft.Management/managementGroups/mg-data", ("mg-data", TENANT), True),
    ("/providers/microsoft.management/managementgroups/MG-DATA", ("mg-data", TENANT), True),
    ("/providers/Microsoft.Management/managementGroups/mg-other", ("mg-data", TENANT), False),
    ("/providers/Microsoft.Management/managementGroups/mg-data", None, None),
])
def test_scopes_match_segment_by_segment(scope: str, groups: tuple[str, ...] | None, expected: bool | None) -> None:
    assert scope_covers(scope, KEY_SCOPE, groups) is expected


def rbac(*assignments: object, roles: tuple[RoleDefinition, ...] = (), subscription: Subscription | None = SUBSCRIPTION,
         principal: str = PRINCIPAL) -> tuple[IdentityAccess, tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    built = vault(role_assignments=tuple(assignments))
    result = key_access(built, KEY_NAME, principal, role_definitions=definitions(*roles), subscription=subscription)
    assert result.model == "rbac"
    return result.access, result.missing, result.granted_by, result.unevaluated


@pytest.mark.parametrize("scope", [
    VAULT_ID, KEY_SCOPE, KEY_SCOPE.upper(), RG, f"/subscriptions/{SUB}", "/",
    "/providers/Microsoft.Management/managementGroups/mg-data",
    f"/providers/Microsoft.Management/managementGroups/{TENANT}",
])
def test_the_builtin_crypto_service_role_grants_at_every_covering_scope(scope: str) -> None:
    access, missing, granted_by, _ = rbac(assignment(scope))
    assert access is IdentityAccess.GRANTED
    assert missing == ()
    assert granted_by == (f"Key Vault Crypto Service Encryption User at {scope}",)


@pytest.mark.parametrize("scope", [
    RG.replace("rg-keys", "rg-keys2"), f"{VAULT_ID}/keys/other-key",
    "/subscriptions/00000000-0000-0000-0000-0000000000b9",
    "/providers/Microsoft.Management/managementGroups/mg-other",
])
def test_assignments_at_scopes_that_do_not_cover_the_key_are_denied(scope: str) -> None:
    access, missing, granted_by, unevaluated = rbac(assignment(scope))
    assert access is IdentityAccess.DENIED
    assert missing == NEEDED_DATA_ACTIONS
    assert granted_by == unevaluated == ()


def test_an_assignment_of_another_principal_does_not_count() -> None:
    access, missing, _, _ = rbac(assignment(principal="99999999-9999-9999-9999-999999999999"))
    assert (access, missing) == (IdentityAccess.DENIED, NEEDED_DATA_ACTIONS)


def test_principal_ids_compare_case_insensitively() -> None:
    access, _, _, _ = rbac(assignment(principal=PRINCIPAL.upper()))
    assert access is IdentityAccess.GRANTED


@pytest.mark.parametrize(("role", "expected", "missing"), [
    (custom_role("Microsoft.KeyVault/vaults/keys/*"), IdentityAccess.GRANTED, ()),
    (custom_role("*"), IdentityAccess.GRANTED, ()),
    (custom_role("MICROSOFT.KEYVAULT/VAULTS/KEYS/READ", "microsoft.keyvault/vaults/keys/wrap/action",
                 "Microsoft.KeyVault/vaults/keys/Unwrap/Action"), IdentityAccess.GRANTED, ()),
    (custom_role("Microsoft.KeyVault/vaults/keys/*",
                 not_data_actions=("Microsoft.KeyVault/vaults/keys/unwrap/action",)),
     IdentityAccess.DENIED, (UNWRAP,)),
    (custom_role("*", not_data_actions=("Microsoft.KeyVault/vaults/keys/*/action",)),
     IdentityAccess.DENIED, (WRAP, UNWRAP)),
    (custom_role("Microsoft.KeyVault/vaults/keys/read", "Microsoft.KeyVault/vaults/keys/wrap/action"),
     IdentityAccess.DENIED, (UNWRAP,)),
    (custom_role("Microsoft.KeyVault/vaults/secrets/*"), IdentityAccess.DENIED, (READ, WRAP, UNWRAP)),
])
def test_custom_roles_count_data_actions_minus_not_data_actions(
    role: RoleDefinition, expected: IdentityAccess, missing: tuple[str, ...]
) -> None:
    access, found_missing, _, _ = rbac(assignment(role=CUSTOM_ROLE_ID), roles=(role,))
    assert access is expected
    assert found_missing == missing


def test_needed_actions_may_come_from_two_roles_together() -> None:
    wrap_only = custom_role("Microsoft.KeyVault/vaults/keys/wrap/action")
    other_id = CUSTOM_ROLE_ID.replace("000000000001", "000000000002")
    read_unwrap = RoleDefinition(id=other_id, role_name="read and unwrap", permissions=(RolePermission(
        data_actions=("Microsoft.KeyVault/vaults/keys/read", "Microsoft.KeyVault/vaults/keys/unwrap/action")),))
    access, _, granted_by, _ = rbac(assignment(role=CUSTOM_ROLE_ID), assignment(RG, role=other_id),
                                    roles=(wrap_only, read_unwrap))
    assert access is IdentityAccess.GRANTED
    assert granted_by == (f"cmk custom at {VAULT_ID}", f"read and unwrap at {RG}")


def test_a_not_data_action_in_one_block_does_not_remove_what_another_block_allows() -> None:
    role = RoleDefinition(id=CUSTOM_ROLE_ID, role_name="two blocks", permissions=(
        RolePermission(data_actions=("Microsoft.KeyVault/vaults/keys/*",),
                       not_data_actions=("Microsoft.KeyVault/vaults/keys/unwrap/action",)),
        RolePermission(data_actions=("Microsoft.KeyVault/vaults/keys/unwrap/action",)),
    ))
    access, _, _, _ = rbac(assignment(role=CUSTOM_ROLE_ID), roles=(role,))
    assert access is IdentityAccess.GRANTED


@pytest.mark.parametrize(("assignments", "subscription", "detail"), [
    ((assignment(role=CUSTOM_ROLE_ID),), SUBSCRIPTION, f"role definition {CUSTOM_ROLE_ID} was not read"),
    ((assignment(condition="@Resource[name] StringEquals 'x'"),), SUBSCRIPTION,
     f"conditional assignment at {VAULT_ID} (ABAC conditions are not evaluated)"),
    ((assignment("/providers/Microsoft.Management/managementGroups/mg-data"),),
     replace(SUBSCRIPTION, management_groups=None),
     "management-group assignment at /providers/Microsoft.Management/managementGroups/mg-data: the "
     "subscription's management-group ancestry is unknown"),
    ((assignment("/providers/Microsoft.Management/managementGroups/mg-data"),), None,
     "management-group assignment at /providers/Microsoft.Management/managementGroups/mg-data: the "
     "subscription's management-group ancestry is unknown"),
])
def test_what_cannot_be_decided_makes_an_unknown_verdict(
    assignments: tuple[object, ...], subscription: Subscription | None, detail: str
) -> None:
    access, missing, _, unevaluated = rbac(*assignments, subscription=subscription)
    assert access is IdentityAccess.UNKNOWN
    assert missing == NEEDED_DATA_ACTIONS
    assert unevaluated == (detail,)


def test_an_undecidable_assignment_does_not_matter_when_another_grants() -> None:
    access, _, _, _ = rbac(assignment(role=CUSTOM_ROLE_ID), assignment())
    assert access is IdentityAccess.GRANTED


def test_unread_role_assignments_make_an_rbac_vault_unknown() -> None:
    result = key_access(vault(role_assignments=None), KEY_NAME, PRINCIPAL, role_definitions={},
                        subscription=SUBSCRIPTION)
    assert result.access is IdentityAccess.UNKNOWN
    assert result.model == "rbac"
    assert result.unevaluated == ("role assignments were not read",)


OTHER_PRINCIPAL = "99999999-9999-9999-9999-999999999999"
MG_DATA = "/providers/Microsoft.Management/managementGroups/mg-data"


@pytest.mark.parametrize(("first", "unevaluated"), [
    (assignment(principal=OTHER_PRINCIPAL), ()),
    (assignment(RG.replace("rg-keys", "rg-keys2")), ()),
    (assignment(MG_DATA), (f"management-group assignment at {MG_DATA}: the subscription's management-group "
                           "ancestry is unknown",)),
    (assignment(condition="@Resource[name] StringEquals 'x'"),
     (f"conditional assignment at {VAULT_ID} (ABAC conditions are not evaluated)",)),
    (assignment(role=CUSTOM_ROLE_ID), (f"role definition {CUSTOM_ROLE_ID} was not read",)),
])
def test_an_assignment_that_does_not_count_does_not_hide_the_ones_after_it(first: RoleAssignment,
                                                                          unevaluated: tuple[str, ...]) -> None:
    """Each assignment is judged on its own: one that does not count is passed over, not the end of the list."""
    granting = assignment(RG)
    no_ancestry = replace(SUBSCRIPTION, management_groups=None)
    built = vault(role_assignments=(first, granting))
    result = key_access(built, KEY_NAME, PRINCIPAL, role_definitions={}, subscription=no_ancestry)
    assert (result.access, result.grants) == (IdentityAccess.GRANTED, (granting,))
    assert result.granted_by == (f"Key Vault Crypto Service Encryption User at {RG}",)
    # Denied or unknown, a verdict still names the partial grants and what could not be decided.
    partial = assignment(role=CUSTOM_ROLE_ID.replace("000000000001", "0000000000aa"))
    wrap_only = replace(custom_role("Microsoft.KeyVault/vaults/keys/wrap/action"), id=partial.role_definition_id)
    built = vault(role_assignments=(first, partial))
    result = key_access(built, KEY_NAME, PRINCIPAL, role_definitions=definitions(wrap_only), subscription=no_ancestry)
    assert result.access is (IdentityAccess.UNKNOWN if unevaluated else IdentityAccess.DENIED)
    assert (result.granted_by, result.grants) == ((f"cmk custom at {VAULT_ID}",), (partial,))
    assert (result.missing, result.unevaluated) == ((READ, UNWRAP), unevaluated)


def test_a_vault_id_with_a_trailing_slash_still_covers_its_keys() -> None:
    built = vault(vault_id=VAULT_ID + "/", role_assignments=(assignment(KEY_SCOPE),))
    result = key_access(built, KEY_NAME, PRINCIPAL, role_definitions={}, subscription=SUBSCRIPTION)
    assert result.access is IdentityAccess.GRANTED


def test_the_builtin_role_is_known_by_guid_whatever_the_id_prefix() -> None:
    bare = CRYPTO_USER_ROLE.rsplit("/", 1)[-1].upper()
    access, _, _, _ = rbac(assignment(role=bare))
    assert access is IdentityAccess.GRANTED


@pytest.mark.parametrize(("policies", "expected", "missing"), [
    ((access_policy(PRINCIPAL, "get", "wrapKey", "unwrapKey"),), IdentityAccess.GRANTED, ()),
    ((access_policy(PRINCIPAL, "Get", "WrapKey", "UnwrapKey"),), IdentityAccess.GRANTED, ()),
    ((access_policy(PRINCIPAL.upper(), "GET", "WRAPKEY", "UNWRAPKEY"),), IdentityAccess.GRANTED, ()),
    ((access_policy(PRINCIPAL, "all"),), IdentityAccess.GRANTED, ()),
    ((access_policy(PRINCIPAL, "All"),), IdentityAccess.GRANTED, ()),
    ((access_policy(PRINCIPAL, "get"), access_policy(PRINCIPAL, "wrapKey", "unwrapKey")), IdentityAccess.GRANTED, ()),
    ((access_policy(PRINCIPAL, "get", "wrapKey"),), IdentityAccess.DENIED, ("unwrapKey",)),
    ((access_policy(PRINCIPAL, "get", "wrapKey", "unwrapKey", application_id="33333333-3333-3333-3333-333333333333"),),
     IdentityAccess.DENIED, ("get", "wrapKey", "unwrapKey")),
    ((access_policy("99999999-9999-9999-9999-999999999999", "all"),), IdentityAccess.DENIED,
     ("get", "wrapKey", "unwrapKey")),
    ((), IdentityAccess.DENIED, ("get", "wrapKey", "unwrapKey")),
])
def test_access_policies_need_get_wrap_and_unwrap(
    policies: tuple[object, ...], expected: IdentityAccess, missing: tuple[str, ...]
) -> None:
    built = vault(enable_rbac_authorization=False, access_policies=policies, role_assignments=None)
    result = key_access(built, KEY_NAME, PRINCIPAL, role_definitions={}, subscription=SUBSCRIPTION)
    assert result.model == "access-policy"
    assert result.access is expected
    assert result.missing == missing
    assert result.grants == result.unevaluated == ()


@pytest.mark.parametrize(("permissions", "granted_by"), [
    (("all",), ("access policy: all",)),
    (("get", "wrapKey", "unwrapKey", "sign"), ("access policy: get, wrapKey, unwrapKey",)),
    (("get", "wrapKey"), ()),
])
def test_an_access_policy_verdict_names_what_granted_it(permissions: tuple[str, ...],
                                                        granted_by: tuple[str, ...]) -> None:
    built = vault(enable_rbac_authorization=False, access_policies=(access_policy(PRINCIPAL, *permissions),),
                  role_assignments=None)
    result = key_access(built, KEY_NAME, PRINCIPAL, role_definitions={}, subscription=SUBSCRIPTION)
    assert result.granted_by == granted_by


GROUP_NAMES = st.from_regex(r"[A-Za-z0-9_.()-]{1,20}", fullmatch=True).filter(lambda name: not name.endswith("."))


@given(assigned=GROUP_NAMES, other=GROUP_NAMES, relation=st.sampled_from(["same", "extended", "other"]),
       swap=st.booleans())
def test_a_resource_group_assignment_covers_exactly_its_own_group(assigned: str, other: str, relation: str,
                                                                   swap: bool) -> None:
    vault_group = {"same": assigned.swapcase() if swap else assigned, "extended": assigned + other,
                   "other": other}[relation]
    scope = f"/subscriptions/{SUB}/resourceGroups/{assigned}"
    resource = f"/subscriptions/{SUB}/resourceGroups/{vault_group}/providers/Microsoft.KeyVault/vaults/v1/keys/k"
    assert scope_covers(scope, resource, None) is (assigned.lower() == vault_group.lower())
    assert scope_covers(scope, resource, None) is (relation == "same" or assigned.lower() == vault_group.lower())

"""The compliance sweep's read access in infra/, parsed with pycep: in every subscription in scope the
controller's identity gets Reader (every management-plane read the sweep makes: accounts, encryption
scopes, vaults, keys and versions through ARM, diagnostic settings, role assignments and definitions,
identities, Resource Graph), and on every managed vault exactly one data-plane read more than the
reconciler's: the soft-deleted keys (RBAC: ``deletedKeys/read``; access policy: ``list``); nothing else is
granted unconditionally.

Not granted here: the management-group ancestry (getEntities) is a tenant-level read that a
resource-group deployment cannot grant; without it the sweep reports grants at management-group scope as
not evaluable instead of passing them."""

from __future__ import annotations

from typing import Any

import pytest

from tests.infra.test_bicep import (
    INFRA,
    READER,
    Scope,
    body,
    custom_roles,
    function,
    literal_actions,
    module,
    parse,
    resources,
)

pytestmark = pytest.mark.unit

#: The data-plane reads, unconditional, on every managed vault: the reconciler's two and the sweep's one.
SWEEP_DATA_PLANE_READ = "Microsoft.KeyVault/vaults/deletedKeys/read"
UNCONDITIONAL_KEY_DATA_ACTIONS = {
    "Microsoft.KeyVault/vaults/keys/read",
    "Microsoft.KeyVault/vaults/keyrotationpolicies/read",
    SWEEP_DATA_PLANE_READ,
}
UNCONDITIONAL_POLICY_PERMISSIONS = {"get", "list", "getrotationpolicy"}  # 'list' lists deleted keys too


def main() -> dict[str, Any]:
    return parse(INFRA / "main.bicep")


def union_arguments(template: dict[str, Any], variable: str) -> set[str]:
    called = function(template["variables"][variable]["value"])
    assert called is not None and called[0] == "union", variable
    return set(called[1].values())


def test_every_subscription_in_scope_gets_reader() -> None:
    template = main()
    readers = template["modules"]["inventoryReaders"]
    assert readers["detail"]["path"] == "modules/subscription-reader.bicep"
    loop = readers["config"]["loop_type"]["detail"]
    assert loop["array_name"] == "readerScopes"
    assert body(readers)["scope"] == {"function": {"type": "subscription",
                                                   "parameters": {"subscription_id": loop["item_name"]}}}
    # The swept subscriptions (CMK_SUBSCRIPTIONS) and every vault's, account's and container's subscription.
    assert union_arguments(template, "readerSubscriptionIds") == {"inventorySubscriptionIds", "roleSubscriptionIds"}
    assert union_arguments(template, "roleSubscriptionIds") == {
        "vaultSubscriptionIds", "accountSubscriptionIds", "containerSubscriptionIds"}


def test_the_subscription_grant_is_reader_and_nothing_more() -> None:
    template = module("subscription-reader.bicep")
    ((_, declaration),) = resources(template, "Microsoft.Authorization/roleAssignments")
    assignment = body(declaration)
    role = template["variables"][assignment["properties"]["roleDefinitionId"]]["value"]
    called = function(role)
    assert called is not None and called[1]["resource_name_1"] == READER  # actions */read, no data actions
    assert assignment["properties"]["principalId"] == "principalId"
    assert "scope" not in assignment  # the subscription itself (targetScope)
    assert template["globals"]["scope"]["value"] == "subscription"


def test_every_managed_vault_gets_the_key_role_or_its_access_policy_twin() -> None:
    template = main()
    integrations = template["modules"]["vaultIntegrations"]
    assert integrations["detail"]["path"] == "modules/vault-integration.bicep"
    assert integrations["config"]["loop_type"]["detail"]["array_name"] == "vaults"
    params = body(integrations)["params"]
    assert params["accessPolicyKeyPermissions"] == "accessPolicyKeyPermissions"
    vault = module("vault-integration.bicep")
    ((_, assignment),) = resources(vault, "Microsoft.Authorization/roleAssignments")
    ((_, policy),) = resources(vault, "Microsoft.KeyVault/vaults/accessPolicies")
    assert body(assignment)["scope"] == "vault"  # the vault, not its resource group
    assert assignment["config"]["condition"] == {"operator": {"type": "not",
                                                              "operands": {"bool_value": "useAccessPolicy"}}}
    assert policy["config"]["condition"] == "useAccessPolicy"


def test_the_data_plane_reads_are_exactly_what_the_sweep_and_the_reconciler_need() -> None:
    scope = Scope(module("custom-roles.bicep"))
    (permissions,) = custom_roles()["keyRole"]["properties"]["permissions"]
    conditions = dict(literal_actions(scope, permissions["dataActions"]))
    assert {action for action, depends in conditions.items() if depends == ()} == UNCONDITIONAL_KEY_DATA_ACTIONS
    assert all(depends for action, depends in conditions.items() if action not in UNCONDITIONAL_KEY_DATA_ACTIONS)
    assert permissions["actions"] == [] and permissions["notDataActions"] == []

    template = main()
    twin = dict(literal_actions(Scope(template), template["variables"]["accessPolicyKeyPermissions"]["value"]))
    assert {permission for permission, depends in twin.items() if depends == ()} == UNCONDITIONAL_POLICY_PERMISSIONS

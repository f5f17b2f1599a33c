"""The Bicep templates deploy what the code reads, with least privilege and no secret.

Every .bicep file under infra/ is parsed with pycep (the parser checkov bundles) and checked for: every setting
in controller.settings.SETTINGS as an app setting with the code's default, end to end from main.bicep's
parameters; identity-based host storage with shared keys disabled; role assignments named
guid(scope, principal, role), of allowed roles only, at the narrowest scope; custom roles with only the actions
the controller performs; the key event subscription's retries and identity-based dead-lettering; no secret.

pycep represents an identifier and a quoted string the same way (both are str), so a str is read as a reference
when it names a parameter, variable or loop item in scope, and as a literal otherwise.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from pycep import BicepParser

from controller.resource_events import RESOURCE_EVENT_TYPES, WATCHED_OPERATION_PREFIXES
from controller.settings import SETTINGS

pytestmark = pytest.mark.unit

ROOT = Path(__file__).parents[2]
INFRA = ROOT / "infra"
MODULES = INFRA / "modules"
BICEP_FILES = sorted(INFRA.rglob("*.bicep"))
SETTING_DEFAULTS = {spec.name: spec.default for spec in SETTINGS}

# Built-in roles that must never be granted: each is wider than anything the controller does. Two narrow ones are
# granted only where ALLOWED_BUILT_IN_ASSIGNMENTS says, and are checked there instead: Storage Blob Data Owner on
# the app's own account (the documented role for identity-based host storage), Key Vault Secrets User on the one
# secret that holds the alert webhook URL.
FORBIDDEN_BUILT_IN_ROLES = {
    "8e3af657-a8ff-443c-a75c-2fe8c4bcb635": "Owner",
    "b24988ac-6180-42a0-ab88-20f7382dd24c": "Contributor",
    "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9": "User Access Administrator",
    "f58310d9-a9f6-439a-9e8d-f62e7b41a168": "Role Based Access Control Administrator",
    "00482a5a-887f-4fb3-b363-3b7fe8e74483": "Key Vault Administrator",
    "f25e0fa2-a7c8-4377-a976-54943a77a395": "Key Vault Contributor",
    "14b46e9e-c2b7-41b4-b07b-48a6ebf60603": "Key Vault Crypto Officer",
    "12338af0-0e69-4776-bea7-57ae8d297424": "Key Vault Crypto User",
    "b86a8fe4-44ce-4948-aee5-eccb2c155cd7": "Key Vault Secrets Officer",
    "17d1049b-9a84-46fb-8f53-869881c3d3ab": "Storage Account Contributor",
    "92aaf0da-9dab-42b6-94a3-d43ce8d16293": "Log Analytics Contributor",
}
READER = "acdd72a7-3385-48ef-bd42-f606fba81ae7"
BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"
KEY_VAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
QUEUE_DATA_CONTRIBUTOR = "974c5e8b-45b9-4653-ba55-5f855dd0fb88"
TABLE_DATA_CONTRIBUTOR = "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3"
LOG_ANALYTICS_READER = "73c42c96-874c-492b-b04d-ab87d138a893"
MONITORING_METRICS_PUBLISHER = "3913510d-42f4-4e42-8a64-420c390055eb"
EVENTGRID_DATA_SENDER = "d5a91429-5739-47e2-a06b-3470a27159e7"

# (module, built-in role) -> the only resource type it may be assigned on ("subscription": the deployment's).
ALLOWED_BUILT_IN_ASSIGNMENTS = {
    ("subscription-reader.bicep", READER): "subscription",
    ("app-access.bicep", BLOB_DATA_OWNER): "Microsoft.Storage/storageAccounts",
    ("app-access.bicep", QUEUE_DATA_CONTRIBUTOR): "Microsoft.Storage/storageAccounts",
    ("app-access.bicep", TABLE_DATA_CONTRIBUTOR): "Microsoft.Storage/storageAccounts",
    ("app-access.bicep", LOG_ANALYTICS_READER): "Microsoft.OperationalInsights/workspaces",
    ("app-access.bicep", MONITORING_METRICS_PUBLISHER): "Microsoft.Insights/components",
    ("dead-letter-access.bicep", BLOB_DATA_CONTRIBUTOR): "Microsoft.Storage/storageAccounts/blobServices/containers",
    ("alert-topic.bicep", EVENTGRID_DATA_SENDER): "Microsoft.EventGrid/topics",
    ("secret-reader-access.bicep", KEY_VAULT_SECRETS_USER): "Microsoft.KeyVault/vaults/secrets",
}
# Where each narrow-but-powerful role may be mentioned at all.
CONFINED_BUILT_IN_ROLES = {BLOB_DATA_OWNER: "app-access.bicep", KEY_VAULT_SECRETS_USER: "secret-reader-access.bicep"}
# (module, parameter holding a custom role's GUID) -> the only resource type it may be assigned on.
ALLOWED_CUSTOM_ASSIGNMENTS = {
    ("vault-integration.bicep", "keyRoleGuid"): "Microsoft.KeyVault/vaults",
    ("storage-encryption-access.bicep", "storageEncryptionRoleGuid"): "Microsoft.Storage/storageAccounts",
    ("rewrap-access.bicep", "rewrapRoleGuid"): "Microsoft.Storage/storageAccounts/blobServices/containers",
}

KEY_READ = {"Microsoft.KeyVault/vaults/keys/read", "Microsoft.KeyVault/vaults/keyrotationpolicies/read"}
KEY_ROTATE = {"Microsoft.KeyVault/vaults/keys/rotate/action"}
KEY_WRAP = {"Microsoft.KeyVault/vaults/keys/wrap/action", "Microsoft.KeyVault/vaults/keys/unwrap/action"}
STORAGE_ENCRYPTION = {
    "Microsoft.Storage/storageAccounts/read",
    "Microsoft.Storage/storageAccounts/write",
    "Microsoft.Storage/storageAccounts/encryptionScopes/read",
    "Microsoft.Storage/storageAccounts/encryptionScopes/write",
}
REWRAP_ACTIONS = {"Microsoft.Storage/storageAccounts/blobServices/containers/read"}
REWRAP_DATA_ACTIONS = {
    "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read",
    "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/write",
}
ALLOWED_ROLE_PERMISSIONS = {
    "keyRole": {"actions": set(), "dataActions": KEY_READ | KEY_ROTATE | KEY_WRAP},
    "storageEncryptionRole": {"actions": STORAGE_ENCRYPTION, "dataActions": set()},
    "rewrapRole": {"actions": REWRAP_ACTIONS, "dataActions": REWRAP_DATA_ACTIONS},
}


class Unsupported(Exception):
    """An expression this test's small evaluator does not handle (it only needs deploy-time defaults)."""


@functools.cache
def parse(path: Path) -> dict[str, Any]:
    return BicepParser().parse(file_path=path)


def module(name: str) -> dict[str, Any]:
    return parse(MODULES / name)


def body(declaration: Mapping[str, Any]) -> dict[str, Any]:
    """The object of a resource or module, without its `if (...)` condition or `for` loop wrapper."""
    config = declaration["config"]
    while isinstance(config, dict) and "condition" in config and "config" in config:
        config = config["config"]
    return config


def resources(template: Mapping[str, Any], resource_type: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for symbol, declaration in template.get("resources", {}).items():
        if declaration["type"] == resource_type and not declaration["existing"]:
            yield symbol, declaration


def function(expression: Any) -> tuple[str, dict[str, Any]] | None:
    if isinstance(expression, dict) and "function" in expression:
        return expression["function"]["type"], expression["function"]["parameters"]
    return None


def accessor(expression: Any) -> list[Any] | None:
    """`a.b.c` as ['a', 'b', 'c'] (pycep nests property accessors to the right)."""
    if not (isinstance(expression, dict) and expression.get("operator", {}).get("type") == "property_accessor"):
        return None
    operands = expression["operator"]["operands"]
    rest = accessor(operands["operand_2"])
    return [operands["operand_1"], *(rest if rest is not None else [operands["operand_2"]])]


# The deployment's subscription wherever an expression calls subscription().
SUBSCRIPTION = "00000000-0000-0000-0000-00000000000a"


class Scope:
    """Names visible to an expression: parameters (with given values or their defaults) and variables."""

    def __init__(self, template: Mapping[str, Any], values: Mapping[str, Any] | None = None) -> None:
        self.template = template
        self.values = dict(values or {})

    def resolve(self, name: str) -> Any:
        if name in self.values:
            return self.values[name]
        parameter = self.template.get("parameters", {}).get(name)
        if parameter is not None:
            if "default" not in parameter:
                raise Unsupported(f"parameter {name} has no default")
            return self.evaluate(parameter["default"])
        variable = self.template.get("variables", {}).get(name)
        if variable is not None:
            return self.evaluate(variable["value"])
        raise KeyError(name)

    def is_name(self, text: str) -> bool:
        return (
            text in self.values
            or text in self.template.get("parameters", {})
            or text in self.template.get("variables", {})
        )

    def evaluate(self, expression: Any) -> Any:
        if isinstance(expression, bool | int) or expression is None:
            return expression
        if isinstance(expression, str):
            if self.is_name(expression):
                return self.resolve(expression)
            if "${" in expression:
                raise Unsupported(f"interpolation {expression!r}")
            return expression
        if isinstance(expression, list):
            return [self.evaluate(item) for item in expression]
        if expression == {}:
            return {}
        if isinstance(expression, dict) and expression.get("type") == "lambda_expression":
            return self.closure(expression["detail"])
        path = accessor(expression)
        if path is not None:
            value = self.evaluate(path[0])
            for name in path[1:]:
                value = value[name]
            return value
        if isinstance(expression, dict) and "loop_type" in expression:
            detail = expression["loop_type"]["detail"]
            results = []
            for index, item in enumerate(self.evaluate(detail["array_name"])):
                names = {detail["item_name"]: item, **({detail["index_name"]: index} if "index_name" in detail else {})}
                results.append(type(self)(self.template, {**self.values, **names}).evaluate(expression["config"]))
            return results
        called = function(expression)
        if called is not None:
            name, arguments = called
            if name == "string":
                value = self.evaluate(arguments["value_to_convert"])
                return str(value).lower() if isinstance(value, bool) else str(value)
            if name == "join":
                return self.evaluate(arguments["delimiter"]).join(self.evaluate(arguments["input_array"]))
            if name == "empty":
                return not self.evaluate(arguments["item_to_test"])
            if name == "contains":
                return self.evaluate(arguments["item_to_find"]) in self.evaluate(arguments["container"])
            if name == "subscription":
                return {"subscriptionId": SUBSCRIPTION, "id": f"/subscriptions/{SUBSCRIPTION}"}
            if name == "bool":
                return bool(self.evaluate(arguments["arg_1"]))
            if name == "union":
                values = [self.evaluate(argument) for argument in arguments.values()]
                if all(isinstance(value, list) for value in values):
                    return list(dict.fromkeys(item for value in values for item in value))
                merged: dict[str, Any] = {}
                for value in values:
                    merged.update(value)
                return merged
            if name == "filter":
                keep = self.evaluate(arguments["expression"])
                return [item for item in self.evaluate(arguments["input_array"]) if keep(item)]
            raise Unsupported(f"function {name}")
        operator = expression.get("operator", {}) if isinstance(expression, dict) else {}
        if operator.get("type") == "not":
            return not self.evaluate(operator["operands"]["bool_value"])
        if operator.get("type") == "and":
            return all(self.evaluate(operand) for operand in operator["operands"].values())
        if operator.get("type") == "index_accessor":
            operands = operator["operands"]
            return self.evaluate(operands["operand_1"])[self.evaluate(operands["operand_2"])]
        if operator.get("type") == "conditional":
            operands = operator["operands"]
            branch = "true_value" if self.evaluate(operands["condition"]) else "false_value"
            return self.evaluate(operands[branch])
        if isinstance(expression, dict) and "operator" not in expression and "function" not in expression:
            return {key: self.evaluate(value) for key, value in expression.items()}
        raise Unsupported(json.dumps(expression)[:200])

    def closure(self, detail: Mapping[str, Any]) -> Callable[[Any], Any]:
        """A lambda `item => expression` as a Python function of one argument."""
        return lambda item: type(self)(self.template, {**self.values, detail["var_1"]: item}).evaluate(
            detail["expression"]
        )


def app_settings() -> dict[str, Any]:
    template = module("function-app.bicep")
    return {entry["name"]: entry["value"] for entry in template["variables"]["appSettings"]["value"]}


def names_in(expression: Any) -> Iterator[str]:
    """Every str leaf of an expression (identifiers and literals alike)."""
    if isinstance(expression, str):
        yield expression
    elif isinstance(expression, dict):
        for value in expression.values():
            yield from names_in(value)
    elif isinstance(expression, list):
        for value in expression:
            yield from names_in(value)


# --- parsing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda path: str(path.relative_to(INFRA)))
def test_every_bicep_file_parses(path):
    assert parse(path)


def test_every_module_is_used():
    referenced = {
        Path(declaration["detail"]["path"]).name
        for entry in ("main.bicep", "events.bicep")
        for declaration in parse(INFRA / entry)["modules"].values()
    }
    assert referenced == {path.name for path in MODULES.glob("*.bicep")}


# --- settings --------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", SETTINGS, ids=lambda spec: spec.name)
def test_every_setting_is_an_app_setting_defaulting_to_the_codes_default(spec):
    settings = app_settings()
    assert spec.name in settings, f"{spec.name} is read by the code but is not an app setting"
    assert Scope(module("function-app.bicep")).evaluate(settings[spec.name]) == spec.default


def test_no_app_setting_is_a_cmk_setting_the_code_does_not_read():
    unknown = {name for name in app_settings() if name.startswith("CMK_")} - set(SETTING_DEFAULTS)
    assert not unknown, f"app settings the code does not read: {sorted(unknown)}"


def test_the_app_settings_are_the_sites_settings():
    app = body(dict(resources(module("function-app.bicep"), "Microsoft.Web/sites"))["app"])
    assert app["properties"]["siteConfig"]["appSettings"] == "appSettings"


@pytest.mark.parametrize("spec", SETTINGS, ids=lambda spec: spec.name)
def test_main_deploys_every_setting_with_the_codes_default(spec):
    """From main.bicep's own parameter defaults, through the module call, to the app setting."""
    main = parse(INFRA / "main.bicep")
    call = body(main["modules"]["functionApp"])["params"]
    # managedVaults has no default (at least one vault is required, see below); the vault-derived settings are
    # checked with the list empty, which is what their code defaults describe.
    main_scope = Scope(main, {"managedVaults": []})
    passed = {name: main_scope.evaluate(expression) for name, expression in call.items() if name.startswith("cmk")}
    app_scope = Scope(module("function-app.bicep"), passed)
    assert app_scope.evaluate(app_settings()[spec.name]) == spec.default


def test_parameters_file_names_only_parameters_main_declares():
    """ARM rejects a deployment whose parameters file names a parameter the template does not declare."""
    parameters = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]
    assert set(parameters) <= set(parse(INFRA / "main.bicep")["parameters"])


def test_parameters_file_defaults_match_the_codes_defaults():
    """azd substitutes ${NAME=default}: an unset environment variable must mean the code's default."""
    parameters = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]
    call = body(parse(INFRA / "main.bicep")["modules"]["functionApp"])["params"]
    settings = app_settings()
    checked = 0
    for setting, value in settings.items():
        if setting not in SETTING_DEFAULTS:
            continue
        module_parameter = next(name for name in names_in(value) if name.startswith("cmk"))
        main_parameter = call[module_parameter]
        if not isinstance(main_parameter, str) or main_parameter not in parameters:
            continue  # derived from a list parameter (CMK_VAULTS, CMK_SUBSCRIPTIONS, CMK_REWRAP_TARGETS)
        substitution = parameters[main_parameter]["value"]
        assert substitution == f"${{{setting}={SETTING_DEFAULTS[setting]}}}", main_parameter
        checked += 1
    assert checked >= 7


# --- host storage ----------------------------------------------------------------------------------


def test_host_storage_is_identity_based():
    settings = app_settings()
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert settings["AzureWebJobsStorage__clientId"] == "identityClientId"
    # The service URIs come from the account itself, so they are right in sovereign clouds too; accountName alone
    # makes the host assume core.windows.net.
    for service in ("blob", "queue", "table"):
        uri = accessor(settings[f"AzureWebJobsStorage__{service}ServiceUri"])
        assert uri == ["storage", "properties", "primaryEndpoints", service]
    assert "AzureWebJobsStorage__accountName" not in settings
    assert "AzureWebJobsStorage" not in settings, "a connection string would carry the account key"
    assert not any("ConnectionString" in name and "Storage" in name for name in settings)
    app = body(dict(resources(module("function-app.bicep"), "Microsoft.Web/sites"))["app"])
    assert app["identity"]["type"] == "UserAssigned"
    authentication = app["properties"]["functionAppConfig"]["deployment"]["storage"]["authentication"]
    assert authentication == {"type": "UserAssignedIdentity", "userAssignedIdentityResourceId": "identityId"}
    assert app["properties"]["functionAppConfig"]["runtime"] == {"name": "python", "version": "3.11"}
    assert app["properties"]["httpsOnly"] is True


def test_app_storage_disables_shared_keys_and_public_blobs():
    ((_, account),) = resources(module("app-storage.bicep"), "Microsoft.Storage/storageAccounts")
    properties = body(account)["properties"]
    assert properties["allowSharedKeyAccess"] is False
    assert properties["allowBlobPublicAccess"] is False
    assert properties["minimumTlsVersion"] == "TLS1_2"
    assert properties["supportsHttpsTrafficOnly"] is True


def test_app_storage_creates_the_queue_poison_queue_and_table_the_settings_name():
    call = body(parse(INFRA / "main.bicep")["modules"]["storage"])["params"]
    assert call["workQueueName"] == "cmkWorkQueue"
    assert call["ledgerTableName"] == "cmkLedgerTable"
    template = module("app-storage.bicep")
    queues = [body(d)["name"] for _, d in resources(template, "Microsoft.Storage/storageAccounts/queueServices/queues")]
    assert sorted(queues) == ["${workQueueName}-poison", "workQueueName"]
    tables = [body(d)["name"] for _, d in resources(template, "Microsoft.Storage/storageAccounts/tableServices/tables")]
    assert tables == ["ledgerTableName"]


# --- role assignments ------------------------------------------------------------------------------


def role_assignments() -> Iterator[tuple[Path, str, dict[str, Any], dict[str, Any]]]:
    for path in BICEP_FILES:
        template = parse(path)
        for symbol, declaration in resources(template, "Microsoft.Authorization/roleAssignments"):
            yield path, symbol, body(declaration), template


ROLE_ASSIGNMENTS = list(role_assignments())
ASSIGNMENT_IDS = [f"{path.name}:{symbol}" for path, symbol, _, _ in ROLE_ASSIGNMENTS]


def test_there_are_role_assignments_to_check():
    assert len(ROLE_ASSIGNMENTS) >= 10


def scope_type(template: Mapping[str, Any], assignment: Mapping[str, Any]) -> str:
    scope = assignment.get("scope")
    if scope is None:
        target = template.get("globals", {}).get("scope", {}).get("value", "resourceGroup")
        return "subscription" if target == "subscription" else "resourceGroup"
    return template["resources"][scope]["type"]


@pytest.mark.parametrize(("path", "symbol", "assignment", "template"), ROLE_ASSIGNMENTS, ids=ASSIGNMENT_IDS)
def test_role_assignment_is_named_guid_of_scope_principal_role(path, symbol, assignment, template):
    called = function(assignment["name"])
    assert called is not None, f"{symbol}: name must be guid(scope, principal, role)"
    name, arguments = called
    assert name == "guid"
    assert list(arguments) == ["base_string", "extra_string_1", "extra_string_2"]
    scope = assignment.get("scope")
    expected_scope = [scope, "id"] if scope else None
    if expected_scope is None:
        target = template.get("globals", {}).get("scope", {}).get("value")
        expected_scope = [{"function": {"type": "subscription", "parameters": {"subscription_id": None}}}, "id"]
        assert target == "subscription", f"{symbol}: a resource-group-wide assignment is wider than needed"
    assert accessor(arguments["base_string"]) == expected_scope
    assert arguments["extra_string_1"] == assignment["properties"]["principalId"]
    assert arguments["extra_string_2"] == assignment["properties"]["roleDefinitionId"]
    assert assignment["properties"]["principalType"] == "ServicePrincipal"


@pytest.mark.parametrize(("path", "symbol", "assignment", "template"), ROLE_ASSIGNMENTS, ids=ASSIGNMENT_IDS)
def test_role_assignment_grants_an_allowed_role_at_its_narrowest_scope(path, symbol, assignment, template):
    role = assignment["properties"]["roleDefinitionId"]
    definition = template["variables"][role]["value"] if role in template.get("variables", {}) else role
    called = function(definition)
    assert called is not None and called[0] == "subscription_resource_id", f"{symbol}: {definition}"
    assert called[1]["resource_type"] == "Microsoft.Authorization/roleDefinitions"
    role_id = called[1]["resource_name_1"]
    actual_scope = scope_type(template, assignment)
    if role_id in template.get("parameters", {}):
        allowed = ALLOWED_CUSTOM_ASSIGNMENTS.get((path.name, role_id))
    else:
        assert role_id not in FORBIDDEN_BUILT_IN_ROLES, f"{symbol} grants {FORBIDDEN_BUILT_IN_ROLES[role_id]}"
        allowed = ALLOWED_BUILT_IN_ASSIGNMENTS.get((path.name, role_id))
    assert allowed is not None, f"{path.name}:{symbol} grants {role_id}, which is not on the allowed list"
    assert actual_scope == allowed, f"{symbol}: {role_id} on {actual_scope}, expected {allowed}"


def test_no_broad_built_in_role_appears_anywhere():
    for path in BICEP_FILES:
        text = path.read_text(encoding="utf-8").lower()
        for role_id, role in FORBIDDEN_BUILT_IN_ROLES.items():
            assert role_id not in text, f"{path.name} mentions {role}"
        for role_id, allowed_in in CONFINED_BUILT_IN_ROLES.items():
            assert role_id not in text or path.name == allowed_in, f"{path.name} mentions {role_id}"


def test_app_data_roles_are_on_the_apps_own_storage_account():
    """Blob, queue and table data roles at account scope only on the app's account; targets get custom roles."""
    call = body(parse(INFRA / "main.bicep")["modules"]["appAccess"])["params"]
    assert accessor(call["storageAccountName"]) == ["storage", "outputs", "name"]
    dead_letter = body(parse(INFRA / "main.bicep")["modules"]["deadLetterAccess"])["params"]
    assert accessor(dead_letter["storageAccountName"]) == ["storage", "outputs", "name"]
    assert dead_letter["containerName"] == "deadLetterContainerName"


# --- custom roles and access policies --------------------------------------------------------------


def literal_actions(scope: Scope, expression: Any, conditions: tuple[str, ...] = ()) -> Iterator[tuple[str, tuple]]:
    """Every action string an expression can produce, with the conditions it depends on."""
    if isinstance(expression, str):
        if scope.is_name(expression) and expression in scope.template.get("variables", {}):
            yield from literal_actions(scope, scope.template["variables"][expression]["value"], conditions)
        elif not scope.is_name(expression):
            yield expression, conditions
    elif isinstance(expression, list):
        for item in expression:
            yield from literal_actions(scope, item, conditions)
    elif isinstance(expression, dict):
        operator = expression.get("operator", {})
        if operator.get("type") == "conditional":
            operands = operator["operands"]
            condition = json.dumps(operands["condition"])
            yield from literal_actions(scope, operands["true_value"], (*conditions, condition))
            yield from literal_actions(scope, operands["false_value"], (*conditions, f"!{condition}"))
        else:
            arguments = expression["function"]["parameters"] if "function" in expression else expression
            for value in (operator.get("operands", {}) if operator else arguments).values():
                yield from literal_actions(scope, value, conditions)


def custom_roles() -> dict[str, dict[str, Any]]:
    template = module("custom-roles.bicep")
    return {symbol: body(d) for symbol, d in resources(template, "Microsoft.Authorization/roleDefinitions")}


def test_custom_roles_are_the_expected_three():
    assert set(custom_roles()) == set(ALLOWED_ROLE_PERMISSIONS)


@pytest.mark.parametrize("symbol", sorted(ALLOWED_ROLE_PERMISSIONS))
def test_custom_role_contains_only_the_allowed_actions(symbol):
    scope = Scope(module("custom-roles.bicep"))
    role = custom_roles()[symbol]
    assert role["properties"]["type"] == "customRole"
    (permissions,) = role["properties"]["permissions"]
    for kind in ("actions", "dataActions"):
        actions = {action for action, _ in literal_actions(scope, permissions[kind])}
        assert actions <= ALLOWED_ROLE_PERMISSIONS[symbol][kind], f"{symbol}.{kind}: {actions}"
        assert not any("*" in action for action in actions)
    assert permissions["notActions"] == [] and permissions["notDataActions"] == []
    assert role["properties"]["assignableScopes"] == "assignableScopes"


def test_key_role_rotates_only_with_auto_rotation_and_wraps_only_with_rewrap_targets():
    scope = Scope(module("custom-roles.bicep"))
    (permissions,) = custom_roles()["keyRole"]["properties"]["permissions"]
    conditions = dict(literal_actions(scope, permissions["dataActions"]))
    assert all(conditions[action] == () for action in KEY_READ)
    assert all(conditions[action] == ('"autoRotate"',) for action in KEY_ROTATE)
    assert all(conditions[action] == ('"rewrapEnabled"',) for action in KEY_WRAP)
    call = body(parse(INFRA / "main.bicep")["modules"]["customRoles"])["params"]
    assert call["autoRotate"] == "cmkAutoRotate"


def test_access_policy_twin_grants_the_same_key_permissions():
    main = parse(INFRA / "main.bicep")
    scope = Scope(main)
    permissions = dict(literal_actions(scope, main["variables"]["accessPolicyKeyPermissions"]["value"]))
    assert set(permissions) == {"get", "list", "getrotationpolicy", "rotate", "wrapKey", "unwrapKey"}
    assert permissions["rotate"] == ('"cmkAutoRotate"',)
    template = module("vault-integration.bicep")
    ((_, policy),) = resources(template, "Microsoft.KeyVault/vaults/accessPolicies")
    (entry,) = body(policy)["properties"]["accessPolicies"]
    assert entry["permissions"] == {"keys": "accessPolicyKeyPermissions", "secrets": [], "certificates": []}


# --- vaults and events -----------------------------------------------------------------------------


def test_each_vault_sends_audit_events_to_the_workspace():
    template = module("vault-integration.bicep")
    ((_, setting),) = resources(template, "Microsoft.Insights/diagnosticSettings")
    setting = body(setting)
    assert setting["scope"] == "vault"
    assert setting["properties"]["workspaceId"] == "workspaceId"
    assert setting["properties"]["logs"] == [{"category": "AuditEvent", "enabled": True}]
    call = body(parse(INFRA / "main.bicep")["modules"]["vaultIntegrations"])["params"]
    assert accessor(call["workspaceId"]) == ["monitoring", "outputs", "workspaceId"]


def test_key_event_subscription_retries_and_dead_letters_with_identity():
    template = module("key-events.bicep")
    ((_, subscription),) = resources(template, "Microsoft.EventGrid/systemTopics/eventSubscriptions")
    properties = body(subscription)["properties"]
    assert properties["destination"]["endpointType"] == "AzureFunction"
    assert properties["destination"]["properties"]["resourceId"] == "${functionAppId}/functions/${functionName}"
    assert set(properties["filter"]["includedEventTypes"]) == {
        "Microsoft.KeyVault.KeyNewVersionCreated",
        "Microsoft.KeyVault.KeyNearExpiry",
        "Microsoft.KeyVault.KeyExpired",
    }
    assert properties["retryPolicy"] == {"maxDeliveryAttempts": 30, "eventTimeToLiveInMinutes": 1440}
    dead_letter = properties["deadLetterWithResourceIdentity"]
    assert dead_letter["identity"] == {"type": "SystemAssigned"}
    assert dead_letter["deadLetterDestination"]["endpointType"] == "StorageBlob"
    assert "deadLetterDestination" not in properties, "dead-lettering must not use a storage key"
    assert parse(INFRA / "events.bicep")["parameters"]["functionName"]["default"] == "on_key_event"
    # The controller remembers processed events longer than Event Grid keeps retrying them.
    assert int(SETTING_DEFAULTS["CMK_EVENT_DEDUPE_HOURS"]) * 60 > properties["retryPolicy"]["eventTimeToLiveInMinutes"]


def test_resource_event_subscription_takes_only_what_the_rules_read_from_the_subscription_topic():
    (_, topic), = resources(module("subscription-topic.bicep"), "Microsoft.EventGrid/systemTopics")
    assert body(topic)["properties"]["topicType"] == "Microsoft.Resources.Subscriptions"
    assert body(topic)["identity"] == {"type": "SystemAssigned"}
    template = module("resource-events.bicep")
    ((_, subscription),) = resources(template, "Microsoft.EventGrid/systemTopics/eventSubscriptions")
    properties = body(subscription)["properties"]
    assert properties["destination"]["properties"]["resourceId"] == "${functionAppId}/functions/${functionName}"
    assert template["parameters"]["functionName"]["default"] == "on_resource_event"
    assert set(properties["filter"]["includedEventTypes"]) == set(RESOURCE_EVENT_TYPES)
    begins = next(item for item in properties["filter"]["advancedFilters"]
                  if item["operatorType"] == "StringBeginsWith")
    assert begins["key"] == "data.operationName"
    assert set(begins["values"]) == set(WATCHED_OPERATION_PREFIXES)
    assert properties["retryPolicy"] == {"maxDeliveryAttempts": 30, "eventTimeToLiveInMinutes": 1440}
    assert properties["deadLetterWithResourceIdentity"]["identity"] == {"type": "SystemAssigned"}
    assert "deadLetterDestination" not in properties, "dead-lettering must not use a storage key"
    assert "RESOURCE_EVENT_SOURCE" in parse(INFRA / "main.bicep")["outputs"]


def test_azd_runs_the_event_subscription_hook_after_deploy():
    azure_yaml = (ROOT / "azure.yaml").read_text(encoding="utf-8")
    for line in ("project: .", "language: python", "host: function", "postdeploy:"):
        assert re.search(rf"^\s*{re.escape(line)}\s*$", azure_yaml, re.MULTILINE), line
    assert "run: bash infra/hooks/postdeploy.sh" in azure_yaml
    assert (INFRA / "hooks" / "postdeploy.sh").read_text(encoding="utf-8").count("infra/events.bicep") >= 1
    outputs = parse(INFRA / "main.bicep")["outputs"]
    # Set by azd itself, or by the hook tests (the retry pause).
    not_outputs = {"AZURE_SUBSCRIPTION_ID", "AZURE_ENV_NAME", "BASH_SOURCE", "CMK_HOOK_RETRY_SECONDS"}
    for path in sorted((INFRA / "hooks").glob("*.sh")):
        for variable in re.findall(r"\$\{?([A-Z][A-Z_]+)", path.read_text(encoding="utf-8")):
            if variable not in not_outputs:
                assert variable in outputs, f"{path.name} reads {variable}, which main.bicep does not output"


# --- secrets ---------------------------------------------------------------------------------------

SECRET_PATTERNS = [
    re.compile(r"\blist(Keys|AccountSas|ServiceSas|ConnectionStrings|Secrets)\s*\(", re.IGNORECASE),
    re.compile(r"AccountKey\s*=", re.IGNORECASE),
    re.compile(r"DefaultEndpointsProtocol", re.IGNORECASE),
    re.compile(r"SharedAccessSignature|[?&]sig=|[?&]code=", re.IGNORECASE),
    re.compile(r"password\s*[:=]\s*'[^']+'", re.IGNORECASE),
    re.compile(r"functionapp keys|systemkeys|host/keys", re.IGNORECASE),
]
INFRA_TEXT_FILES = [*BICEP_FILES, INFRA / "main.parameters.json", ROOT / "azure.yaml", *INFRA.glob("hooks/*")]


@pytest.mark.parametrize("path", INFRA_TEXT_FILES, ids=lambda path: str(path.relative_to(ROOT)))
def test_no_secret_appears(path):
    text = path.read_text(encoding="utf-8")
    for pattern in SECRET_PATTERNS:
        assert not pattern.search(text), f"{path.name}: {pattern.pattern}"


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda path: str(path.relative_to(INFRA)))
def test_secure_parameters_have_no_default_and_are_not_output(path):
    template = parse(path)
    secure = {
        name
        for name, parameter in template.get("parameters", {}).items()
        if any(decorator["type"] == "secure" for decorator in parameter.get("decorators", []))
    }
    for name in secure:
        assert "default" not in template["parameters"][name], f"@secure() {name} has a default"
    for output in template.get("outputs", {}).values():
        assert not secure & set(names_in(output)), f"{path.name} outputs a secure parameter"


# --- first deployment and coexisting environments --------------------------------------------------


def decorators(parameter: Mapping[str, Any]) -> dict[str, Any]:
    return {decorator["type"]: decorator.get("argument") for decorator in parameter.get("decorators", [])}


def test_at_least_one_vault_is_required():
    """The app refuses to start without CMK_VAULTS: an empty list must fail the deployment, not the app."""
    parameter = parse(INFRA / "main.bicep")["parameters"]["managedVaults"]
    assert parameter.get("default") is None
    assert decorators(parameter).get("min_length") == 1


@pytest.mark.parametrize("path", [INFRA / "main.bicep", MODULES / "function-app.bicep"], ids=lambda p: p.name)
def test_maximum_instance_count_is_within_flex_consumptions_range(path):
    limits = decorators(parse(path)["parameters"]["maximumInstanceCount"])
    assert (limits["min_value"], limits["max_value"]) == (40, 1000)


def test_what_an_environment_adds_to_a_shared_vault_is_named_by_its_resource_token():
    """Two environments on one vault must not take over each other's event subscription or diagnostic setting."""
    ((_, subscription),) = resources(module("key-events.bicep"), "Microsoft.EventGrid/systemTopics/eventSubscriptions")
    assert body(subscription)["name"] == "cmk-controller-key-events-${resourceToken}"
    ((_, setting),) = resources(module("vault-integration.bicep"), "Microsoft.Insights/diagnosticSettings")
    assert body(setting)["name"] == "cmk-controller-audit-${resourceToken}"
    for entry, call in (("main.bicep", "vaultIntegrations"), ("events.bicep", "keyEvents")):
        assert body(parse(INFRA / entry)["modules"][call])["params"]["resourceToken"] == "resourceToken"
    outputs = parse(INFRA / "main.bicep")["outputs"]
    assert outputs["CMK_DIAGNOSTIC_SETTING_NAME"]["value"] == "cmk-controller-audit-${resourceToken}"


def test_an_adopted_system_topic_keeps_its_identities_and_tags():
    template = module("vault-integration.bicep")
    ((_, topic),) = resources(template, "Microsoft.EventGrid/systemTopics")
    topic = body(topic)
    assert topic["identity"] == "topicIdentity"
    identity = template["variables"]["topicIdentity"]["value"]["operator"]["operands"]
    assert identity["condition"] == "keepsUserAssignedIdentities"
    assert identity["true_value"]["type"] == "SystemAssigned, UserAssigned"
    assert accessor(identity["true_value"]["userAssignedIdentities"]) == ["adoptedIdentity", "userAssignedIdentities"]
    assert identity["false_value"] == {"type": "SystemAssigned"}
    tags = topic["tags"]["operator"]["operands"]
    assert (tags["condition"], tags["true_value"], tags["false_value"]) == (
        "adoptSystemTopic",
        "adoptedTags",
        "sharedTopicTags",
    )
    assert "azd-env-name" not in json.dumps(template["variables"]["sharedTopicTags"]), "shared by every environment"
    call = body(parse(INFRA / "main.bicep")["modules"]["vaultIntegrations"])["params"]
    adopted = call["adoptedTopic"]["operator"]["operands"]
    assert function(adopted["true_value"])[0] == "reference"
    assert adopted["false_value"] == {}


def test_the_alert_topic_endpoint_reaches_the_app_and_the_identity_may_publish():
    call = body(parse(INFRA / "main.bicep")["modules"]["functionApp"])["params"]
    wiring = call["cmkAlertEventGridTopic"]["operator"]["operands"]
    assert wiring["condition"] == "alertTopicEnabled"
    assert accessor(wiring["true_value"]) == ["alertTopic", "outputs", "endpoint"]
    assert wiring["false_value"] == ""
    assert app_settings()["CMK_ALERT_EVENTGRID_TOPIC"] == "cmkAlertEventGridTopic"
    ((_, sender),) = resources(module("alert-topic.bicep"), "Microsoft.Authorization/roleAssignments")
    assert body(sender)["scope"] == "topic"
    assert body(parse(INFRA / "main.bicep")["modules"]["alertTopic"])["params"]["principalId"] == {
        "operator": {
            "type": "property_accessor",
            "operands": {
                "operand_1": "identity",
                "operand_2": {
                    "operator": {
                        "type": "property_accessor",
                        "operands": {"operand_1": "outputs", "operand_2": "principalId"},
                    }
                },
            },
        }
    }


def test_the_webhook_key_vault_reference_can_be_resolved():
    """Resolution needs an identity the platform uses (keyVaultReferenceIdentity) and read on that secret."""
    app = body(dict(resources(module("function-app.bicep"), "Microsoft.Web/sites"))["app"])
    assert app["properties"]["keyVaultReferenceIdentity"] == "identityId"
    main = parse(INFRA / "main.bicep")
    call = body(main["modules"]["functionApp"])["params"]
    for parameter, setting in (
        ("cmkAlertWebhookUrl", "CMK_ALERT_WEBHOOK_URL"),
        ("cmkTeamsWebhookUrl", "CMK_TEAMS_WEBHOOK_URL"),
        ("cmkSlackWebhookUrl", "CMK_SLACK_WEBHOOK_URL"),
    ):
        index = call[parameter]["operator"]["operands"]["operand_2"]
        assert Scope(main).evaluate("webhookSecrets")[index]["setting"] == setting
        assert parameter not in main["parameters"], "a raw reference would have no grant behind it"
    access = main["modules"]["webhookSecretAccess"]
    assert access["config"]["loop_type"]["detail"]["array_name"] == "configuredWebhookSecrets"
    assert accessor(body(access)["params"]["principalId"]) == ["identity", "outputs", "principalId"]
    template = module("secret-reader-access.bicep")
    ((_, grant),) = resources(template, "Microsoft.Authorization/roleAssignments")
    assert body(grant)["scope"] == "secret"
    ((_, policy),) = resources(template, "Microsoft.KeyVault/vaults/accessPolicies")
    (entry,) = body(policy)["properties"]["accessPolicies"]
    assert entry["permissions"] == {"keys": [], "secrets": ["get"], "certificates": []}

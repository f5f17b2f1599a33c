"""The app settings infra/ writes start the app: evaluated from main.bicep's parameters for a real-looking
deployment, through the module call, to function-app.bicep's appSettings, then read by the settings loader and the
storage bootstrap exactly as the function app reads them at import.

Key Vault references are resolved the way the platform does it, with one rule the platform enforces: a reference
resolves only when the app's keyVaultReferenceIdentity may read that secret, so the fake resolver reads a secret
only if main.bicep grants the controller identity read on it. An unresolved reference must stop the app with a
message naming the setting (controller/settings.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import pytest

from controller.bootstrap import AppStorage
from controller.errors import SettingsError
from controller.settings import RewrapTarget, load_settings
from tests.infra.test_bicep import INFRA, SUBSCRIPTION, Scope, accessor, app_settings, body, function, module, parse

pytestmark = pytest.mark.unit

KEYS_SUBSCRIPTION = "00000000-0000-0000-0000-00000000000b"
CLIENT_ID = "33333333-3333-3333-3333-333333333333"
WORKSPACE_ID = "44444444-4444-4444-4444-444444444444"
ACCOUNT = "stcmkabc123"
ENDPOINTS = {service: f"https://{ACCOUNT}.{service}.core.windows.net/" for service in ("blob", "queue", "table")}
TOPIC_ENDPOINT = "https://evgt-cmk-alerts-abc123.westeurope-1.eventgrid.azure.net/api/events"
WEBHOOK_URL = "https://hooks.example.com/services/T0/B0/token"
TEAMS_URL = "https://prod-01.westeurope.logic.azure.com/workflows/abc/triggers/manual/paths/invoke?sig=token"
SLACK_URL = "https://hooks.slack.com/services/T0/B1/token"
AZURE_CLOUD = {"suffixes": {"keyvaultDns": ".vault.azure.net", "storage": "core.windows.net"}}

PARAMETERS = {
    "managedVaults": [
        {"name": "Contoso-CMK", "resourceGroup": "rg-keys", "subscriptionId": KEYS_SUBSCRIPTION},
        {"name": "legacy-kv", "resourceGroup": "rg-legacy", "accessPolicy": True},
    ],
    "rewrapTargets": [{"account": "stclientdata", "container": "invoices", "resourceGroup": "rg-data"}],
    "inventorySubscriptionIds": [SUBSCRIPTION, KEYS_SUBSCRIPTION],
    "alertTopicEnabled": True,
    "auditEvidenceEnabled": True,
    "alertWebhookSecret": {"vaultName": "kv-ops", "secretName": "cmk-alert-webhook", "resourceGroup": "rg-ops"},
    "teamsWebhookSecret": {"vaultName": "kv-ops", "secretName": "cmk-teams-webhook", "resourceGroup": "rg-ops"},
    "slackWebhookSecret": {
        "vaultName": "kv-chat",
        "secretName": "slack",
        "resourceGroup": "rg-chat",
        "subscriptionId": KEYS_SUBSCRIPTION,
        "accessPolicy": True,
    },
}
# What the other modules output at deployment time (module and resource symbols).
DEPLOYED = {
    "resourceToken": "abc123",
    "identity": {
        "outputs": {
            "id": "/subscriptions/x/resourceGroups/rg/providers/Microsoft.ManagedIdentity/"
            "userAssignedIdentities/id-cmk-abc123",
            "clientId": CLIENT_ID,
            "principalId": "55555555-5555-5555-5555-555555555555",
        }
    },
    "storage": {"outputs": {"name": ACCOUNT}},
    "monitoring": {
        "outputs": {
            "workspaceCustomerId": WORKSPACE_ID,
            "applicationInsightsConnectionString": "InstrumentationKey=66666666-6666-6666-6666-666666666666",
        }
    },
    "alertTopic": {"outputs": {"endpoint": TOPIC_ENDPOINT}},
}
SECRETS = {
    ("kv-ops.vault.azure.net", "cmk-alert-webhook"): WEBHOOK_URL,
    ("kv-ops.vault.azure.net", "cmk-teams-webhook"): TEAMS_URL,
    ("kv-chat.vault.azure.net", "slack"): SLACK_URL,
}
WEBHOOK_SETTINGS = ("CMK_ALERT_WEBHOOK_URL", "CMK_TEAMS_WEBHOOK_URL", "CMK_SLACK_WEBHOOK_URL")
KEY_VAULT_REFERENCE = re.compile(r"^@Microsoft\.KeyVault\(SecretUri=https://([^/]+)/secrets/([^/]+)/?\)$")


class DeploymentScope(Scope):
    """Scope plus what a deployment evaluates: loops over given lists, `.` accessors, interpolation, a few functions."""

    def evaluate(self, expression: Any) -> Any:
        if isinstance(expression, str) and not self.is_name(expression) and "${" in expression:
            return re.sub(r"\$\{([^}]+)\}", lambda match: str(self.path(match.group(1))), expression)
        called = function(expression)
        if called is not None:
            name, arguments = called
            if name == "to_lower":
                return self.evaluate(arguments["string_to_change"]).lower()
            if name == "environment":
                return AZURE_CLOUD
        return super().evaluate(expression)

    def path(self, text: str) -> Any:
        """`vault.name` or `environment().suffixes.keyvaultDns` inside an interpolation."""
        first, *rest = text.split(".")
        value = AZURE_CLOUD if first == "environment()" else self.evaluate(first)
        for name in rest:
            value = value[name]
        return value


def main_scope() -> DeploymentScope:
    return DeploymentScope(parse(INFRA / "main.bicep"), {**PARAMETERS, **DEPLOYED})


def deployed_app_settings(scope: DeploymentScope | None = None) -> dict[str, str]:
    """The app settings function-app.bicep writes for main.bicep evaluated in `scope` (default: PARAMETERS)."""
    call = body(parse(INFRA / "main.bicep")["modules"]["functionApp"])["params"]
    scope = main_scope() if scope is None else scope
    passed = {name: scope.evaluate(expression) for name, expression in call.items()}
    storage = {"name": ACCOUNT, "properties": {"primaryEndpoints": ENDPOINTS}}
    app_scope = DeploymentScope(module("function-app.bicep"), {**passed, "storage": storage})
    return {name: str(app_scope.evaluate(value)) for name, value in app_settings().items()}


def webhook_secret_grants(scope: DeploymentScope | None = None) -> list[dict[str, Any]]:
    """The parameters of each secret-reader module main.bicep deploys (its loop over the configured secrets)."""
    declaration = parse(INFRA / "main.bicep")["modules"]["webhookSecretAccess"]
    loop = DeploymentScope(parse(INFRA / "main.bicep"), {**PARAMETERS, **DEPLOYED}) if scope is None else scope
    detail = declaration["config"]["loop_type"]["detail"]
    grants = []
    for index, item in enumerate(loop.evaluate(detail["array_name"])):
        names = {detail["item_name"]: item, detail["index_name"]: index}
        iteration = DeploymentScope(loop.template, {**loop.values, **names})
        params = body(declaration)["params"]
        assert accessor(params["principalId"]) == ["identity", "outputs", "principalId"]
        grants.append({name: iteration.evaluate(value) for name, value in params.items() if name != "principalId"})
    return grants


def granted_secrets() -> set[tuple[str, str]]:
    """The (vault host, secret) pairs main.bicep lets the controller identity read."""
    suffix = AZURE_CLOUD["suffixes"]["keyvaultDns"]
    return {(f"{grant['vaultName']}{suffix}".lower(), grant["secretName"]) for grant in webhook_secret_grants()}


def resolve_references(settings: Mapping[str, str], granted: set[tuple[str, str]]) -> dict[str, str]:
    """What the platform does before the app starts: a readable reference becomes the secret, others stay as text."""
    resolved = {}
    for name, value in settings.items():
        match = KEY_VAULT_REFERENCE.match(value)
        secret = (match.group(1).lower(), match.group(2)) if match else None
        resolved[name] = SECRETS[secret] if secret in granted and secret in SECRETS else value
    return resolved


def test_the_evaluation_covers_every_app_setting():
    settings = deployed_app_settings()
    assert set(settings) == set(app_settings())
    assert not [name for name, value in settings.items() if "${" in value], "an interpolation was left unevaluated"


def test_the_deployed_settings_load_through_the_settings_loader():
    environ = resolve_references(deployed_app_settings(), granted_secrets())
    settings = load_settings(environ)
    assert settings.vaults == ("https://contoso-cmk.vault.azure.net", "https://legacy-kv.vault.azure.net")
    assert settings.subscriptions == (SUBSCRIPTION, KEYS_SUBSCRIPTION)
    assert settings.rewrap_targets == (RewrapTarget("stclientdata", "invoices"),)
    assert settings.alert_webhook_url == WEBHOOK_URL
    assert settings.teams_webhook_url == TEAMS_URL
    assert settings.slack_webhook_url == SLACK_URL
    assert settings.alert_eventgrid_topic == TOPIC_ENDPOINT
    assert settings.log_analytics_workspace == WORKSPACE_ID
    assert settings.arm_endpoint == "https://management.azure.com"


def test_the_deployed_host_storage_settings_reach_the_apps_own_account():
    environ = resolve_references(deployed_app_settings(), granted_secrets())
    storage = AppStorage.from_environ(environ, credential=object())  # type: ignore[arg-type]
    assert storage.connection_string is None
    assert (storage.table_endpoint, storage.queue_endpoint) == (ENDPOINTS["table"], ENDPOINTS["queue"])
    assert environ["AzureWebJobsStorage__blobServiceUri"] == ENDPOINTS["blob"]
    assert environ["AzureWebJobsStorage__clientId"] == environ["AZURE_CLIENT_ID"] == CLIENT_ID


def test_each_webhook_reference_names_a_secret_the_identity_is_granted_for_that_setting():
    settings = deployed_app_settings()
    referenced = set()
    for grant in webhook_secret_grants():
        match = KEY_VAULT_REFERENCE.match(settings[grant["setting"]])
        assert match is not None, settings[grant["setting"]]
        referenced.add((match.group(1).lower(), match.group(2)))
        expected = (f"{grant['vaultName']}.vault.azure.net", grant["secretName"])
        assert (match.group(1).lower(), match.group(2)) == expected
    assert {grant["setting"] for grant in webhook_secret_grants()} == set(WEBHOOK_SETTINGS)
    assert referenced == granted_secrets() == set(SECRETS)


def test_a_secret_grant_follows_the_secrets_own_subscription_and_permission_model():
    grants = {grant["setting"]: grant for grant in webhook_secret_grants()}
    assert grants["CMK_SLACK_WEBHOOK_URL"]["useAccessPolicy"] is True
    assert grants["CMK_ALERT_WEBHOOK_URL"]["useAccessPolicy"] is False
    outputs = parse(INFRA / "main.bicep")["outputs"]
    scope = main_scope()
    assert KEYS_SUBSCRIPTION in scope.evaluate(outputs["CMK_ROLE_SUBSCRIPTION_IDS"]["value"])


def test_an_unset_webhook_secret_leaves_its_setting_empty_and_grants_nothing():
    scope = DeploymentScope(parse(INFRA / "main.bicep"), {**PARAMETERS, "slackWebhookSecret": {}, **DEPLOYED})
    assert {grant["setting"] for grant in webhook_secret_grants(scope)} == {
        "CMK_ALERT_WEBHOOK_URL",
        "CMK_TEAMS_WEBHOOK_URL",
    }
    assert deployed_app_settings(scope)["CMK_SLACK_WEBHOOK_URL"] == ""


@pytest.mark.parametrize("setting", WEBHOOK_SETTINGS)
def test_without_the_grant_the_app_refuses_to_start_naming_the_setting(setting):
    ungranted = {secret for secret in granted_secrets() if secret != _secret_of(setting)}
    environ = resolve_references(deployed_app_settings(), granted=ungranted)
    with pytest.raises(SettingsError) as caught:
        load_settings(environ)
    assert caught.value.setting == setting
    assert "unresolved Key Vault reference" in str(caught.value)


def _secret_of(setting: str) -> tuple[str, str]:
    match = KEY_VAULT_REFERENCE.match(deployed_app_settings()[setting])
    assert match is not None
    return match.group(1).lower(), match.group(2)


def test_with_the_defaults_and_one_vault_the_settings_load():
    scope_values = {"managedVaults": [{"name": "contoso-cmk", "resourceGroup": "rg-keys"}]}
    environ = deployed_app_settings(DeploymentScope(parse(INFRA / "main.bicep"), {**scope_values, **DEPLOYED}))
    settings = load_settings(environ)
    assert settings.vaults == ("https://contoso-cmk.vault.azure.net",)
    assert settings.alert_webhook_url is None and settings.alert_eventgrid_topic is None

"""The azd hooks, run with bash against a fake Azure CLI (tests/infra/fake_az.py) that records every call.

postdeploy subscribes on_key_event through infra/events.bicep; predown removes what this environment added outside
its own resource group and nothing else (another environment on the same vaults keeps everything). Both fail with
what to do when `az` is not logged in (azd's login does not log `az` in), and both are safe to run again.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).parents[2]
HOOKS = ROOT / "infra" / "hooks"
FAKE_AZ = Path(__file__).with_name("fake_az.py")

HOME_SUBSCRIPTION = "00000000-0000-0000-0000-00000000000a"
VAULT_SUBSCRIPTION = "00000000-0000-0000-0000-00000000000b"
CONTROLLER = "11111111-1111-1111-1111-111111111111"
PRODUCTION = "22222222-2222-2222-2222-222222222222"
TOKEN = "stagingtoken1"
PRODUCTION_TOKEN = "prodtoken0001"


def vault(subscription: str, group: str, name: str) -> str:
    return f"/subscriptions/{subscription}/resourceGroups/{group}/providers/Microsoft.KeyVault/vaults/{name}"


def topic(subscription: str, group: str, name: str) -> str:
    return f"/subscriptions/{subscription}/resourceGroups/{group}/providers/Microsoft.EventGrid/systemTopics/{name}"


RBAC_VAULT = vault(VAULT_SUBSCRIPTION, "rg-keys", "contoso-cmk")
POLICY_VAULT = vault(HOME_SUBSCRIPTION, "rg-legacy", "legacy-kv")
SHARED_VAULT = vault(HOME_SUBSCRIPTION, "rg-shared", "shared-kv")
RBAC_TOPIC = topic(VAULT_SUBSCRIPTION, "rg-keys", "evgt-contoso-cmk-cmk")  # created; production subscribes too
POLICY_TOPIC = topic(HOME_SUBSCRIPTION, "rg-legacy", "evgt-legacy-kv-cmk")  # created; only this environment uses it
ADOPTED_TOPIC = topic(HOME_SUBSCRIPTION, "rg-shared", "shared-kv-events")  # adopted: never removed here
TOPICS = [RBAC_TOPIC, POLICY_TOPIC, ADOPTED_TOPIC]
VAULTS = [RBAC_VAULT, POLICY_VAULT, SHARED_VAULT]


def subscription_of(topic_id: str, token: str) -> str:
    return f"{topic_id}/eventSubscriptions/cmk-controller-key-events-{token}"


def diagnostic_setting(vault_id: str, token: str) -> str:
    return f"{vault_id}/providers/Microsoft.Insights/diagnosticSettings/cmk-controller-audit-{token}"


def role_definition(subscription: str, name: str) -> str:
    return f"/subscriptions/{subscription}/providers/Microsoft.Authorization/roleDefinitions/{name}"


def assignment(subscription: str, name: str, principal: str) -> dict[str, str]:
    return {"id": f"/subscriptions/{subscription}/providers/Microsoft.Authorization/roleAssignments/{name}",
            "principalId": principal}


OUR_ROLES = [role_definition(HOME_SUBSCRIPTION, "aaaaaaaa-0000-0000-0000-000000000001"),
             role_definition(HOME_SUBSCRIPTION, "aaaaaaaa-0000-0000-0000-000000000002")]
PRODUCTION_ROLE = role_definition(HOME_SUBSCRIPTION, "bbbbbbbb-0000-0000-0000-000000000001")
OUR_POLICY = f"/subscriptions/{HOME_SUBSCRIPTION}/providers/Microsoft.Authorization/policyAssignments/cccc0001"

# What both environments left: production's must all survive this environment's predown.
PRODUCTION_RESOURCES = [
    *TOPICS[:1], ADOPTED_TOPIC,
    subscription_of(RBAC_TOPIC, PRODUCTION_TOKEN), subscription_of(ADOPTED_TOPIC, PRODUCTION_TOKEN),
    *(diagnostic_setting(vault_id, PRODUCTION_TOKEN) for vault_id in VAULTS), PRODUCTION_ROLE,
]
OURS = [
    POLICY_TOPIC, *(subscription_of(topic_id, TOKEN) for topic_id in TOPICS),
    *(diagnostic_setting(vault_id, TOKEN) for vault_id in VAULTS), *OUR_ROLES, OUR_POLICY,
]
PRODUCTION_ASSIGNMENTS = {
    HOME_SUBSCRIPTION: [assignment(HOME_SUBSCRIPTION, "p1", PRODUCTION)],
    VAULT_SUBSCRIPTION: [assignment(VAULT_SUBSCRIPTION, "p2", PRODUCTION)],
}


def initial_state(*, logged_in: bool = True) -> dict[str, Any]:
    return {
        "logged_in": logged_in,
        "resources": sorted(set(PRODUCTION_RESOURCES) | set(OURS)),
        "role_assignments": {
            HOME_SUBSCRIPTION: [*PRODUCTION_ASSIGNMENTS[HOME_SUBSCRIPTION],
                                assignment(HOME_SUBSCRIPTION, "o1", CONTROLLER),
                                assignment(HOME_SUBSCRIPTION, "o2", CONTROLLER)],
            VAULT_SUBSCRIPTION: [*PRODUCTION_ASSIGNMENTS[VAULT_SUBSCRIPTION],
                                 assignment(VAULT_SUBSCRIPTION, "o3", CONTROLLER)],
        },
        "access_policies": {POLICY_VAULT: [PRODUCTION, CONTROLLER]},
        "functions": ["on_key_event"],
        "deployments": [],
    }


def azd_outputs() -> dict[str, str]:
    """main.bicep's outputs as azd exports them to hooks (arrays as JSON text)."""
    sources = [{"subscriptionId": VAULT_SUBSCRIPTION, "resourceGroup": "rg-keys",
                "systemTopicName": "evgt-contoso-cmk-cmk"}]
    staging_group = f"/subscriptions/{HOME_SUBSCRIPTION}/resourceGroups/rg-staging/providers"
    return {
        "AZURE_ENV_NAME": "staging",
        "AZURE_SUBSCRIPTION_ID": HOME_SUBSCRIPTION,
        "AZURE_LOCATION": "westeurope",
        "AZURE_RESOURCE_GROUP": "rg-staging",
        "AZURE_FUNCTION_APP_NAME": "func-cmk-stagingtoken1",
        "AZURE_FUNCTION_APP_ID": f"{staging_group}/Microsoft.Web/sites/func-cmk-stagingtoken1",
        "AZURE_CONTROLLER_PRINCIPAL_ID": CONTROLLER,
        "DEAD_LETTER_STORAGE_ACCOUNT_ID": f"{staging_group}/Microsoft.Storage/storageAccounts/stcmkstagingtoken1",
        "DEAD_LETTER_CONTAINER_NAME": "key-events-deadletter",
        "KEY_EVENT_SOURCES": json.dumps(sources),
        "RESOURCE_EVENT_SOURCE": json.dumps({"subscriptionId": HOME_SUBSCRIPTION, "resourceGroup": "rg-staging",
                                             "systemTopicName": f"evgt-sub-cmk-{TOKEN}"}),
        "CMK_RESOURCE_TOKEN": TOKEN,
        "CMK_VAULT_IDS": json.dumps(VAULTS),
        "CMK_ACCESS_POLICY_VAULT_IDS": json.dumps([POLICY_VAULT]),
        "CMK_EVENT_SUBSCRIPTION_IDS": json.dumps([subscription_of(topic_id, TOKEN) for topic_id in TOPICS]),
        "CMK_CREATED_SYSTEM_TOPIC_IDS": json.dumps([RBAC_TOPIC, POLICY_TOPIC]),
        "CMK_DIAGNOSTIC_SETTING_NAME": f"cmk-controller-audit-{TOKEN}",
        "CMK_ROLE_SUBSCRIPTION_IDS": json.dumps([HOME_SUBSCRIPTION, VAULT_SUBSCRIPTION]),
        "CMK_CUSTOM_ROLE_IDS": json.dumps(OUR_ROLES),
        "CMK_POLICY_ASSIGNMENT_IDS": json.dumps([OUR_POLICY]),
    }


class FakeAz:
    def __init__(self, directory: Path, state: dict[str, Any]) -> None:
        self.bin = directory / "bin"
        self.bin.mkdir()
        shim = self.bin / "az"
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_AZ}" "$@"\n', encoding="utf-8")
        shim.chmod(0o755)
        self.state_path = directory / "state.json"
        self.log_path = directory / "calls.jsonl"
        self.state_path.write_text(json.dumps(state), encoding="utf-8")
        self.log_path.write_text("", encoding="utf-8")

    @property
    def state(self) -> dict[str, Any]:
        return json.loads(self.state_path.read_text(encoding="utf-8"))

    def calls(self) -> list[list[str]]:
        return [json.loads(line) for line in self.log_path.read_text(encoding="utf-8").splitlines()]

    def forget_calls(self) -> None:
        self.log_path.write_text("", encoding="utf-8")

    def run_hook(self, name: str, outputs: dict[str, str]) -> subprocess.CompletedProcess[str]:
        environment = {
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            "HOME": str(self.bin.parent),
            "FAKE_AZ_STATE": str(self.state_path),
            "FAKE_AZ_LOG": str(self.log_path),
            "CMK_HOOK_RETRY_SECONDS": "0",
            **outputs,
        }
        bash = shutil.which("bash")
        assert bash is not None, "the hooks are bash scripts"
        return subprocess.run([bash, str(HOOKS / f"{name}.sh")], env=environment,  # noqa: S603 - the repo's hooks
                              capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def fake_az(tmp_path: Path) -> FakeAz:
    return FakeAz(tmp_path, initial_state())


def deleting(calls: list[list[str]]) -> list[list[str]]:
    return [call for call in calls if "delete" in call or "delete-policy" in call]


# --- predown ---------------------------------------------------------------------------------------


def test_predown_removes_this_environments_footprint_and_nothing_else(fake_az):
    result = fake_az.run_hook("predown", azd_outputs())
    assert result.returncode == 0, result.stderr
    state = fake_az.state
    assert sorted(state["resources"]) == sorted(set(PRODUCTION_RESOURCES))
    assert state["role_assignments"] == PRODUCTION_ASSIGNMENTS
    assert state["access_policies"] == {POLICY_VAULT: [PRODUCTION]}
    assert "kept system topic" in result.stdout and RBAC_TOPIC in result.stdout


def test_predown_run_again_changes_nothing_and_succeeds(fake_az):
    assert fake_az.run_hook("predown", azd_outputs()).returncode == 0
    after_first = fake_az.state
    fake_az.forget_calls()
    second = fake_az.run_hook("predown", azd_outputs())
    assert second.returncode == 0, second.stderr
    assert fake_az.state == after_first
    assert deleting(fake_az.calls()) == []


def test_predown_removes_custom_roles_only_after_the_assignments_that_use_them(fake_az):
    assert fake_az.run_hook("predown", azd_outputs()).returncode == 0
    calls = [" ".join(call) for call in fake_az.calls()]
    last_assignment_delete = max(i for i, call in enumerate(calls) if call.startswith("role assignment delete"))
    first_role_delete = min(i for i, call in enumerate(calls) if call.startswith("resource delete") and
                            "roleDefinitions" in call)
    assert last_assignment_delete < first_role_delete


def test_predown_fails_with_what_to_do_when_az_is_not_logged_in(tmp_path):
    fake = FakeAz(tmp_path, initial_state(logged_in=False))
    result = fake.run_hook("predown", azd_outputs())
    assert result.returncode != 0
    assert "az login" in result.stderr and "azd auth login" in result.stderr
    assert "auth.useAzCliAuth" in result.stderr
    assert deleting(fake.calls()) == []
    assert fake.state == initial_state(logged_in=False)


def test_predown_of_a_never_provisioned_environment_does_nothing(fake_az):
    outputs = {"AZURE_SUBSCRIPTION_ID": HOME_SUBSCRIPTION, "AZURE_ENV_NAME": "staging"}
    result = fake_az.run_hook("predown", outputs)
    assert result.returncode == 0, result.stderr
    assert fake_az.calls() == []


# --- postdeploy ------------------------------------------------------------------------------------


def test_postdeploy_deploys_the_event_subscriptions_with_this_environments_token(fake_az):
    result = fake_az.run_hook("postdeploy", azd_outputs())
    assert result.returncode == 0, result.stderr
    (deployment,) = fake_az.state["deployments"]
    assert deployment["template"] == str(ROOT / "infra" / "events.bicep")
    parameters = {name: value["value"] for name, value in deployment["parameters"].items()}
    assert parameters["resourceToken"] == TOKEN
    assert parameters["eventSources"] == json.loads(azd_outputs()["KEY_EVENT_SOURCES"])
    assert parameters["resourceEventSource"] == json.loads(azd_outputs()["RESOURCE_EVENT_SOURCE"])
    assert parameters["functionAppId"] == azd_outputs()["AZURE_FUNCTION_APP_ID"]
    from tests.infra.test_bicep import INFRA, parse  # the events.bicep parameters, by name

    assert set(parameters) <= set(parse(INFRA / "events.bicep")["parameters"])


def test_postdeploy_run_again_deploys_the_same_thing(fake_az):
    assert fake_az.run_hook("postdeploy", azd_outputs()).returncode == 0
    assert fake_az.run_hook("postdeploy", azd_outputs()).returncode == 0
    first, second = fake_az.state["deployments"]
    assert first == second


def test_postdeploy_fails_with_what_to_do_when_az_is_not_logged_in(tmp_path):
    fake = FakeAz(tmp_path, initial_state(logged_in=False))
    result = fake.run_hook("postdeploy", azd_outputs())
    assert result.returncode != 0
    assert "az login" in result.stderr and "azd auth login" in result.stderr
    assert fake.state["deployments"] == []


def test_postdeploy_names_the_missing_function_instead_of_subscribing(tmp_path):
    state = initial_state()
    state["functions"] = []
    fake = FakeAz(tmp_path, state)
    result = fake.run_hook("postdeploy", azd_outputs())
    assert result.returncode != 0
    assert "on_key_event not found" in result.stderr
    assert fake.state["deployments"] == []


def test_azure_yaml_pins_azd_and_runs_both_hooks():
    azure_yaml = (ROOT / "azure.yaml").read_text(encoding="utf-8")
    assert 'azd: ">= 1.24.1"' in azure_yaml
    assert azure_yaml.count("run: bash infra/hooks/predown.sh") == 2  # posix and windows
    assert azure_yaml.count("run: bash infra/hooks/postdeploy.sh") == 2

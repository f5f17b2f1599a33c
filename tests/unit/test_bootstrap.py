"""The composition root: what it builds from the app settings, and what it refuses."""

import pytest

from controller import bootstrap
from controller.errors import SettingsError

pytestmark = pytest.mark.unit

AZURITE = ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
           "TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;")


def test_builds_the_reconciler_from_settings_without_network_calls():
    deps = bootstrap.build({"CMK_VAULTS": "contoso.vault.azure.net", "AzureWebJobsStorage": AZURITE,
                            "CMK_FORCE_ADOPTION_AFTER_MINUTES": "15", "CMK_PINNED_POLICY": "update"})
    assert deps.reconcile is not None
    assert deps.reconcile.planner.force_versionless_after is not None
    assert deps.reconcile.planner.force_versionless_after.total_seconds() == 900
    assert deps.reconcile.planner.pinned_policy.value == "update"
    assert deps.work_queue is not None


def test_identity_based_storage_is_accepted():
    deps = bootstrap.build({"CMK_VAULTS": "contoso.vault.azure.net",
                            "AzureWebJobsStorage__accountName": "stcmkcontroller",
                            "AzureWebJobsStorage__credential": "managedidentity",
                            "AzureWebJobsStorage__clientId": "00000000-0000-0000-0000-0000000000c1"})
    assert deps.ledger is not None


@pytest.mark.parametrize("environ", [
    {},
    {"AzureWebJobsStorage": "DefaultEndpointsProtocol=https;AccountName=prod;AccountKey=c2VjcmV0;"},
])
def test_missing_or_shared_key_storage_is_refused(environ):
    with pytest.raises(SettingsError) as caught:
        bootstrap.build({"CMK_VAULTS": "contoso.vault.azure.net", **environ})
    assert caught.value.setting == "AzureWebJobsStorage"
    assert "c2VjcmV0" not in str(caught.value)


@pytest.mark.parametrize(("extra", "expected"), [
    ({}, "NoAuditLog"),
    ({"CMK_LOG_ANALYTICS_WORKSPACE": "5a9d4e2c-0000-4000-8000-00000000a0d1"}, "LogAnalyticsAuditLog"),
    ({"CMK_AUDIT_ARCHIVE": "staudit/insights-logs-auditevent"}, "ArchiveAuditLog"),
    ({"CMK_LOG_ANALYTICS_WORKSPACE": "5a9d4e2c-0000-4000-8000-00000000a0d1",
      "CMK_AUDIT_ARCHIVE": "staudit/insights-logs-auditevent"}, "WorkspaceThenArchive"),
])
def test_the_audit_log_is_the_workspace_the_archive_both_or_none(extra, expected):
    deps = bootstrap.build({"CMK_VAULTS": "contoso.vault.azure.net", "AzureWebJobsStorage": AZURITE, **extra})
    assert type(deps.audit).__name__ == expected

"""Every setting reaches its own field, each bound and choice is exact, and every rejection says what an
operator must fix (the settings' mutation survivors, README "Mutation testing")."""

from __future__ import annotations

import pytest

from controller.errors import SettingsError
from controller.model import Severity
from controller.settings import AuditArchive, RewrapTarget, load_settings

pytestmark = pytest.mark.unit

BASE = {"CMK_VAULTS": "contoso.vault.azure.net"}
CLIENT_ID = "0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0"
WORKSPACE = "AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE"


def rejection(name: str, value: str) -> SettingsError:
    with pytest.raises(SettingsError) as caught:
        load_settings({**BASE, name: value})
    assert caught.value.setting == name
    return caught.value


def test_every_setting_reaches_its_own_field():
    # Every value differs from its default, so a setting read into another field shows.
    settings = load_settings({
        "CMK_VAULTS": "contoso.vault.azure.net",
        "CMK_SUBSCRIPTIONS": "11111111-1111-1111-1111-111111111111",
        "CMK_SWEEP_SCHEDULE": "0 0 */2 * * *",
        "CMK_WORK_QUEUE": "other-work",
        "CMK_LEDGER_TABLE": "otherledger",
        "CMK_EVENT_DEDUPE_HOURS": "47",
        "CMK_ADOPTION_WINDOW_HOURS": "23",
        "CMK_FORCE_ADOPTION_AFTER_MINUTES": "22",
        "CMK_PINNED_POLICY": "update",
        "CMK_AUTO_ROTATE": "true",
        "CMK_REWRAP_TARGETS": "acct1/data",
        "CMK_ARM_ENDPOINT": "https://management.chinacloudapi.cn",
        "CMK_ALERT_WEBHOOK_URL": "https://hooks.example.com/alerts",
        "CMK_ALERT_WEBHOOK_MIN_SEVERITY": "high",
        "CMK_TEAMS_WEBHOOK_URL": "https://teams.example.com/hook",
        "CMK_TEAMS_MIN_SEVERITY": "critical",
        "CMK_SLACK_WEBHOOK_URL": "https://slack.example.com/hook",
        "CMK_SLACK_MIN_SEVERITY": "low",
        "CMK_REALERT_AFTER_HOURS": "21",
        "CMK_ALERT_EVENTGRID_TOPIC": "https://topic.example.com/api/events",
        "CMK_ALERT_EVENTGRID_MIN_SEVERITY": "medium",
        "CMK_LOG_ANALYTICS_WORKSPACE": WORKSPACE,
        "CMK_LOG_ANALYTICS_ENDPOINT": "https://api.loganalytics.azure.cn",
        "CMK_REPORT_CONTAINER": "other-reports",
        "CMK_REQUIRE_CMK": "tagged",
        "CMK_EXPIRY_WARNING_DAYS": "20",
        "CMK_ROTATION_MAX_AGE_DAYS": "19",
        "CMK_MIN_RSA_KEY_SIZE": "4096",
        "CMK_REWRAP_WINDOW_HOURS": "18",
        "CMK_MAX_ACCOUNTS_PER_KEY": "17",
        "CMK_AUDIT_ARCHIVE": "auditacct/insights-logs-auditevent",
        "CMK_AUDIT_SCHEDULE": "0 */5 * * * *",
        "CMK_AUDIT_WINDOW_HOURS": "16",
        "CMK_WRITE_CONCURRENCY": "15",
        "CMK_RECONCILE_TIME_BUDGET_SECONDS": "300",
        "AZURE_CLIENT_ID": CLIENT_ID,
    })
    assert settings.vaults == ("https://contoso.vault.azure.net",)
    assert settings.subscriptions == ("11111111-1111-1111-1111-111111111111",)
    assert settings.sweep_schedule == "0 0 */2 * * *"
    assert (settings.work_queue, settings.ledger_table) == ("other-work", "otherledger")
    assert (settings.event_dedupe_hours, settings.adoption_window_hours) == (47, 23)
    assert settings.force_adoption_after_minutes == 22
    assert (settings.pinned_policy, settings.auto_rotate) == ("update", True)
    assert settings.rewrap_targets == (RewrapTarget("acct1", "data"),)
    assert settings.arm_endpoint == "https://management.chinacloudapi.cn"
    assert (settings.alert_webhook_url, settings.alert_webhook_min_severity) == (
        "https://hooks.example.com/alerts", Severity.HIGH)
    assert (settings.teams_webhook_url, settings.teams_min_severity) == (
        "https://teams.example.com/hook", Severity.CRITICAL)
    assert (settings.slack_webhook_url, settings.slack_min_severity) == ("https://slack.example.com/hook", Severity.LOW)
    assert settings.realert_after_hours == 21
    assert (settings.alert_eventgrid_topic, settings.alert_eventgrid_min_severity) == (
        "https://topic.example.com/api/events", Severity.MEDIUM)
    assert settings.log_analytics_workspace == WORKSPACE.lower()
    assert settings.log_analytics_endpoint == "https://api.loganalytics.azure.cn"
    assert settings.report_container == "other-reports"
    assert settings.require_cmk == "tagged"
    assert (settings.expiry_warning_days, settings.rotation_max_age_days) == (20, 19)
    assert settings.min_rsa_key_size == 4096
    assert (settings.rewrap_window_hours, settings.max_accounts_per_key) == (18, 17)
    assert settings.audit_archive == AuditArchive("auditacct", "insights-logs-auditevent")
    assert str(settings.audit_archive) == "auditacct/insights-logs-auditevent"
    assert (settings.audit_schedule, settings.audit_window_hours) == ("0 */5 * * * *", 16)
    assert (settings.write_concurrency, settings.reconcile_time_budget_seconds) == (15, 300)
    assert settings.controller_client_id == CLIENT_ID.lower()


def test_defaults_of_the_optional_and_rule_settings():
    settings = load_settings(BASE)
    assert settings.arm_endpoint == "https://management.azure.com"
    assert settings.force_adoption_after_minutes == 0
    assert (settings.alert_webhook_url, settings.teams_webhook_url, settings.slack_webhook_url) == (None, None, None)
    assert (settings.alert_webhook_min_severity, settings.teams_min_severity, settings.slack_min_severity,
            settings.alert_eventgrid_min_severity) == (Severity.INFO, Severity.MEDIUM, Severity.MEDIUM, Severity.INFO)
    assert settings.realert_after_hours == 24
    assert (settings.alert_eventgrid_topic, settings.log_analytics_workspace, settings.audit_archive) == (
        None, None, None)
    assert settings.log_analytics_endpoint == "https://api.loganalytics.io"
    assert settings.report_container == "cmk-reports"
    assert (settings.require_cmk, settings.expiry_warning_days, settings.rotation_max_age_days,
            settings.min_rsa_key_size, settings.rewrap_window_hours, settings.max_accounts_per_key) == (
        "all", 30, 90, 2048, 24, 50)
    assert (settings.audit_window_hours, settings.write_concurrency, settings.reconcile_time_budget_seconds) == (
        24, 32, 480)
    assert settings.controller_client_id is None


# name, field, lowest, highest
INTEGER_SETTINGS = [
    ("CMK_EVENT_DEDUPE_HOURS", "event_dedupe_hours", 1, 720),
    ("CMK_ADOPTION_WINDOW_HOURS", "adoption_window_hours", 1, 168),
    ("CMK_REALERT_AFTER_HOURS", "realert_after_hours", 1, 720),
    ("CMK_EXPIRY_WARNING_DAYS", "expiry_warning_days", 1, 365),
    ("CMK_ROTATION_MAX_AGE_DAYS", "rotation_max_age_days", 1, 3650),
    ("CMK_REWRAP_WINDOW_HOURS", "rewrap_window_hours", 1, 720),
    ("CMK_MAX_ACCOUNTS_PER_KEY", "max_accounts_per_key", 1, 10000),
    ("CMK_AUDIT_WINDOW_HOURS", "audit_window_hours", 1, 720),
    ("CMK_WRITE_CONCURRENCY", "write_concurrency", 1, 64),
    ("CMK_RECONCILE_TIME_BUDGET_SECONDS", "reconcile_time_budget_seconds", 30, 3600),
]


@pytest.mark.parametrize(("name", "field", "lowest", "highest"), INTEGER_SETTINGS, ids=str)
def test_each_integer_setting_accepts_exactly_its_documented_range(name, field, lowest, highest):
    for accepted in (lowest, highest):
        assert getattr(load_settings({**BASE, name: str(accepted)}), field) == accepted
    for refused in (lowest - 1, highest + 1):
        assert str(rejection(name, str(refused))) == f"setting {name}: {refused} is outside {lowest}-{highest}"


def test_a_non_integer_is_quoted_and_cut_to_40_characters():
    message = str(rejection("CMK_WRITE_CONCURRENCY", "x" * 50))
    assert message == f"setting CMK_WRITE_CONCURRENCY: {'x' * 40!r} is not an integer written with the digits 0-9 alone"


@pytest.mark.parametrize(("name", "field", "written", "value"), [
    ("CMK_PINNED_POLICY", "pinned_policy", "ALERT", "alert"),
    ("CMK_PINNED_POLICY", "pinned_policy", "update", "update"),
    ("CMK_REQUIRE_CMK", "require_cmk", "All", "all"),
    ("CMK_REQUIRE_CMK", "require_cmk", "tagged", "tagged"),
    ("CMK_MIN_RSA_KEY_SIZE", "min_rsa_key_size", "2048", 2048),
    ("CMK_MIN_RSA_KEY_SIZE", "min_rsa_key_size", "3072", 3072),
    ("CMK_MIN_RSA_KEY_SIZE", "min_rsa_key_size", "4096", 4096),
])
def test_each_choice_is_accepted_in_any_case(name, field, written, value):
    assert getattr(load_settings({**BASE, name: written}), field) == value


@pytest.mark.parametrize(("name", "value", "choices"), [
    ("CMK_PINNED_POLICY", "Ignore", "alert, update"),
    ("CMK_REQUIRE_CMK", "some", "all, tagged"),
    ("CMK_MIN_RSA_KEY_SIZE", "1024", "2048, 3072, 4096"),
])
def test_a_value_outside_the_choices_lists_them(name, value, choices):
    assert str(rejection(name, value)) == f"setting {name}: {value!r} is not one of {choices}"


@pytest.mark.parametrize(("written", "value"), [
    ("true", True), ("TRUE", True), ("1", True), ("yes", True), ("Yes", True),
    ("false", False), ("False", False), ("0", False), ("no", False), ("NO", False),
])
def test_auto_rotate_reads_the_usual_spellings_of_a_boolean(written, value):
    assert load_settings({**BASE, "CMK_AUTO_ROTATE": written}).auto_rotate is value


@pytest.mark.parametrize("name", ["CMK_ALERT_WEBHOOK_MIN_SEVERITY", "CMK_TEAMS_MIN_SEVERITY", "CMK_SLACK_MIN_SEVERITY",
                                  "CMK_ALERT_EVENTGRID_MIN_SEVERITY"])
def test_a_severity_setting_reads_any_case_and_lists_the_severities_when_wrong(name):
    field = {"CMK_ALERT_WEBHOOK_MIN_SEVERITY": "alert_webhook_min_severity",
             "CMK_TEAMS_MIN_SEVERITY": "teams_min_severity", "CMK_SLACK_MIN_SEVERITY": "slack_min_severity",
             "CMK_ALERT_EVENTGRID_MIN_SEVERITY": "alert_eventgrid_min_severity"}[name]
    assert getattr(load_settings({**BASE, name: "High"}), field) == Severity.HIGH
    assert str(rejection(name, "urgent")) == f"setting {name}: must be one of critical, high, medium, low, info"


@pytest.mark.parametrize("name", ["CMK_ALERT_WEBHOOK_URL", "CMK_TEAMS_WEBHOOK_URL", "CMK_SLACK_WEBHOOK_URL"])
@pytest.mark.parametrize(("url", "message"), [
    ("https://hooks.example.com:99999/secret", "is not a valid URL"),
    ("https:///secret", "must be an https URL (http only for loopback hosts)"),
    ("http://hooks.example.com/secret", "must be an https URL (http only for loopback hosts)"),
    ("https://token-secret@hooks.example.com/", "must have no credentials or whitespace"),
    ("https://:secret@hooks.example.com/", "must have no credentials or whitespace"),
    ("https://hooks.example.com/se cret", "must have no credentials or whitespace"),
])
def test_a_refused_webhook_says_why_without_echoing_the_url(name, url, message):
    assert str(rejection(name, url)) == f"setting {name}: {message}"


@pytest.mark.parametrize(("url", "message"), [
    ("https://h:99999", "is not a valid URL"),
    ("http://management.example.com", "is not an https URL"),
    ("https://user@management.example.com", "must have no credentials, query, fragment or whitespace"),
    ("https://:pw@management.example.com", "must have no credentials, query, fragment or whitespace"),
    ("https://management.example.com/?api-version=1", "must have no credentials, query, fragment or whitespace"),
    ("https://management.example.com/#top", "must have no credentials, query, fragment or whitespace"),
    ("https://management.example.com/a b", "must have no credentials, query, fragment or whitespace"),
])
def test_a_refused_endpoint_is_quoted_with_the_reason(url, message):
    assert str(rejection("CMK_ARM_ENDPOINT", url)) == f"setting CMK_ARM_ENDPOINT: {url!r} {message}"


def test_an_endpoint_loses_only_its_trailing_slashes():
    written = "https://arm.contoso.example/proxy/BOX//"
    assert load_settings({**BASE, "CMK_ARM_ENDPOINT": written}).arm_endpoint == "https://arm.contoso.example/proxy/BOX"


@pytest.mark.parametrize("value", ["not-a-guid", "", "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0-extra"])
def test_an_azure_client_id_that_is_no_guid_is_not_the_controllers(value):
    assert load_settings({**BASE, "AZURE_CLIENT_ID": value}).controller_client_id is None


def test_the_audit_archive_is_checked_as_account_and_container_naming_its_setting():
    assert str(rejection("CMK_AUDIT_ARCHIVE", "Audit/logs")) == (
        "setting CMK_AUDIT_ARCHIVE: 'Audit/logs' is not <account>/<container>")


def test_a_log_analytics_workspace_must_be_a_guid():
    assert str(rejection("CMK_LOG_ANALYTICS_WORKSPACE", "workspace-1")) == (
        "setting CMK_LOG_ANALYTICS_WORKSPACE: 'workspace-1' is not a GUID")


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("CMK_WORK_QUEUE", "Work_Queue", "a queue name (3-57 lower-case letters, digits, single hyphens)"),
    ("CMK_LEDGER_TABLE", "1table", "a table name (3-63 letters and digits, starting with a letter)"),
    ("CMK_REPORT_CONTAINER", "Reports", "a container name (3-63 lower-case letters, digits, single hyphens)"),
])
def test_a_refused_name_says_what_a_valid_one_looks_like(name, value, expected):
    assert str(rejection(name, value)) == f"setting {name}: {value!r} is not {expected}"


def test_names_may_use_their_full_length():
    longest_table = "t" + "1" * 62
    assert load_settings({**BASE, "CMK_LEDGER_TABLE": longest_table}).ledger_table == longest_table
    longest_container = "c" * 63
    assert load_settings({**BASE, "CMK_REPORT_CONTAINER": longest_container}).report_container == longest_container


def test_an_empty_allowlist_says_it_is_required():
    with pytest.raises(SettingsError) as caught:
        load_settings({})
    assert str(caught.value) == "setting CMK_VAULTS: is required: list the vaults the controller manages"


def test_a_bare_vault_name_may_contain_any_letter():
    assert load_settings({"CMK_VAULTS": "X-contoso-kv"}).vaults == ("https://x-contoso-kv.vault.azure.net",)


def test_a_refused_wildcard_entry_is_quoted_and_cut_to_80_characters():
    entry = "kv-" + "a" * 100 + "*"
    with pytest.raises(SettingsError) as caught:
        load_settings({"CMK_VAULTS": entry})
    assert str(caught.value).startswith(f"setting CMK_VAULTS: {entry[:80]!r} is a wildcard; list each vault: ")


def test_a_bare_name_of_an_unknown_cloud_is_quoted_cut_to_80_characters():
    name = "kv-" + "a" * 100
    with pytest.raises(SettingsError) as caught:
        load_settings({"CMK_VAULTS": name, "CMK_ARM_ENDPOINT": "https://arm.example.com"})
    assert str(caught.value).startswith(f"setting CMK_VAULTS: the vault name {name[:80]!r} cannot be resolved")


def test_a_bare_name_of_an_unknown_cloud_names_the_endpoint():
    with pytest.raises(SettingsError) as caught:
        load_settings({"CMK_VAULTS": "contoso-kv", "CMK_ARM_ENDPOINT": "https://arm.example.com"})
    assert str(caught.value).startswith(
        "setting CMK_VAULTS: the vault name 'contoso-kv' cannot be resolved: CMK_ARM_ENDPOINT https://arm.example.com "
        "is no known cloud's: ")


def test_an_ipv6_loopback_vault_is_the_sandboxs():
    assert load_settings({"CMK_VAULTS": "https://[::1]:8443"}).vaults == ("https://[::1]:8443",)


def test_a_refused_log_analytics_endpoint_names_its_setting():
    assert str(rejection("CMK_LOG_ANALYTICS_ENDPOINT", "http://api.loganalytics.io")) == (
        "setting CMK_LOG_ANALYTICS_ENDPOINT: 'http://api.loganalytics.io' is not an https URL")

import pytest

from controller.errors import SettingsError
from controller.settings import SETTINGS, RewrapTarget, load_settings

pytestmark = pytest.mark.unit

BASE = {"CMK_VAULTS": "contoso.vault.azure.net"}


def test_defaults_apply_when_only_the_required_setting_is_given():
    settings = load_settings(BASE)
    assert settings.vaults == ("https://contoso.vault.azure.net",)
    assert settings.sweep_schedule == "0 0 */6 * * *"
    assert settings.work_queue == "cmk-work"
    assert settings.ledger_table == "cmkledger"
    assert settings.event_dedupe_hours == 48
    assert settings.adoption_window_hours == 24
    assert settings.pinned_policy == "alert"
    assert settings.auto_rotate is False
    assert settings.rewrap_targets == ()
    assert settings.subscriptions == ()


def test_every_declared_default_is_itself_valid():
    defaults = {spec.name: spec.default for spec in SETTINGS}
    defaults["CMK_VAULTS"] = "contoso.vault.azure.net"
    load_settings(defaults)


def test_vault_allowlist_accepts_hosts_urls_and_custom_origins_and_normalises_them():
    settings = load_settings({
        "CMK_VAULTS": " Contoso.Vault.Azure.Net , https://fabrikam.vault.azure.cn/, https://127.0.0.1:8443,"
                      "contoso.vault.azure.net"
    })
    assert settings.vaults == (
        "https://contoso.vault.azure.net",
        "https://fabrikam.vault.azure.cn",
        "https://127.0.0.1:8443",
    )
    assert settings.vault_policy.allows("https://127.0.0.1:8443")
    assert not settings.vault_policy.allows("https://127.0.0.1:8444")


def test_lists_are_parsed():
    settings = load_settings({
        **BASE,
        "CMK_SUBSCRIPTIONS": "00000000-0000-0000-0000-00000000000A, 11111111-1111-1111-1111-111111111111",
        "CMK_REWRAP_TARGETS": "acct1/data,acct2/$root",
        "CMK_AUTO_ROTATE": "TRUE",
        "CMK_PINNED_POLICY": "Update",
    })
    assert settings.subscriptions == ("00000000-0000-0000-0000-00000000000a", "11111111-1111-1111-1111-111111111111")
    assert settings.rewrap_targets == (RewrapTarget("acct1", "data"), RewrapTarget("acct2", "$root"))
    assert settings.auto_rotate is True
    assert settings.pinned_policy == "update"


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("CMK_VAULTS", "", "required"),
        ("CMK_VAULTS", " , ", "required"),
        ("CMK_VAULTS", "http://contoso.vault.azure.net", "https"),
        ("CMK_VAULTS", "https://contoso.vault.azure.net/keys/k", "path"),
        ("CMK_VAULTS", "https://user:pw@contoso.vault.azure.net", "credentials"),
        ("CMK_SUBSCRIPTIONS", "not-a-guid", "GUID"),
        ("CMK_SWEEP_SCHEDULE", "0 */5 * * *", "six"),
        ("CMK_SWEEP_SCHEDULE", "0 61 * * * *", "outside"),
        ("CMK_SWEEP_SCHEDULE", "0 0 * * * MON;", "not a valid"),
        ("CMK_SWEEP_SCHEDULE", "0 0 0 30 2 *", "never fires"),
        ("CMK_SWEEP_SCHEDULE", "0 0 */0 * * *", "positive"),
        ("CMK_AUDIT_SCHEDULE", "*/15 * * * *", "six"),
        ("CMK_AUDIT_SCHEDULE", "0 0 0 30 2 *", "never fires"),
        ("CMK_WORK_QUEUE", "Work_Queue", "queue name"),
        ("CMK_WORK_QUEUE", "a" * 58, "queue name"),
        ("CMK_LEDGER_TABLE", "1table", "table name"),
        ("CMK_EVENT_DEDUPE_HOURS", "0", "outside"),
        ("CMK_EVENT_DEDUPE_HOURS", "two", "integer"),
        ("CMK_ADOPTION_WINDOW_HOURS", "500", "outside"),
        ("CMK_PINNED_POLICY", "ignore", "one of"),
        ("CMK_AUTO_ROTATE", "maybe", "true or false"),
        ("CMK_REWRAP_TARGETS", "acct-with-hyphen/data", "<account>/<container>"),
        ("CMK_REWRAP_TARGETS", "acct1", "<account>/<container>"),
    ],
)
def test_an_invalid_value_fails_naming_the_setting(name, value, fragment):
    with pytest.raises(SettingsError) as caught:
        load_settings({**BASE, name: value})
    assert caught.value.setting == name
    assert name in str(caught.value)
    assert fragment in str(caught.value)


def test_ncrontab_accepts_steps_ranges_lists_and_names():
    for schedule in ("*/30 * * * * *", "0 0 9-17 * * MON-FRI", "0 15,45 */2 1 1-6 *", "0 0 0 * * 0"):
        assert load_settings({**BASE, "CMK_SWEEP_SCHEDULE": schedule}).sweep_schedule == schedule
        assert load_settings({**BASE, "CMK_AUDIT_SCHEDULE": schedule}).audit_schedule == schedule
    assert load_settings(BASE).audit_schedule == "0 */15 * * * *"


# --- CMK_ARM_ENDPOINT (controller/adapters: storage_control, inventory, key_access) ----------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://management.azure.com", "https://management.azure.com"),
        ("https://management.chinacloudapi.cn/", "https://management.chinacloudapi.cn"),
        ("https://127.0.0.1:8443", "https://127.0.0.1:8443"),
    ],
)
def test_arm_endpoint_is_an_https_url_without_trailing_slash(value, expected):
    assert load_settings({**BASE, "CMK_ARM_ENDPOINT": value}).arm_endpoint == expected


@pytest.mark.parametrize(
    "value",
    ["http://management.azure.com", "management.azure.com", "https://", "https://user:pw@host", "https://h/?q=1",
     "https://h:99999"],
)
def test_arm_endpoint_rejects_anything_else(value):
    with pytest.raises(SettingsError) as caught:
        load_settings({**BASE, "CMK_ARM_ENDPOINT": value})
    assert caught.value.setting == "CMK_ARM_ENDPOINT"


def test_forced_adoption_delay_is_bounded_by_the_window_or_off():
    assert load_settings(BASE).force_adoption_after_minutes == 0
    assert load_settings({**BASE, "CMK_FORCE_ADOPTION_AFTER_MINUTES": "OFF"}).force_adoption_after_minutes is None
    assert load_settings({**BASE, "CMK_ADOPTION_WINDOW_HOURS": "2",
                          "CMK_FORCE_ADOPTION_AFTER_MINUTES": "120"}).force_adoption_after_minutes == 120
    with pytest.raises(SettingsError) as caught:
        load_settings({**BASE, "CMK_ADOPTION_WINDOW_HOURS": "2", "CMK_FORCE_ADOPTION_AFTER_MINUTES": "121"})
    assert caught.value.setting == "CMK_FORCE_ADOPTION_AFTER_MINUTES"


@pytest.mark.parametrize("url", ["https://hooks.example.com/T0/B0/secret", "http://127.0.0.1:8080/alerts",
                                 "http://localhost/alerts", "http://127.0.0.2/alerts", "http://[::1]:8080/alerts"])
def test_alert_webhook_accepts_https_and_loopback_http(url):
    assert load_settings({**BASE, "CMK_ALERT_WEBHOOK_URL": url}).alert_webhook_url == url


@pytest.mark.parametrize("url", ["http://hooks.example.com/secret", "ftp://x/secret", "https://u:p@h/secret",
                                 "not a url secret", "http://127.evil.example/secret", "http://127.0.0.1.nip.io/secret",
                                 "http://localhost.example/secret", "http://0x7f000001/secret"])
def test_alert_webhook_refuses_anything_else_without_echoing_it(url):
    with pytest.raises(SettingsError) as caught:
        load_settings({**BASE, "CMK_ALERT_WEBHOOK_URL": url})
    assert caught.value.setting == "CMK_ALERT_WEBHOOK_URL"
    assert "secret" not in str(caught.value)


# ---- allowlist entries that could never match are refused at start-up ------------------------------------


@pytest.mark.parametrize(("entry", "origin"), [
    ("contoso-hr-kv", "https://contoso-hr-kv.vault.azure.net"),
    ("Contoso-HR-KV", "https://contoso-hr-kv.vault.azure.net"),
    ("contoso-hr-kv.vault.azure.net", "https://contoso-hr-kv.vault.azure.net"),
    ("https://Contoso-HR-KV.vault.azure.net/", "https://contoso-hr-kv.vault.azure.net"),
    ("contoso-hsm.managedhsm.azure.net", "https://contoso-hsm.managedhsm.azure.net"),
    ("https://127.0.0.1:8443", "https://127.0.0.1:8443"),
    ("custom:https://kv.stack.contoso.local:4443", "https://kv.stack.contoso.local:4443"),
])
def test_each_allowlist_entry_resolves_to_the_vault_it_names(entry, origin):
    assert load_settings({"CMK_VAULTS": entry}).vaults == (origin,)


@pytest.mark.parametrize(("arm", "origin"), [
    ("https://management.chinacloudapi.cn", "https://contoso-kv.vault.azure.cn"),
    ("https://management.usgovcloudapi.net", "https://contoso-kv.vault.usgovcloudapi.net"),
])
def test_a_bare_vault_name_resolves_in_the_configured_cloud(arm, origin):
    assert load_settings({"CMK_VAULTS": "contoso-kv", "CMK_ARM_ENDPOINT": arm}).vaults == (origin,)


@pytest.mark.parametrize(("entry", "fragment"), [
    ("*", "wildcard"),
    ("*.vault.azure.net", "wildcard"),
    ("contoso-*", "wildcard"),
    ("kv?", "wildcard"),
    ("contoso-kv.vault.azure.com", "not a Key Vault or Managed HSM host"),
    ("https://kv.example.com", "not a Key Vault or Managed HSM host"),
    ("contoso.vault.azure.net:8443", "port"),
    ("ab", "not a valid vault name"),
    ("contoso--kv", "not a valid vault name"),
])
def test_an_entry_that_could_never_match_stops_the_app_with_what_to_write(entry, fragment):
    with pytest.raises(SettingsError) as caught:
        load_settings({"CMK_VAULTS": f"good-kv, {entry}"})
    message = str(caught.value)
    assert caught.value.setting == "CMK_VAULTS"
    assert fragment in message
    assert "write a vault name (contoso-kv), its host (contoso-kv.vault.azure.net)" in message
    assert "\n" not in message


def test_a_bare_name_cannot_be_resolved_for_an_unknown_cloud():
    with pytest.raises(SettingsError, match="cannot be resolved") as caught:
        load_settings({"CMK_VAULTS": "contoso-kv", "CMK_ARM_ENDPOINT": "https://127.0.0.1:9443"})
    assert caught.value.setting == "CMK_VAULTS"


@pytest.mark.parametrize("value", ["1_0", "+5", "7 7", "٣", "1e2", "0x10", "10.0", "-1"])
def test_numbers_are_plain_ascii_digits(value):
    with pytest.raises(SettingsError, match="integer") as caught:
        load_settings({**BASE, "CMK_EVENT_DEDUPE_HOURS": value})
    assert caught.value.setting == "CMK_EVENT_DEDUPE_HOURS"


def test_alert_eventgrid_topic_is_an_optional_https_endpoint():
    assert load_settings(BASE).alert_eventgrid_topic is None
    endpoint = "https://evgt-cmk-alerts.westeurope-1.eventgrid.azure.net/api/events"
    assert load_settings({**BASE, "CMK_ALERT_EVENTGRID_TOPIC": endpoint}).alert_eventgrid_topic == endpoint
    for invalid in ("http://evgt.example/api/events", "evgt-cmk-alerts", "https://u:p@evgt.example/api/events"):
        with pytest.raises(SettingsError) as caught:
            load_settings({**BASE, "CMK_ALERT_EVENTGRID_TOPIC": invalid})
        assert caught.value.setting == "CMK_ALERT_EVENTGRID_TOPIC"


@pytest.mark.parametrize("setting", ["CMK_ALERT_WEBHOOK_URL", "CMK_ALERT_EVENTGRID_TOPIC", "CMK_VAULTS"])
def test_an_unresolved_key_vault_reference_names_the_setting_and_what_resolution_needs(setting):
    reference = "@Microsoft.KeyVault(SecretUri=https://kv-ops.vault.azure.net/secrets/cmk-webhook/)"
    with pytest.raises(SettingsError) as caught:
        load_settings({**BASE, setting: reference})
    assert caught.value.setting == setting
    message = str(caught.value)
    assert "unresolved Key Vault reference" in message
    assert "keyVaultReferenceIdentity" in message and "Key Vault Secrets User" in message
    assert "cmk-webhook" not in message, "the reference names the secret: it is not echoed"

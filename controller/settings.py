"""Typed settings, read once from the app settings (environment) and validated at start-up.

Every setting the controller reads is declared in ``SETTINGS`` with its default and meaning: the
README's table and the Bicep app settings are checked against this list by tests, so a setting
cannot be added in one place and forgotten in another. An invalid value raises SettingsError naming
the setting.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, TypeVar
from urllib.parse import urlsplit

from controller import ncrontab
from controller.errors import InvalidKeyId, SettingsError
from controller.model import Severity, normalise_origin, parse_vault_origin
from controller.vault_policy import VaultPolicy

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class SettingSpec:
    name: str
    default: str
    meaning: str


SETTINGS: Final[tuple[SettingSpec, ...]] = (
    SettingSpec(
        "CMK_VAULTS",
        "",
        "Comma-separated allowlist of the Key Vault / Managed HSM vaults the controller manages: vault names "
        "(contoso-kv: a vault of the cloud CMK_ARM_ENDPOINT belongs to), hosts (contoso-kv.vault.azure.net, "
        "contoso-hsm.managedhsm.azure.net) or https origins; a host of no known cloud must be marked "
        "custom:https://host[:port] (a loopback origin, https://127.0.0.1:port, needs no mark; the local sandbox's "
        "vaults have their Azure host names). No wildcards. Events "
        "and key URIs from any other vault are rejected before any request is made. Required.",
    ),
    SettingSpec(
        "CMK_SUBSCRIPTIONS",
        "",
        "Comma-separated subscription ids whose storage accounts are inventoried. Empty: the subscriptions "
        "the identity can read.",
    ),
    SettingSpec(
        "CMK_SWEEP_SCHEDULE",
        "0 0 */6 * * *",
        "NCRONTAB (six fields, with seconds) schedule of the compliance sweep timer.",
    ),
    SettingSpec(
        "CMK_WORK_QUEUE",
        "cmk-work",
        "Name of the Azure Storage queue (in the app's storage account) that carries re-check and re-wrap "
        "work items; failed items go to <name>-poison.",
    ),
    SettingSpec(
        "CMK_LEDGER_TABLE",
        "cmkledger",
        "Name of the Azure Table (in the app's storage account) holding event dedupe and rotation records.",
    ),
    SettingSpec(
        "CMK_EVENT_DEDUPE_HOURS",
        "48",
        "How long a processed event id is remembered to drop redeliveries (Event Grid retries for up to "
        "24 h). 1-720.",
    ),
    SettingSpec(
        "CMK_ADOPTION_WINDOW_HOURS",
        "24",
        "How long a versionless consumer may lag behind a new key version before the controller forces "
        "adoption (Azure Storage polls about once a day). 1-168.",
    ),
    SettingSpec(
        "CMK_FORCE_ADOPTION_AFTER_MINUTES",
        "0",
        "Minutes after a new key version becomes available before a lagging versionless consumer is forced to "
        "adopt it (pin to the version, verify, restore the versionless URI): 0 closes the gap within seconds; "
        "up to the adoption window; off: never force, alert once the window has passed.",
    ),
    SettingSpec(
        "CMK_PINNED_POLICY",
        "alert",
        "What to do with a consumer pinned to an old key version: alert, or update it to the new version. "
        "Overridable per account with the tag cmk-pinned-policy.",
    ),
    SettingSpec(
        "CMK_AUTO_ROTATE",
        "false",
        "true: rotate a key on KeyNearExpiry; false: only alert with the blast radius.",
    ),
    SettingSpec(
        "CMK_REWRAP_TARGETS",
        "",
        "Comma-separated client-side-encrypted containers to re-wrap after a rotation, as "
        "<account>/<container>. Accounts tagged cmk-rewrap-containers=<c1>;<c2> are added.",
    ),
    SettingSpec(
        "CMK_ARM_ENDPOINT",
        "https://management.azure.com",
        "Azure Resource Manager endpoint (an https URL) for the storage, Key Vault, authorization and Resource "
        "Graph management calls; tokens are requested for <endpoint>/.default. Another cloud's, or the sandbox's.",
    ),
    SettingSpec(
        "CMK_ALERT_WEBHOOK_URL",
        "",
        "Optional https URL that receives every alert as JSON (severity, title, resource, reason, message, "
        "fingerprint, details). Alerts are always logged. Such URLs often carry a token: in Azure, set it as a "
        "Key Vault reference. http is accepted only for loopback hosts (the local sandbox).",
    ),
    SettingSpec(
        "CMK_ALERT_WEBHOOK_MIN_SEVERITY",
        "info",
        "Least severe alert sent to CMK_ALERT_WEBHOOK_URL: critical, high, medium, low or info.",
    ),
    SettingSpec(
        "CMK_TEAMS_WEBHOOK_URL",
        "",
        "Optional Microsoft Teams Workflows webhook URL (\"Post to a channel when a webhook request is received\"): "
        "alerts arrive as Adaptive Cards. A secret: set it as a Key Vault reference in Azure.",
    ),
    SettingSpec(
        "CMK_TEAMS_MIN_SEVERITY",
        "medium",
        "Least severe alert sent to CMK_TEAMS_WEBHOOK_URL: critical, high, medium, low or info.",
    ),
    SettingSpec(
        "CMK_SLACK_WEBHOOK_URL",
        "",
        "Optional Slack incoming webhook URL: alerts arrive as Block Kit messages. A secret: set it as a Key Vault "
        "reference in Azure.",
    ),
    SettingSpec(
        "CMK_SLACK_MIN_SEVERITY",
        "medium",
        "Least severe alert sent to CMK_SLACK_WEBHOOK_URL: critical, high, medium, low or info.",
    ),
    SettingSpec(
        "CMK_REALERT_AFTER_HOURS",
        "24",
        "An alert that persists is notified again after this many hours (1-720); it is notified at once when its "
        "severity rises, and a resolved notice follows when it clears.",
    ),
    SettingSpec(
        "CMK_ALERT_EVENTGRID_TOPIC",
        "",
        "Optional endpoint (https URL) of the Event Grid topic the alerts are published to, with the controller's "
        "identity (EventGrid Data Sender; the topic accepts Entra tokens only). Empty: no topic.",
    ),
    SettingSpec(
        "CMK_ALERT_EVENTGRID_MIN_SEVERITY",
        "info",
        "Least severe alert published to CMK_ALERT_EVENTGRID_TOPIC: critical, high, medium, low or info.",
    ),
    SettingSpec(
        "CMK_LOG_ANALYTICS_WORKSPACE",
        "",
        "Workspace id (GUID) of the Log Analytics workspace the vaults send AuditEvent logs to; used as evidence "
        "of which key versions are still unwrapped. Empty: no audit evidence (usage says so).",
    ),
    SettingSpec(
        "CMK_LOG_ANALYTICS_ENDPOINT",
        "https://api.loganalytics.io",
        "Log Analytics query endpoint (https) for CMK_LOG_ANALYTICS_WORKSPACE.",
    ),
    SettingSpec(
        "CMK_REPORT_CONTAINER",
        "cmk-reports",
        "Blob container (in the app's storage account) holding the compliance reports: latest.json and a "
        "dated history YYYY/MM/DD/<timestamp>.json.",
    ),
    SettingSpec(
        "CMK_REQUIRE_CMK",
        "all",
        "Which storage accounts must use a customer-managed key (CMK-001): all (except those tagged "
        "cmk-exempt=true) or tagged (only those tagged cmk-required=true).",
    ),
    SettingSpec(
        "CMK_EXPIRY_WARNING_DAYS",
        "30",
        "A key version in use that expires within this many days is a CMK-009 medium finding (1-365).",
    ),
    SettingSpec(
        "CMK_ROTATION_MAX_AGE_DAYS",
        "90",
        "Longest acceptable rotation period and current-version age of a key (CMK-010), in days (1-3650).",
    ),
    SettingSpec(
        "CMK_MIN_RSA_KEY_SIZE",
        "2048",
        "Smallest acceptable RSA key size for a customer-managed key (CMK-005): 2048, 3072 or 4096.",
    ),
    SettingSpec(
        "CMK_REWRAP_WINDOW_HOURS",
        "24",
        "How long blobs of a registered client-side-encrypted container may stay wrapped by an old key "
        "version (CMK-018), in hours (1-720).",
    ),
    SettingSpec(
        "CMK_MAX_ACCOUNTS_PER_KEY",
        "50",
        "CMK-020 advises when more storage accounts than this share one key (1-10000).",
    ),
    SettingSpec(
        "CMK_AUDIT_ARCHIVE",
        "",
        "Storage account archive of the vaults' AuditEvent logs, as <account>/<container> (Azure's container is "
        "insights-logs-auditevent): read for the vaults whose logs are not in CMK_LOG_ANALYTICS_WORKSPACE. "
        "Empty: no archive.",
    ),
    SettingSpec(
        "CMK_AUDIT_SCHEDULE",
        "0 */15 * * * *",
        "NCRONTAB (six fields, with seconds) schedule of the audit timer: it reads the vaults' audit logs since its "
        "last run and alerts on deleted or purged keys in use (resolved on KeyRecover) and on CMK-017 failures.",
    ),
    SettingSpec(
        "CMK_AUDIT_WINDOW_HOURS",
        "24",
        "How far back the audit analysis (cmkctl audit) looks for failed KeyWrap/KeyUnwrap/KeyGet. 1-720.",
    ),
    SettingSpec(
        "CMK_WRITE_CONCURRENCY",
        "32",
        "Consumers of one key written at the same time (1-64). ARM answers a storage write after about a "
        "second, and each write also takes a claim and an intent in the ledger, so writes overlap; their "
        "rate is ARM's, paced by the throttling budget ARM reports.",
    ),
    SettingSpec(
        "CMK_RECONCILE_TIME_BUDGET_SECONDS",
        "480",
        "No write is started after this many seconds of one reconcile (30-3600; keep it under the host's "
        "functionTimeout, 10 minutes): what is left continues in another invocation through the work queue.",
    ),
    SettingSpec(
        "CMK_CLAIM_LEASE_SECONDS",
        "600",
        "How long a claim (a consumer write, a page of a scale-out re-wrap) keeps other invocations off its "
        "work (5-3600; default 600, the host's functionTimeout, which no invocation outlives): the work of an "
        "instance that died is taken over after it, and the re-check queued with each key event repairs what "
        "it left half done a quarter of a lease later.",
    ),
)

_KNOWN: Final = {spec.name: spec for spec in SETTINGS}
# In Azure the platform replaces a Key Vault reference by the secret before the app starts; one that reaches the
# app was not resolved, and the literal reference is not a usable value.
_KEY_VAULT_REFERENCE: Final = "@Microsoft.KeyVault("
_UNRESOLVED_REFERENCE: Final = (
    "is an unresolved Key Vault reference: the platform could not read the secret. The app's "
    "keyVaultReferenceIdentity must be allowed to get that secret (Key Vault Secrets User on it, or an access "
    "policy with secret get) and the secret must exist; see docs/DEPLOYMENT.md"
)
_QUEUE_NAME = re.compile(r"^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
_TABLE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]{2,62}$")
_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)
_STORAGE_ACCOUNT = re.compile(r"^[a-z0-9]{3,24}$")
_CONTAINER = re.compile(r"^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$|^\$root$")


@dataclass(frozen=True, slots=True)
class RewrapTarget:
    account: str
    container: str

    def __str__(self) -> str:
        return f"{self.account}/{self.container}"


@dataclass(frozen=True, slots=True)
class AuditArchive:
    """The storage account and container the vaults' diagnostic settings archive AuditEvent logs to."""

    account: str
    container: str

    def __str__(self) -> str:
        return f"{self.account}/{self.container}"


@dataclass(frozen=True, slots=True)
class Settings:
    #: The vault allowlist (CMK_VAULTS): every key URI and vault origin is read and checked through it.
    vault_policy: VaultPolicy
    subscriptions: tuple[str, ...]
    sweep_schedule: str
    work_queue: str
    ledger_table: str
    event_dedupe_hours: int
    adoption_window_hours: int
    pinned_policy: str
    auto_rotate: bool
    rewrap_targets: tuple[RewrapTarget, ...]
    arm_endpoint: str = "https://management.azure.com"
    #: None: never force adoption (alert instead once the adoption window has passed).
    force_adoption_after_minutes: int | None = 0
    alert_webhook_url: str | None = None
    alert_webhook_min_severity: Severity = Severity.INFO
    teams_webhook_url: str | None = None
    teams_min_severity: Severity = Severity.MEDIUM
    slack_webhook_url: str | None = None
    slack_min_severity: Severity = Severity.MEDIUM
    realert_after_hours: int = 24
    alert_eventgrid_topic: str | None = None
    alert_eventgrid_min_severity: Severity = Severity.INFO
    log_analytics_workspace: str | None = None
    log_analytics_endpoint: str = "https://api.loganalytics.io"
    report_container: str = "cmk-reports"
    #: The compliance rules' thresholds (controller.compliance.rules.RuleSettings).
    require_cmk: str = "all"
    expiry_warning_days: int = 30
    rotation_max_age_days: int = 90
    min_rsa_key_size: int = 2048
    rewrap_window_hours: int = 24
    max_accounts_per_key: int = 50
    #: The storage-account archive of the vaults' audit logs (CMK_AUDIT_ARCHIVE), None when not set.
    audit_archive: AuditArchive | None = None
    audit_window_hours: int = 24
    audit_schedule: str = "0 */15 * * * *"
    write_concurrency: int = 32
    reconcile_time_budget_seconds: int = 480
    claim_lease_seconds: int = 600
    #: The controller identity's client id (AZURE_CLIENT_ID, set by infra/ for the SDK credentials), lower
    #: case; None when unset or not a GUID. It tells the controller's own ARM writes apart in resource events.
    controller_client_id: str | None = None

    @property
    def vaults(self) -> tuple[str, ...]:
        """The allowed vault origins, normalised, in the configured order."""
        return self.vault_policy.vaults


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Read and validate every CMK_ setting; raise SettingsError naming the first invalid one."""

    def raw(name: str) -> str:
        value = environ.get(name, _KNOWN[name].default).strip()
        if value.startswith(_KEY_VAULT_REFERENCE):
            raise SettingsError(name, _UNRESOLVED_REFERENCE)
        return value

    # Read before the others: its minutes bound CMK_FORCE_ADOPTION_AFTER_MINUTES.
    adoption_window_hours = _parse_int("CMK_ADOPTION_WINDOW_HOURS", raw("CMK_ADOPTION_WINDOW_HOURS"), 1, 168)
    return Settings(
        vault_policy=_parse_vaults(raw("CMK_VAULTS"), arm_endpoint=raw("CMK_ARM_ENDPOINT")),
        subscriptions=_parse_list("CMK_SUBSCRIPTIONS", raw("CMK_SUBSCRIPTIONS"), _subscription),
        sweep_schedule=_parse_ncrontab("CMK_SWEEP_SCHEDULE", raw("CMK_SWEEP_SCHEDULE")),
        work_queue=_match("CMK_WORK_QUEUE", raw("CMK_WORK_QUEUE"), _QUEUE_NAME, "a queue name (3-57 "
                          "lower-case letters, digits, single hyphens)", max_len=57),
        ledger_table=_match("CMK_LEDGER_TABLE", raw("CMK_LEDGER_TABLE"), _TABLE_NAME,
                            "a table name (3-63 letters and digits, starting with a letter)"),
        event_dedupe_hours=_parse_int("CMK_EVENT_DEDUPE_HOURS", raw("CMK_EVENT_DEDUPE_HOURS"), 1, 720),
        adoption_window_hours=adoption_window_hours,
        pinned_policy=_parse_choice("CMK_PINNED_POLICY", raw("CMK_PINNED_POLICY"), ("alert", "update")),
        auto_rotate=_parse_bool("CMK_AUTO_ROTATE", raw("CMK_AUTO_ROTATE")),
        rewrap_targets=_parse_list("CMK_REWRAP_TARGETS", raw("CMK_REWRAP_TARGETS"), _rewrap_target),
        arm_endpoint=_parse_https_endpoint("CMK_ARM_ENDPOINT", raw("CMK_ARM_ENDPOINT")),
        force_adoption_after_minutes=_parse_force_after(raw("CMK_FORCE_ADOPTION_AFTER_MINUTES"),
                                                        window_hours=adoption_window_hours),
        alert_webhook_url=_parse_webhook("CMK_ALERT_WEBHOOK_URL", raw("CMK_ALERT_WEBHOOK_URL")),
        alert_webhook_min_severity=_parse_severity("CMK_ALERT_WEBHOOK_MIN_SEVERITY",
                                                   raw("CMK_ALERT_WEBHOOK_MIN_SEVERITY")),
        teams_webhook_url=_parse_webhook("CMK_TEAMS_WEBHOOK_URL", raw("CMK_TEAMS_WEBHOOK_URL")),
        teams_min_severity=_parse_severity("CMK_TEAMS_MIN_SEVERITY", raw("CMK_TEAMS_MIN_SEVERITY")),
        slack_webhook_url=_parse_webhook("CMK_SLACK_WEBHOOK_URL", raw("CMK_SLACK_WEBHOOK_URL")),
        slack_min_severity=_parse_severity("CMK_SLACK_MIN_SEVERITY", raw("CMK_SLACK_MIN_SEVERITY")),
        realert_after_hours=_parse_int("CMK_REALERT_AFTER_HOURS", raw("CMK_REALERT_AFTER_HOURS"), 1, 720),
        alert_eventgrid_topic=(_parse_https_endpoint("CMK_ALERT_EVENTGRID_TOPIC", raw("CMK_ALERT_EVENTGRID_TOPIC"))
                               if raw("CMK_ALERT_EVENTGRID_TOPIC") else None),
        alert_eventgrid_min_severity=_parse_severity("CMK_ALERT_EVENTGRID_MIN_SEVERITY",
                                                     raw("CMK_ALERT_EVENTGRID_MIN_SEVERITY")),
        log_analytics_workspace=(_subscription("CMK_LOG_ANALYTICS_WORKSPACE", raw("CMK_LOG_ANALYTICS_WORKSPACE"))
                                 if raw("CMK_LOG_ANALYTICS_WORKSPACE") else None),
        log_analytics_endpoint=_parse_https_endpoint("CMK_LOG_ANALYTICS_ENDPOINT", raw("CMK_LOG_ANALYTICS_ENDPOINT")),
        report_container=_match("CMK_REPORT_CONTAINER", raw("CMK_REPORT_CONTAINER"), _CONTAINER,
                                "a container name (3-63 lower-case letters, digits, single hyphens)"),
        require_cmk=_parse_choice("CMK_REQUIRE_CMK", raw("CMK_REQUIRE_CMK"), ("all", "tagged")),
        expiry_warning_days=_parse_int("CMK_EXPIRY_WARNING_DAYS", raw("CMK_EXPIRY_WARNING_DAYS"), 1, 365),
        rotation_max_age_days=_parse_int("CMK_ROTATION_MAX_AGE_DAYS", raw("CMK_ROTATION_MAX_AGE_DAYS"), 1, 3650),
        min_rsa_key_size=int(_parse_choice("CMK_MIN_RSA_KEY_SIZE", raw("CMK_MIN_RSA_KEY_SIZE"),
                                           ("2048", "3072", "4096"))),
        rewrap_window_hours=_parse_int("CMK_REWRAP_WINDOW_HOURS", raw("CMK_REWRAP_WINDOW_HOURS"), 1, 720),
        max_accounts_per_key=_parse_int("CMK_MAX_ACCOUNTS_PER_KEY", raw("CMK_MAX_ACCOUNTS_PER_KEY"), 1, 10000),
        audit_archive=_parse_audit_archive(raw("CMK_AUDIT_ARCHIVE")),
        audit_window_hours=_parse_int("CMK_AUDIT_WINDOW_HOURS", raw("CMK_AUDIT_WINDOW_HOURS"), 1, 720),
        audit_schedule=_parse_ncrontab("CMK_AUDIT_SCHEDULE", raw("CMK_AUDIT_SCHEDULE")),
        write_concurrency=_parse_int("CMK_WRITE_CONCURRENCY", raw("CMK_WRITE_CONCURRENCY"), 1, 64),
        controller_client_id=_client_id(environ.get("AZURE_CLIENT_ID", "")),
        reconcile_time_budget_seconds=_parse_int("CMK_RECONCILE_TIME_BUDGET_SECONDS",
                                                 raw("CMK_RECONCILE_TIME_BUDGET_SECONDS"), 30, 3600),
        claim_lease_seconds=_parse_int("CMK_CLAIM_LEASE_SECONDS", raw("CMK_CLAIM_LEASE_SECONDS"), 5, 3600),
    )


#: Where a bare vault name lives, by the ARM endpoint of the cloud (CMK_ARM_ENDPOINT's host).
_VAULT_DNS_BY_ARM_HOST: Final = {
    "management.azure.com": "vault.azure.net",
    "management.chinacloudapi.cn": "vault.azure.cn",
    "management.usgovcloudapi.net": "vault.usgovcloudapi.net",
}
_CUSTOM_ORIGIN_MARK = "custom:"
_HOW_TO_WRITE_A_VAULT = ("write a vault name (contoso-kv), its host (contoso-kv.vault.azure.net) or, for an origin "
                         "of no known cloud, custom:https://host[:port]")


def _parse_vaults(value: str, *, arm_endpoint: str) -> VaultPolicy:
    """Every entry must name exactly one vault the controller can match events and key URIs against:
    an entry that could never match (a wildcard, a misspelt host) stops the app instead of silently
    rejecting every event."""
    entries = [entry for entry in (part.strip() for part in value.split(",")) if entry]
    if not entries:
        raise SettingsError("CMK_VAULTS", "is required: list the vaults the controller manages")
    try:
        return VaultPolicy.of(_vault_origin(entry, arm_endpoint) for entry in entries)
    except InvalidKeyId as err:
        raise SettingsError("CMK_VAULTS", f"{err}: {_HOW_TO_WRITE_A_VAULT}") from err


# A bracketed IPv6 literal host (https://[::1]:8443): its brackets are no glob character class.
_IPV6_LITERAL = re.compile(r"\[[0-9a-f.]*:[0-9a-f:.]*\]", re.IGNORECASE)


def _is_wildcard(entry: str) -> bool:
    return any(char in _IPV6_LITERAL.sub("", entry) for char in "*?[]")


def _vault_origin(entry: str, arm_endpoint: str) -> str:
    if _is_wildcard(entry):
        raise InvalidKeyId(f"{entry[:80]!r} is a wildcard; list each vault")
    if entry.lower().startswith(_CUSTOM_ORIGIN_MARK):
        return normalise_origin(entry[len(_CUSTOM_ORIGIN_MARK):])
    if not any(char in entry for char in ".:/"):  # a bare vault name
        arm_host = (urlsplit(arm_endpoint).hostname or "").lower()
        suffix = _VAULT_DNS_BY_ARM_HOST.get(arm_host)
        if suffix is None:
            raise InvalidKeyId(f"the vault name {entry[:80]!r} cannot be resolved: CMK_ARM_ENDPOINT {arm_endpoint} "
                               "is no known cloud's")
        return parse_vault_origin(f"{entry}.{suffix}").url
    origin = normalise_origin(entry)
    host = urlsplit(origin).hostname or ""  # an IPv6 literal without its brackets
    if _is_loopback(host):
        return origin  # the local sandbox's vaults: their own loopback origin each
    return parse_vault_origin(origin).url  # a Key Vault / Managed HSM host of a known cloud, valid name


def _parse_list(name: str, value: str, parse_one: Callable[[str, str], _T]) -> tuple[_T, ...]:
    items = [part.strip() for part in value.split(",") if part.strip()]
    return tuple(parse_one(name, item) for item in items)


def _client_id(value: str) -> str | None:
    text = value.strip()
    return text.lower() if _GUID.match(text) else None


def _subscription(name: str, item: str) -> str:
    if not _GUID.match(item):
        raise SettingsError(name, f"{item!r} is not a GUID")
    return item.lower()


def _rewrap_target(name: str, item: str) -> RewrapTarget:
    account, _, container = item.partition("/")
    if not _STORAGE_ACCOUNT.match(account) or not _CONTAINER.match(container):
        raise SettingsError(name, f"{item!r} is not <account>/<container>")
    return RewrapTarget(account, container)


def _match(name: str, value: str, pattern: re.Pattern[str], expected: str, *, max_len: int = 63) -> str:
    if len(value) > max_len or not pattern.match(value):
        raise SettingsError(name, f"{value!r} is not {expected}")
    return value


_DIGITS = re.compile(r"[0-9]{1,9}")


def _parse_int(name: str, value: str, low: int, high: int) -> int:
    # int() also reads "1_0", "+5", " 7" and other scripts' digits: a setting is plain ASCII digits.
    if not _DIGITS.fullmatch(value):
        raise SettingsError(name, f"{value[:40]!r} is not an integer written with the digits 0-9 alone")
    number = int(value)
    if not low <= number <= high:
        raise SettingsError(name, f"{number} is outside {low}-{high}")
    return number


def _parse_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    lowered = value.lower()
    if lowered not in choices:
        raise SettingsError(name, f"{value!r} is not one of {', '.join(choices)}")
    return lowered


def _parse_bool(name: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise SettingsError(name, f"{value!r} is not true or false")


def _parse_https_endpoint(name: str, value: str) -> str:
    """An https origin with an optional path; returned without a trailing slash."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError as err:
        raise SettingsError(name, f"{value!r} is not a valid URL") from err
    if parts.scheme != "https" or not parts.hostname:
        raise SettingsError(name, f"{value!r} is not an https URL")
    if parts.username or parts.password or parts.query or parts.fragment or any(c.isspace() for c in value):
        raise SettingsError(name, f"{value!r} must have no credentials, query, fragment or whitespace")
    return value.rstrip("/")


def _parse_force_after(value: str, *, window_hours: int) -> int | None:
    if value.lower() == "off":
        return None
    return _parse_int("CMK_FORCE_ADOPTION_AFTER_MINUTES", value, 0, window_hours * 60)


def _is_loopback(host: str) -> bool:
    """Decided on the parsed address: "127.evil.example" is a name anyone can register, not loopback."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parse_severity(name: str, value: str) -> Severity:
    try:
        return Severity(value.lower())
    except ValueError:
        raise SettingsError(name, f"must be one of {', '.join(Severity)}") from None


def _parse_webhook(name: str, value: str) -> str | None:
    if not value:
        return None
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError as err:
        raise SettingsError(name, "is not a valid URL") from err
    host = parts.hostname or ""
    loopback = _is_loopback(host)
    if not host or not (parts.scheme == "https" or (parts.scheme == "http" and loopback)):
        # The URL may carry a token: never echo it.
        raise SettingsError(name, "must be an https URL (http only for loopback hosts)")
    if parts.username or parts.password or any(c.isspace() for c in value):
        raise SettingsError(name, "must have no credentials or whitespace")
    return value


def _parse_ncrontab(name: str, value: str) -> str:
    try:
        ncrontab.parse(value)
    except ncrontab.NcrontabError as err:
        raise SettingsError(name, str(err)) from err
    return value


def _parse_audit_archive(value: str) -> AuditArchive | None:
    if not value:
        return None
    target = _rewrap_target("CMK_AUDIT_ARCHIVE", value)  # the same <account>/<container> rules
    return AuditArchive(target.account, target.container)

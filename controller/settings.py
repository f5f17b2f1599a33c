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
from controller.model import normalise_origin

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
        "Comma-separated allowlist of the Key Vault / Managed HSM origins the controller manages "
        "(host names such as contoso.vault.azure.net, or https origins). Events and key URIs from any other "
        "vault are rejected before any request is made. Required.",
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
        "CMK_AUDIT_ARCHIVE",
        "",
        "Storage account archive of the vaults' AuditEvent logs, as <account>/<container> (Azure's container is "
        "insights-logs-auditevent): read for the vaults whose logs are not in CMK_LOG_ANALYTICS_WORKSPACE. "
        "Empty: no archive.",
    ),
    SettingSpec(
        "CMK_AUDIT_WINDOW_HOURS",
        "24",
        "How far back the audit analysis (cmkctl audit) looks for failed KeyWrap/KeyUnwrap/KeyGet. 1-720.",
    ),
)

_KNOWN: Final = {spec.name: spec for spec in SETTINGS}
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
    vaults: tuple[str, ...]
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
    log_analytics_workspace: str | None = None
    log_analytics_endpoint: str = "https://api.loganalytics.io"
    #: The storage-account archive of the vaults' audit logs (CMK_AUDIT_ARCHIVE), None when not set.
    audit_archive: AuditArchive | None = None
    audit_window_hours: int = 24

    @property
    def poison_queue(self) -> str:
        return f"{self.work_queue}-poison"

    def vault_allowed(self, origin: str) -> bool:
        return origin in self.vaults


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Read and validate every CMK_ setting; raise SettingsError naming the first invalid one."""

    def raw(name: str) -> str:
        return environ.get(name, _KNOWN[name].default).strip()

    return Settings(
        vaults=_parse_vaults(raw("CMK_VAULTS")),
        subscriptions=_parse_list("CMK_SUBSCRIPTIONS", raw("CMK_SUBSCRIPTIONS"), _subscription),
        sweep_schedule=_parse_ncrontab(raw("CMK_SWEEP_SCHEDULE")),
        work_queue=_match("CMK_WORK_QUEUE", raw("CMK_WORK_QUEUE"), _QUEUE_NAME, "a queue name (3-57 "
                          "lower-case letters, digits, single hyphens)", max_len=57),
        ledger_table=_match("CMK_LEDGER_TABLE", raw("CMK_LEDGER_TABLE"), _TABLE_NAME,
                            "a table name (3-63 letters and digits, starting with a letter)"),
        event_dedupe_hours=_parse_int("CMK_EVENT_DEDUPE_HOURS", raw("CMK_EVENT_DEDUPE_HOURS"), 1, 720),
        adoption_window_hours=_parse_int("CMK_ADOPTION_WINDOW_HOURS", raw("CMK_ADOPTION_WINDOW_HOURS"), 1, 168),
        pinned_policy=_parse_choice("CMK_PINNED_POLICY", raw("CMK_PINNED_POLICY"), ("alert", "update")),
        auto_rotate=_parse_bool("CMK_AUTO_ROTATE", raw("CMK_AUTO_ROTATE")),
        rewrap_targets=_parse_list("CMK_REWRAP_TARGETS", raw("CMK_REWRAP_TARGETS"), _rewrap_target),
        arm_endpoint=_parse_https_endpoint("CMK_ARM_ENDPOINT", raw("CMK_ARM_ENDPOINT")),
        force_adoption_after_minutes=_parse_force_after(raw("CMK_FORCE_ADOPTION_AFTER_MINUTES"),
                                                        raw("CMK_ADOPTION_WINDOW_HOURS")),
        alert_webhook_url=_parse_webhook(raw("CMK_ALERT_WEBHOOK_URL")),
        log_analytics_workspace=(_subscription("CMK_LOG_ANALYTICS_WORKSPACE", raw("CMK_LOG_ANALYTICS_WORKSPACE"))
                                 if raw("CMK_LOG_ANALYTICS_WORKSPACE") else None),
        log_analytics_endpoint=_parse_https_endpoint("CMK_LOG_ANALYTICS_ENDPOINT", raw("CMK_LOG_ANALYTICS_ENDPOINT")),
        audit_archive=_parse_audit_archive(raw("CMK_AUDIT_ARCHIVE")),
        audit_window_hours=_parse_int("CMK_AUDIT_WINDOW_HOURS", raw("CMK_AUDIT_WINDOW_HOURS"), 1, 720),
    )


def _parse_vaults(value: str) -> tuple[str, ...]:
    if not value:
        raise SettingsError("CMK_VAULTS", "is required: list the vaults the controller manages")
    origins: list[str] = []
    for entry in (part.strip() for part in value.split(",")):
        if not entry:
            continue
        try:
            origin = normalise_origin(entry)
        except InvalidKeyId as err:
            raise SettingsError("CMK_VAULTS", str(err)) from err
        if origin not in origins:
            origins.append(origin)
    if not origins:
        raise SettingsError("CMK_VAULTS", "is required: list the vaults the controller manages")
    return tuple(origins)


def _parse_list(name: str, value: str, parse_one: Callable[[str, str], _T]) -> tuple[_T, ...]:
    items = [part.strip() for part in value.split(",") if part.strip()]
    return tuple(parse_one(name, item) for item in items)


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


def _parse_int(name: str, value: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError as err:
        raise SettingsError(name, f"{value!r} is not an integer") from err
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


def _parse_force_after(value: str, window_hours: str) -> int | None:
    name = "CMK_FORCE_ADOPTION_AFTER_MINUTES"
    if value.lower() == "off":
        return None
    window_minutes = int(window_hours) * 60 if window_hours.isdigit() else 168 * 60
    return _parse_int(name, value, 0, window_minutes)


def _is_loopback(host: str) -> bool:
    """Decided on the parsed address: "127.evil.example" is a name anyone can register, not loopback."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parse_webhook(value: str) -> str | None:
    name = "CMK_ALERT_WEBHOOK_URL"
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


def _parse_ncrontab(value: str) -> str:
    try:
        ncrontab.parse(value)
    except ncrontab.NcrontabError as err:
        raise SettingsError("CMK_SWEEP_SCHEDULE", str(err)) from err
    return value


def _parse_audit_archive(value: str) -> AuditArchive | None:
    if not value:
        return None
    target = _rewrap_target("CMK_AUDIT_ARCHIVE", value)  # the same <account>/<container> rules
    return AuditArchive(target.account, target.container)

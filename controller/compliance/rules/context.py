"""What every rule reads: the estate, its index, the settings and the clock; and how findings are made."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from controller.compliance.estate import Estate, ReadAspect, ReadFailure, arm_name, arm_resource_group
from controller.compliance.findings import Finding
from controller.compliance.resolve import EstateIndex, KeyLookup, index
from controller.model import Severity
from controller.reasons import Reason

#: Account tag that puts an account in scope of CMK-001 when CMK_REQUIRE_CMK is "tagged".
REQUIRED_TAG = "cmk-required"
#: Account tag that takes an account out of scope of CMK-001 (and CMK-019's source check), always.
EXEMPT_TAG = "cmk-exempt"

NOT_EVALUABLE = "CMK-000"

#: Each rule's default severity (RULES.md). CMK-009 may lower to medium (expiring soon).
DEFAULT_SEVERITY: Mapping[str, Severity] = {
    "CMK-000": Severity.HIGH,
    "CMK-001": Severity.HIGH,
    "CMK-002": Severity.CRITICAL,
    "CMK-003": Severity.HIGH,
    "CMK-004": Severity.HIGH,
    "CMK-005": Severity.CRITICAL,
    "CMK-006": Severity.CRITICAL,
    "CMK-007": Severity.CRITICAL,
    "CMK-008": Severity.MEDIUM,
    "CMK-009": Severity.CRITICAL,
    "CMK-010": Severity.MEDIUM,
    "CMK-011": Severity.LOW,
    "CMK-012": Severity.HIGH,
    "CMK-013": Severity.CRITICAL,
    "CMK-014": Severity.INFO,
    "CMK-015": Severity.MEDIUM,
    "CMK-016": Severity.MEDIUM,
    "CMK-017": Severity.CRITICAL,
    "CMK-018": Severity.MEDIUM,
    "CMK-019": Severity.HIGH,
    "CMK-020": Severity.INFO,
}


class RequireCmk(enum.StrEnum):
    """Which storage accounts CMK-001 requires to use a customer-managed key."""

    ALL = "all"  # every account, except those tagged cmk-exempt=true
    TAGGED = "tagged"  # only accounts tagged cmk-required=true (and not cmk-exempt=true)


@dataclass(frozen=True, slots=True)
class RuleSettings:
    """The rules' thresholds (each wired from the app setting named in its comment)."""

    #: CMK_REQUIRE_CMK: which accounts CMK-001 requires to use CMK.
    require_cmk: RequireCmk = RequireCmk.ALL
    #: CMK_ADOPTION_WINDOW_HOURS (existing): how long a versionless consumer may lag (CMK-012, CMK-019).
    adoption_window: timedelta = timedelta(hours=24)
    #: CMK_EXPIRY_WARNING_DAYS: a version in use expiring within this is CMK-009 medium.
    expiry_warning: timedelta = timedelta(days=30)
    #: CMK_ROTATION_MAX_AGE_DAYS: CMK-010's longest acceptable rotation period and current-version age.
    rotation_max_age: timedelta = timedelta(days=90)
    #: CMK_MIN_RSA_KEY_SIZE: CMK-005's minimum RSA size (2048, 3072 or 4096).
    min_rsa_key_size: int = 2048
    #: CMK_REWRAP_WINDOW_HOURS: how long blobs may stay wrapped by an old version (CMK-018).
    rewrap_window: timedelta = timedelta(hours=24)
    #: CMK_MAX_ACCOUNTS_PER_KEY: CMK-020 advises when more accounts share one key.
    max_accounts_per_key: int = 50

    def __post_init__(self) -> None:
        for name in ("adoption_window", "expiry_warning", "rotation_max_age", "rewrap_window"):
            if getattr(self, name) <= timedelta(0):
                raise ValueError(f"{name} must be positive")
        if self.min_rsa_key_size not in (2048, 3072, 4096):
            raise ValueError("min_rsa_key_size must be 2048, 3072 or 4096")
        if self.max_accounts_per_key < 1:
            raise ValueError("max_accounts_per_key must be at least 1")


@dataclass(frozen=True, slots=True)
class RuleContext:
    estate: Estate
    index: EstateIndex
    settings: RuleSettings
    now: datetime

    @classmethod
    def of(cls, estate: Estate, settings: RuleSettings, now: datetime) -> RuleContext:
        if now.utcoffset() is None:
            raise ValueError("now must be timezone-aware")
        return cls(estate, index(estate), settings, now)


def finding(rule: str, resource: str, title: str, evidence: Mapping[str, object], remediation: str,
            *, severity: Severity | None = None) -> Finding:
    return Finding(rule=rule, severity=severity or DEFAULT_SEVERITY[rule], resource=resource, title=title,
                   evidence=dict(evidence), remediation=remediation)


#: What the controller's identity needs to read each aspect (the remediation of a CMK-000).
_READ_ACCESS: Mapping[ReadAspect, str] = {
    ReadAspect.KEYS: "list and get key permissions (or Key Vault Reader) on the vault",
    ReadAspect.KEY_VERSIONS: "list and get key permissions (or Key Vault Reader) on the vault",
    ReadAspect.ROTATION_POLICY: "the getrotationpolicy key permission (or Key Vault Reader) on the vault",
    ReadAspect.DELETED_KEYS: "the list key permission (or Key Vault Reader) on the vault",
    ReadAspect.ROLE_ASSIGNMENTS: "Microsoft.Authorization/roleAssignments/read (Reader) at the vault",
    ReadAspect.ROLE_DEFINITION: "Microsoft.Authorization/roleDefinitions/read (Reader)",
    ReadAspect.MANAGEMENT_GROUPS: "Management Group Reader on the tenant root group",
    ReadAspect.AUDIT_LOGS: "Log Analytics Reader on the workspace, and CMK_LOG_ANALYTICS_WORKSPACE set",
    ReadAspect.BLOB_CENSUS: "Storage Blob Data Reader on the container",
}


@dataclass(frozen=True, slots=True)
class Unevaluable:
    """Why a rule could not be evaluated for a resource; ``failure`` is the recorded read failure, and
    ``aspect`` what was not read when no failure was recorded."""

    reason: Reason
    detail: str
    failure: ReadFailure | None = None
    extra: Mapping[str, object] = field(default_factory=dict)
    aspect: ReadAspect | None = None


def not_read(estate: Estate, resource: str, aspect: ReadAspect, detail: str) -> Unevaluable:
    """A part of ``resource`` was not read: with the recorded read failure, if any."""
    return Unevaluable(Reason.NOT_READ, detail, estate.failure(resource, aspect), aspect=aspect)


def lookup_not_evaluable(lookup: KeyLookup) -> Unevaluable:
    return Unevaluable(Reason.NOT_READ, lookup.reason, lookup.failure, aspect=lookup.aspect)


def not_evaluable(rule: str, resource: str, cause: Unevaluable) -> Finding:
    """The CMK-000 finding of one rule that could not be evaluated for ``resource``."""
    entry: dict[str, object] = {"rule": rule, "reason": cause.reason.value, "detail": cause.detail, **cause.extra}
    failure = cause.failure
    if cause.aspect is not None:
        entry.update(aspect=cause.aspect.value)
    if failure is not None:
        entry.update(aspect=failure.aspect.value, read_error=failure.reason, status_code=failure.status_code)
    return finding(NOT_EVALUABLE, resource, f"{rule} could not be evaluated", {"not_evaluated": (entry,)},
                   read_remediation(failure.aspect if failure else cause.aspect))


def read_failure_finding(failure: ReadFailure) -> Finding:
    """The CMK-000 finding of something the gatherer could not read."""
    status = f" (HTTP {failure.status_code})" if failure.status_code is not None else ""
    entry = {"aspect": failure.aspect.value, "read_error": failure.reason, "status_code": failure.status_code}
    return finding(NOT_EVALUABLE, failure.resource, f"could not read {failure.aspect.value}{status}",
                   {"not_evaluated": (entry,)}, read_remediation(failure.aspect))


def read_remediation(aspect: ReadAspect | None) -> str:
    needed = _READ_ACCESS.get(aspect, "Reader on the resource") if aspect is not None else "Reader on the resource"
    return (f"give the controller's identity {needed}, or fix the error named in the evidence; the next sweep "
            "evaluates it again")


def az_names(resource_id: str) -> str:
    """``--name <name> --resource-group <group>`` for an az command about an ARM resource."""
    return f"--name {arm_name(resource_id)} --resource-group {arm_resource_group(resource_id)}"


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None

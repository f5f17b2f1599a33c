"""The compliance report of one sweep, and its versioned JSON document (docs/REPORTS.md).

The JSON document is the stored form: every other format (Markdown, SARIF, HTML) is rendered from a
``ComplianceReport``, which the HTTP function reads back from storage with ``parse_report``. The shape
is fixed by the JSON Schema shipped in ``schemas/``; ``to_json`` and ``from_json`` both validate
against it, so the controller never writes a document it cannot read back, and a document from
another schema version is refused by name instead of being misread.
"""

from __future__ import annotations

import enum
import json
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from functools import cache
from importlib import resources
from typing import Any

import jsonschema

from controller.compliance.findings import Finding
from controller.errors import InvalidReport
from controller.model import Severity

SCHEMA_PREFIX = "urn:cmk-controller:schema:compliance-report:"
SCHEMA_ID = SCHEMA_PREFIX + "v1"
_SCHEMA_RESOURCE = "schemas/compliance-report-v1.schema.json"
#: Errors quote the offending value from the document; a whole finding would drown the reason.
_MESSAGE_LIMIT = 300


@dataclass(frozen=True, slots=True)
class VersionReport:
    """One version of a key: who uses it, and whether disabling it would break anyone."""

    version: str
    enabled: bool
    created: datetime | None
    expires: datetime | None
    latest: bool
    used_by: tuple[str, ...]  # ARM ids (accounts, encryption scopes) and <account>/<container>
    blobs: int | None  # client-side-encrypted blobs wrapped by this version; None when not counted
    safe_to_disable: bool
    why: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "created", _utc(self.created, "created"))
        object.__setattr__(self, "expires", _utc(self.expires, "expires"))
        object.__setattr__(self, "used_by", tuple(self.used_by))

    @property
    def in_use(self) -> bool:
        return bool(self.used_by) or bool(self.blobs)


@dataclass(frozen=True, slots=True)
class KeyReport:
    key: str  # the versionless key URI
    versions: tuple[VersionReport, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "versions", tuple(self.versions))


@dataclass(frozen=True, slots=True)
class ReportSummary:
    by_severity: Mapping[Severity, int]  # every severity, zero included, most severe first
    by_rule: Mapping[str, int]  # rules with findings, in rule id order
    resources_evaluated: int
    not_evaluable: int

    @property
    def finding_count(self) -> int:
        return sum(self.by_severity.values())

    def as_json(self) -> dict[str, object]:
        return {
            "findings": self.finding_count,
            "bySeverity": {severity.value: count for severity, count in self.by_severity.items()},
            "byRule": dict(self.by_rule),
            "resourcesEvaluated": self.resources_evaluated,
            "notEvaluable": self.not_evaluable,
        }


@dataclass(frozen=True, slots=True)
class ComplianceReport:
    """The findings of one sweep, most severe first, and per key the versions in use.

    Construction normalises: findings are sorted (severity, rule, resource), timestamps are moved to
    UTC (naive ones are refused), and evidence is made JSON-native (datetimes become ISO 8601
    strings, tuples lists), so that ``ComplianceReport.from_json(report.to_json()) == report``.
    """

    generated_at: datetime
    findings: tuple[Finding, ...]
    resources_evaluated: int  # resources the sweep evaluated the rules on
    not_evaluable: int  # of those, resources on which some rule could not be evaluated (CMK-000)
    keys: tuple[KeyReport, ...] = ()
    subscriptions: tuple[str, ...] = ()  # the scope swept

    def __post_init__(self) -> None:
        object.__setattr__(self, "generated_at", _utc(self.generated_at, "generated_at"))
        normalised = (replace(finding, evidence=_json_evidence(finding)) for finding in self.findings)
        object.__setattr__(self, "findings", tuple(sorted(normalised, key=_finding_order)))
        object.__setattr__(self, "keys", tuple(self.keys))
        object.__setattr__(self, "subscriptions", tuple(self.subscriptions))

    @property
    def summary(self) -> ReportSummary:
        severities = Counter(finding.severity for finding in self.findings)
        rules = Counter(finding.rule for finding in self.findings)
        return ReportSummary(
            by_severity={severity: severities[severity] for severity in Severity},
            by_rule={rule: rules[rule] for rule in sorted(rules)},
            resources_evaluated=self.resources_evaluated,
            not_evaluable=self.not_evaluable,
        )

    def to_json(self) -> dict[str, object]:
        """The stored document (schema ``SCHEMA_ID``); raises InvalidReport if the report breaks the schema."""
        document: dict[str, object] = {
            "schema": SCHEMA_ID,
            "generatedAt": iso_timestamp(self.generated_at),
            "scope": {"subscriptions": list(self.subscriptions)},
            "summary": self.summary.as_json(),
            "findings": [finding.as_json() for finding in self.findings],
            "keys": [_key_json(key) for key in self.keys],
        }
        _validate(document)
        return document

    @classmethod
    def from_json(cls, document: object) -> ComplianceReport:
        """Read a stored document back; raises InvalidReport for another schema version or a broken document."""
        if not isinstance(document, Mapping):
            raise InvalidReport(f"a compliance report is a JSON object, not {type(document).__name__}")
        schema = document.get("schema")
        quoted = _shorten(repr(schema))
        if not isinstance(schema, str) or not schema.startswith(SCHEMA_PREFIX):
            raise InvalidReport(f"not a compliance report: its schema is {quoted}, expected {SCHEMA_ID!r}")
        if schema != SCHEMA_ID:
            raise InvalidReport(
                f"compliance report schema {quoted} is not supported: this controller reads {SCHEMA_ID!r}"
            )
        _validate(document)
        findings = [_finding_from_json(position, item) for position, item in enumerate(document["findings"])]
        # What the schema cannot see: a date that does not exist (2026-02-30), a number JSON text can
        # spell but not hold (1e400 reads as infinity).
        try:
            report = cls(
                generated_at=_parse_timestamp(document["generatedAt"]),
                findings=tuple(findings),
                resources_evaluated=document["summary"]["resourcesEvaluated"],
                not_evaluable=document["summary"]["notEvaluable"],
                keys=tuple(_key_from_json(key) for key in document["keys"]),
                subscriptions=tuple(document["scope"]["subscriptions"]),
            )
        except (TypeError, ValueError) as err:
            raise InvalidReport(f"compliance report has an impossible value: {_shorten(str(err))}") from err
        if report.summary.as_json() != document["summary"]:
            raise InvalidReport("the report's summary does not match its findings")
        return report


def parse_report(data: str | bytes) -> ComplianceReport:
    """A stored report (the JSON text of ``ComplianceReport.to_json()``) read back; InvalidReport if it is not one."""
    try:
        document = json.loads(data, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError) as err:
        raise InvalidReport(f"the stored report is not valid JSON: {err}") from err
    return ComplianceReport.from_json(document)


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


@cache
def _validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(resources.files("controller.compliance").joinpath(_SCHEMA_RESOURCE).read_text("utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def _validate(document: Mapping[str, object]) -> None:
    error = jsonschema.exceptions.best_match(_validator().iter_errors(document))
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "(document)"
        raise InvalidReport(f"compliance report breaks schema {SCHEMA_ID} at {where}: {_shorten(error.message)}")


def _shorten(text: str) -> str:
    return text if len(text) <= _MESSAGE_LIMIT else text[:_MESSAGE_LIMIT] + "..."


def _finding_order(finding: Finding) -> tuple[int, str, str, str]:
    return (finding.severity.rank, finding.rule, finding.resource.lower(), finding.title)


def _utc(moment: datetime | None, name: str) -> datetime | None:
    if moment is None:
        return None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {moment.isoformat()}")
    return moment.astimezone(UTC)


def iso_timestamp(moment: datetime) -> str:
    """The report's timestamp form: UTC, ISO 8601, ``Z`` suffix (microseconds only when non-zero)."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _optional_timestamp(moment: datetime | None) -> str | None:
    return None if moment is None else iso_timestamp(moment)


def _parse_timestamp(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def _parse_optional_timestamp(text: str | None) -> datetime | None:
    return None if text is None else _parse_timestamp(text)


def _json_evidence(finding: Finding) -> dict[str, object]:
    return _json_object(finding.evidence, f"evidence of {finding.rule} on {finding.resource}")


def _json_object(mapping: Mapping[Any, object], where: str) -> dict[str, object]:
    converted: dict[str, object] = {}
    for key, item in mapping.items():
        if not isinstance(key, str):
            raise TypeError(f"{where}: key {key!r} is not a string")
        converted[key] = _json_native(item, f"{where}.{key}")
    return converted


def _json_native(value: object, where: str) -> object:
    """``value`` as JSON types, or TypeError naming where the unsupported value sits."""
    if isinstance(value, enum.Enum):
        return _json_native(value.value, where)
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{where}: {value} is not a JSON number")
        return value
    if isinstance(value, datetime):
        return iso_timestamp(value) if value.tzinfo is not None else value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return _json_object(value, where)
    if isinstance(value, list | tuple):
        return [_json_native(item, f"{where}[{index}]") for index, item in enumerate(value)]
    raise TypeError(f"{where}: {type(value).__name__} is not JSON-serialisable")


def _finding_from_json(position: int, item: Mapping[str, Any]) -> Finding:
    finding = Finding(
        rule=item["rule"],
        severity=Severity(item["severity"]),
        resource=item["resource"],
        title=item["title"],
        evidence=item["evidence"],
        remediation=item["remediation"],
    )
    if finding.fingerprint != item["fingerprint"]:
        raise InvalidReport(
            f"finding {position} ({finding.rule}): its fingerprint does not match its rule and resource"
        )
    return finding


def _key_json(key: KeyReport) -> dict[str, object]:
    return {
        "key": key.key,
        "versions": [
            {
                "version": version.version,
                "enabled": version.enabled,
                "created": _optional_timestamp(version.created),
                "expires": _optional_timestamp(version.expires),
                "latest": version.latest,
                "usedBy": list(version.used_by),
                "blobs": version.blobs,
                "safeToDisable": version.safe_to_disable,
                "why": version.why,
            }
            for version in key.versions
        ],
    }


def _key_from_json(item: Mapping[str, Any]) -> KeyReport:
    return KeyReport(key=item["key"], versions=tuple(_version_from_json(version) for version in item["versions"]))


def _version_from_json(item: Mapping[str, Any]) -> VersionReport:
    return VersionReport(
        version=item["version"],
        enabled=item["enabled"],
        created=_parse_optional_timestamp(item["created"]),
        expires=_parse_optional_timestamp(item["expires"]),
        latest=item["latest"],
        used_by=tuple(item["usedBy"]),
        blobs=item["blobs"],
        safe_to_disable=item["safeToDisable"],
        why=item["why"],
    )



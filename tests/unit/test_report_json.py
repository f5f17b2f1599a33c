"""controller.compliance.report: the report model, its versioned JSON document and the schema file."""

from __future__ import annotations

import copy
import enum
import json
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from controller.compliance.findings import Finding
from controller.compliance.formats import render_json
from controller.compliance.report import SCHEMA_ID, ComplianceReport, KeyReport, VersionReport, parse_report
from controller.errors import InvalidReport
from controller.model import Severity
from tests.report_support import ACCOUNT_HR, GENERATED_AT, KEY, sample_findings, sample_keys, sample_report

pytestmark = pytest.mark.unit

SCHEMA_FILE = "schemas/compliance-report-v1.schema.json"


def _schema() -> dict[str, Any]:
    text = resources.files("controller.compliance").joinpath(SCHEMA_FILE).read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def test_the_schema_file_is_a_valid_2020_12_schema_with_the_report_id() -> None:
    schema = _schema()
    Draft202012Validator.check_schema(schema)
    assert schema["$id"] == SCHEMA_ID
    assert schema["properties"]["schema"] == {
        "description": schema["properties"]["schema"]["description"],
        "const": SCHEMA_ID,
    }


def test_the_document_validates_against_the_schema_file() -> None:
    document = sample_report().to_json()
    errors = list(Draft202012Validator(_schema(), format_checker=Draft202012Validator.FORMAT_CHECKER)
                  .iter_errors(document))
    assert errors == []
    assert document["schema"] == SCHEMA_ID
    assert document["generatedAt"] == "2026-12-03T13:00:00.123456Z"
    assert document["scope"] == {"subscriptions": ["00000000-0000-0000-0000-000000000001"]}


def test_findings_are_sorted_most_severe_first_then_by_rule_and_resource() -> None:
    report = sample_report()
    order = [(finding.severity, finding.rule, finding.resource.rsplit("/", 1)[-1]) for finding in report.findings]
    assert order == [
        (Severity.CRITICAL, "CMK-006", "hr"),
        (Severity.CRITICAL, "CMK-006", "sales"),
        (Severity.HIGH, "CMK-000", "contoso"),
        (Severity.HIGH, "CMK-012", "hr"),
        (Severity.MEDIUM, "CMK-008", "sales"),
        (Severity.LOW, "CMK-011", "hr"),
        (Severity.INFO, "CMK-014", "hr"),
    ]
    reversed_input = ComplianceReport(GENERATED_AT, tuple(reversed(sample_findings())), 5, 1)
    assert reversed_input.findings == report.findings


def test_summary_counts_every_severity_and_each_rule() -> None:
    summary = sample_report().to_json()["summary"]
    assert summary == {
        "findings": 7,
        "bySeverity": {"critical": 2, "high": 2, "medium": 1, "low": 1, "info": 1},
        "byRule": {"CMK-000": 1, "CMK-006": 2, "CMK-008": 1, "CMK-011": 1, "CMK-012": 1, "CMK-014": 1},
        "resourcesEvaluated": 5,
        "notEvaluable": 1,
    }


def test_an_empty_sweep_still_lists_all_five_severities() -> None:
    report = ComplianceReport(GENERATED_AT, (), resources_evaluated=0, not_evaluable=0)
    assert report.to_json()["summary"] == {
        "findings": 0,
        "bySeverity": {"critical": 0, "high": 0, "medium": 0, "low": 0, "info": 0},
        "byRule": {},
        "resourcesEvaluated": 0,
        "notEvaluable": 0,
    }
    assert ComplianceReport.from_json(report.to_json()) == report


def test_round_trip_through_the_document_is_exact() -> None:
    report = sample_report()
    document = report.to_json()
    assert ComplianceReport.from_json(document) == report
    assert ComplianceReport.from_json(document).to_json() == document
    stored = render_json(report)
    assert parse_report(stored) == report
    assert parse_report(stored.encode()) == report
    assert json.loads(stored) == document


def test_round_trip_keeps_versions_timestamps_and_unknown_counts() -> None:
    version = VersionReport("abc", enabled=True, created=None, expires=None, latest=True, used_by=(),
                            blobs=None, safe_to_disable=False, why="the latest version")
    report = ComplianceReport(GENERATED_AT.replace(microsecond=0), (), 1, 0, keys=sample_keys())
    read_back = ComplianceReport.from_json(report.to_json())
    assert read_back == report
    assert read_back.keys[0].versions[1].expires == GENERATED_AT + timedelta(days=20)
    assert report.to_json()["generatedAt"] == "2026-12-03T13:00:00Z"
    lone = ComplianceReport(GENERATED_AT, (), 1, 0, keys=(KeyReport(KEY, (version,)),))
    assert lone.to_json()["keys"] == [{"key": KEY, "versions": [{
        "version": "abc", "enabled": True, "created": None, "expires": None, "latest": True, "usedBy": [],
        "blobs": None, "safeToDisable": False, "why": "the latest version"}]}]
    assert ComplianceReport.from_json(lone.to_json()) == lone


def test_timestamps_in_other_zones_are_stored_in_utc() -> None:
    cet = timezone(timedelta(hours=1))
    report = ComplianceReport(datetime(2026, 12, 3, 14, 0, tzinfo=cet), (), 0, 0)
    assert report.generated_at == datetime(2026, 12, 3, 13, 0, tzinfo=UTC)
    assert report.to_json()["generatedAt"] == "2026-12-03T13:00:00Z"


def test_a_naive_timestamp_is_refused() -> None:
    with pytest.raises(ValueError, match="generated_at must be timezone-aware"):
        ComplianceReport(datetime(2026, 12, 3, 13, 0), (), 0, 0)
    with pytest.raises(ValueError, match="expires must be timezone-aware"):
        VersionReport("v", enabled=True, created=None, expires=datetime(2027, 1, 1), latest=True,
                      used_by=(), blobs=None, safe_to_disable=False, why="x")


class _Colour(enum.Enum):
    RED = "red"


def test_evidence_is_made_json_native_so_the_round_trip_stays_exact() -> None:
    finding = Finding("CMK-009", Severity.MEDIUM, KEY, "The key version expires soon", {
        "expires": datetime(2027, 1, 1, tzinfo=UTC),
        "day": date(2027, 1, 1),
        "versions": ("a", "b"),
        "severity": Severity.MEDIUM,
        "colour": _Colour.RED,
        "nested": {"ratio": 0.5, "missing": None, "ok": True},
    })
    report = ComplianceReport(GENERATED_AT, (finding,), 1, 0)
    assert report.findings[0].evidence == {
        "expires": "2027-01-01T00:00:00Z",
        "day": "2027-01-01",
        "versions": ["a", "b"],
        "severity": "medium",
        "colour": "red",
        "nested": {"ratio": 0.5, "missing": None, "ok": True},
    }
    assert ComplianceReport.from_json(report.to_json()) == report


@pytest.mark.parametrize(
    ("evidence", "where"),
    [
        ({"roles": {"reader"}}, "evidence of CMK-006 on .*hr.roles: set"),
        ({"nested": {"ratio": float("nan")}}, r"evidence of CMK-006 on .*hr.nested.ratio: nan"),
        ({"nested": {1: "x"}}, "evidence of CMK-006 on .*hr.nested: key 1"),
        ({"list": [b"bytes"]}, r"evidence of CMK-006 on .*hr.list\[0\]: bytes"),
    ],
)
def test_evidence_that_is_not_json_is_refused_naming_where(evidence: dict[str, object], where: str) -> None:
    with pytest.raises(TypeError, match=where):
        ComplianceReport(GENERATED_AT, (Finding("CMK-006", Severity.CRITICAL, ACCOUNT_HR, "t", evidence),), 1, 0)


def test_a_report_that_breaks_the_schema_is_not_written() -> None:
    bad_rule = ComplianceReport(GENERATED_AT, (Finding("XYZ-1", Severity.LOW, ACCOUNT_HR, "t"),), 1, 0)
    with pytest.raises(InvalidReport, match=r"at (summary/byRule|findings/0/rule): 'XYZ-1' does not match"):
        bad_rule.to_json()
    with pytest.raises(InvalidReport, match="at summary/resourcesEvaluated: -1 is less than the minimum"):
        ComplianceReport(GENERATED_AT, (), -1, 0).to_json()


Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: object) -> Mutation:
    def mutate(document: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = document
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        target[int(last) if last.isdigit() else last] = value

    return mutate


def _delete(path: str) -> Mutation:
    def mutate(document: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = document
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        del target[last]

    return mutate


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_delete("findings"), "'findings' is a required property"),
        (_set("extra", 1), "Additional properties are not allowed"),
        (_set("findings.0.severity", "urgent"), "at findings/0/severity"),
        (_set("findings.0.rule", "cmk-6"), "at findings/0/rule"),
        (_set("findings.0.evidence", ["x"]), "at findings/0/evidence"),
        (_delete("findings.0.remediation"), "'remediation' is a required property"),
        (_set("generatedAt", "2026-12-03T13:00:00"), "at generatedAt"),
        (_set("generatedAt", "2026-12-03T13:00:00+01:00"), "at generatedAt"),
        (_set("summary.bySeverity.info", -1), "at summary/bySeverity/info"),
        (_delete("summary.bySeverity.low"), "'low' is a required property"),
        (_set("summary.byRule", {"CMK-006": 0}), "at summary/byRule/CMK-006"),
        (_set("keys.0.versions.0.blobs", "many"), "at keys/0/versions/0/blobs"),
        (_set("keys.0.versions.0.usedBy", "one"), "at keys/0/versions/0/usedBy"),
        (_set("scope.subscriptions", ["a", "a"]), "at scope/subscriptions"),
    ],
)
def test_documents_that_break_the_schema_are_refused(mutate: Mutation, message: str) -> None:
    document = copy.deepcopy(sample_report().to_json())
    mutate(document)
    with pytest.raises(InvalidReport, match=f"breaks schema {SCHEMA_ID}") as refused:
        ComplianceReport.from_json(document)
    assert message in str(refused.value)


def test_a_tampered_fingerprint_is_refused() -> None:
    document = sample_report().to_json()
    document["findings"][1]["fingerprint"] = "0" * 32  # type: ignore[index]
    with pytest.raises(InvalidReport, match=r"finding 1 \(CMK-006\): its fingerprint does not match"):
        ComplianceReport.from_json(document)


def test_a_summary_that_disagrees_with_the_findings_is_refused() -> None:
    document = sample_report().to_json()
    document["summary"]["bySeverity"]["critical"] = 3  # type: ignore[index]
    with pytest.raises(InvalidReport, match="summary does not match its findings"):
        ComplianceReport.from_json(document)


def test_a_newer_schema_version_is_refused_by_name() -> None:
    document = sample_report().to_json()
    document["schema"] = "urn:cmk-controller:schema:compliance-report:v2"
    with pytest.raises(InvalidReport) as refused:
        ComplianceReport.from_json(document)
    assert str(refused.value) == (
        "compliance report schema 'urn:cmk-controller:schema:compliance-report:v2' is not supported: "
        f"this controller reads '{SCHEMA_ID}'"
    )


@pytest.mark.parametrize("schema", [None, 1, "https://example.invalid/other-schema"])
def test_a_document_of_another_kind_is_refused(schema: object) -> None:
    document = sample_report().to_json()
    document["schema"] = schema
    with pytest.raises(InvalidReport, match="not a compliance report"):
        ComplianceReport.from_json(document)


@pytest.mark.parametrize(
    ("stored", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe\x00", "not valid JSON"),
        (b'{"schema": NaN}', "not valid JSON"),
        (b"[]", "a compliance report is a JSON object, not list"),
    ],
)
def test_stored_text_that_is_not_a_report_is_refused(stored: bytes, message: str) -> None:
    with pytest.raises(InvalidReport, match=message):
        parse_report(stored)


def test_a_long_foreign_schema_value_is_cut_short_in_the_error() -> None:
    document = sample_report().to_json()
    document["schema"] = "urn:cmk-controller:schema:compliance-report:v" + "9" * 5000
    with pytest.raises(InvalidReport, match="is not supported") as refused:
        ComplianceReport.from_json(document)
    assert len(str(refused.value)) < 450


def test_the_example_in_the_documentation_is_a_valid_report() -> None:
    docs = (Path(__file__).parents[2] / "docs" / "REPORTS.md").read_text("utf-8")
    example = json.loads(docs.split("```json\n", 1)[1].split("```", 1)[0])
    report = ComplianceReport.from_json(example)
    assert report.to_json() == example
    assert report.findings[0].rule == "CMK-006"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('"generatedAt": "2026-12-03T13:00:00.123456Z"', '"generatedAt": "2026-02-30T13:00:00Z"',
         "impossible value: day is out of range for month"),
        ('"created": "2026-11-30T13:00:00.123456Z"', '"created": "2026-11-30T25:00:00Z"',
         "impossible value: hour must be in 0..23"),
        ('"ageHours": 72', '"ageHours": 1e400', r"impossible value: evidence of CMK-012 on .*hr.ageHours: inf"),
    ],
)
def test_values_the_schema_cannot_see_are_refused(old: str, new: str, message: str) -> None:
    stored = render_json(sample_report())
    assert old in stored
    with pytest.raises(InvalidReport, match=message):
        parse_report(stored.replace(old, new))

"""controller.compliance.formats.sarif: SARIF 2.1.0, validated against the official OASIS schema."""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft4Validator

from controller.compliance.catalogue import RULE_CATALOGUE
from controller.compliance.findings import Finding
from controller.compliance.formats.sarif import render_sarif, sarif_log
from controller.compliance.report import ComplianceReport
from controller.model import Severity
from tests.report_support import ACCOUNT_HR, ACCOUNT_SALES, GENERATED_AT, sample_report

pytestmark = pytest.mark.unit

# Byte-identical copy of the OASIS schema; upstream, commit and license in tests/data/schemas/NOTICE.md.
OFFICIAL_SCHEMA = Path(__file__).parents[1] / "data" / "schemas" / "sarif-schema-2.1.0.json"


@cache
def _validator() -> Draft4Validator:
    schema = json.loads(OFFICIAL_SCHEMA.read_text("utf-8"))
    Draft4Validator.check_schema(schema)
    return Draft4Validator(schema, format_checker=Draft4Validator.FORMAT_CHECKER)


def _errors(log: object) -> list[str]:
    return [f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in _validator().iter_errors(log)]


def _log(report: ComplianceReport) -> dict[str, Any]:
    log: dict[str, Any] = json.loads(render_sarif(report))
    return log


def test_the_vendored_schema_is_the_official_one() -> None:
    schema = json.loads(OFFICIAL_SCHEMA.read_text("utf-8"))
    assert schema["id"] == "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
    assert schema["properties"]["version"]["enum"] == ["2.1.0"]


@pytest.mark.parametrize(
    "report",
    [sample_report(), ComplianceReport(GENERATED_AT, (), 0, 0)],
    ids=["sample", "empty"],
)
def test_the_log_validates_against_the_official_sarif_schema(report: ComplianceReport) -> None:
    log = _log(report)
    assert _errors(log) == []
    assert log["version"] == "2.1.0"
    assert log["runs"][0]["invocations"] == [{"executionSuccessful": True, "endTimeUtc": "2026-12-03T13:00:00.123456Z"}]


def test_the_official_schema_catches_a_broken_log() -> None:
    """The validation above can fail: the schema refuses an undefined level, and a result without a message."""
    log = _log(sample_report())
    bad_level = copy.deepcopy(log)
    bad_level["runs"][0]["results"][0]["level"] = "critical"
    assert any("runs/0/results/0/level" in error for error in _errors(bad_level))
    no_message = copy.deepcopy(log)
    del no_message["runs"][0]["results"][0]["message"]
    assert any("'message' is a required property" in error for error in _errors(no_message))


def test_the_driver_declares_every_catalogue_rule() -> None:
    driver = _log(ComplianceReport(GENERATED_AT, (), 0, 0))["runs"][0]["tool"]["driver"]
    assert driver["name"] == "cmk-controller"
    assert [rule["id"] for rule in driver["rules"]] == [f"CMK-{number:03d}" for number in range(21)]
    assert len(driver["rules"]) == len(RULE_CATALOGUE)
    identity = driver["rules"][6]
    assert identity == {
        "id": "CMK-006",
        "name": "IdentityLacksKeyPermissions",
        "shortDescription": {"text": "The encryption identity lacks get, wrapKey or unwrapKey on the key"},
        "defaultConfiguration": {"level": "error"},
        "properties": {"security-severity": "9.5", "severity": "critical",
                       "tags": ["security", "customer-managed-keys"]},
    }
    levels = {rule["id"]: rule["defaultConfiguration"]["level"] for rule in driver["rules"]}
    assert (levels["CMK-008"], levels["CMK-011"], levels["CMK-014"], levels["CMK-001"]) == (
        "warning", "note", "note", "error")


@pytest.mark.parametrize(
    ("severity", "level", "security_severity"),
    [
        (Severity.CRITICAL, "error", "9.5"),
        (Severity.HIGH, "error", "8.0"),
        (Severity.MEDIUM, "warning", "5.5"),
        (Severity.LOW, "note", "3.0"),
        (Severity.INFO, "note", "0.0"),
    ],
)
def test_severity_maps_to_level_and_security_severity(severity: Severity, level: str, security_severity: str) -> None:
    finding = Finding("CMK-001", severity, ACCOUNT_HR, "No CMK", {"keySource": "Microsoft.Storage"})
    result = _log(ComplianceReport(GENERATED_AT, (finding,), 1, 0))["runs"][0]["results"][0]
    assert result["level"] == level
    assert result["properties"]["security-severity"] == security_severity
    assert result["properties"]["severity"] == severity.value


def test_each_result_carries_rule_location_fingerprint_and_evidence() -> None:
    report = sample_report()
    run = _log(report)["runs"][0]
    assert len(run["results"]) == len(report.findings)
    result = run["results"][1]
    finding = report.findings[1]
    assert finding.resource == ACCOUNT_SALES
    assert result == {
        "ruleId": "CMK-006",
        "ruleIndex": 6,
        "level": "error",
        "message": {"text": f"The encryption identity lacks unwrapKey on the key. Remediation: {finding.remediation}"},
        "locations": [{"logicalLocations": [{"fullyQualifiedName": ACCOUNT_SALES, "kind": "resource"}]}],
        "partialFingerprints": {"cmkFinding/v1": finding.fingerprint},
        "properties": {
            "severity": "critical",
            "security-severity": "9.5",
            "evidence": {"identity": "sales-cmk-identity", "missing": ["unwrapKey"], "vaultModel": "rbac"},
            "remediation": finding.remediation,
        },
    }
    rules = run["tool"]["driver"]["rules"]
    assert all(rules[result["ruleIndex"]]["id"] == result["ruleId"] for result in run["results"])
    assert run["properties"]["summary"] == report.summary.as_json()


def test_a_rule_the_catalogue_lacks_is_declared_from_its_finding() -> None:
    finding = Finding("CMK-099", Severity.MEDIUM, ACCOUNT_HR, "A rule from a newer catalogue", {}, "")
    log = sarif_log(ComplianceReport(GENERATED_AT, (finding,), 1, 0))
    assert _errors(log) == []
    run: Any = log["runs"]
    rules = run[0]["tool"]["driver"]["rules"]
    assert rules[-1] == {
        "id": "CMK-099",
        "shortDescription": {"text": "A rule from a newer catalogue"},
        "defaultConfiguration": {"level": "warning"},
        "properties": {"security-severity": "5.5", "severity": "medium", "tags": ["security", "customer-managed-keys"]},
    }
    assert run[0]["results"][0]["ruleIndex"] == len(rules) - 1
    assert run[0]["results"][0]["message"] == {"text": "A rule from a newer catalogue"}

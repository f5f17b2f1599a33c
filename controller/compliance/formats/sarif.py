"""The report as SARIF 2.1.0 (OASIS), for code-scanning dashboards.

Every rule of the catalogue is declared in ``tool.driver.rules`` (found something or not), plus any
rule id a finding carries that this build's catalogue lacks. A finding is located by its resource as
a logical location (no file: the estate is not source code); its fingerprint is the partial
fingerprint, so dashboards track it across runs.
"""

from __future__ import annotations

import json

from controller.compliance.catalogue import RULE_CATALOGUE, RuleInfo
from controller.compliance.findings import Finding
from controller.compliance.report import ComplianceReport, iso_timestamp
from controller.model import Severity

SARIF_VERSION = "2.1.0"
SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
TOOL_NAME = "cmk-controller"
FINGERPRINT_NAME = "cmkFinding/v1"

_LEVELS = {
    Severity.CRITICAL: "error",
    Severity.HIGH: "error",
    Severity.MEDIUM: "warning",
    Severity.LOW: "note",
    Severity.INFO: "note",
}
# GitHub code scanning reads properties.security-severity (a number as a string) into its bands:
# critical above 9.0, high 7.0-8.9, medium 4.0-6.9, low 0.1-3.9.
_SECURITY_SEVERITY = {
    Severity.CRITICAL: "9.5",
    Severity.HIGH: "8.0",
    Severity.MEDIUM: "5.5",
    Severity.LOW: "3.0",
    Severity.INFO: "0.0",
}


def sarif_level(severity: Severity) -> str:
    return _LEVELS[severity]


def sarif_log(report: ComplianceReport) -> dict[str, object]:
    rules = _rules(report)
    index = {rule["id"]: position for position, rule in enumerate(rules)}
    return {
        "$schema": SARIF_SCHEMA,
        "version": SARIF_VERSION,
        "runs": [
            {
                "tool": {"driver": {"name": TOOL_NAME, "rules": rules}},
                "invocations": [
                    {"executionSuccessful": True, "endTimeUtc": iso_timestamp(report.generated_at)},
                ],
                "results": [_result(finding, index[finding.rule]) for finding in report.findings],
                "properties": {"summary": report.summary.as_json(), "subscriptions": list(report.subscriptions)},
            }
        ],
    }


def render_sarif(report: ComplianceReport) -> str:
    return json.dumps(sarif_log(report), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def _rules(report: ComplianceReport) -> list[dict[str, object]]:
    known = {rule.id for rule in RULE_CATALOGUE}
    uncatalogued: dict[str, Finding] = {}
    for finding in report.findings:
        if finding.rule not in known:
            uncatalogued.setdefault(finding.rule, finding)
    extra = [RuleInfo(rule, "", finding.title, finding.severity) for rule, finding in sorted(uncatalogued.items())]
    return [_descriptor(rule) for rule in (*RULE_CATALOGUE, *extra)]


def _descriptor(rule: RuleInfo) -> dict[str, object]:
    descriptor: dict[str, object] = {"id": rule.id}
    if rule.name:
        descriptor["name"] = rule.name
    descriptor |= {
        "shortDescription": {"text": rule.summary},
        "defaultConfiguration": {"level": sarif_level(rule.default_severity)},
        "properties": {
            "security-severity": _SECURITY_SEVERITY[rule.default_severity],
            "severity": rule.default_severity.value,
            "tags": ["security", "customer-managed-keys"],
        },
    }
    return descriptor


def _result(finding: Finding, rule_index: int) -> dict[str, object]:
    message = finding.title
    if finding.remediation:
        message = f"{message.rstrip('.')}. Remediation: {finding.remediation}"
    return {
        "ruleId": finding.rule,
        "ruleIndex": rule_index,
        "level": sarif_level(finding.severity),
        "message": {"text": message},
        "locations": [{"logicalLocations": [{"fullyQualifiedName": finding.resource, "kind": "resource"}]}],
        "partialFingerprints": {FINGERPRINT_NAME: finding.fingerprint},
        "properties": {
            "severity": finding.severity.value,
            "security-severity": _SECURITY_SEVERITY[finding.severity],
            "evidence": dict(finding.evidence),
            "remediation": finding.remediation,
        },
    }

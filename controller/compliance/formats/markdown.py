"""The report as Markdown (GitHub-flavoured): summary, findings grouped by severity, per key its versions."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from controller.compliance.formats.text import blob_count, evidence_lines, rule_name, timestamp, yes_no
from controller.compliance.report import SCHEMA_ID, ComplianceReport, KeyReport
from controller.model import Severity

# Backslash-escaping ASCII punctuation is always literal in CommonMark: values from the estate (resource
# names, titles, evidence) can then neither format text, open links or HTML, nor split a table cell.
_SPECIAL = re.compile(r"([\\`*_\[\]<>|&~#!])")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def markdown_text(value: str) -> str:
    """``value`` as literal Markdown inline text; line breaks become ``<br>`` so a table cell stays one row."""
    return _LINE_BREAK.sub("<br>", _SPECIAL.sub(r"\\\1", value))


def _lines(values: Iterable[str]) -> str:
    return "<br>".join(markdown_text(value) for value in values) or "-"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], *, numeric: Sequence[int] = ()) -> list[str]:
    """A table whose cells are already escaped; ``numeric`` columns align right."""
    alignment = ["---:" if index in numeric else "---" for index in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(alignment) + "|"]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return lines


def render_markdown(report: ComplianceReport) -> str:
    summary = report.summary
    scope = ", ".join(markdown_text(subscription) for subscription in report.subscriptions) or "-"
    lines = [
        "# CMK compliance report",
        "",
        f"Generated {timestamp(report.generated_at)}; subscriptions: {scope}; schema `{SCHEMA_ID}`.",
        "",
        "## Summary",
        "",
        f"{summary.resources_evaluated} resources evaluated, {summary.not_evaluable} not evaluable, "
        f"{summary.finding_count} findings.",
        "",
    ]
    lines += _table(
        ["Severity", "Findings"],
        [[severity.value, str(count)] for severity, count in summary.by_severity.items()],
        numeric=[1],
    )
    lines += ["", "### By rule", ""]
    if summary.by_rule:
        lines += _table(
            ["Rule", "Name", "Findings"],
            [[markdown_text(rule), rule_name(rule), str(count)] for rule, count in summary.by_rule.items()],
            numeric=[2],
        )
    else:
        lines.append("No rule found anything.")
    lines += ["", "## Findings", ""]
    if not report.findings:
        lines.append("No findings.")
    for severity in Severity:
        findings = [finding for finding in report.findings if finding.severity is severity]
        if not findings:
            continue
        lines += [f"### {severity.value.capitalize()} ({len(findings)})", ""]
        lines += _table(
            ["Rule", "Resource", "Title", "Evidence", "Remediation"],
            [
                [
                    markdown_text(finding.rule),
                    markdown_text(finding.resource),
                    markdown_text(finding.title),
                    _lines(evidence_lines(finding.evidence)),
                    markdown_text(finding.remediation) or "-",
                ]
                for finding in findings
            ],
        )
        lines.append("")
    lines += ["## Keys", ""]
    if not report.keys:
        lines += ["No keys in scope.", ""]
    for key in report.keys:
        lines += _key_section(key)
    return "\n".join(lines).rstrip("\n") + "\n"


def _key_section(key: KeyReport) -> list[str]:
    lines = [f"### {markdown_text(key.key)}", ""]
    if not key.versions:
        return [*lines, "No versions.", ""]
    lines += _table(
        ["Version", "Latest", "Enabled", "Created", "Expires", "Used by", "Blobs", "Safe to disable", "Why"],
        [
            [
                markdown_text(version.version),
                yes_no(version.latest),
                yes_no(version.enabled),
                timestamp(version.created),
                timestamp(version.expires),
                _lines(version.used_by),
                blob_count(version.blobs),
                yes_no(version.safe_to_disable),
                markdown_text(version.why),
            ]
            for version in key.versions
        ],
        numeric=[6],
    )
    lines.append("")
    return lines

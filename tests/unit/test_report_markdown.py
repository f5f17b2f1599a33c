"""controller.compliance.formats.markdown: the report as Markdown, values kept literal."""

from __future__ import annotations

import pytest

from controller.compliance.findings import Finding
from controller.compliance.formats.markdown import markdown_text, render_markdown
from controller.compliance.report import SCHEMA_ID, ComplianceReport
from controller.model import Severity
from tests.report_support import ACCOUNT_HR, ACCOUNT_SALES, GENERATED_AT, LATEST_VERSION, OLD_VERSION, sample_report

pytestmark = pytest.mark.unit


def _section(markdown: str, heading: str) -> list[str]:
    """The lines under ``heading`` up to the next heading of the same or a higher level."""
    lines = markdown.splitlines()
    start = lines.index(heading)
    level = heading.split(" ", 1)[0]
    end = next(
        (index for index in range(start + 1, len(lines))
         if lines[index].startswith("#") and len(lines[index].split(" ", 1)[0]) <= len(level)),
        len(lines),
    )
    return lines[start + 1 : end]


def test_summary_lists_every_severity_and_each_rule_with_its_name() -> None:
    markdown = render_markdown(sample_report())
    assert markdown.startswith("# CMK compliance report\n")
    assert f"schema `{SCHEMA_ID}`" in markdown
    summary = _section(markdown, "## Summary")
    assert "5 resources evaluated, 1 not evaluable, 7 findings." in summary
    assert [line for line in summary if line.startswith("| ") and line.split(" | ")[0][2:] in set(Severity)] == [
        "| critical | 2 |", "| high | 2 |", "| medium | 1 |", "| low | 1 |", "| info | 1 |",
    ]
    by_rule = _section(markdown, "### By rule")
    assert "| CMK-006 | IdentityLacksKeyPermissions | 2 |" in by_rule
    assert "| CMK-000 | NotEvaluable | 1 |" in by_rule


def test_findings_are_grouped_by_severity_most_severe_first() -> None:
    markdown = render_markdown(sample_report())
    headings = [line for line in _section(markdown, "## Findings") if line.startswith("### ")]
    assert headings == ["### Critical (2)", "### High (2)", "### Medium (1)", "### Low (1)", "### Info (1)"]
    critical = [line for line in _section(markdown, "### Critical (2)") if line.startswith("| CMK")]
    assert len(critical) == 2
    assert critical[1].startswith(f"| CMK-006 | {ACCOUNT_SALES} | The encryption identity lacks unwrapKey on the key |")
    assert 'missing: \\["unwrapKey"\\]<br>vaultModel: "rbac"' in critical[1]


def test_each_key_has_a_table_of_its_versions() -> None:
    markdown = render_markdown(sample_report())
    sales = _section(markdown, "### https://contoso.vault.azure.net/keys/sales")
    rows = [line for line in sales if line.startswith("| ") and not line.startswith("| Version")]
    assert len(rows) == 3
    assert rows[0].startswith(
        f"| {LATEST_VERSION} | yes | yes | 2026-11-30 13:00 UTC | - | {ACCOUNT_SALES} | 120 | no |"
    )
    assert rows[1].startswith(f"| {OLD_VERSION} | no | yes | 2026-08-30 13:00 UTC | 2026-12-23 13:00 UTC | "
                              f"{ACCOUNT_HR}<br>sales/invoices | 7 | no |")
    assert rows[2].endswith("| 0 | yes | no account, scope or blob uses it |")
    assert "No versions." in _section(markdown, "### https://contoso.vault.azure.net/keys/empty")


def test_an_empty_sweep_says_so() -> None:
    markdown = render_markdown(ComplianceReport(GENERATED_AT, (), 0, 0))
    assert "No findings." in _section(markdown, "## Findings")
    assert "No rule found anything." in _section(markdown, "### By rule")
    assert "No keys in scope." in _section(markdown, "## Keys")


@pytest.mark.parametrize(
    ("value", "literal"),
    [
        ("a|b", "a\\|b"),
        ("line one\nline two\r\nthree\rfour", "line one<br>line two<br>three<br>four"),
        ("<script>alert(1)</script>", "\\<script\\>alert(1)\\</script\\>"),
        ("**bold** _it_ `code` [link](x) ~~gone~~ &amp; #1 ![img]",
         "\\*\\*bold\\*\\* \\_it\\_ \\`code\\` \\[link\\](x) \\~\\~gone\\~\\~ \\&amp; \\#1 \\!\\[img\\]"),
        ("back\\slash", "back\\\\slash"),
    ],
)
def test_values_are_escaped_to_literal_text(value: str, literal: str) -> None:
    assert markdown_text(value) == literal


def test_a_hostile_value_cannot_split_a_table_row() -> None:
    hostile = Finding("CMK-001", Severity.HIGH, ACCOUNT_HR + "|injected", "title | with pipe\n| new | row |",
                      {"note": "a|b\nc"}, "fix\n\n# heading")
    markdown = render_markdown(ComplianceReport(GENERATED_AT, (hostile,), 1, 0))
    rows = [line for line in _section(markdown, "### High (1)") if line.startswith("| CMK")]
    assert len(rows) == 1
    cells = rows[0].replace("\\|", "").split("|")
    assert len(cells) == 7  # five cells between the outer pipes
    assert "\n# heading" not in markdown

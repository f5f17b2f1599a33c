"""controller.compliance.formats: choosing a format from ``?format=`` and rendering the report in it."""

from __future__ import annotations

import json

import pytest

from controller.compliance.formats import ReportFormat, render
from controller.compliance.report import parse_report
from controller.errors import InvalidInput
from tests.report_support import sample_report

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ReportFormat.JSON),
        ("", ReportFormat.JSON),
        ("json", ReportFormat.JSON),
        ("md", ReportFormat.MARKDOWN),
        (" SARIF ", ReportFormat.SARIF),
        ("Html", ReportFormat.HTML),
    ],
)
def test_format_values(value: str | None, expected: ReportFormat) -> None:
    assert ReportFormat.parse(value) is expected


@pytest.mark.parametrize("value", ["xml", "markdown", "pdf<script>" * 10])
def test_unknown_formats_are_refused_naming_the_choices(value: str) -> None:
    with pytest.raises(InvalidInput, match=r"unknown report format .*: choose json\|md\|sarif\|html$") as refused:
        ReportFormat.parse(value)
    assert len(str(refused.value)) < 80  # the echo of the value is cut short


def test_each_format_renders_with_its_media_type() -> None:
    report = sample_report()
    assert parse_report(render(report, ReportFormat.JSON)) == report
    assert render(report, ReportFormat.MARKDOWN).startswith("# CMK compliance report\n")
    assert json.loads(render(report, ReportFormat.SARIF))["version"] == "2.1.0"
    assert render(report, ReportFormat.HTML).startswith("<!DOCTYPE html>\n")
    assert {fmt.value: fmt.media_type for fmt in ReportFormat} == {
        "json": "application/json",
        "md": "text/markdown; charset=utf-8",
        "sarif": "application/sarif+json",
        "html": "text/html; charset=utf-8",
    }

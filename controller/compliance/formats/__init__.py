"""The report's formats: the stored JSON document and the renderings served from it (docs/REPORTS.md).

``render(report, ReportFormat.parse(query_value))`` is what the HTTP ``report`` function serves.
"""

from __future__ import annotations

import enum
import json

from controller.compliance.formats.html import render_html
from controller.compliance.formats.markdown import render_markdown
from controller.compliance.formats.sarif import render_sarif
from controller.compliance.report import ComplianceReport
from controller.errors import InvalidInput


class ReportFormat(enum.StrEnum):
    JSON = "json"
    MARKDOWN = "md"
    SARIF = "sarif"
    HTML = "html"

    @property
    def media_type(self) -> str:
        return _MEDIA_TYPES[self]

    @classmethod
    def parse(cls, value: str | None) -> ReportFormat:
        """A ``?format=`` value (case-insensitive; absent means json); InvalidInput names the choices."""
        if value is None or not value.strip():
            return cls.JSON
        try:
            return cls(value.strip().lower())
        except ValueError:
            choices = "|".join(member.value for member in cls)
            raise InvalidInput(f"unknown report format {value[:20]!r}: choose {choices}") from None


_MEDIA_TYPES = {
    ReportFormat.JSON: "application/json",
    ReportFormat.MARKDOWN: "text/markdown; charset=utf-8",
    ReportFormat.SARIF: "application/sarif+json",
    ReportFormat.HTML: "text/html; charset=utf-8",
}


def render_json(report: ComplianceReport) -> str:
    """The stored form: the schema's document, indented, UTF-8 safe."""
    return json.dumps(report.to_json(), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def render(report: ComplianceReport, report_format: ReportFormat) -> str:
    match report_format:
        case ReportFormat.JSON:
            return render_json(report)
        case ReportFormat.MARKDOWN:
            return render_markdown(report)
        case ReportFormat.SARIF:
            return render_sarif(report)
        case ReportFormat.HTML:
            return render_html(report)

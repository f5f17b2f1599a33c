"""controller.compliance.formats.html: one self-contained page; every value escaped, nothing loaded from outside."""

from __future__ import annotations

import base64
import hashlib

import pytest

from controller.compliance.findings import Finding
from controller.compliance.formats.html import CONTENT_SECURITY_POLICY, render_html
from controller.compliance.report import ComplianceReport, KeyReport, VersionReport
from controller.model import Severity
from tests.report_support import ACCOUNT_SALES, GENERATED_AT, parse_page, sample_report, text_of

pytestmark = pytest.mark.unit

# Attributes through which a page loads or navigates to something.
URL_ATTRIBUTES = {"src", "href", "action", "formaction", "srcset", "poster", "data", "background", "xlink:href",
                  "ping", "manifest", "cite", "longdesc", "codebase"}

HOSTILE_TITLE = '<script>document.body.setAttribute("data-pwned", "title")</script>'
HOSTILE_RESOURCE = 'javascript:alert(1)//"><img src=https://evil.example/x.png onerror=alert(1)>'
HOSTILE_EVIDENCE = {"note": "\"'><svg onload=alert(2)>", "url": "https://evil.example/steal.js"}
HOSTILE_REMEDIATION = "</td></tr></tbody></table><script src=\"https://evil.example/r.js\"></script>"
HOSTILE_KEY = "https://kv.vault.azure.net/keys/k\"><script>alert(3)</script>"
HOSTILE_USER = "<b onmouseover=alert(4)>acct</b>/container"
HOSTILE_WHY = "already escaped? &lt;script&gt; stays literal & visible"


def hostile_report() -> ComplianceReport:
    finding = Finding("CMK-006", Severity.CRITICAL, HOSTILE_RESOURCE, HOSTILE_TITLE, HOSTILE_EVIDENCE,
                      HOSTILE_REMEDIATION)
    version = VersionReport("v1<i>", enabled=True, created=GENERATED_AT, expires=None, latest=True,
                            used_by=(HOSTILE_USER,), blobs=None, safe_to_disable=False, why=HOSTILE_WHY)
    return ComplianceReport(GENERATED_AT, (finding,), 1, 0, keys=(KeyReport(HOSTILE_KEY, (version,)),),
                            subscriptions=("<sub>",))


def test_hostile_values_render_as_inerttext_of() -> None:
    page = render_html(hostile_report())
    elements = parse_page(page)
    scripts = [element for element in elements if element.tag == "script"]
    assert len(scripts) == 1  # the page's own
    assert scripts[0].attrs == {}
    assert not [element.tag for element in elements if element.tag in {"img", "svg", "b", "i", "sub"}]
    handlers = [(element.tag, name) for element in elements for name in element.attrs if name.startswith("on")]
    assert handlers == []
    assert "<script>document" not in page
    assert "&lt;script&gt;document.body.setAttribute(&quot;data-pwned&quot;, &quot;title&quot;)&lt;/script&gt;" in page
    row = next(element for element in elements if element.tag == "tr" and element.attrs.get("class") == "finding")
    cells = [element for element in elements if element.tag == "td"][:6]
    assert row.attrs["data-rule"] == "CMK-006"
    assert [text_of(cell) for cell in cells[2:4]] == [HOSTILE_RESOURCE, HOSTILE_TITLE]
    assert text_of(cells[5]) == HOSTILE_REMEDIATION
    evidence = next(element for element in elements if element.tag == "pre")
    assert text_of(evidence) == "note: \"\\\"'><svg onload=alert(2)>\"\nurl: \"https://evil.example/steal.js\""
    article = next(element for element in elements if element.tag == "article")
    assert article.attrs["data-key"] == HOSTILE_KEY
    assert [text_of(element) for element in elements if element.tag == "h3"] == [HOSTILE_KEY]
    assert [text_of(element) for element in elements if element.tag == "li"] == [HOSTILE_USER]
    assert HOSTILE_WHY in [text_of(element) for element in elements if element.tag == "td"]
    assert "&amp;lt;script&amp;gt; stays literal &amp; visible" in page


@pytest.mark.parametrize("report", [sample_report(), hostile_report()], ids=["sample", "hostile"])
def test_the_page_loads_nothing_from_outside(report: ComplianceReport) -> None:
    page = render_html(report)
    elements = parse_page(page)
    assert not [element.tag for element in elements if element.tag in {"link", "img", "iframe", "object", "embed",
                                                                        "video", "audio", "source", "base", "form"}]
    for element in elements:
        for name, value in element.attrs.items():
            if name in URL_ATTRIBUTES:
                assert value is not None
                assert value.startswith("#"), f"<{element.tag} {name}={value!r}> leaves the page"
    style = text_of(next(element for element in elements if element.tag == "style"))
    script = text_of(next(element for element in elements if element.tag == "script"))
    assert "url(" not in style
    assert "@import" not in style
    for forbidden in ("http", "fetch(", "XMLHttpRequest", "import(", "eval(", "innerHTML", "document.write"):
        assert forbidden not in script
    # A URL may appear as escaped text or in a data-* attribute (data the script reads), nowhere else.
    url_attributes = [(element.tag, name) for element in elements for name, value in element.attrs.items()
                      if value is not None and "://" in value and not name.startswith("data-")]
    assert url_attributes == []


def test_the_content_security_policy_allows_only_the_page_s_own_style_and_script() -> None:
    page = render_html(sample_report())
    elements = parse_page(page)
    meta = next(element for element in elements
                if element.tag == "meta" and element.attrs.get("http-equiv") == "Content-Security-Policy")
    assert meta.attrs["content"] == CONTENT_SECURITY_POLICY

    def digest(source: str) -> str:
        return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"

    style = text_of(next(element for element in elements if element.tag == "style"))
    script = text_of(next(element for element in elements if element.tag == "script"))
    directives = dict(directive.strip().split(" ", 1) for directive in CONTENT_SECURITY_POLICY.split(";"))
    assert directives == {
        "default-src": "'none'",
        "style-src": digest(style),
        "script-src": digest(script),
        "base-uri": "'none'",
        "form-action": "'none'",
    }


def test_summary_filters_and_rows() -> None:
    report = sample_report()
    elements = parse_page(render_html(report))
    cards = {element.attrs["data-severity"]: element for element in elements
             if element.tag == "a" and "data-severity" in element.attrs}
    assert list(cards) == ["critical", "high", "medium", "low", "info"]
    assert cards["critical"].attrs["href"] == "#severity=critical"
    counts = [text_of(element) for element in elements
              if element.tag == "span" and element.attrs.get("class") == "count"]
    assert counts == ["7", "2", "2", "1", "1", "1"]
    selects = {element.attrs["id"]: element for element in elements if element.tag == "select"}
    assert set(selects) == {"filter-severity", "filter-rule"}
    options = [(element.attrs["value"], text_of(element)) for element in elements if element.tag == "option"]
    assert options[:6] == [("", "all"), ("critical", "critical (2)"), ("high", "high (2)"), ("medium", "medium (1)"),
                           ("low", "low (1)"), ("info", "info (1)")]
    rule_options = options[6:]
    assert rule_options[0] == ("", "all")
    assert ("CMK-006", "CMK-006 IdentityLacksKeyPermissions (2)") in rule_options
    assert ("CMK-020", "CMK-020 KeySharedAcrossBoundaries (0)") in rule_options
    assert len(rule_options) == 22
    rows = [element for element in elements if element.tag == "tr" and element.attrs.get("class") == "finding"]
    assert [(row.attrs["data-severity"], row.attrs["data-rule"]) for row in rows] == [
        (finding.severity.value, finding.rule) for finding in report.findings
    ]
    assert [row.attrs["data-fingerprint"] for row in rows] == [finding.fingerprint for finding in report.findings]
    assert not [row for row in rows if "hidden" in row.attrs]  # without the script every row shows
    assert text_of(next(element for element in elements if element.tag == "output")) == "Showing 7 of 7 findings"


def test_each_key_lists_its_versions_and_who_uses_them() -> None:
    elements = parse_page(render_html(sample_report()))
    articles = [element for element in elements if element.tag == "article"]
    assert [article.attrs["data-key"] for article in articles] == [
        "https://contoso.vault.azure.net/keys/sales", "https://contoso.vault.azure.net/keys/empty"]
    version_rows = [element.attrs["class"] for element in elements
                    if element.tag == "tr" and element.attrs.get("class") in {"in-use", "unused"}]
    assert version_rows == ["in-use", "in-use", "unused"]
    users = [text_of(element) for element in elements if element.tag == "li"]
    assert users == [ACCOUNT_SALES, ACCOUNT_SALES.replace("sales", "hr"), "sales/invoices"]
    metas = [text_of(element) for element in elements if element.tag == "p" and element.attrs.get("class") == "meta"]
    assert "2 of 3 versions in use" in metas
    assert "No versions." in [text_of(element) for element in elements if element.tag == "p"]


def test_an_empty_sweep_renders_a_table_without_rows() -> None:
    elements = parse_page(render_html(ComplianceReport(GENERATED_AT, (), 0, 0)))
    assert not [element for element in elements if element.tag == "tr" and element.attrs.get("class") == "finding"]
    assert "No findings." in [text_of(element) for element in elements if element.tag == "td"]
    assert "No keys in scope." in [text_of(element) for element in elements if element.tag == "p"]

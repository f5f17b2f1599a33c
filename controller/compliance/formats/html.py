"""The report as one self-contained HTML page: inline CSS and script, no external asset, no link out.

Every value from the estate is HTML-escaped. The page also carries a Content-Security-Policy that lets
only its own style and script run (by hash), so even a value that slipped through could not execute.
The findings table filters by severity and rule; the filter state lives in the URL fragment
(``#severity=critical&rule=CMK-006``), so a filtered view can be linked to.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from html import escape

from controller.compliance.catalogue import RULE_CATALOGUE
from controller.compliance.findings import Finding
from controller.compliance.formats.text import blob_count, evidence_lines, rule_name, timestamp, yes_no
from controller.compliance.report import ComplianceReport, KeyReport, VersionReport

_STYLE = """
:root { color-scheme: light; --critical: #9b1c1c; --high: #c2410c; --medium: #a16207; --low: #1d4ed8;
  --info: #4b5563; --line: #d1d5db; --muted: #6b7280; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; padding: 24px;
  max-width: 1400px; color: #111827; background: #f9fafb; }
h1 { margin: 0 0 4px; font-size: 24px; } h2 { margin: 28px 0 10px; font-size: 18px; }
h3 { margin: 18px 0 6px; font-size: 14px; word-break: break-all; }
.meta { color: var(--muted); margin: 0; }
#summary { display: flex; gap: 12px; flex-wrap: wrap; margin-top: 18px; }
.card { display: block; min-width: 120px; padding: 12px 16px; border-radius: 8px; background: #fff;
  border: 1px solid var(--line); border-left: 6px solid var(--info); color: inherit; text-decoration: none; }
.card .count { display: block; font-size: 26px; font-weight: 700; }
.card .label { text-transform: uppercase; font-size: 12px; letter-spacing: .05em; color: var(--muted); }
.card.totals { border-left-color: #111827; }
.sev-critical { border-left-color: var(--critical); } .sev-high { border-left-color: var(--high); }
.sev-medium { border-left-color: var(--medium); } .sev-low { border-left-color: var(--low); }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; color: #fff; font-size: 12px;
  background: var(--info); }
.badge.sev-critical { background: var(--critical); } .badge.sev-high { background: var(--high); }
.badge.sev-medium { background: var(--medium); } .badge.sev-low { background: var(--low); }
.badge.safe { background: #047857; } .badge.unsafe { background: var(--critical); }
.filters { display: flex; gap: 16px; align-items: center; margin-bottom: 10px; }
.filters select { font: inherit; padding: 2px 4px; }
table { border-collapse: collapse; width: 100%; background: #fff; border: 1px solid var(--line); }
th, td { text-align: left; vertical-align: top; padding: 6px 8px; border-bottom: 1px solid var(--line); }
th { background: #f3f4f6; font-weight: 600; }
td.resource, td.uses { word-break: break-all; font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; }
pre.evidence { margin: 0; min-width: 220px; white-space: pre-wrap; overflow-wrap: anywhere; font-size: 12px; }
td.rule { white-space: nowrap; }
td.remediation { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; overflow-wrap: anywhere; }
td.number { text-align: right; }
tr.unused td { color: var(--muted); }
ul.uses { margin: 0; padding-left: 16px; }
""".strip()

_SCRIPT = """
(function () {
  "use strict";
  var severity = document.getElementById("filter-severity");
  var rule = document.getElementById("filter-rule");
  var rows = Array.prototype.slice.call(document.querySelectorAll("#findings tbody tr.finding"));
  var shown = document.getElementById("shown");
  var noMatch = document.getElementById("no-match");

  function choose(box, value) {
    var known = Array.prototype.some.call(box.options, function (option) { return option.value === value; });
    if (value && !known) {
      var option = document.createElement("option");
      option.value = value;
      option.textContent = value + " (0)";
      box.appendChild(option);
    }
    box.value = value || "";
  }

  function apply() {
    var visible = 0;
    rows.forEach(function (row) {
      var match = (!severity.value || row.getAttribute("data-severity") === severity.value) &&
        (!rule.value || row.getAttribute("data-rule") === rule.value);
      row.hidden = !match;
      if (match) { visible += 1; }
    });
    shown.textContent = "Showing " + visible + " of " + rows.length + " findings";
    noMatch.hidden = visible > 0 || rows.length === 0;
  }

  function fromFragment() {
    var params = new URLSearchParams(window.location.hash.replace(/^#/, ""));
    choose(severity, (params.get("severity") || "").toLowerCase());
    choose(rule, (params.get("rule") || "").toUpperCase());
    apply();
  }

  function toFragment() {
    apply();
    var params = new URLSearchParams();
    if (severity.value) { params.set("severity", severity.value); }
    if (rule.value) { params.set("rule", rule.value); }
    var fragment = params.toString();
    // Keep the query: served by the report function, the page's URL carries ?format=html.
    var unfiltered = window.location.pathname + window.location.search;
    window.history.replaceState(null, "", fragment ? "#" + fragment : unfiltered);
  }

  severity.addEventListener("change", toFragment);
  rule.addEventListener("change", toFragment);
  window.addEventListener("hashchange", fromFragment);
  fromFragment();
}());
""".strip()


def _csp_hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


# Nothing may load from anywhere: no images, fonts, frames, connections, forms; only this style and script.
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; style-src {_csp_hash(_STYLE)}; script-src {_csp_hash(_SCRIPT)}; "
    "base-uri 'none'; form-action 'none'"
)


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def render_html(report: ComplianceReport) -> str:
    generated = timestamp(report.generated_at)
    summary = report.summary
    scope = ", ".join(report.subscriptions) or "-"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta http-equiv="Content-Security-Policy" content="{_e(CONTENT_SECURITY_POLICY)}">',
        f"<title>CMK compliance report {_e(generated)}</title>",
        f"<style>{_STYLE}</style>",
        "</head>",
        "<body>",
        "<header>",
        "<h1>CMK compliance report</h1>",
        f'<p class="meta">Generated {_e(generated)} &middot; subscriptions: {_e(scope)} &middot; '
        f"{summary.resources_evaluated} resources evaluated, {summary.not_evaluable} not evaluable</p>",
        "</header>",
        '<section id="summary" aria-label="Findings by severity">',
        f'<a class="card totals" href="#"><span class="count">{summary.finding_count}</span>'
        '<span class="label">findings</span></a>',
    ]
    parts += [
        f'<a class="card sev-{severity.value}" href="#severity={severity.value}" data-severity="{severity.value}">'
        f'<span class="count">{count}</span><span class="label">{severity.value}</span></a>'
        for severity, count in summary.by_severity.items()
    ]
    parts += ["</section>", *_findings_section(report), *_keys_section(report.keys)]
    parts += [f"<script>{_SCRIPT}</script>", "</body>", "</html>"]
    return "\n".join(parts) + "\n"


def _options(choices: Iterable[tuple[str, str]]) -> str:
    return "".join(f'<option value="{_e(value)}">{_e(label)}</option>' for value, label in choices)


def _findings_section(report: ComplianceReport) -> list[str]:
    summary = report.summary
    catalogued = [rule.id for rule in RULE_CATALOGUE]
    rules = catalogued + [rule for rule in summary.by_rule if rule not in catalogued]
    severity_choices = [("", "all")] + [
        (severity.value, f"{severity.value} ({count})") for severity, count in summary.by_severity.items()
    ]
    rule_choices = [("", "all")] + [
        (rule, " ".join(filter(None, (rule, rule_name(rule), f"({summary.by_rule.get(rule, 0)})")))) for rule in rules
    ]
    total = len(report.findings)
    lines = [
        '<section id="findings-section">',
        "<h2>Findings</h2>",
        '<div class="filters" role="search">',
        f'<label>Severity <select id="filter-severity">{_options(severity_choices)}</select></label>',
        f'<label>Rule <select id="filter-rule">{_options(rule_choices)}</select></label>',
        f'<output id="shown">Showing {total} of {total} findings</output>',
        "</div>",
        '<table id="findings">',
        "<thead><tr><th>Severity</th><th>Rule</th><th>Resource</th><th>Title</th><th>Evidence</th>"
        "<th>Remediation</th></tr></thead>",
        "<tbody>",
    ]
    lines += [_finding_row(finding) for finding in report.findings]
    if not report.findings:
        lines.append('<tr><td colspan="6">No findings.</td></tr>')
    lines += ["</tbody>", "</table>", '<p id="no-match" hidden>No findings match the filter.</p>', "</section>"]
    return lines


def _finding_row(finding: Finding) -> str:
    severity = finding.severity.value
    evidence = "\n".join(evidence_lines(finding.evidence))
    return (
        f'<tr class="finding" data-severity="{_e(severity)}" data-rule="{_e(finding.rule)}" '
        f'data-fingerprint="{_e(finding.fingerprint)}">'
        f'<td><span class="badge sev-{_e(severity)}">{_e(severity)}</span></td>'
        f'<td class="rule" title="{_e(rule_name(finding.rule))}">{_e(finding.rule)}</td>'
        f'<td class="resource">{_e(finding.resource)}</td>'
        f"<td>{_e(finding.title)}</td>"
        f'<td><pre class="evidence">{_e(evidence)}</pre></td>'
        f'<td class="remediation">{_e(finding.remediation)}</td>'
        "</tr>"
    )


def _keys_section(keys: Iterable[KeyReport]) -> list[str]:
    lines = ['<section id="keys">', "<h2>Keys: versions in use</h2>"]
    keys = tuple(keys)
    if not keys:
        lines.append("<p>No keys in scope.</p>")
    for key in keys:
        in_use = sum(1 for version in key.versions if version.in_use)
        lines += [
            f'<article class="key" data-key="{_e(key.key)}">',
            f"<h3>{_e(key.key)}</h3>",
            f'<p class="meta">{in_use} of {len(key.versions)} versions in use</p>',
        ]
        if not key.versions:
            lines += ["<p>No versions.</p>", "</article>"]
            continue
        lines += [
            '<table class="versions">',
            "<thead><tr><th>Version</th><th>Latest</th><th>Enabled</th><th>Created</th><th>Expires</th>"
            "<th>Used by</th><th>Blobs</th><th>Safe to disable</th><th>Why</th></tr></thead>",
            "<tbody>",
            *(_version_row(version) for version in key.versions),
            "</tbody>",
            "</table>",
            "</article>",
        ]
    lines.append("</section>")
    return lines


def _version_row(version: VersionReport) -> str:
    users = "".join(f"<li>{_e(user)}</li>" for user in version.used_by)
    uses = f'<ul class="uses">{users}</ul>' if users else "-"
    safe = "safe" if version.safe_to_disable else "unsafe"
    return (
        f'<tr class="{"in-use" if version.in_use else "unused"}">'
        f'<td class="uses">{_e(version.version)}</td>'
        f"<td>{yes_no(version.latest)}</td>"
        f"<td>{yes_no(version.enabled)}</td>"
        f"<td>{_e(timestamp(version.created))}</td>"
        f"<td>{_e(timestamp(version.expires))}</td>"
        f'<td class="uses">{uses}</td>'
        f'<td class="number">{_e(blob_count(version.blobs))}</td>'
        f'<td><span class="badge {safe}">{yes_no(version.safe_to_disable)}</span></td>'
        f"<td>{_e(version.why)}</td>"
        "</tr>"
    )


#!/usr/bin/env bash
# Static security checks of the Bicep templates with checkov, in a dedicated virtualenv (.venv-iac at the
# project root, created on first use). Exits non-zero when a check fails or when checkov cannot parse a
# .bicep file (checkov silently skips files it cannot parse, so an unparsed file would otherwise pass).
# Every skipped check is justified inline, next to the resource, as `// checkov:skip=<ID>:<reason>`.
# checkov 3.3.30 parses Bicep with its bundled pycep-parser 0.5.1: keep the templates to that subset (no
# lambdas but filter(), no user-defined types, functions or imports, only the classic decorators).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${CHECKOV_VENV:-$root/.venv-iac}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3

if [[ ! -x "$venv/bin/checkov" ]] || ! cmp -s "$root/infra/requirements-iac.txt" "$venv/.requirements-iac.txt"; then
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$root/infra/requirements-iac.txt"
  cp "$root/infra/requirements-iac.txt" "$venv/.requirements-iac.txt"
fi

cd "$root"
report="$(mktemp)"
trap 'rm -f "$report"' EXIT

# --skip-download: no Prisma Cloud guidelines or policies are fetched; the run is offline and reproducible.
# The JSON report (not --quiet, which drops passed and skipped checks from it) is summarised below: every
# failure, every skip with its inline justification, and the parsing errors.
set +e
"$venv/bin/checkov" -d infra --framework bicep --compact --skip-download --output json >"$report" 2>/dev/null
set -e

"$venv/bin/python" - "$report" <<'PY'
import json
import pathlib
import sys

text = pathlib.Path(sys.argv[1]).read_text()
try:
    data = json.loads(text)
except json.JSONDecodeError:
    print("checkov produced no JSON report:", text[:2000], file=sys.stderr)
    sys.exit(2)
reports = data if isinstance(data, list) else [data]
totals = {"passed": 0, "failed": 0, "skipped": 0, "parsing_errors": 0, "resource_count": 0}
for report in reports:
    for key in totals:
        totals[key] += int(report.get("summary", {}).get(key, 0))
    results = report.get("results", {})
    for check in results.get("failed_checks", []):
        print(f"FAILED  {check['check_id']} {check['resource']} ({check['file_path']}): {check['check_name']}")
    for check in results.get("skipped_checks", []):
        reason = check.get("check_result", {}).get("suppress_comment", "")
        print(f"skipped {check['check_id']} {check['resource']} ({check['file_path']}): {reason}")
    for error in results.get("parsing_errors", []) or []:
        print(f"PARSE ERROR {error}")
print(
    f"checkov bicep: {totals['passed']} passed, {totals['failed']} failed, {totals['skipped']} skipped, "
    f"{totals['parsing_errors']} parsing errors, {totals['resource_count']} resources"
)
if totals["resource_count"] == 0:
    print("checkov found no Bicep resources: nothing was checked", file=sys.stderr)
    sys.exit(1)
sys.exit(1 if totals["failed"] or totals["parsing_errors"] else 0)
PY

"""`cmkctl sweep`: the compliance sweep from the command line (read-only: no alert, nothing stored).

Every rule of docs/RULES.md over the subscriptions given (default: CMK_SUBSCRIPTIONS, or every
subscription the identity can read), printed as a table for a person or as one of the report formats
(docs/REPORTS.md). ``--format json`` prints exactly one JSON document on stdout: the report.

Exit status: 0 when no finding reaches ``--fail-on`` (default high), 1 when one does, 2 on bad input
or when nothing could be evaluated (every resource read failed, or the subscriptions could not be
listed), 3 when Azure could not be reached at all.
"""

from __future__ import annotations

import argparse
import io
import re
import sys
from contextlib import nullcontext
from pathlib import Path

from rich.console import Console
from rich.table import Table

from controller import service
from controller.cli import tables
from controller.cli.common import (
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_UNREACHABLE,
    Commands,
    command,
    exit_status,
    fail,
    operator_dependencies,
)
from controller.compliance.formats import ReportFormat, render
from controller.compliance.report import ComplianceReport
from controller.errors import ControllerError
from controller.model import Severity

TABLE = "table"
_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)


def register(commands: Commands) -> None:
    parser = command(
        commands, "sweep", help_text="evaluate every compliance rule (docs/RULES.md) over the estate",
        examples=("cmkctl sweep", "cmkctl sweep --subscription 00000000-0000-0000-0000-000000000001 --format json",
                  "cmkctl sweep --format sarif --out cmk.sarif --fail-on critical"),
        notes="Read-only: raises no alert and stores no report (the timer does both).\n"
              "Exit 1: a finding at or above --fail-on; 2 also when nothing could be evaluated.")
    parser.add_argument("--subscription", action="append", type=_subscription, default=[], metavar="ID",
                        help="subscription to sweep (repeatable; default: CMK_SUBSCRIPTIONS, or every "
                        "subscription the identity can read)")
    parser.add_argument("--format", choices=[TABLE, *(member.value for member in ReportFormat)], default=TABLE,
                        help="table (default) for a person, or a report format (json, md, sarif, html)")
    tables.add_wide_option(parser)
    parser.add_argument("--out", type=Path, metavar="PATH", help="write the output to PATH instead of stdout")
    parser.add_argument("--fail-on", type=Severity, choices=list(Severity), default=Severity.HIGH,
                        metavar="SEVERITY", help="exit 1 when a finding is at least this severe: "
                        f"{', '.join(Severity)} (default high)")
    parser.set_defaults(run=_sweep)


def _subscription(value: str) -> str:
    if not _GUID.match(value.strip()):
        raise argparse.ArgumentTypeError(f"{value!r} is not a subscription id (a GUID)")
    return value.strip().lower()


def _sweep(args: argparse.Namespace) -> int:
    try:
        deps = operator_dependencies()
        progress = Console(stderr=True)
        # A spinner for a person at a terminal; nothing when stderr is piped or captured.
        with progress.status("sweeping the estate ...") if sys.stderr.isatty() else nullcontext():
            report = service.run_compliance_sweep(deps, args.subscription or deps.settings.subscriptions)
    except ControllerError as err:
        # Nothing was swept: the subscriptions could not even be listed (or Azure not reached at all).
        return fail(str(err), type(err).__name__,
                    EXIT_UNREACHABLE if exit_status(err) == EXIT_UNREACHABLE else EXIT_INVALID,
                    as_json=args.format == ReportFormat.JSON.value)
    output = render_output(report, args.format, wide=args.wide)
    if args.out is not None:
        args.out.write_text(output, encoding="utf-8")
    else:
        sys.stdout.write(output)
    if nothing_evaluated(report):
        print("cmkctl: nothing could be evaluated: every resource the sweep found failed to read "
              "(see the CMK-000 findings)", file=sys.stderr)
        return EXIT_INVALID
    return EXIT_FAILED if any(finding.severity.at_least(args.fail_on) for finding in report.findings) else 0


def nothing_evaluated(report: ComplianceReport) -> bool:
    """No resource could be evaluated: there was something to read and all of it failed."""
    cannot = any(finding.rule == "CMK-000" for finding in report.findings)
    return cannot and report.not_evaluable >= report.resources_evaluated


def render_output(report: ComplianceReport, output_format: str, *, wide: bool = False) -> str:
    if output_format != TABLE:
        return render(report, ReportFormat(output_format))
    text = io.StringIO()
    _print_table(report, tables.console(wide=wide, file=text), wide=wide)
    return text.getvalue()


def _print_table(report: ComplianceReport, console: Console, *, wide: bool) -> None:
    summary = report.summary
    counts = ", ".join(f"{count} {severity.value}" for severity, count in summary.by_severity.items() if count)
    console.print(f"{summary.finding_count} findings ({counts or 'none'}) over {report.resources_evaluated} "
                  f"resources; {report.not_evaluable} not evaluable")
    if not report.findings:
        return
    table = Table(show_lines=False, expand=not wide)
    table.add_column("Severity", no_wrap=True)
    table.add_column("Rule", no_wrap=True)
    table.add_column("Resource", overflow="fold", ratio=2, no_wrap=wide)
    table.add_column("Finding", overflow="fold", ratio=3, no_wrap=wide)
    for finding in report.findings:
        table.add_row(finding.severity.value, finding.rule, tables.resource(finding.resource, wide=wide),
                      finding.title)
    console.print(table)


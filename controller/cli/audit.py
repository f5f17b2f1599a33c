"""`cmkctl audit [--since 24h] [--format table|json]`: failed KeyWrap/KeyUnwrap/KeyGet in the managed
vaults' audit logs, grouped and classified with a remediation per class (CMK-017), and the keys deleted,
purged or recovered in the window.

Reads CMK_LOG_ANALYTICS_WORKSPACE (both table forms) and/or CMK_AUDIT_ARCHIVE through the same
composition root as the function app, authenticated as the person running it.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime

from controller import audit, service
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
from controller.errors import ControllerError


def register(commands: Commands) -> None:
    """Add ``audit`` to ``cmkctl``'s subparsers."""
    parser = command(
        commands, "audit", help_text="failed wraps, unwraps and key reads in the vaults' audit logs, classified",
        examples=("cmkctl audit", "cmkctl audit --since 7d --format json",
                  "cmkctl audit --since 6h --until 2026-12-01T09:00:00Z"),
        notes="Exit 1 lists the failures found or a key deleted or purged (and not recovered) in the window; 3 "
              "also means the logs were read only in part and showed none.",
    )
    parser.add_argument("--since", metavar="DURATION", default=None,
                        help="how far back: <n>h or <n>d, 1h to 30d (default: CMK_AUDIT_WINDOW_HOURS)")
    parser.add_argument("--until", metavar="TIME", type=_instant, default=None,
                        help="end of the window, ISO 8601 with a zone (default: now), to look at a past incident")
    parser.add_argument("--format", choices=("table", "json"), default="table",
                        help="an 80-column table (default) or one JSON document")
    tables.add_wide_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    as_json = args.format == "json"
    try:
        window = audit.parse_since(args.since) if args.since is not None else None
        report = service.scan_audit(operator_dependencies(), window, until=args.until)
    except ControllerError as err:
        return fail(str(err), type(err).__name__, exit_status(err), as_json=as_json)
    if report is None:
        return fail("no audit log configured: set CMK_LOG_ANALYTICS_WORKSPACE or CMK_AUDIT_ARCHIVE",
                     "NotConfigured", EXIT_INVALID, as_json=as_json)
    sys.stdout.write(audit.render_json(report) if as_json else audit.render_table(report, wide=args.wide))
    if report.partial:
        print(f"cmkctl: partial result: {report.partial_detail}", file=sys.stderr)
    if report.groups or report.missing_keys:
        return EXIT_FAILED
    return EXIT_UNREACHABLE if report.partial else 0


def _instant(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 date-time") from None
    if moment.utcoffset() is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no time zone: add Z or +hh:mm")
    return moment

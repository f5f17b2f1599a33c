"""The sandbox's command line: ``python -m emulators up | down | status | env | seed`` (run from the checkout).

The sandbox is a program of its own, never installed with the product: it runs from the repository root,
where ``emulators`` (and the function app it hosts) are importable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from emulators import sandbox
from emulators import seed as seeding
from emulators.processes import ProcessRecord

PROG = "python -m emulators"
SANDBOX_DIR_ENV = "CMK_SANDBOX_DIR"
EXIT_FAILED = 1
EXIT_INVALID = 2
EXIT_STOPPED = 3

EPILOG = f"""\
exit codes:
  0  success (status: running and healthy)
  1  failure (status: running but a component is unhealthy; down: a recorded process could not be stopped)
  2  invalid input (an unknown option or scenario)
  3  no running sandbox (status, env, seed)

The directory defaults to ${SANDBOX_DIR_ENV}, else .sandbox. Run from the repository root."""


def up(args: argparse.Namespace) -> int:
    try:
        state = sandbox.start_detached(args.dir, timeout=args.timeout)
    except sandbox.SandboxError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return EXIT_FAILED
    endpoints = state["endpoints"]
    components = sandbox.health(args.dir)["components"]
    unhealthy = sorted(name for name, component in components.items() if not component["ok"])
    health = f"unhealthy: {', '.join(unhealthy)}" if unhealthy else f"{len(components)} components healthy"
    print(f"sandbox running (pid {state['pid']}) in {args.dir}: {health}")
    print(f"  ARM            {endpoints['arm']}")
    print(f"  Log Analytics  {endpoints['logAnalytics']} (workspace {endpoints['logAnalyticsWorkspaceId']})")
    print(f"  Azurite blob   {endpoints['azuriteBlob']}")
    print(f"  alert sink     {endpoints['alertSink']}")
    print(f"  CA             {state['caPath']}")
    print(f"  settings       {state['settingsPath']} (source {state['envPath']} in a shell)")
    functions = state.get("functionsUrl")
    if functions:
        print(f"  Functions host {functions}: curl {functions}/api/health; POST {functions}/api/events?code=<the "
              f"'function' key in {state.get('hostKeysPath')}> with an Event Grid delivery")
        if not endpoints.get("functions"):
            print("                 (it starts with the first vault: CMK_VAULTS is required)")
    else:
        print("  Functions host none (started with --no-functions)")
    if not endpoints.get("vaults"):
        print(f"  no vaults yet: {PROG} seed rotation --dir {args.dir}")
    return EXIT_FAILED if unhealthy else 0


def down(args: argparse.Namespace) -> int:
    recorded, unreadable = ProcessRecord(args.dir).read()
    state_file = args.dir / sandbox.STATE_FILE
    if not state_file.exists() and not recorded and not unreadable:
        print(f"no sandbox in {args.dir}")
        return 0
    if sandbox.read_state(args.dir) is None:
        found = "unreadable" if state_file.exists() else "missing"
        print(f"{state_file} is {found}: stopping what the process record names ({len(recorded)} process(es))")
    report = sandbox.stop(args.dir)
    for line in report.lines():
        print(f"  {line}")
    if not report.clean:
        print(f"{PROG}: the sandbox in {args.dir} did not stop cleanly (see above)", file=sys.stderr)
        return EXIT_FAILED
    print(f"sandbox in {args.dir} stopped; no process it started is left")
    return 0


def status(args: argparse.Namespace) -> int:
    report = sandbox.health(args.dir)
    if args.json:
        print(json.dumps(report, indent=2))
    elif not report["components"]:
        print(f"sandbox in {args.dir}: stopped" + (f" ({report['error']})" if report.get("error") else ""))
    else:
        print(f"sandbox in {args.dir}: {'running' if report['running'] else 'degraded'}")
        for name, component in report["components"].items():
            detail = component.get("url") or component.get("note") or component.get("error") or ""
            extras = ", ".join(f"{k} {v}" for k, v in component.items() if k not in ("ok", "url", "note", "error"))
            line = " ".join(part for part in (detail, f"({extras})" if extras else "") if part)
            print(f"  {'ok  ' if component['ok'] else 'FAIL'} {name:<17} {line}")
    if report["running"]:
        return 0
    return EXIT_FAILED if report["components"] else EXIT_STOPPED


def env(args: argparse.Namespace) -> int:
    if sandbox.running_state(args.dir) is None:
        print(f"{PROG}: no running sandbox in {args.dir}", file=sys.stderr)
        return EXIT_STOPPED
    print((args.dir / sandbox.ENV_FILE).read_text(encoding="utf-8"), end="")
    return 0


def seed(args: argparse.Namespace) -> int:
    try:
        seeding.load_scenario(args.scenario)
    except sandbox.SandboxError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return EXIT_INVALID
    try:
        result = seeding.seed(args.dir, args.scenario)
    except sandbox.SandboxError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return EXIT_STOPPED if sandbox.running_state(args.dir) is None else EXIT_FAILED
    print(f"scenario {result['scenario']} loaded; details in {result['resultPath']}")
    return 0


def parser() -> argparse.ArgumentParser:
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument(
        "--dir",
        type=Path,
        default=Path(os.environ.get(SANDBOX_DIR_ENV) or ".sandbox"),
        help=f"the sandbox's directory: state, process record, settings, CA, logs (default: ${SANDBOX_DIR_ENV} "
        "or .sandbox)",
    )
    root = argparse.ArgumentParser(
        prog=PROG,
        description="The local sandbox of emulated Azure services (loopback only).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = root.add_subparsers(title="commands", required=True, metavar="{up,down,status,env,seed}")
    command = commands.add_parser("up", parents=[where], help="start the sandbox in the background")
    command.add_argument("--timeout", type=float, default=90.0, help="seconds to wait until it is running")
    command.set_defaults(run=up)
    command = commands.add_parser(
        "down", parents=[where], help="stop every process the sandbox started (its process record), nothing else"
    )
    command.set_defaults(run=down)
    command = commands.add_parser(
        "status", parents=[where], help="health of each component (exit 0 running, 1 unhealthy, 3 stopped)"
    )
    command.add_argument("--json", action="store_true", help="print the health report as JSON")
    command.set_defaults(run=status)
    command = commands.add_parser(
        "env", parents=[where], help="print export lines that point the controller at the sandbox"
    )
    command.set_defaults(run=env)
    command = commands.add_parser(
        "seed", parents=[where], help="load a scenario (emulators/scenarios/<name>.json) into the running sandbox"
    )
    command.add_argument("scenario", help="a scenario name, e.g. rotation, or a path to a scenario JSON file")
    command.set_defaults(run=seed)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)  # argparse exits 2 on invalid input
    result: int = args.run(args)
    return result

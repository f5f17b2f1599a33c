"""The `cmkctl sandbox` subcommands (controller/cli.py declares them and imports this module lazily).

Exit codes: 0 success (status: running and healthy), 1 failure (status: running but a component is
unhealthy), 2 invalid input (unknown scenario), 3 no running sandbox.
"""

from __future__ import annotations

import argparse
import json
import sys

from emulators import sandbox
from emulators import seed as seeding

EXIT_FAILED = 1
EXIT_INVALID = 2
EXIT_STOPPED = 3


def up(args: argparse.Namespace) -> int:
    try:
        state = sandbox.start_detached(args.dir, timeout=args.timeout)
    except sandbox.SandboxError as err:
        print(f"cmkctl: {err}", file=sys.stderr)
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
    if not endpoints.get("vaults"):
        print(f"  no vaults yet: cmkctl sandbox seed rotation --dir {args.dir}")
    return EXIT_FAILED if unhealthy else 0


def down(args: argparse.Namespace) -> int:
    if sandbox.read_state(args.dir) is None and not sandbox.sandbox_processes(args.dir):
        print(f"no sandbox in {args.dir}")
        return 0
    remaining = sandbox.stop(args.dir)
    if remaining:
        print(f"cmkctl: processes still running after stop: {remaining}", file=sys.stderr)
        return EXIT_FAILED
    print(f"sandbox in {args.dir} stopped; no process left")
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
        print(f"cmkctl: no running sandbox in {args.dir}", file=sys.stderr)
        return EXIT_STOPPED
    print((args.dir / sandbox.ENV_FILE).read_text(encoding="utf-8"), end="")
    return 0


def seed(args: argparse.Namespace) -> int:
    try:
        seeding.load_scenario(args.scenario)
    except sandbox.SandboxError as err:
        print(f"cmkctl: {err}", file=sys.stderr)
        return EXIT_INVALID
    try:
        result = seeding.seed(args.dir, args.scenario)
    except sandbox.SandboxError as err:
        print(f"cmkctl: {err}", file=sys.stderr)
        return EXIT_STOPPED if sandbox.running_state(args.dir) is None else EXIT_FAILED
    print(f"scenario {result['scenario']} loaded; details in {result['resultPath']}")
    return 0

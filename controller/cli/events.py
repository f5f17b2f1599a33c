"""`cmkctl events parse`: validate an Event Grid / CloudEvents delivery and print the normalised events."""

from __future__ import annotations

import argparse
import json
import os
import sys

from controller.cli.common import EXIT_INVALID, Commands, command, fail
from controller.errors import InvalidEvent, SettingsError
from controller.events import MAX_DELIVERY_BYTES, parse_delivery
from controller.settings import load_settings


def register(commands: Commands) -> None:
    events = commands.add_parser("events", help="work with Key Vault event deliveries")
    events_commands = events.add_subparsers(title="events commands")
    parse = command(
        events_commands, "parse",
        help_text="validate an Event Grid / CloudEvents delivery or dead-letter record and print the normalised events",
        examples=("cmkctl events parse delivery.json",
                  "cat dead-letter.json | cmkctl events parse - --vaults contoso-kv"),
    )
    parse.add_argument("file", help="a JSON file, or - for standard input")
    parse.add_argument(
        "--vaults",
        help="comma-separated vault allowlist (default: the CMK_VAULTS setting)",
    )
    parse.set_defaults(run=_parse)


def _parse(args: argparse.Namespace) -> int:
    environ = dict(os.environ)
    if args.vaults is not None:
        environ["CMK_VAULTS"] = args.vaults
    try:
        policy = load_settings(environ).vault_policy
    except SettingsError as err:  # its output is JSON: a failure is one JSON document too
        return fail(str(err), "SettingsError", EXIT_INVALID, as_json=True)
    try:
        body = _read_input(args.file)
    except OSError as err:
        return fail(f"cannot read {args.file}: {err.strerror}", "InvalidInput", EXIT_INVALID, as_json=True)
    try:
        result = parse_delivery(body, policy=policy)
    except InvalidEvent as err:
        return fail(f"invalid delivery: {err}", "InvalidEvent", EXIT_INVALID, as_json=True)
    if result.validation is not None:
        print(json.dumps({"subscription_validation": {"validation_code": result.validation.validation_code}}))
        return 0
    print(json.dumps([event.as_json() for event in result.events], indent=2))
    if result.ignored:
        print(f"cmkctl: {result.ignored} event(s) ignored (not key events)", file=sys.stderr)
    for error in result.rejected:
        print(f"cmkctl: rejected: {error}", file=sys.stderr)
    return EXIT_INVALID if result.rejected else 0


def _read_input(path: str) -> bytes:
    # Read one byte past the limit so the intake itself reports the oversize delivery.
    if path == "-":
        return sys.stdin.buffer.read(MAX_DELIVERY_BYTES + 1)
    with open(path, "rb") as handle:
        return handle.read(MAX_DELIVERY_BYTES + 1)

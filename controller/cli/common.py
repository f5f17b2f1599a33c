"""What every cmkctl command shares: exit statuses and the composition with the operator's credential."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable
from typing import TypeAlias

from controller import bootstrap
from controller.adapters.credentials import operator_credential
from controller.errors import ControllerError, InvalidInput, NotAuthenticated, Unreachable
from controller.service import Dependencies

#: Some work failed or was left undone (listed in the output).
EXIT_FAILED = 1
#: Invalid input: arguments, settings, a delivery; nothing was changed.
EXIT_INVALID = 2
#: A service could not be reached at all (DNS, TLS, connection): the message says which and why.
EXIT_UNREACHABLE = 3


def exit_status(err: ControllerError) -> int:
    """The one meaning of each exit status for every command."""
    if isinstance(err, InvalidInput | NotAuthenticated):  # bad input, or nobody logged in
        return EXIT_INVALID
    if isinstance(err, Unreachable):
        return EXIT_UNREACHABLE
    return EXIT_FAILED

Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def fail(message: str, kind: str, status: int, *, as_json: bool) -> int:
    """A command that could not do its work: one line on stderr that names the cause and, where its output is
    JSON, the same as the one JSON document on stdout (``{"error", "kind"}``). Returns ``status``."""
    print(f"cmkctl: {message}", file=sys.stderr)
    if as_json:
        print(json.dumps({"error": message, "kind": kind}))
    return status


def operator_dependencies(
    *, blob_endpoint: str | None = None, blob_connection_setting: str | None = None
) -> Dependencies:
    """The function app's dependencies built from the environment (the app settings), authenticated as
    the person running the CLI (Azure CLI login) or, where one exists, the managed identity."""
    return bootstrap.build(
        os.environ,
        credential=operator_credential(os.environ),
        blob_endpoint=blob_endpoint,
        blob_connection_setting=blob_connection_setting,
    )


EXIT_STATUS_HELP = """exit status:
  0  ok
  1  findings, or work that failed or was left undone (listed in the output)
  2  bad input or configuration (including nobody logged in)
  3  a service could not be reached (DNS, TLS, connection)"""


def command(commands: Commands, name: str, *, help_text: str, examples: tuple[str, ...], notes: str = "") -> (
        argparse.ArgumentParser):
    """A sub-command whose --help ends with examples, any notes, and what its exit statuses mean."""
    epilog = "examples:\n" + "".join(f"  {example}\n" for example in examples)
    if notes:
        epilog += "\n" + notes.rstrip("\n") + "\n"
    return commands.add_parser(name, help=help_text, description=help_text, epilog=epilog + "\n" + EXIT_STATUS_HELP,
                               formatter_class=argparse.RawDescriptionHelpFormatter)


#: A number as the operator writes it: ASCII digits, a sign, for a float one decimal point. Python's own
#: int()/float() also take "1_0", "1e3", "nan", "inf" and other scripts' digits: refused, as in the settings.
_PLAIN_NUMBER = {int: re.compile(r"-?[0-9]+"), float: re.compile(r"-?[0-9]+(?:\.[0-9]+)?")}


def bounded(kind: type[int] | type[float], low: float, high: float) -> Callable[[str], float]:
    """An argparse type for a number within [low, high]: a negative wait or a concurrency of a million
    is refused as bad input (exit 2) instead of being taken literally."""
    written = "digits 0-9" if kind is int else "digits 0-9 and at most one decimal point"

    def parse(text: str) -> float:
        if not _PLAIN_NUMBER[kind].fullmatch(text):
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a number written with {written}")
        value = kind(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is outside {low:g}-{high:g}")
        return value

    return parse

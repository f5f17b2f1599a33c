"""`cmkctl`'s entry point: the parser of every command group, and the dispatch to the chosen command."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn, cast

from controller.cli import audit, events, keys, rewrap, sweep
from controller.cli.common import EXIT_INVALID, Commands

#: 128 + SIGINT, as shells report a command stopped with Ctrl-C.
EXIT_INTERRUPTED = 130


class BadArguments(Exception):
    """The command line could not be read (argparse's error): exit status 2."""

    def __init__(self, usage: str, message: str) -> None:
        super().__init__(message)
        self.usage = usage


class _Parser(argparse.ArgumentParser):
    """argparse, except that a bad argument is raised instead of exiting from inside the parser, so that a
    command asked for JSON still prints one JSON document. Sub-command parsers are of the same class."""

    def error(self, message: str) -> NoReturn:
        raise BadArguments(self.format_usage(), f"{self.prog}: error: {message}")


def main(argv: Sequence[str] | None = None) -> int:
    # The SDKs' own warnings (credential chains, retries) are not for the operator: the command says
    # in one line what failed and what to do.
    logging.getLogger("azure").setLevel(logging.ERROR)
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(arguments)
    except BadArguments as err:
        sys.stderr.write(err.usage)
        print(err, file=sys.stderr)
        if _wants_json(arguments):  # --json / --format json always prints one JSON document
            print(json.dumps({"error": str(err), "kind": "InvalidInput"}))
        raise SystemExit(EXIT_INVALID) from None  # as argparse itself exits
    if not hasattr(args, "run"):
        parser.print_help()
        return EXIT_INVALID
    try:
        result: int = args.run(args)
    except KeyboardInterrupt:
        message = "cmkctl: interrupted (work done so far is checkpointed)"
        print(message, file=sys.stderr)
        if _wants_json(arguments):
            print(json.dumps({"error": message, "kind": "Interrupted"}))
        if argv is None:  # the process is the command's own (the console script, python -m controller.cli)
            _stop_now()
        return EXIT_INTERRUPTED
    return result


def _stop_now() -> NoReturn:
    """Exit at once, not when the worker threads are done: they may wait on a service that does not answer, and
    the interpreter joins them at exit. What they leave is consistent: each blob, checkpoint and ledger write
    is one request that happened or did not, and a rerun resumes from the checkpoints."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_INTERRUPTED)


#: Commands whose only output is JSON (no --json option): a failure is one JSON document too.
_JSON_ONLY = (("rewrap",), ("events", "parse"))


def _wants_json(arguments: list[str]) -> bool:
    pairs = zip(arguments, [*arguments[1:], ""], strict=True)
    return ("--json" in arguments or "--format=json" in arguments or ("--format", "json") in pairs
            or any(tuple(arguments[:len(command)]) == command for command in _JSON_ONLY))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cmkctl", description="Customer-managed key controller for Azure Storage.")
    # Sub-command parsers are _Parsers too (argparse makes them of the parent's class); typed as the base.
    commands = cast(Commands, parser.add_subparsers(title="commands"))
    events.register(commands)
    rewrap.register(commands)
    keys.register(commands)
    audit.register(commands)
    sweep.register(commands)
    return parser

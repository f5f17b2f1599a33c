"""`cmkctl`'s entry point: the parser of every command group, and the dispatch to the chosen command."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from controller.cli import audit, events, keys, rewrap, sweep
from controller.cli.common import EXIT_INVALID

#: 128 + SIGINT, as shells report a command stopped with Ctrl-C.
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    # The SDKs' own warnings (credential chains, retries) are not for the operator: the command says
    # in one line what failed and what to do.
    logging.getLogger("azure").setLevel(logging.ERROR)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return EXIT_INVALID
    try:
        result: int = args.run(args)
    except KeyboardInterrupt:
        print("cmkctl: interrupted (work done so far is checkpointed)", file=sys.stderr)
        return EXIT_INTERRUPTED
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cmkctl", description="Customer-managed key controller for Azure Storage.")
    commands = parser.add_subparsers(title="commands")
    events.register(commands)
    rewrap.register(commands)
    keys.register(commands)
    audit.register(commands)
    sweep.register(commands)
    return parser

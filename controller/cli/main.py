"""`cmkctl`'s entry point: the parser of every command group, and the dispatch to the chosen command."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from controller.cli import events, keys, rewrap, sweep
from controller.cli.common import EXIT_INVALID


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return EXIT_INVALID
    result: int = args.run(args)
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cmkctl", description="Customer-managed key controller for Azure Storage.")
    commands = parser.add_subparsers(title="commands")
    events.register(commands)
    rewrap.register(commands)
    keys.register(commands)
    sweep.register(commands)
    return parser

"""`cmkctl reconcile|rotate|usage VAULT KEY`: the rotation reconciler and key usage from the command line.

The app settings come from the environment (CMK_VAULTS, CMK_ARM_ENDPOINT, AzureWebJobsStorage ...).
VAULT is a vault of CMK_VAULTS: its name (contoso-kv), host name or origin.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

from rich.table import Table

from controller import reconciler, rotation, service
from controller.cli import tables
from controller.cli.common import (
    EXIT_FAILED,
    Commands,
    bounded,
    command,
    exit_status,
    fail,
    operator_dependencies,
)
from controller.errors import Conflict, ControllerError, TransientError
from controller.model import KeyRef

_EXAMPLES = {
    "reconcile": ("cmkctl reconcile contoso-kv storage-cmk --dry-run",
                  "cmkctl reconcile contoso-kv storage-cmk --dry-run --summary",
                  "cmkctl reconcile contoso-kv storage-cmk --json"),
    "rotate": ("cmkctl rotate contoso-kv storage-cmk",
               "cmkctl rotate contoso-kv.vault.azure.net storage-cmk --wait 300"),
    "usage": ("cmkctl usage contoso-kv storage-cmk", "cmkctl usage contoso-kv storage-cmk --json"),
}


def register(commands: Commands) -> None:
    """Add the key commands to ``cmkctl``'s subparsers."""
    for name, run, help_text in (
        ("reconcile", _reconcile, "plan (and without --dry-run, execute) adoption of the key's newest version"),
        ("rotate", _rotate, "rotate the key now and follow through until every consumer adopted it"),
        ("usage", _usage, "per key version: who uses it, and whether it is safe to disable"),
    ):
        parser = command(commands, name, help_text=help_text, examples=_EXAMPLES[name])
        parser.add_argument("vault", help="vault name, host name or origin (must be in CMK_VAULTS)")
        parser.add_argument("key", help="key name")
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
        tables.add_wide_option(parser)
        if name == "reconcile":
            parser.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
            parser.add_argument("--summary", action="store_true",
                                help="only the done / pending / blocked counts (large keys: no row per consumer)")
        if name == "rotate":
            parser.add_argument("--wait", type=bounded(float, 0, 86_400), default=120.0,
                                help="seconds to wait for every consumer to adopt (default 120)")
        parser.set_defaults(run=_guarded(run))


def _guarded(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def guarded(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except ControllerError as err:
            return fail(str(err), type(err).__name__, exit_status(err), as_json=args.json)
    return guarded


def _key_and_deps(args: argparse.Namespace) -> tuple[KeyRef, reconciler.ReconcileDeps]:
    key, deps = _key_and_app(args)
    return key, deps.reconcile


def _key_and_app(args: argparse.Namespace) -> tuple[KeyRef, service.Dependencies]:
    deps = operator_dependencies()
    vault = deps.settings.vault_policy.allowed_vault(args.vault)
    return deps.settings.vault_policy.parse_key_id(f"{vault.url}/keys/{args.key}"), deps


def _reconcile(args: argparse.Namespace) -> int:
    key, deps = _key_and_deps(args)
    result = reconciler.reconcile_key(key, deps, dry_run=args.dry_run)
    if args.summary:
        _print_summary(result, as_json=args.json, dry_run=args.dry_run, wide=args.wide)
    else:
        _print_result(result, as_json=args.json, dry_run=args.dry_run, wide=args.wide)
    return EXIT_FAILED if result.failures else 0


def _print_summary(result: reconciler.ReconcileResult, *, as_json: bool, dry_run: bool, wide: bool) -> None:
    """done / pending / blocked, and what this run left to the work queue or to another instance."""
    summary = {"key": result.key.uri, "target_version": result.plan.target.version if result.plan.target else None,
               **result.progress(), "writes": len(result.writes), "failures": len(result.failures),
               "deferred": result.deferred, "claimed_elsewhere": len(result.claimed_elsewhere),
               "retrying": len(result.retrying), "dry_run": dry_run}
    if as_json:
        print(json.dumps(summary))
        return
    target = tables.version(result.plan.target.version, wide=wide) if result.plan.target else "none"
    print(f"key: {tables.key(result.key.uri, wide=wide)}")
    print(f"target version: {target}")
    print(_progress_lines(result) + (" (dry run: nothing changed)" if dry_run else ""))
    for failure in result.failures:
        print(f"failed: {failure}", file=sys.stderr)


def _progress_lines(result: reconciler.ReconcileResult) -> str:
    """The consumers' counts (the key and target are on the line above: they may be long)."""
    counts = result.progress()
    lines = [f"progress: {counts['done']} done, {counts['pending']} pending, {counts['blocked']} blocked"]
    if result.deferred:
        lines.append(f"{result.deferred} writes continue in another invocation (work queue)")
    if result.claimed_elsewhere:
        lines.append(f"{len(result.claimed_elsewhere)} being written by another instance")
    if result.retrying:
        lines.append(f"{len(result.retrying)} writes failed transiently: retried through the work queue")
    return "\n".join(lines)


def _rotate(args: argparse.Namespace) -> int:
    key, deps = _key_and_deps(args)
    new_version = deps.keys(key.vault).rotate_key(key).version
    print(f"rotated {key.uri}: new version {new_version}", file=sys.stderr)
    deadline = time.monotonic() + args.wait
    raced: list[str] = []
    while True:
        try:
            result: reconciler.ReconcileResult | None = reconciler.reconcile_key(key, deps, target_version=new_version)
        except (TransientError, Conflict) as err:
            # The function app handles the same rotation (its Event Grid event) at the same time: the
            # ledger let the other writer win. Not a failure of the rotation: look again with fresh state.
            raced.append(str(err))
            result = None
        if result is not None:
            pending = [decision for decision in result.plan.decisions
                       if decision.action is not rotation.Action.ADOPTED]
            if not pending:
                break
            if all(decision.action in (rotation.Action.ALERT, rotation.Action.BLOCKED) for decision in pending):
                break  # waiting cannot help: a human has to act
        if time.monotonic() >= deadline:
            break
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
    if result is None:  # out of time while others were writing: report what Azure holds now, change nothing
        result = reconciler.reconcile_key(key, deps, target_version=new_version, dry_run=True)
    pending = [decision for decision in result.plan.decisions if decision.action is not rotation.Action.ADOPTED]
    _print_result(result, as_json=args.json, dry_run=False, wide=args.wide,
                  extra={"new_version": new_version, "raced": raced})
    return 0 if not pending else EXIT_FAILED


def _usage(args: argparse.Namespace) -> int:
    key, deps = _key_and_app(args)
    usages = service.key_usage(key, deps)
    if args.json:
        print(json.dumps({"key": key.uri, "versions": [
            {"version": usage.version, "enabled": usage.enabled, "created": usage.created.isoformat(),
             "consumers": list(usage.consumers), "blobs": usage.blob_count,
             "last_unwrap": usage.last_unwrap.isoformat() if usage.last_unwrap else None,
             "audit_available": usage.audit_available, "safe_to_disable": usage.safe,
             "reason": usage.reason.value, "message": usage.message}
            for usage in usages
        ]}, indent=2))
        return 0
    _print_table(f"{tables.key(key.uri, wide=args.wide)}: versions (oldest first)",
                 ["version", "consumers", "blobs", "safe", "why"], [
        [tables.version(usage.version, wide=args.wide), str(len(usage.consumers)),
         "not counted" if usage.blob_count is None else str(usage.blob_count), "yes" if usage.safe else "no",
         usage.message]
        for usage in usages
    ], wide=args.wide)
    return 0


def _print_result(result: reconciler.ReconcileResult, *, as_json: bool, dry_run: bool, wide: bool,
                  extra: dict[str, object] | None = None) -> None:
    if as_json:
        print(json.dumps({**result.as_json(), "dry_run": dry_run, **(extra or {})}, indent=2))
        return
    target = tables.version(result.plan.target.version, wide=wide) if result.plan.target else "none"
    title = f"{tables.key(result.key.uri, wide=wide)} -> target {target}" + (
        " (dry run: nothing changed)" if dry_run else "")
    rows = [[tables.resource(decision.consumer.resource_id, wide=wide), decision.action.value, decision.reason.value,
             tables.version(decision.consumer.current_version, wide=wide) if decision.consumer.current_version
             else "unknown"] for decision in result.plan.decisions]
    _print_table(title, ["consumer", "action", "reason", "current version"], rows, wide=wide)
    print(_progress_lines(result))
    for failure in result.failures:
        print(f"failed: {failure}", file=sys.stderr)


def _print_table(title: str, columns: list[str], rows: list[list[str]], *, wide: bool) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold", no_wrap=wide)
    for row in rows:
        table.add_row(*row)
    tables.console(wide=wide).print(table)

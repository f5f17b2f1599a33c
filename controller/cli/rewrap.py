"""`cmkctl rewrap`: re-wrap (or rewrite) a container's client-side-encrypted blobs onto a key version.

Runs here, item by item, through the same use case the function app runs for queued re-wrap work
(service.run_rewrap_item, without a time budget), or with --enqueue puts the work items on the work
queue for the function app. The progress bar follows the run through a RewrapObserver.

With --scale-out the job is worked by the function app's workers, as many as it runs: its lister item
goes on the work queue (unless the job already started: then this only reports), and --follow shows
the job's progress across the workers, read from the ledger, until it is finished.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from urllib.parse import urlsplit

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from controller import service
from controller.cli.common import (
    EXIT_FAILED,
    EXIT_INVALID,
    Commands,
    bounded,
    command,
    exit_status,
    fail,
    operator_dependencies,
)
from controller.errors import ControllerError, InvalidInput, InvalidKeyId, SettingsError
from controller.model import KeyRef
from controller.ports import RewrapProgress
from controller.rewrap.outcomes import RewrapReport
from controller.rewrap.pages import JobProgress
from controller.rewrap.work import MAX_CONCURRENCY, RewrapMode, RewrapWorkItem
from controller.vault_policy import VaultPolicy

_STORAGE_ACCOUNT_NAME = re.compile(r"[a-z0-9]{3,24}")

_EPILOG = """\
environment:
  CMK_VAULTS             the vault allowlist (required); --key must name one of these vaults
  AzureWebJobsStorage    the app's storage (the local emulator's connection string), or
  AzureWebJobsStorage__accountName   (identity-based): where checkpoints (the ledger table,
                         CMK_LEDGER_TABLE) and, with --enqueue, work items (CMK_WORK_QUEUE) go;
                         a run resumes from its checkpoint. Required (as for reconcile, rotate, usage).
  credentials            your Azure CLI / environment login, or the managed identity where one
                         exists (AZURE_CLIENT_ID; the local sandbox serves one): no secrets are read.

Exit 0 means every blob wrapped by the key is on the target version (or would be, with --dry-run;
with --scale-out and no --follow, that the job is enqueued or running); 1 that some blobs failed or
have malformed envelopes (listed in the report).
"""


def register(commands: Commands) -> None:
    rewrap = command(
        commands, "rewrap",
        help_text="re-wrap (or rewrite) the client-side-encrypted blobs of a container onto a key version",
        examples=("cmkctl rewrap --account stdocs --container invoices --key contoso-kv/storage-cmk --dry-run",
                  "cmkctl rewrap --account stdocs --container invoices --key contoso-kv/storage-cmk --mode rewrite",
                  "cmkctl rewrap --account stdocs --container invoices --key contoso-kv/storage-cmk --scale-out "
                  "--follow"),
        notes=_EPILOG,
    )
    rewrap.add_argument("--account", required=True, help="storage account name")
    rewrap.add_argument("--container", required=True, help="blob container")
    rewrap.add_argument(
        "--prefix", action="append", default=[], help="only blobs under this prefix (repeat: one work item each)"
    )
    rewrap.add_argument(
        "--key",
        required=True,
        metavar="VAULT/KEY",
        help="the key: <vault name, host or https origin>/<key name>, or a key identifier URL",
    )
    rewrap.add_argument("--to-version", help="target key version (default: the key's current version)")
    rewrap.add_argument("--mode", choices=[mode.value for mode in RewrapMode], default=RewrapMode.REWRAP.value)
    rewrap.add_argument("--concurrency", type=bounded(int, 1, MAX_CONCURRENCY), default=8,
                        help=f"blobs in flight (1-{MAX_CONCURRENCY}, default 8)")
    rewrap.add_argument("--dry-run", action="store_true", help="report what would change; write nothing")
    rewrap.add_argument("--blob-endpoint", help="blob service URL (default: the account's, as Azure Resource Manager "
                                                "reports it)")
    rewrap.add_argument(
        "--connection-string-setting",
        metavar="NAME",
        help="environment variable holding the local emulator's connection string (sandbox/Azurite only)",
    )
    rewrap.add_argument(
        "--enqueue", action="store_true", help="fan out: put work items on the work queue instead of running here"
    )
    rewrap.add_argument(
        "--scale-out", action="store_true",
        help="many workers, one container: enqueue the job's lister for the function app's workers (or, once the "
             "job started, report its progress)",
    )
    rewrap.add_argument("--follow", action="store_true",
                        help="with --scale-out: follow the job's progress across workers until it is finished")
    rewrap.add_argument("--interval", type=bounded(float, 0.5, 300), default=5.0,
                        help="with --follow: seconds between two looks at the ledger (default 5)")
    rewrap.add_argument("--encryption-scope", help="rewrite mode: write the new copies under this encryption scope")
    rewrap.add_argument("--no-progress", action="store_true", help="no progress bar (the report is printed anyway)")
    rewrap.set_defaults(run=_rewrap)


def _rewrap(args: argparse.Namespace) -> int:
    try:
        _check_arguments(args)
        deps = operator_dependencies(
            blob_endpoint=args.blob_endpoint, blob_connection_setting=args.connection_string_setting
        )
        key = _parse_key_argument(args.key, args.to_version, deps.settings.vault_policy)
        items = service.plan_rewrap(
            deps,
            targets=[(args.account, args.container)],
            key=key,
            prefixes=args.prefix,
            mode=RewrapMode(args.mode),
            concurrency=args.concurrency,
            dry_run=args.dry_run,
            encryption_scope=args.encryption_scope,
            scale_out=args.scale_out,
        )
        if args.scale_out:
            return _scale_out(items, deps, follow=args.follow, interval=args.interval,
                              show_progress=not args.no_progress and sys.stderr.isatty())
        if args.enqueue:
            service.enqueue_rewrap(items, deps)
            print(json.dumps({"enqueued": [item.as_json() for item in items]}, indent=2))
            return 0
        # Here the run goes on until the container is done: no function timeout to stay under.
        reports = _run_with_progress(
            items, replace(deps, rewrap_budget_seconds=None), show_progress=not args.no_progress and sys.stderr.isatty()
        )
    except (InvalidInput, SettingsError) as err:  # its output is JSON: a failure is one JSON document too
        return fail(str(err), type(err).__name__, EXIT_INVALID, as_json=True)
    except ControllerError as err:
        return fail(f"rewrap failed: {err}", type(err).__name__, exit_status(err), as_json=True)
    print(json.dumps([report.as_json() for report in reports], indent=2))
    return EXIT_FAILED if any(report.incomplete for report in reports) else 0


def _check_arguments(args: argparse.Namespace) -> None:
    if not 1 <= args.concurrency <= MAX_CONCURRENCY:
        raise InvalidInput(f"--concurrency must be 1-{MAX_CONCURRENCY}")
    if not _STORAGE_ACCOUNT_NAME.fullmatch(args.account):
        raise InvalidInput(f"--account {args.account!r} is not a storage account name")
    if args.blob_endpoint is not None and urlsplit(args.blob_endpoint).scheme != "https":
        raise InvalidInput(f"--blob-endpoint {args.blob_endpoint[:80]!r} is not an https URL: the blob service takes "
                           "a token only over TLS (the local emulator: --connection-string-setting)")
    if args.encryption_scope is not None and args.mode != RewrapMode.REWRITE.value:
        raise InvalidInput("--encryption-scope needs --mode rewrite (re-wrap does not move data)")
    if args.scale_out and (args.dry_run or args.enqueue):
        raise InvalidInput("--scale-out enqueues the job itself and is not a dry run (drop --dry-run / --enqueue)")
    if args.follow and not args.scale_out:
        raise InvalidInput("--follow follows a --scale-out job")


def _parse_key_argument(value: str, version: str | None, policy: VaultPolicy) -> KeyRef:
    """``<vault>/<key name>`` or a key identifier (``https://`` optional), in an allowed vault."""
    try:
        key = _allowed_key(value, policy)
        if version is not None:
            key = policy.parse_key_id(f"{key.versionless.uri}/{version}")
    except InvalidKeyId as err:
        raise InvalidInput(f"--key: {err}") from err
    return key


def _allowed_key(value: str, policy: VaultPolicy) -> KeyRef:
    if "/keys/" in value:
        return policy.allowed_key(value if "://" in value else f"https://{value}")
    vault, _, name = value.rstrip("/").rpartition("/")
    if not vault or not name:
        raise InvalidKeyId(f"{value!r} is not <vault>/<key name>")
    return policy.parse_key_id(f"{policy.allowed_vault(vault).url}/keys/{name}")


class _ProgressTask:
    """The RewrapObserver of one item: advances its line of the progress bar after every page."""

    def __init__(self, progress_bar: Progress, task: TaskID) -> None:
        self._bar = progress_bar
        self._task = task

    def page_done(self, listed: int, progress: RewrapProgress) -> None:
        counts = " ".join(f"{name}={value}" for name, value in sorted(progress.counts.items()) if value)
        self._bar.update(self._task, advance=listed, counts=counts)


def _run_with_progress(
    items: Sequence[RewrapWorkItem], deps: service.Dependencies, *, show_progress: bool
) -> list[RewrapReport]:
    progress_bar = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed} listed"),
        TextColumn("{task.fields[counts]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not show_progress,
    )
    reports: list[RewrapReport] = []
    with progress_bar:
        for item in items:
            task = progress_bar.add_task(f"{item.mode.value} {item.container}/{item.prefix or ''}", total=None,
                                         counts="")
            result = service.run_rewrap_item(item, deps, observer=_ProgressTask(progress_bar, task))
            if result.report is None:
                raise ControllerError(f"{result.job_id}: {result.status.value}: another run advanced its checkpoint")
            blobs = result.report.blobs
            progress_bar.update(task, total=blobs, completed=blobs)
            reports.append(result.report)
    return reports


def _scale_out(
    items: Sequence[RewrapWorkItem], deps: service.Dependencies, *, follow: bool, interval: float, show_progress: bool
) -> int:
    """Enqueue each job's lister unless the job started already; with ``follow``, watch until all are finished."""
    enqueued: list[RewrapWorkItem] = []
    for item in items:
        progress = service.rewrap_job_progress(item, deps)
        if progress.listing.pages_listed == 0 and not progress.listing.complete:
            enqueued.append(item)
    service.enqueue_rewrap(enqueued, deps)
    if follow:
        jobs = _follow(items, deps, interval=interval, show_progress=show_progress)
    else:
        jobs = [service.rewrap_job_progress(item, deps) for item in items]
    print(json.dumps([
        {"item": item.as_json(), "enqueued": item in enqueued, **job.as_json()}
        for item, job in zip(items, jobs, strict=True)
    ], indent=2))
    failed = any(
        job.pages_failed or job.counts.get("failed", 0) or job.counts.get("skipped_malformed", 0) for job in jobs
    )
    return EXIT_FAILED if failed else 0


def _follow(
    items: Sequence[RewrapWorkItem], deps: service.Dependencies, *, interval: float, show_progress: bool
) -> list[JobProgress]:
    progress_bar = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.fields[listed]} pages"),
        TextColumn("{task.fields[counts]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not show_progress,
    )
    with progress_bar:
        tasks = [progress_bar.add_task(f"{item.mode.value} {item.container}/{item.prefix or ''} (scale-out)",
                                       total=None, listed="?", counts="") for item in items]
        while True:
            jobs = [service.rewrap_job_progress(item, deps) for item in items]
            for task, job in zip(tasks, jobs, strict=True):
                counts = " ".join(f"{name}={value}" for name, value in sorted(job.counts.items()) if value)
                listed = str(job.listing.pages_listed) + ("" if job.listing.complete else "+")
                progress_bar.update(task, completed=job.pages_done + job.pages_failed, listed=listed, counts=counts,
                                    total=job.listing.pages_listed if job.listing.complete else None)
            if all(job.listing.finished for job in jobs):
                return jobs
            time.sleep(interval)

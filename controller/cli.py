"""`cmkctl`, the operator CLI."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType

from azure.core.credentials import TokenCredential
from azure.data.tables import TableClient
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from controller import cli_keys
from controller.adapters.blob_store import AzureBlobRewriter, AzureBlobStore, blob_service_client, pooled_transport
from controller.adapters.credentials import challenge_options, operator_credential
from controller.adapters.key_vault_crypto import (
    VaultClients,
    VaultKeyEncryptionKey,
    VaultKeyUnwrapper,
    fetch_public_wrapper,
    key_resolver,
)
from controller.adapters.rewrap_backend import azure_blob_endpoint
from controller.adapters.rewrap_checkpoint import TableRewrapCheckpoint
from controller.adapters.work_queue import StorageWorkQueue, work_queue_client
from controller.errors import ControllerError, InvalidEvent, InvalidInput, InvalidKeyId, SettingsError
from controller.events import MAX_DELIVERY_BYTES, parse_delivery
from controller.model import KeyRef, parse_key_id, parse_vault_origin
from controller.ports import (
    BlobItem,
    BlobPage,
    BlobStore,
    RewrapCheckpoint,
    RewrapProgress,
)
from controller.rewrap import RewrapEngine, RewrapOptions
from controller.rewrap_jobs import (
    MAX_CONCURRENCY,
    RewrapMode,
    RewrapWorkItem,
    RewriteOptions,
    RewriteRunner,
    split_job,
)
from controller.settings import load_settings

_STORAGE_ACCOUNT_NAME = re.compile(r"[a-z0-9]{3,24}")

EXIT_INVALID = 2


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

    events = commands.add_parser("events", help="work with Key Vault event deliveries")
    events_commands = events.add_subparsers(title="events commands")
    parse = events_commands.add_parser(
        "parse",
        help="validate an Event Grid / CloudEvents delivery or dead-letter record and print the normalised events",
    )
    parse.add_argument("file", help="a JSON file, or - for standard input")
    parse.add_argument(
        "--vaults",
        help="comma-separated vault allowlist (default: the CMK_VAULTS setting)",
    )
    parse.set_defaults(run=_events_parse)
    _add_rewrap_parser(commands)
    _add_sandbox_commands(commands)
    cli_keys.register(commands)
    return parser


def _events_parse(args: argparse.Namespace) -> int:
    environ = dict(os.environ)
    if args.vaults is not None:
        environ["CMK_VAULTS"] = args.vaults
    try:
        vaults = load_settings(environ).vaults
    except SettingsError as err:
        print(f"cmkctl: {err}", file=sys.stderr)
        return EXIT_INVALID
    try:
        body = _read_input(args.file)
    except OSError as err:
        print(f"cmkctl: cannot read {args.file}: {err.strerror}", file=sys.stderr)
        return EXIT_INVALID
    try:
        result = parse_delivery(body, vaults=vaults)
    except InvalidEvent as err:
        print(f"cmkctl: invalid delivery: {err}", file=sys.stderr)
        return EXIT_INVALID
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


# === cmkctl rewrap ===================================================================================

EXIT_INCOMPLETE = 1
_REWRAP_EPILOG = """\
environment:
  CMK_VAULTS             the vault allowlist (required); --key must name one of these vaults
  AzureWebJobsStorage    the app's storage (the local emulator's connection string), or
  AzureWebJobsStorage__accountName   (identity-based): where checkpoints (the ledger table,
                         CMK_LEDGER_TABLE) and, with --enqueue, work items (CMK_WORK_QUEUE) go.
                         Without either, the run keeps no checkpoint and cannot resume.
  credentials            your Azure CLI / environment login, or the managed identity where one
                         exists (AZURE_CLIENT_ID; the local sandbox serves one): no secrets are read.

exit status: 0 every blob wrapped by the key is on the target version (or would be, --dry-run);
1 some blobs failed or have malformed envelopes (listed in the report); 2 invalid input.
"""


def _add_rewrap_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rewrap = commands.add_parser(
        "rewrap",
        help="re-wrap (or rewrite) the client-side-encrypted blobs of a container onto a key version",
        epilog=_REWRAP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
        help="the key: <vault host or https origin>/<key name>, or a key identifier URL",
    )
    rewrap.add_argument("--to-version", help="target key version (default: the key's current version)")
    rewrap.add_argument("--mode", choices=[mode.value for mode in RewrapMode], default=RewrapMode.REWRAP.value)
    rewrap.add_argument("--concurrency", type=int, default=8, help="blobs in flight (1-64, default 8)")
    rewrap.add_argument("--dry-run", action="store_true", help="report what would change; write nothing")
    rewrap.add_argument("--blob-endpoint", help="blob service URL (default https://<account>.blob.core.windows.net)")
    rewrap.add_argument(
        "--connection-string-setting",
        metavar="NAME",
        help="environment variable holding the local emulator's connection string (sandbox/Azurite only)",
    )
    rewrap.add_argument(
        "--enqueue", action="store_true", help="fan out: put work items on the work queue instead of running here"
    )
    rewrap.add_argument("--encryption-scope", help="rewrite mode: write the new copies under this encryption scope")
    rewrap.add_argument("--no-progress", action="store_true", help="no progress bar (the report is printed anyway)")
    rewrap.set_defaults(run=_rewrap)


def _rewrap(args: argparse.Namespace) -> int:
    environ = dict(os.environ)
    try:
        settings = load_settings(environ)
        _check_rewrap_arguments(args)
        key = _parse_key_argument(args.key, args.to_version, vaults=settings.vaults)
        credential = operator_credential(environ)
        vault_clients = VaultClients(credential, allowed_origins=settings.vaults, custom_origins=settings.vaults,
                                     transport=pooled_transport(MAX_CONCURRENCY), **challenge_options(settings.vaults))
        wrapper = fetch_public_wrapper(vault_clients, key.uri)
        mode = RewrapMode(args.mode)
        items = split_job(
            targets=[(args.account, args.container)],
            key_id=wrapper.key_id,
            prefixes=args.prefix,
            mode=mode,
            concurrency=args.concurrency,
            dry_run=args.dry_run,
        )
        if args.enqueue:
            queue = StorageWorkQueue(_app_queue_client(environ, settings.work_queue, credential))
            for item in items:
                queue.enqueue(item.to_message())
            print(json.dumps({"enqueued": [item.as_json() for item in items]}, indent=2))
            return 0
        service = _cli_blob_service(args, environ, credential)
        unwrapper = VaultKeyUnwrapper(vault_clients)
        origins = tuple(settings.vaults)
        run_item: _ItemRunner
        if mode is RewrapMode.REWRAP:

            def run_item(item: RewrapWorkItem, store: BlobStore, checkpoint: RewrapCheckpoint) -> _ItemResult:
                engine = RewrapEngine(
                    store=store,
                    unwrapper=unwrapper,
                    wrapper=wrapper,
                    checkpoint=checkpoint,
                    options=RewrapOptions(max_workers=item.concurrency, dry_run=item.dry_run, custom_origins=origins),
                )
                report = engine.rewrap_container(item.container, prefix=item.prefix)
                return {"mode": mode.value, **report.as_json()}, report.progress
        else:
            rewriter = AzureBlobRewriter(
                service,
                target_kek=VaultKeyEncryptionKey(wrapper.key_id, unwrapper, wrapper=wrapper),
                key_resolver=key_resolver(unwrapper),
                encryption_scope=args.encryption_scope,
            )

            def run_item(item: RewrapWorkItem, store: BlobStore, checkpoint: RewrapCheckpoint) -> _ItemResult:
                runner = RewriteRunner(
                    store=store,
                    rewriter=rewriter,
                    checkpoint=checkpoint,
                    target_key_id=wrapper.key_id,
                    options=RewriteOptions(max_workers=item.concurrency, dry_run=item.dry_run, custom_origins=origins),
                )
                progress = runner.rewrite_container(item.container, prefix=item.prefix)
                return _rewrite_report(runner.job_id(item.container, item.prefix), item, progress), progress

        results = _run_with_progress(
            items,
            run_item,
            store=AzureBlobStore(service),
            checkpoint=_cli_checkpoint(environ, settings.ledger_table, credential),
            show_progress=not args.no_progress and sys.stderr.isatty(),
        )
    except (InvalidInput, SettingsError) as err:
        print(f"cmkctl: {err}", file=sys.stderr)
        return EXIT_INVALID
    except ControllerError as err:
        print(f"cmkctl: rewrap failed: {err}", file=sys.stderr)
        return EXIT_INCOMPLETE
    print(json.dumps([report for report, _ in results], indent=2))
    incomplete = any(
        progress.counts.get("failed", 0) or progress.counts.get("skipped_malformed", 0) or not progress.complete
        for _, progress in results
    )
    return EXIT_INCOMPLETE if incomplete else 0


_ItemResult = tuple[dict[str, object], RewrapProgress]
_ItemRunner = Callable[[RewrapWorkItem, BlobStore, RewrapCheckpoint], _ItemResult]


def _rewrite_report(job_id: str, item: RewrapWorkItem, progress: RewrapProgress) -> dict[str, object]:
    return {
        "mode": RewrapMode.REWRITE.value,
        "job_id": job_id,
        "container": item.container,
        "prefix": item.prefix,
        "target_key_id": item.key_id,
        "dry_run": item.dry_run,
        "complete": progress.complete,
        "pages": progress.pages,
        "blobs": sum(progress.counts.values()),
        "counts": dict(progress.counts),
        "conflicts": progress.conflicts,
        "problems": [
            {"name": problem.name, "reason": problem.reason, "detail": problem.detail} for problem in progress.problems
        ],
        "problems_dropped": progress.problems_dropped,
    }


def _check_rewrap_arguments(args: argparse.Namespace) -> None:
    if not 1 <= args.concurrency <= MAX_CONCURRENCY:
        raise InvalidInput(f"--concurrency must be 1-{MAX_CONCURRENCY}")
    if not _STORAGE_ACCOUNT_NAME.fullmatch(args.account):
        raise InvalidInput(f"--account {args.account!r} is not a storage account name")
    if args.encryption_scope is not None and args.mode != RewrapMode.REWRITE.value:
        raise InvalidInput("--encryption-scope needs --mode rewrite (re-wrap does not move data)")


def _split_key_argument(value: str, vaults: Sequence[str]) -> KeyRef:
    if "/keys/" in value:
        return parse_key_id(value if "://" in value else f"https://{value}", custom_origins=vaults)
    vault, _, name = value.rstrip("/").rpartition("/")
    if not vault or not name:
        raise InvalidKeyId(f"{value!r} is not <vault>/<key name>")
    origin = parse_vault_origin(vault, custom_origins=vaults)
    return parse_key_id(f"{origin.url}/keys/{name}", custom_origins=vaults)


def _parse_key_argument(value: str, version: str | None, *, vaults: Sequence[str]) -> KeyRef:
    try:
        key = _split_key_argument(value, vaults)
        if version is not None:
            key = parse_key_id(f"{key.versionless.uri}/{version}", custom_origins=vaults)
    except InvalidKeyId as err:
        raise InvalidInput(f"--key: {err}") from err
    if key.vault.url not in vaults:
        raise InvalidInput(f"--key: vault {key.vault.url} is not in CMK_VAULTS")
    return key


def _local_connection_string(environ: Mapping[str, str], setting: str) -> str:
    connection = environ.get(setting, "").strip()
    if not connection:
        raise InvalidInput(f"setting {setting} is empty")
    lowered = connection.lower()
    if "accountkey=" in lowered and not any(
        marker in lowered for marker in ("usedevelopmentstorage=true", "devstoreaccount1", "127.0.0.1")
    ):
        raise InvalidInput(f"setting {setting}: shared-key connection strings are accepted for the local emulator only")
    return connection


def _cli_blob_service(
    args: argparse.Namespace, environ: Mapping[str, str], credential: TokenCredential
) -> BlobServiceClient:
    if args.connection_string_setting:
        connection = _local_connection_string(environ, args.connection_string_setting)
        return blob_service_client(connection_string=connection, connections=args.concurrency)
    endpoint = args.blob_endpoint or azure_blob_endpoint(args.account)
    return blob_service_client(endpoint, credential=credential, connections=args.concurrency)


def _cli_checkpoint(environ: Mapping[str, str], table_name: str, credential: TokenCredential) -> RewrapCheckpoint:
    if environ.get("AzureWebJobsStorage", "").strip():
        connection = _local_connection_string(environ, "AzureWebJobsStorage")
        return TableRewrapCheckpoint(TableClient.from_connection_string(connection, table_name=table_name))
    account = environ.get("AzureWebJobsStorage__accountName", "").strip()
    if account:
        endpoint = f"https://{account}.table.core.windows.net"
        return TableRewrapCheckpoint(TableClient(endpoint, table_name=table_name, credential=credential))
    print("cmkctl: no checkpoint store configured: an interrupted run starts over", file=sys.stderr)
    return _MemoryCheckpoint()


def _app_queue_client(environ: Mapping[str, str], queue_name: str, credential: TokenCredential) -> QueueClient:
    if environ.get("AzureWebJobsStorage", "").strip():
        return work_queue_client(_local_connection_string(environ, "AzureWebJobsStorage"), queue_name)
    account = environ.get("AzureWebJobsStorage__accountName", "").strip()
    if not account:
        raise InvalidInput("--enqueue needs AzureWebJobsStorage or AzureWebJobsStorage__accountName")
    return QueueClient(
        f"https://{account}.queue.core.windows.net",
        queue_name,
        credential=credential,
        message_encode_policy=TextBase64EncodePolicy(),
        message_decode_policy=TextBase64DecodePolicy(),
    )


class _MemoryCheckpoint:
    def __init__(self) -> None:
        self._saved: dict[str, RewrapProgress] = {}

    def load(self, job_id: str) -> RewrapProgress | None:
        return self._saved.get(job_id)

    def save(self, job_id: str, progress: RewrapProgress) -> None:
        self._saved[job_id] = progress


class _ProgressCheckpoint:
    """Passes saves through and shows the counts of each saved page on the progress bar."""

    def __init__(self, inner: RewrapCheckpoint, on_save: Callable[[RewrapProgress], None]) -> None:
        self._inner = inner
        self._on_save = on_save

    def load(self, job_id: str) -> RewrapProgress | None:
        return self._inner.load(job_id)

    def save(self, job_id: str, progress: RewrapProgress) -> None:
        self._inner.save(job_id, progress)
        self._on_save(progress)


class _CountingStore:
    """Counts listed blobs for the progress bar (a dry run saves no checkpoints to count from)."""

    def __init__(self, inner: BlobStore, on_page: Callable[[int], None]) -> None:
        self._inner = inner
        self._on_page = on_page

    def list_blobs(self, container: str, *, prefix: str | None, marker: str | None) -> BlobPage:
        page = self._inner.list_blobs(container, prefix=prefix, marker=marker)
        self._on_page(len(page.items))
        return page

    def get_properties(self, container: str, name: str) -> BlobItem:
        return self._inner.get_properties(container, name)

    def set_metadata(self, container: str, name: str, metadata: Mapping[str, str], *, if_match: str) -> str:
        return self._inner.set_metadata(container, name, metadata, if_match=if_match)


def _run_with_progress(
    items: Sequence[RewrapWorkItem],
    run_item: _ItemRunner,
    *,
    store: BlobStore,
    checkpoint: RewrapCheckpoint,
    show_progress: bool,
) -> list[_ItemResult]:
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
    results: list[_ItemResult] = []
    with progress_bar:
        for item in items:
            description = f"{item.mode.value} {item.container}/{item.prefix or ''}"
            task = progress_bar.add_task(description, total=None, counts="")

            def listed(count: int, task: TaskID = task) -> None:
                progress_bar.advance(task, count)

            def saved(progress: RewrapProgress, task: TaskID = task) -> None:
                counts = " ".join(f"{name}={value}" for name, value in sorted(progress.counts.items()) if value)
                progress_bar.update(task, counts=counts)

            report, progress = run_item(item, _CountingStore(store, listed), _ProgressCheckpoint(checkpoint, saved))
            blobs = sum(progress.counts.values())
            progress_bar.update(task, total=blobs, completed=blobs)
            results.append((report, progress))
    return results


# === cmkctl sandbox ==================================================================================
# The local emulators exist only in a checkout (emulators/ is never deployed): the subcommands are declared
# here and run by emulators/sandbox_cli.py, imported when one of them runs.

SANDBOX_DIR_ENV = "CMK_SANDBOX_DIR"


def _add_sandbox_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument(
        "--dir",
        type=Path,
        default=Path(os.environ.get(SANDBOX_DIR_ENV) or ".sandbox"),
        help=f"the sandbox's directory: state, settings, CA, logs (default: ${SANDBOX_DIR_ENV} or .sandbox)",
    )
    sandbox = commands.add_parser("sandbox", help="run the local sandbox of emulated Azure services")
    sandbox_commands = sandbox.add_subparsers(title="sandbox commands")
    up = sandbox_commands.add_parser("up", parents=[where], help="start the sandbox in the background")
    up.add_argument("--timeout", type=float, default=90.0, help="seconds to wait until it is running")
    up.set_defaults(run=_sandbox_command("up"))
    down = sandbox_commands.add_parser("down", parents=[where], help="stop the sandbox and every process it started")
    down.set_defaults(run=_sandbox_command("down"))
    status = sandbox_commands.add_parser(
        "status", parents=[where], help="health of each component (exit 0 running, 1 unhealthy, 3 stopped)"
    )
    status.add_argument("--json", action="store_true", help="print the health report as JSON")
    status.set_defaults(run=_sandbox_command("status"))
    env = sandbox_commands.add_parser(
        "env", parents=[where], help="print export lines that point the controller at the sandbox"
    )
    env.set_defaults(run=_sandbox_command("env"))
    seed = sandbox_commands.add_parser(
        "seed", parents=[where], help="load a scenario (emulators/scenarios/<name>.json) into the running sandbox"
    )
    seed.add_argument("scenario", help="a scenario name, e.g. rotation, or a path to a scenario JSON file")
    seed.set_defaults(run=_sandbox_command("seed"))


def _sandbox_command(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        module = _sandbox_module()
        if module is None:
            return EXIT_INVALID
        result: int = getattr(module, name)(args)
        return result

    return run


def _sandbox_module() -> ModuleType | None:
    try:
        return importlib.import_module("emulators.sandbox_cli")
    except ModuleNotFoundError as err:
        if err.name and (err.name == "emulators" or err.name.startswith("emulators.")):
            print(
                "cmkctl: the sandbox is not part of this installation (the emulators package is missing); "
                "run cmkctl sandbox from a checkout of the repository after `make setup`",
                file=sys.stderr,
            )
            return None
        raise


if __name__ == "__main__":
    sys.exit(main())

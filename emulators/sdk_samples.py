"""`make sdk-samples`: the official Azure SDK samples, unmodified, against a running sandbox.

``python -m emulators.sdk_samples [--cache DIR] [--timeout S] [--jobs N] [--only SUBSTRING] [--json PATH]``

1. Downloads the source distributions of the installed (pinned) azure-keyvault-keys, azure-storage-blob
   and azure-monitor-query (``pip download --no-deps --no-binary :all: NAME==VERSION``) into the cache
   (default ``.cache/sdk-samples``; kept, so a second run needs no network) and extracts their
   ``samples/``.
2. Starts a sandbox (emulated Azure, no Functions host) in a temporary directory and seeds
   ``emulators/scenarios/sdk-samples.json``: a vault the sandbox identity may fully manage, and a fresh one
   like it for each Key Vault sample (as the SDK's own sample tests do: the samples reuse key names, and a
   deleted key's name stays taken while it is soft-deleted).
3. Runs every sample as it is shipped (``python sample.py`` in its own directory), ``--jobs`` at a time (most
   of a sample's time is spent waiting: on the vault's pollers, on a sleep), configured only through
   environment variables: the sandbox's ``env`` (the managed-identity endpoint DefaultAzureCredential picks
   up, the CA bundle, ``HTTPS_PROXY``: the vaults are ``https://<name>.vault.azure.net/``, Log Analytics is
   ``https://api.loganalytics.io`` and Azurite's account is ``https://devstoreaccount1.blob.core.windows.net``
   (its connection string as the portal shows it), all reached through the sandbox's proxy with the challenge
   check on) plus the names the samples read (``VAULT_URL``, ``STORAGE_CONNECTION_STRING``,
   ``LOGS_WORKSPACE_ID`` ...), each with a timeout. The storage samples' input files that the source
   distribution leaves out (SampleSource.txt, sample-blobs/) are written beside them: MISSING_INPUTS.
4. Prints one line per sample (pass / fail / expected failure, and why) and exits 1 only when a sample
   expected to pass fails. The samples that cannot apply to a sandbox are listed with the reason in
   ``emulators/sdk_samples_expected.json``; a listed sample that passes is reported so the list is
   shortened.

A sample passes when it exits 0 and prints no traceback or error report: several samples catch
``HttpResponseError`` and print it instead of failing, which is still a failure here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from emulators import sandbox
from emulators.processes import ProcessRecord
from emulators.seed import load_scenario, seed_document
from emulators.storage_hosts import azure_connection_string, blob_hosts

PACKAGES = ("azure-keyvault-keys", "azure-storage-blob", "azure-monitor-query")
EXPECTATIONS = Path(__file__).resolve().parent / "sdk_samples_expected.json"
SCENARIO = "sdk-samples"
DEFAULT_CACHE = Path(".cache/sdk-samples")
#: Long enough for the slowest sample that passes (backup_restore_operations sleeps 60 s after its purge, and
#: took 120 s in all on a 2-core machine at load 30+): a sample that hangs costs this much wall time at most.
DEFAULT_TIMEOUT_S = 180.0
#: An expected failure only has to be seen failing still: samples that hang (retrying a host that does not
#: exist) are cut short. One that would pass given longer is then not reported as passing.
EXPECTED_FAILURE_TIMEOUT_S = 30.0
#: Samples run at once: they mostly wait (pollers, sleeps), so more than the cores.
DEFAULT_JOBS = 6
#: Azurite's documented development account (not a secret: the same for every Azurite).
AZURITE_ACCOUNT = "devstoreaccount1"
#: Printed by samples that catch an error and carry on, or by Python for one that did not.
_ERROR_MARKERS = re.compile(
    r"^(Traceback \(most recent call last\)|something fatal happened|.*\b(HttpResponseError|"
    r"ClientAuthenticationError|ServiceRequestError|ResourceNotFoundError|ValueError): )",
    re.MULTILINE,
)


@dataclass(frozen=True)
class SampleResult:
    sample: str  # "<package>/<path under samples/>"
    outcome: str  # pass | fail | expected-fail | unexpected-pass
    seconds: float
    why: str


def installed_version(package: str) -> str:
    return metadata.version(package)


def fetch_samples(cache: Path) -> dict[str, Path]:
    """Each package's extracted samples/ directory, downloaded once per pinned version (the three at once:
    pip spends most of a download waiting on the index and on preparing the sdist's metadata)."""
    cache.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=len(PACKAGES), thread_name_prefix="fetch") as pool:
        return dict(zip(PACKAGES, pool.map(lambda package: _fetch_one(cache, package), PACKAGES), strict=True))


def _fetch_one(cache: Path, package: str) -> Path:
    version = installed_version(package)
    stem = f"{package.replace('-', '_')}-{version}"
    samples = cache / stem / "samples"
    if not samples.is_dir():
        archive = cache / f"{stem}.tar.gz"
        if not archive.is_file():
            # --no-binary for the package alone: its sdist, while the build requirements pip needs to read the
            # sdist's metadata may be wheels (with :all:, setuptools itself would be built from source first).
            subprocess.run(  # noqa: S603 - fixed arguments, the pinned version of a named package
                [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
                 "--no-binary", package, f"{package}=={version}", "--dest", str(cache)],
                check=True,
            )
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(f"{stem}/samples/")]
            tar.extractall(cache, members=members, filter="data")
    return samples


#: Input files the storage samples read beside themselves, which the upstream repository keeps in samples/ but the
#: source distribution leaves out. Their content does not matter to the samples (they upload and read back
#: whatever is there), so the runner writes small files of its own: the samples themselves stay as shipped.
MISSING_INPUTS: dict[str, dict[str, str]] = {
    "azure-storage-blob": {
        "SampleSource.txt": "A file the storage samples upload and download again (written by make sdk-samples).\n",
        "sample-blobs/first.txt": "The first of the blobs blob_samples_batch_delete_blobs.py uploads and deletes.\n",
        "sample-blobs/second.txt": "The second of the blobs blob_samples_batch_delete_blobs.py uploads and deletes.\n",
    },
}


def supply_missing_inputs(samples: dict[str, Path]) -> None:
    """Write the input files the source distributions leave out (MISSING_INPUTS) where they are absent."""
    for package, files in MISSING_INPUTS.items():
        for relative, content in files.items():
            path = samples[package] / relative
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(content, encoding="utf-8")


#: Samples that open every container of the storage account (walk_blob_hierarchy lists the containers and
#: walks each): another sample deleting its container meanwhile makes them fail, so they run alone among the
#: storage samples (the storage samples share Azurite's one account; every other one uses containers of its own).
ACCOUNT_WIDE = frozenset({
    "azure-storage-blob/blob_samples_walk_blob_hierarchy.py",
    "azure-storage-blob/blob_samples_walk_blob_hierarchy_async.py",
})


class AccountLock:
    """Shared for the storage samples that keep to their own containers, exclusive for ACCOUNT_WIDE ones."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._sharing = 0
        self._exclusive = False

    @contextlib.contextmanager
    def hold(self, *, exclusive: bool) -> Iterator[None]:
        with self._condition:
            self._condition.wait_for(lambda: not self._exclusive and not (exclusive and self._sharing))
            if exclusive:
                self._exclusive = True
            else:
                self._sharing += 1
        try:
            yield
        finally:
            with self._condition:
                if exclusive:
                    self._exclusive = False
                else:
                    self._sharing -= 1
                self._condition.notify_all()


def sample_files(samples: dict[str, Path]) -> list[tuple[str, Path]]:
    """Every runnable sample: the .py files under samples/ (helpers imported by others have no entry point
    of their own, but are run as well: a sample file is a script)."""
    return [(f"{package}/{path.relative_to(root).as_posix()}", path)
            for package, root in samples.items() for path in sorted(root.rglob("*.py"))]


def sample_vault(directory: Path, number: int) -> dict[str, Any]:
    """A fresh vault of the sdk-samples scenario (``kv-sdk-samples`` for 0, ``kv-sdk-samples-<n>`` after)."""
    scenario = load_scenario(SCENARIO)
    if number:
        scenario["vaults"] = [vault | {"name": f"{vault['name']}-{number}"} for vault in scenario["vaults"]]
    vault: dict[str, Any] = next(iter(seed_document(directory, scenario, log=lambda _line: None)["vaults"].values()))
    return vault


def sample_environment(directory: Path, vault: dict[str, Any]) -> dict[str, str]:
    """The sandbox's env plus the names the samples read; nothing else of the caller's environment but
    PATH, HOME and the locale (a user's Azure login must not leak in)."""
    values = dict(_read_env(directory / sandbox.ENV_FILE))
    app_storage = values["AzureWebJobsStorage"]
    account_key = dict(part.split("=", 1) for part in app_storage.split(";") if "=" in part).get("AccountKey", "")
    # Azurite's account as Azure names it (https://devstoreaccount1.blob.core.windows.net through the sandbox's
    # proxy): the SDK derives the secondary location of get_service_stats from that host name.
    connection = azure_connection_string(AZURITE_ACCOUNT, account_key)
    values.update({
        "VAULT_URL": str(vault["uri"]),
        "STORAGE_CONNECTION_STRING": connection,
        "AZURE_STORAGE_CONNECTION_STRING": connection,
        "STORAGE_CONNECTION_STRING_SOFT": connection,  # "an account with soft delete": Azurite's
        "STORAGE_ACCOUNT_NAME": AZURITE_ACCOUNT,
        "OAUTH_STORAGE_ACCOUNT_NAME": AZURITE_ACCOUNT,
        "STORAGE_ACCOUNT_KEY": account_key,
        "STORAGE_ACCOUNT_BLOB_URL": f"https://{blob_hosts(AZURITE_ACCOUNT)[0]}",
        "KEYVAULT_URL": str(vault["uri"]),
        "LOGS_WORKSPACE_ID": values["CMK_LOG_ANALYTICS_WORKSPACE"],
        "LOGS_RESOURCE_ID": str(vault["id"]),
        "PYTHONUNBUFFERED": "1",
    })
    for inherited in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR"):
        if inherited in os.environ:
            values[inherited] = os.environ[inherited]
    return values


def _read_env(path: Path) -> dict[str, str]:
    import shlex

    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("export "):
            name, _, quoted = line[len("export "):].partition("=")
            values[name] = shlex.split(quoted)[0] if quoted else ""
    return values


def run_sample(path: Path, env: dict[str, str], timeout: float) -> tuple[bool, float, str]:
    started = time.monotonic()
    try:
        done = subprocess.run(  # noqa: S603 - a downloaded sample of a pinned package, run as its README says
            [sys.executable, path.name], check=False, cwd=path.parent, env=env, capture_output=True, text=True,
            timeout=timeout, stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return False, time.monotonic() - started, f"timed out after {timeout:.0f}s"
    seconds = time.monotonic() - started
    output = done.stdout + "\n" + done.stderr
    if done.returncode != 0:
        return False, seconds, f"exit {done.returncode}: {_last_error(done.stderr or done.stdout)}"
    marker = _ERROR_MARKERS.search(output)
    if marker:
        return False, seconds, f"printed an error: {_last_error(output[marker.start():])}"
    return True, seconds, ""


def _last_error(text: str) -> str:
    """The exception line of a traceback (or the last non-empty line), on one line, shortened."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Exit)\b.*", line)]
    chosen = errors[-1] if errors else (lines[-1] if lines else "(no output)")
    return chosen if len(chosen) <= 200 else chosen[:197] + "..."


def sandbox_cpu_seconds(directory: Path) -> float:
    """CPU time the sandbox's recorded processes (the orchestrator with the emulators, Azurite) used so far:
    they run detached, so the runner's own resource usage does not include them."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for process in ProcessRecord(directory).running():
        try:
            fields = Path(f"/proc/{process.pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(field) for field in fields[11:15])  # utime, stime, cutime, cstime
    return total / ticks


def load_expectations() -> dict[str, str]:
    body = json.loads(EXPECTATIONS.read_text(encoding="utf-8"))
    expected: dict[str, str] = body["expectedFailures"]
    return expected


def judge(name: str, passed: bool, why: str, seconds: float, expected: dict[str, str]) -> SampleResult:
    if name in expected:
        if passed:
            return SampleResult(name, "unexpected-pass", seconds, "passes now: remove it from the expectations")
        return SampleResult(name, "expected-fail", seconds, f"{expected[name]} [{why}]")
    return SampleResult(name, "pass" if passed else "fail", seconds, why)


def print_table(results: list[SampleResult]) -> None:
    width = max((len(result.sample) for result in results), default=0)
    for result in results:
        print(f"{result.outcome:<15} {result.sample:<{width}} {result.seconds:5.1f}s  {result.why}".rstrip())
    counts = {outcome: sum(r.outcome == outcome for r in results)
              for outcome in ("pass", "fail", "expected-fail", "unexpected-pass")}
    print(", ".join(f"{count} {outcome}" for outcome, count in counts.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emulators.sdk_samples", description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the sdists are kept")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per sample")
    parser.add_argument("--jobs", type=int, default=DEFAULT_JOBS, help="samples run at once")
    parser.add_argument("--only", default="", help="run only the samples whose name contains this")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this path")
    parser.add_argument("--skip-expected-failures", action="store_true",
                        help="run only the samples expected to pass (make test: the listed failures are not run)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        print("sdk-samples: --jobs must be at least 1", file=sys.stderr)
        return 2
    expected = load_expectations()
    started, used_before = time.monotonic(), os.times()
    with (ThreadPoolExecutor(max_workers=1, thread_name_prefix="download") as downloader,
          tempfile.TemporaryDirectory(prefix="cmk-sdk-samples-") as temporary):
        downloading = downloader.submit(fetch_samples, args.cache)  # while the sandbox starts
        directory = Path(temporary)
        sandbox.start_detached(directory, functions=False)
        try:
            downloaded = downloading.result()
            supply_missing_inputs(downloaded)
            every_sample = sample_files(downloaded)
            unknown = sorted(set(expected) - {name for name, _ in every_sample})
            if unknown:
                print(f"sdk-samples: expectations name samples that do not exist: {', '.join(unknown)}",
                      file=sys.stderr)
                return 2
            samples = [(name, path) for name, path in every_sample
                       if args.only in name and not (args.skip_expected_failures and name in expected)]
            shared = sample_vault(directory, 0)
            seeding = threading.Lock()  # one seeder at a time: each writes the scenario's seed file
            account_lock = AccountLock()

            def run_one(number: int, name: str, path: Path) -> SampleResult:
                vault = shared
                if name.startswith("azure-keyvault-keys/"):
                    with seeding:
                        vault = sample_vault(directory, number)
                timeout = min(args.timeout, EXPECTED_FAILURE_TIMEOUT_S) if name in expected else args.timeout
                account = account_lock.hold(exclusive=name in ACCOUNT_WIDE) if name.startswith(
                    "azure-storage-blob/") else contextlib.nullcontext()
                with account:
                    passed, seconds, why = run_sample(path, sample_environment(directory, vault), timeout)
                result = judge(name, passed, why, seconds, expected)
                print(f"{result.outcome:<15} {name} ({seconds:.1f}s)", file=sys.stderr, flush=True)
                return result

            with ThreadPoolExecutor(max_workers=args.jobs, thread_name_prefix="sample") as pool:
                futures = [pool.submit(run_one, number, name, path)
                           for number, (name, path) in enumerate(samples, start=1)]
                results = [future.result() for future in futures]
        finally:
            sandbox_cpu = sandbox_cpu_seconds(directory)
            sandbox.stop(directory)
    used = os.times()
    samples_cpu = sum(used[2:4]) - sum(used_before[2:4])  # the children's user and system time: pip, the samples
    print_table(results)
    if args.skip_expected_failures:
        print(f"{len(expected)} expected failures not run (--skip-expected-failures)")
    print(f"wall time {time.monotonic() - started:.0f}s with {args.jobs} at a time; CPU time: samples (and pip) "
          f"{samples_cpu:.0f}s, sandbox {sandbox_cpu:.0f}s")
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(result) for result in results], indent=2) + "\n", encoding="utf-8")
    return 1 if any(result.outcome == "fail" for result in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Azurite (blob, queue, table) as a child process of the sandbox or of a test session.

Azurite comes from the project's own package.json (``npm ci`` puts it in node_modules/.bin). It is
started on loopback with ``--disableTelemetry`` (otherwise it reaches for an outside telemetry
endpoint), ``--skipApiVersionCheck`` (newer SDKs send newer API versions) and ``--loose``, on ports
Azurite picks itself (port 0): the ports are read back from its "successfully listening" lines, so
there is no race between choosing a free port and binding it. The process runs in its own process
group and ``stop`` ends the whole group, so no node process outlives the sandbox.

    with Azurite() as azurite:
        BlobServiceClient.from_connection_string(azurite.connection_string)
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from emulators.processes import ProcessRecord

logger = logging.getLogger(__name__)

# Azurite's well-known development account; the key is public (documented by Microsoft).
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_EXECUTABLE = PROJECT_ROOT / "node_modules" / ".bin" / "azurite"

_LISTENING = re.compile(r"Azurite (Blob|Queue|Table) service is successfully listening at (http\S+)")
_SERVICES = ("blob", "queue", "table")
RECORD_NAME = "azurite"  # its name in a sandbox's process record


class AzuriteError(RuntimeError):
    """Azurite is not installed, did not start, or died."""


@dataclass(frozen=True, slots=True)
class AzuriteEndpoints:
    """Where one running Azurite listens, and the connection string the Azure SDKs take."""

    blob: str  # e.g. http://127.0.0.1:41234/devstoreaccount1
    queue: str
    table: str
    account_name: str = ACCOUNT_NAME
    account_key: str = ACCOUNT_KEY

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.account_name};AccountKey={self.account_key};"
            f"BlobEndpoint={self.blob};QueueEndpoint={self.queue};TableEndpoint={self.table};"
        )


class Azurite:
    """One Azurite process. ``start`` blocks until all three services answer; ``stop`` is idempotent.

    ``location`` is Azurite's workspace (its JSON databases and extents); when omitted a temporary
    directory is used and removed on ``stop``; ``in_memory`` keeps everything in memory instead.
    Ports default to 0 (Azurite picks free ports).
    """

    def __init__(
        self,
        *,
        location: Path | str | None = None,
        host: str = "127.0.0.1",
        blob_port: int = 0,
        queue_port: int = 0,
        table_port: int = 0,
        executable: Path | str | None = None,
        startup_timeout: float = 30.0,
        in_memory: bool = False,
        extra_args: tuple[str, ...] = (),
        process_record: ProcessRecord | None = None,
    ) -> None:
        self._location = Path(location) if location is not None else None
        self._owns_location = location is None
        self._host = host
        self._ports = {"blob": blob_port, "queue": queue_port, "table": table_port}
        self._executable = Path(executable or os.environ.get("AZURITE_BIN") or DEFAULT_EXECUTABLE)
        self._startup_timeout = startup_timeout
        self._in_memory = in_memory
        self._extra_args = extra_args
        self._process_record = process_record  # the sandbox's: Azurite is recorded the moment it exists
        self._process: subprocess.Popen[str] | None = None
        self._output: deque[str] = deque(maxlen=200)
        self._listening: dict[str, str] = {}
        self._ready = threading.Condition()
        self._endpoints: AzuriteEndpoints | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> AzuriteEndpoints:
        if self._endpoints is not None:
            return self._endpoints
        if not self._executable.exists():
            raise AzuriteError(
                f"Azurite is not installed at {self._executable}: run `npm ci` (or `make setup`) "
                "in the project root"
            )
        if self._in_memory:
            workspace = ["--inMemoryPersistence"]  # Azurite refuses --location with it
        else:
            if self._location is None:
                self._location = Path(tempfile.mkdtemp(prefix="azurite-"))
            self._location.mkdir(parents=True, exist_ok=True)
            workspace = ["--location", str(self._location)]
        command = [
            str(self._executable),
            "--disableTelemetry",
            "--silent",
            "--skipApiVersionCheck",
            "--loose",
            *workspace,
            "--blobHost",
            self._host,
            "--blobPort",
            str(self._ports["blob"]),
            "--queueHost",
            self._host,
            "--queuePort",
            str(self._ports["queue"]),
            "--tableHost",
            self._host,
            "--tablePort",
            str(self._ports["table"]),
            *self._extra_args,
        ]
        # Own session = own process group: stop() signals node and anything it spawned, together.
        self._process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        if self._process_record is not None:
            self._process_record.add(RECORD_NAME, self._process.pid, own_group=True)
        threading.Thread(target=self._read_output, name="azurite-output", daemon=True).start()
        try:
            self._endpoints = self._wait_until_listening()
            self._wait_until_healthy(self._endpoints)
        except BaseException:
            self.stop()
            raise
        logger.info("azurite started: blob=%s queue=%s table=%s", *self._listening_urls())
        return self._endpoints

    def stop(self, timeout: float = 10.0) -> None:
        process, self._process = self._process, None
        self._endpoints = None
        if process is not None and process.poll() is None:
            self._signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(process, signal.SIGKILL)
                process.wait(timeout=timeout)
        if process is not None and process.stdout is not None:
            process.stdout.close()
        if process is not None and self._process_record is not None:
            self._process_record.remove(RECORD_NAME, process.pid)
        if self._owns_location and self._location is not None:
            shutil.rmtree(self._location, ignore_errors=True)
            self._location = None

    def __enter__(self) -> Azurite:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what callers use ------------------------------------------------------------------------

    @property
    def endpoints(self) -> AzuriteEndpoints:
        if self._endpoints is None:
            raise AzuriteError("Azurite is not running")
        return self._endpoints

    @property
    def connection_string(self) -> str:
        return self.endpoints.connection_string

    @property
    def blob_endpoint(self) -> str:
        return self.endpoints.blob

    @property
    def queue_endpoint(self) -> str:
        return self.endpoints.queue

    @property
    def table_endpoint(self) -> str:
        return self.endpoints.table

    @property
    def location(self) -> Path | None:
        return self._location

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def output(self) -> str:
        """The last lines Azurite printed (for error messages)."""
        return "\n".join(self._output)

    # -- internals -------------------------------------------------------------------------------

    def _read_output(self) -> None:
        process = self._process
        if process is None or process.stdout is None:
            return
        stream = process.stdout
        try:
            for line in stream:
                self._output.append(line.rstrip())
                match = _LISTENING.search(line)
                if match:
                    with self._ready:
                        self._listening[match.group(1).lower()] = match.group(2).rstrip("/")
                        self._ready.notify_all()
        except (ValueError, OSError):
            return  # the pipe was closed by stop()
        with self._ready:
            self._ready.notify_all()

    def _wait_until_listening(self) -> AzuriteEndpoints:
        deadline = time.monotonic() + self._startup_timeout
        with self._ready:
            while len(self._listening) < len(_SERVICES):
                if self._process is None or self._process.poll() is not None:
                    raise AzuriteError(f"Azurite exited during start-up:\n{self.output()}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AzuriteError(
                        f"Azurite did not listen within {self._startup_timeout}s:\n{self.output()}"
                    )
                self._ready.wait(min(remaining, 0.2))
        blob, queue, table = self._listening_urls()
        return AzuriteEndpoints(
            blob=f"{blob}/{ACCOUNT_NAME}", queue=f"{queue}/{ACCOUNT_NAME}", table=f"{table}/{ACCOUNT_NAME}"
        )

    def _listening_urls(self) -> tuple[str, str, str]:
        return self._listening["blob"], self._listening["queue"], self._listening["table"]

    def _wait_until_healthy(self, endpoints: AzuriteEndpoints) -> None:
        """Each service answers HTTP (any status: an unauthenticated request gets 403, which is fine)."""
        deadline = time.monotonic() + self._startup_timeout
        for url in (endpoints.blob, endpoints.queue, endpoints.table):
            while True:
                try:
                    with urllib.request.urlopen(f"{url}?comp=list", timeout=2):  # noqa: S310 - loopback http
                        break
                except urllib.error.HTTPError:
                    break  # an HTTP answer is a healthy service
                except (urllib.error.URLError, OSError) as err:
                    if not self.is_running() or time.monotonic() > deadline:
                        message = f"Azurite at {url} is not healthy: {err}\n{self.output()}"
                        raise AzuriteError(message) from err
                    time.sleep(0.05)

    @staticmethod
    def _signal_group(process: subprocess.Popen[str], signum: signal.Signals) -> None:
        try:
            os.killpg(process.pid, signum)
        except (ProcessLookupError, PermissionError):
            return


def main(argv: list[str] | None = None) -> int:
    """``python -m emulators.azurite [--location DIR]``: run Azurite in the foreground until Ctrl-C."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m emulators.azurite", description=main.__doc__)
    parser.add_argument("--location", type=Path, default=None, help="workspace (default: a temporary directory)")
    parser.add_argument("--blob-port", type=int, default=0)
    parser.add_argument("--queue-port", type=int, default=0)
    parser.add_argument("--table-port", type=int, default=0)
    options = parser.parse_args(argv)
    azurite = Azurite(
        location=options.location,
        blob_port=options.blob_port,
        queue_port=options.queue_port,
        table_port=options.table_port,
    )
    with azurite:
        print(f"AZURITE_CONNECTION_STRING={azurite.connection_string}", flush=True)
        stopped = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopped.set())
        try:
            while azurite.is_running() and not stopped.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

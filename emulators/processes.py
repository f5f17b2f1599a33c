"""What the sandbox started, recorded so that ``down`` stops exactly that and nothing else.

Every server process the sandbox starts (the orchestrator, Azurite, the Functions host) gets one file,
``<dir>/processes/<name>.json``, written atomically as soon as the process exists (before it is waited on)::

    {"name": "azurite", "pid": 4242, "startTime": 918273, "processGroup": 4242}

``startTime`` is field 22 of ``/proc/<pid>/stat`` (clock ticks after boot): with the pid it names one process
for the life of the machine, so a pid the kernel has since given to another process is never mistaken for
ours. ``processGroup`` is the group (and session) the sandbox created for the process, or null when it
created none. Stopping goes through these records only: SIGTERM, a wait, then SIGKILL, each sent to a
recorded process (and the group created for it) only while it still is that process. No process is
ever looked up by its name or arguments.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

RECORD_DIR = "processes"


class Liveness(Enum):
    RUNNING = "running"
    GONE = "gone"  # exited (a zombie not yet reaped by its parent counts as gone)
    REUSED = "reused"  # the pid now belongs to another process


def start_time(pid: int) -> tuple[int, str] | None:
    """(field 22 starttime, field 3 state) of /proc/<pid>/stat, or None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # Field 2 (comm) is in parentheses and may itself contain spaces or ')': the fields after it follow the last ')'.
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[19]), fields[0]


@dataclass(frozen=True)
class RecordedProcess:
    name: str
    pid: int
    start_time: int
    process_group: int | None

    def liveness(self) -> Liveness:
        found = start_time(self.pid)
        if found is None or found[1] == "Z":
            return Liveness.GONE
        return Liveness.RUNNING if found[0] == self.start_time else Liveness.REUSED

    def describe(self) -> str:
        group = f", process group {self.process_group}" if self.process_group is not None else ""
        return f"{self.name} (pid {self.pid}{group})"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "pid": self.pid, "startTime": self.start_time, "processGroup": self.process_group}

    @classmethod
    def from_json(cls, body: Any) -> RecordedProcess:
        if not isinstance(body, dict):
            raise TypeError("a process record is a JSON object")
        name, pid, started, group = body.get("name"), body.get("pid"), body.get("startTime"), body.get("processGroup")
        if not isinstance(name, str) or not isinstance(pid, int) or not isinstance(started, int) or pid <= 0:
            raise ValueError(f"a process record needs name, pid and startTime; found {body}")
        if group is not None and (not isinstance(group, int) or group <= 0):
            raise ValueError(f"processGroup must be a positive integer or null; found {group!r}")
        return cls(name, pid, started, group)


@dataclass(frozen=True)
class UnreadableRecord:
    path: Path
    reason: str
    content: str  # what the file holds (truncated), so that a person can act on it


@dataclass
class StopReport:
    stopped: list[RecordedProcess] = field(default_factory=list)  # signalled here, now gone
    already_gone: list[RecordedProcess] = field(default_factory=list)
    not_ours: list[RecordedProcess] = field(default_factory=list)  # the pid belongs to another process now
    still_running: list[RecordedProcess] = field(default_factory=list)
    unreadable: list[UnreadableRecord] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """Every recorded process is gone and every record could be read."""
        return not self.still_running and not self.unreadable

    def then(self, later: StopReport) -> StopReport:
        """This report followed by a later pass over the same record (whose reading of it is the current one)."""
        return StopReport(
            self.stopped + later.stopped,
            self.already_gone + later.already_gone,
            self.not_ours + later.not_ours,
            self.still_running + later.still_running,
            later.unreadable,
        )

    def lines(self) -> list[str]:
        lines = [f"stopped {process.describe()}" for process in self.stopped]
        lines += [f"already gone: {process.describe()}" for process in self.already_gone]
        lines += [
            f"left alone: pid {process.pid} (recorded for {process.name}) now belongs to another process"
            for process in self.not_ours
        ]
        lines += [f"could not stop {process.describe()}: still running" for process in self.still_running]
        lines += [
            f"could not read {record.path} ({record.reason}); whatever it named was not stopped: {record.content!r}"
            for record in self.unreadable
        ]
        return lines


class ProcessRecord:
    """The ``processes/`` directory of one sandbox: one file per process the sandbox started."""

    def __init__(self, sandbox_directory: Path) -> None:
        self.directory = sandbox_directory / RECORD_DIR

    def add(self, name: str, pid: int, *, own_group: bool) -> RecordedProcess | None:
        """Record a process that was just started (own_group: it was started in a new session, as its leader).

        Returns None when it is already gone (nothing is left to stop)."""
        found = start_time(pid)
        if found is None:
            return None
        process = RecordedProcess(name, pid, found[0], pid if own_group else None)
        self.directory.mkdir(parents=True, exist_ok=True)
        _write_atomically(self._path(name), json.dumps(process.to_json()) + "\n")
        return process

    def remove(self, name: str, pid: int) -> None:
        """Forget a process that has been stopped, unless its record has since been replaced by another one."""
        path = self._path(name)
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if isinstance(recorded, dict) and recorded.get("pid") == pid:
            path.unlink(missing_ok=True)

    def read(self) -> tuple[list[RecordedProcess], list[UnreadableRecord]]:
        processes: list[RecordedProcess] = []
        unreadable: list[UnreadableRecord] = []
        if not self.directory.is_dir():
            return processes, unreadable
        for path in sorted(self.directory.glob("*.json")):
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError as err:
                unreadable.append(UnreadableRecord(path, str(err), ""))
                continue
            try:
                processes.append(RecordedProcess.from_json(json.loads(text)))
            except (ValueError, TypeError) as err:
                unreadable.append(UnreadableRecord(path, str(err), text[:200]))
        return processes, unreadable

    def get(self, name: str) -> RecordedProcess | None:
        return next((process for process in self.read()[0] if process.name == name), None)

    def running(self) -> list[RecordedProcess]:
        return [process for process in self.read()[0] if process.liveness() is Liveness.RUNNING]

    def stop(self, *, names: tuple[str, ...] | None = None, grace: float = 10.0) -> StopReport:
        """SIGTERM every recorded process (or those named) that still is the recorded process, wait up to
        ``grace`` seconds, SIGKILL what is left; forget the records of processes that are gone or not ours."""
        report = StopReport()
        processes, report.unreadable = self.read()
        targets: list[RecordedProcess] = []
        for process in processes:
            if names is not None and process.name not in names:
                continue
            liveness = process.liveness()
            if liveness is Liveness.GONE:
                report.already_gone.append(process)
            elif liveness is Liveness.REUSED:
                report.not_ours.append(process)
            elif send_signal(process, signal.SIGTERM):
                targets.append(process)
            else:
                report.already_gone.append(process)
        alive = _wait_until_gone(targets, grace)
        for process in alive:
            send_signal(process, signal.SIGKILL)
        alive = _wait_until_gone(alive, grace)
        report.stopped = [process for process in targets if process not in alive]
        report.still_running = alive
        for process in report.stopped + report.already_gone + report.not_ours:
            self.remove(process.name, process.pid)
        return report

    def _path(self, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"{name!r} is not a process record name")
        return self.directory / f"{name}.json"


def send_signal(process: RecordedProcess, signum: signal.Signals) -> bool:
    """Signal the recorded process, and the group the sandbox created for it, only while it is that process.

    The pidfd pins the process: once it is open and the start time matches, the signal cannot reach another
    process that later got the same pid. While the leader lives its group id cannot be reused either.
    Returns False when the process is gone or is not ours any more."""
    try:
        pidfd = os.pidfd_open(process.pid)
    except ProcessLookupError:
        return False
    try:
        if process.liveness() is not Liveness.RUNNING:
            return False
        group = process.process_group
        if group is not None and os.getpgid(process.pid) == group:
            os.killpg(group, signum)  # the leader with everything it spawned
        else:
            signal.pidfd_send_signal(pidfd, signum)
    except ProcessLookupError:
        return False
    finally:
        os.close(pidfd)
    return True


def _wait_until_gone(processes: list[RecordedProcess], timeout: float) -> list[RecordedProcess]:
    deadline = time.monotonic() + timeout
    alive = [process for process in processes if process.liveness() is Liveness.RUNNING]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [process for process in alive if process.liveness() is Liveness.RUNNING]
    return alive


def _write_atomically(path: Path, text: str) -> None:
    """Write beside the target under a name no other writer uses, then rename: readers see old or new, whole."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)

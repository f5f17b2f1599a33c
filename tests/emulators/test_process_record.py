"""The sandbox's process record (emulators/processes.py) with real processes: it stops what it recorded, with
the process group created for it, and nothing else."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from emulators.processes import Liveness, ProcessRecord, RecordedProcess, start_time
from tests.e2e.polling import wait_for
from tests.support.processes import live_members

pytestmark = pytest.mark.integration


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts in sessions of their own; whatever is still running at the end is killed."""
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def spawn(spawned: list[subprocess.Popen[bytes]], *argv: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(argv, start_new_session=True, stdout=subprocess.PIPE)  # noqa: S603 - fixed argv
    spawned.append(process)
    return process


def test_a_recorded_leader_and_its_group_are_stopped_and_forgotten(
    tmp_path: Path, spawned: list[subprocess.Popen[bytes]]
) -> None:
    leader = spawn(spawned, "sh", "-c", "sleep 300 & echo started; wait")
    assert leader.stdout is not None and leader.stdout.readline() == b"started\n"
    record = ProcessRecord(tmp_path)
    recorded = record.add("server", leader.pid, own_group=True)
    assert recorded is not None and recorded.process_group == leader.pid
    assert json.loads((tmp_path / "processes" / "server.json").read_text())["startTime"] == recorded.start_time

    report = record.stop(grace=30)

    assert report.stopped == [recorded] and report.clean
    leader.wait(timeout=30)
    wait_for(lambda: not live_members(leader.pid))  # the backgrounded sleep went with its group
    assert record.read() == ([], [])


def test_a_recorded_pid_that_belongs_to_another_process_now_is_left_alone(
    tmp_path: Path, spawned: list[subprocess.Popen[bytes]]
) -> None:
    other = spawn(spawned, "sleep", "300")
    actual = start_time(other.pid)
    assert actual is not None
    record = ProcessRecord(tmp_path)
    (tmp_path / "processes").mkdir()
    stale = RecordedProcess("functions", other.pid, actual[0] - 1, other.pid)  # an earlier process had this pid
    (tmp_path / "processes" / "functions.json").write_text(json.dumps(stale.to_json()))
    assert stale.liveness() is Liveness.REUSED

    report = record.stop(grace=5)

    assert report.not_ours == [stale] and not report.stopped
    assert other.poll() is None and live_members(other.pid)
    assert f"left alone: pid {other.pid}" in "\n".join(report.lines())
    assert record.read() == ([], [])  # the stale record is forgotten, the process untouched


def test_a_process_ignoring_sigterm_gets_sigkill(tmp_path: Path, spawned: list[subprocess.Popen[bytes]]) -> None:
    stubborn = spawn(
        spawned,
        sys.executable,
        "-c",
        "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
        "time.sleep(300)",
    )
    assert stubborn.stdout is not None and stubborn.stdout.readline() == b"ready\n"
    record = ProcessRecord(tmp_path)
    record.add("stubborn", stubborn.pid, own_group=True)

    report = record.stop(grace=1)

    assert [process.pid for process in report.stopped] == [stubborn.pid]
    assert stubborn.wait(timeout=30) == -signal.SIGKILL


def test_a_gone_process_is_reported_and_forgotten(tmp_path: Path, spawned: list[subprocess.Popen[bytes]]) -> None:
    short = spawn(spawned, "true")
    record = ProcessRecord(tmp_path)
    recorded = record.add("short", short.pid, own_group=True)
    short.wait(timeout=30)
    assert recorded is not None and recorded.liveness() is Liveness.GONE

    report = record.stop(grace=5)

    assert report.already_gone == [recorded] and report.clean
    assert record.read() == ([], [])


def test_a_damaged_record_is_reported_with_what_it_holds_and_kept(tmp_path: Path) -> None:
    (tmp_path / "processes").mkdir()
    damaged = tmp_path / "processes" / "azurite.json"
    damaged.write_text('{"name": "azurite", "pid": 4')

    report = ProcessRecord(tmp_path).stop(grace=5)

    assert not report.clean and [record.path for record in report.unreadable] == [damaged]
    assert '"pid": 4' in "\n".join(report.lines())
    assert damaged.exists()  # kept for a person to look at: nothing is guessed from it

"""What tests check about processes: which live processes a process group still has."""

from __future__ import annotations

from pathlib import Path


def live_members(group: int) -> list[int]:
    """Pids of the processes in ``group`` that are not zombies (an exited process whose parent has not reaped
    it yet keeps its group id until then; this machine's init reaps late)."""
    members: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text(encoding="ascii", errors="replace").rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == group:
            members.append(int(entry.name))
    return members

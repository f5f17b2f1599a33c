"""The files a clone of the project holds, and references in them to anything beside the clone.

A fresh clone has nothing next to it, so a file that points at the team's sibling directory (its specs,
design notes or hooks) breaks for every new user. The patterns are assembled from parts so that this
module, which is itself a project file, does not match them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]

_SIBLING = "shar" + "ed"
OUTSIDE_REFERENCES = ("../" + _SIBLING, *(f"{_SIBLING}/{part}" for part in ("specs", "design", "hooks")))

# What .gitignore keeps out of a clone: walked trees (a source archive, a copy) skip the same.
_NOT_PROJECT_DIRS = frozenset(
    {".git", ".venv", "node_modules", ".sandbox", "__pycache__", ".mypy_cache", ".pytest_cache",
     ".ruff_cache", ".hypothesis", ".import_linter_cache", ".azure", "build"}
)


def _is_project_dir(name: str) -> bool:
    return name not in _NOT_PROJECT_DIRS and not name.startswith(".venv-") and not name.endswith(".egg-info")


def project_files(root: Path) -> list[Path]:
    """The files a clone of ``root`` holds, relative to ``root``: git's tracked files in a checkout,
    otherwise every file outside the ignored directories."""
    git = shutil.which("git")
    if git is not None and (root / ".git").exists():
        listed = subprocess.run(  # noqa: S603 - git on a path we were given
            [git, "-C", str(root), "ls-files", "-z", "--cached"], capture_output=True, check=True
        ).stdout.decode()
        # A tracked file deleted in the working tree is not there to read (nor to copy).
        return [Path(name) for name in listed.split("\0") if name and (root / name).is_file()]
    files = []
    for directory, subdirectories, names in os.walk(root):
        subdirectories[:] = sorted(name for name in subdirectories if _is_project_dir(name))
        files.extend((Path(directory) / name).relative_to(root) for name in sorted(names))
    return files


def outside_references(root: Path) -> list[str]:
    """``path:line: pattern`` for every occurrence of an OUTSIDE_REFERENCES pattern in the project's files.

    Bytes are searched, so no file is skipped for its encoding.
    """
    found = []
    for relative in project_files(root):
        content = (root / relative).read_bytes()
        for pattern in OUTSIDE_REFERENCES:
            needle = pattern.encode()
            start = content.find(needle)
            while start != -1:
                line = content.count(b"\n", 0, start) + 1
                found.append(f"{relative.as_posix()}:{line}: {pattern}")
                start = content.find(needle, start + 1)
    return found

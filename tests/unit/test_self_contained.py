"""The project stands alone: no file refers to the team's sibling directory, and the scan would notice."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.project_tree import OUTSIDE_REFERENCES, PROJECT_ROOT, outside_references, project_files

pytestmark = pytest.mark.unit


def test_no_project_file_refers_outside_the_clone() -> None:
    assert outside_references(PROJECT_ROOT) == []


def test_the_scan_covers_the_whole_project() -> None:
    scanned = {path.as_posix() for path in project_files(PROJECT_ROOT)}
    assert {"README.md", "Makefile", "emulators/specs/__init__.py", "tests/project_tree.py"} <= scanned
    assert not any(name.startswith((".venv/", "node_modules/")) for name in scanned)


def _plant_references(root: Path) -> None:
    (root / "docs").mkdir()
    (root / "docs" / "design.md").write_text("intro\nThe notes are in " + OUTSIDE_REFERENCES[0] + " beside it.\n")
    (root / "specs.py").write_text("ROOT = 'x/" + OUTSIDE_REFERENCES[1] + "'\n")
    (root / "clean.txt").write_text("nothing outside\n")


def test_a_walked_tree_reports_each_reference_with_its_line(tmp_path: Path) -> None:
    _plant_references(tmp_path)
    (tmp_path / ".venv").mkdir()  # not part of the project, as in a clone
    (tmp_path / ".venv" / "note.txt").write_text(OUTSIDE_REFERENCES[0] + "\n")

    found = outside_references(tmp_path)

    dotdot, specs = OUTSIDE_REFERENCES[0], OUTSIDE_REFERENCES[1]
    assert sorted(found) == sorted([f"docs/design.md:2: {dotdot}", f"specs.py:1: {specs}"])


def test_a_git_checkout_reports_references_in_tracked_files(tmp_path: Path) -> None:
    git = shutil.which("git")
    assert git is not None, "git is needed to clone the project, and here to build a checkout"
    _plant_references(tmp_path)
    subprocess.run([git, "init", "-q", str(tmp_path)], check=True)  # noqa: S603 - git on our temp dir
    subprocess.run([git, "-C", str(tmp_path), "add", "docs", "clean.txt"], check=True)  # noqa: S603

    found = outside_references(tmp_path)

    # specs.py is not tracked, so a clone would not have it.
    assert found == [f"docs/design.md:2: {OUTSIDE_REFERENCES[0]}"]

"""The product's wheel holds the product only: the sandbox (emulators/) and the tests run from the checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_the_wheel_holds_the_controller_and_no_sandbox_or_tests(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy, so the build leaves no build/ or *.egg-info in the checkout
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv*", "node_modules", ".sandbox", ".mutation", "*.egg-info", "build", "__pycache__"
        ),
    )
    built = subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--disable-pip-version-check",
         "-q", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=280, check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (tmp_path / "dist").glob("cmk_controller-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    files = [name for name in names if ".dist-info/" not in name]

    assert "controller/__init__.py" in files
    assert "controller/ncrontab.py" in files
    assert all(name.startswith("controller/") for name in files), [n for n in files if not n.startswith("controller/")]
    assert not [name for name in names if name.startswith(("emulators/", "tests/", "bench/"))]
    entry_points = next(name for name in names if name.endswith(".dist-info/entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "cmkctl = controller.cli:main" in scripts
    assert "emulators" not in scripts

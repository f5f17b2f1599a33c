"""The product's wheel holds the product only: the sandbox (emulators/) and the tests run from the checkout."""

from __future__ import annotations

import os
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


def test_the_function_package_leaves_out_the_sandbox_the_tests_and_local_secrets(tmp_path: Path) -> None:
    """What `func azure functionapp publish` / `azd deploy` zip is the checkout minus .funcignore (gitignore
    patterns): the app and its package ship; the sandbox, the tests, the IaC and local settings (secrets) do not.
    Judged by git's own matcher, in an empty repository whose only ignore file is .funcignore."""
    shipped = ["function_app.py", "host.json", "requirements.txt", "controller/cli/main.py",
               "controller/functions/http.py", "controller/compliance/schemas/compliance-report-v1.schema.json"]
    left_out = ["emulators/sandbox.py", "emulators/specs/README.md", "tests/conftest.py", "local.settings.json",
                "local.settings.json.example", ".sandbox/env", ".sandbox/functions/host-keys.json",
                ".venv/bin/python", "node_modules/azurite/package.json", "infra/main.bicep", "bench/README.md",
                "mutation/run.py", ".git/config", "controller/__pycache__/model.cpython-311.pyc", "Makefile"]
    git = shutil.which("git")
    assert git is not None
    subprocess.run([git, "init", "-q", str(tmp_path)], check=True, timeout=30)  # noqa: S603 - fixed argv
    shutil.copyfile(ROOT / ".funcignore", tmp_path / ".gitignore")
    checked = subprocess.run(  # noqa: S603 - fixed argv; exit 1 means "none ignored", which the assertion reports
        [git, "-C", str(tmp_path), "-c", f"core.excludesFile={os.devnull}",  # not the user's global ignores
         "check-ignore", "--no-index", "--stdin"], input="\n".join(shipped + left_out),
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert checked.returncode in (0, 1), checked.stderr
    assert sorted(checked.stdout.split()) == sorted(left_out)

"""A clone with nothing beside it passes the tests that read the Azure specs, and reads nothing outside itself.

The project's files (what a clone holds: tests/project_tree.py) are copied from the working tree into a
fresh temporary directory that has no sibling directories, so what is checked is what would be
committed, uncommitted edits included. The tests that read the vendored specs then run there in a
child pytest, with this interpreter (the project's virtualenv; its installed dependencies are all
such a clone gets from `make setup`) and the copy first on the import path. An audit hook installed
in the child before pytest starts records every file it opens: none may lie in this checkout (outside
the virtualenv) or in the team's sibling directory, and the specs must have been read from the copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.project_tree import OUTSIDE_REFERENCES, PROJECT_ROOT, project_files

pytestmark = pytest.mark.integration

# Modules and tests that read emulators/specs; the emulator tests chosen stand alone (no earlier test in
# their module feeds them) and cover the Key Vault data plane, ARM storage and vaults, and Event Grid.
SPEC_TESTS = (
    "tests/unit/test_self_contained.py",
    "tests/unit/test_vendored_specs.py",
    "tests/unit/test_events.py::test_fixture_data_matches_the_published_schema_apart_from_documented_defects",
    "tests/unit/test_events.py::test_fixture_envelopes_match_the_published_event_schemas",
    "tests/emulators/test_keyvault_keys.py",
    "tests/emulators/test_arm_resources.py::test_storage_account_round_trip",
    "tests/emulators/test_arm_resources.py::test_vault_create_update_and_data_plane",
    "tests/emulators/test_eventgrid.py::test_validation_handshake_comes_first_then_the_exact_event_grid_envelope",
)

# Run as `python -c PROBE <opened-files log> <pytest args...>`: the hook is in place before pytest or
# any project module is imported, and the log is written when the interpreter exits.
PROBE = """
import atexit, os, sys
opened = set()
def record(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        opened.add(os.path.abspath(os.fsdecode(args[0])))
sys.addaudithook(record)
log = sys.argv[1]
atexit.register(lambda: open(log, "w", encoding="utf-8").write("\\n".join(sorted(opened))))
import pytest
sys.exit(pytest.main(sys.argv[2:]))
"""


def _copy_project(destination: Path) -> None:
    for relative in project_files(PROJECT_ROOT):
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT_ROOT / relative, target)


def test_a_lone_clone_passes_the_spec_tests_reading_only_itself(tmp_path: Path) -> None:
    clone = tmp_path / "isolated" / "cmk"
    _copy_project(clone)
    assert sorted(path.name for path in clone.parent.iterdir()) == ["cmk"], "nothing beside the clone"
    opened_log = tmp_path / "opened.txt"
    environment = {
        **os.environ,
        "PYTHONPATH": str(clone),
        "PYTHONDONTWRITEBYTECODE": "1",
        # Azurite is a dependency `make setup` installs (npm); the clone has no node_modules of its own.
        "AZURITE_BIN": str(PROJECT_ROOT / "node_modules" / ".bin" / "azurite"),
    }

    child = subprocess.run(  # noqa: S603 - our own interpreter and a fixed script
        [sys.executable, "-c", PROBE, str(opened_log), "-q", "-p", "no:cacheprovider",
         "--basetemp", str(tmp_path / "child-tmp"), *SPEC_TESTS],
        cwd=clone, env=environment, capture_output=True, text=True, check=False,
    )

    assert child.returncode == 0, child.stdout[-4000:] + child.stderr[-2000:]
    opened = [Path(line).resolve() for line in opened_log.read_text(encoding="utf-8").splitlines()]
    interpreter = Path(sys.prefix).resolve()
    from_checkout = [
        path for path in opened if path.is_relative_to(PROJECT_ROOT) and not path.is_relative_to(interpreter)
    ]
    assert from_checkout == [], "the clone read files of the checkout it was copied from"
    sibling = PROJECT_ROOT.parent / OUTSIDE_REFERENCES[0].removeprefix("../")
    assert [path for path in opened if path.is_relative_to(sibling)] == []
    storage_spec = "emulators/specs/specification/storage/resource-manager/Microsoft.Storage/Storage/stable/2025-01-01"
    assert clone.resolve() / storage_spec / "storage.json" in opened, "the ARM contract read the clone's spec"
    assert clone.resolve() / "emulators" / "specs" / "__init__.py" in opened

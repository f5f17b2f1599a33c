"""Mutation testing of the pure core (README "Mutation testing"): how much of its behaviour the unit tests pin.

    .venv/bin/python mutation/run.py [--max-children N] [--keep] [--survivors] [UNIT ...]

Each unit (a module, or the compliance rules package) runs mutmut in its own workspace,
.mutation/<unit>/, against ONLY the unit tests that import it (or, for a unit in OWN_TESTS, its own test
modules): a mutant killed by some other module's test does not count. Hypothesis runs derandomized on
a small example budget (mutation/hypothesis_budget.py), so a score is reproducible and a run takes
minutes, not hours.
Prints one line per module: generated / killed / survived / equivalent / no tests / score, where
score = killed / (generated - equivalent). Equivalent mutants (no test can tell them from
the original) are listed with their reason in mutation/equivalent-mutants.toml; an entry that matches
no generated mutant any more is reported as stale, so the list stays true.

--keep reuses a unit's workspace: mutmut keeps earlier verdicts and runs only mutants it has none for
(a changed function's mutants are new); --rerun-survivors also runs the last survivors again, against
the current tests: the loop for writing tests that kill them. --only runs the named mutants only (any
part of a mutant's name: a function, or a file of a package such as "keys."); with --rerun-survivors,
only the survivors among them.
--survivors prints each surviving mutant's diff. Exit status: 0, or 1 when a module scores under
--minimum (default 90).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKSPACES = ROOT / ".mutation"
EQUIVALENTS_FILE = ROOT / "mutation" / "equivalent-mutants.toml"
MUTMUT = Path(sys.executable).parent / "mutmut"
# Top-level files some unit tests read or import (test_readme: the settings table; test_functions: the
# function app), copied into each workspace.
TOP_LEVEL_FILES = ["README.md", "function_app.py", "host.json"]

# unit name -> the source files it mutates (one line of output each).
UNITS: dict[str, list[str]] = {
    "events": ["controller/events.py"],
    "rotation": ["controller/rotation.py"],
    "envelope": ["controller/envelope.py"],
    "settings": ["controller/settings.py"],
    "compliance-rules": sorted(
        str(path.relative_to(ROOT))
        for path in (ROOT / "controller" / "compliance" / "rules").glob("*.py")
        if path.name != "__init__.py"
    ),
    # The rules' evaluators outside the package: key access (CMK-006, and the reconciler's) and drift's
    # selection and partial re-evaluation.
    "compliance-access": ["controller/compliance/access.py"],
    "compliance-drift": ["controller/compliance/drift.py"],
}

# Units whose module every other module's tests import only to build their inputs (settings: each test
# of a use case loads settings): measured against their own test modules, named here, instead of every
# test module that imports them (which would run hundreds of unrelated tests per mutant).
OWN_TESTS: dict[str, str] = {
    "settings": "tests/unit/test_settings*.py",
}

# mutmut's exit codes per verdict (mutmut/stats.py); anything else is a kill or a timeout.
SURVIVED = 0
PENDING = None  # not run yet (an interrupted run)
NO_TESTS = {5, 33, 34}  # no test reaches the mutated function, or skipped


@dataclass(frozen=True)
class Equivalent:
    module: str
    function: str
    before: str
    after: str
    reason: str


def module_name(source: str) -> str:
    return source.removesuffix(".py").replace("/", ".")


def tests_importing(sources: list[str]) -> list[str]:
    """The unit test modules that import one of ``sources`` (or, for a package, anything under it)."""
    wanted = {module_name(source) for source in sources}
    packages = {name.rpartition(".")[0] for name in wanted if name.count(".") > 2}
    selected = []
    for test in sorted((ROOT / "tests" / "unit").glob("test_*.py")):
        imported: set[str] = set()
        for node in ast.walk(ast.parse(test.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
                imported.update(f"{node.module}.{alias.name}" for alias in node.names)
        if imported & (wanted | packages):
            selected.append(str(test.relative_to(ROOT)))
    return selected


def prepare_workspace(unit: str, sources: list[str], tests: list[str], *, keep: bool) -> Path:
    workspace = WORKSPACES / unit
    if workspace.exists() and not keep:
        shutil.rmtree(workspace)
    workspace.mkdir(parents=True, exist_ok=True)
    for directory in ("controller", "tests", "emulators", "mutation"):
        shutil.rmtree(workspace / directory, ignore_errors=True)
        shutil.copytree(ROOT / directory, workspace / directory, ignore=shutil.ignore_patterns("__pycache__"))
    for name in TOP_LEVEL_FILES:
        shutil.copy2(ROOT / name, workspace / name)
    mutmut_config = {
        "source_paths": ["controller"],
        "only_mutate": sources,
        "also_copy": ["emulators", "mutation", *TOP_LEVEL_FILES],
        "pytest_add_cli_args_test_selection": tests,
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-p", "mutation.hypothesis_budget"],
        "use_git_change_detection": False,
    }
    lines = [f"{key} = {json.dumps(value)}" for key, value in mutmut_config.items()]
    pyproject = (ROOT / "pyproject.toml").read_text()
    (workspace / "pyproject.toml").write_text(pyproject + "\n[tool.mutmut]\n" + "\n".join(lines) + "\n")
    return workspace


def run_mutmut(workspace: Path, max_children: int, rerun: list[str], *, only_named: bool) -> None:
    """Run the mutants without a verdict; first, run again those named in ``rerun`` (only those when
    ``only_named``)."""
    environment = {**os.environ, "CI": "1"}  # the derandomized hypothesis profile
    command = [str(MUTMUT), "run", "--max-children", str(max_children)]
    if rerun:
        # Named mutants are the only ones run. A name whose function changed since is gone: its new
        # mutants have no verdict yet and are run below.
        subprocess.run(  # noqa: S603 - our own mutmut, fixed arguments
            [*command, *rerun], cwd=workspace, env=environment, check=False, stdout=subprocess.DEVNULL
        )
    if only_named:
        return
    finished = subprocess.run(  # noqa: S603 - our own mutmut, fixed arguments
        command, cwd=workspace, env=environment, check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, errors="replace",
    )
    if finished.returncode != 0:
        # Most often the unmutated tests fail in the workspace (a file they read was not copied): say which.
        output = finished.stdout.replace("\r", "\n").splitlines()
        shown = "\n".join(line for line in output[-40:] if not line.startswith("  "))
        raise SystemExit(f"mutmut failed in {workspace} (exit status {finished.returncode}):\n{shown}")


def verdicts(workspace: Path, source: str) -> dict[str, int | None]:
    meta_file = workspace / "mutants" / f"{source}.meta"
    if not meta_file.exists():
        return {}
    return dict(json.loads(meta_file.read_text())["exit_code_by_key"])


def changed_lines(diff: str) -> tuple[str, str]:
    body = [line for line in diff.splitlines()[2:] if line[:1] in "+-"]
    before = " / ".join(line[1:].strip() for line in body if line.startswith("-"))
    after = " / ".join(line[1:].strip() for line in body if line.startswith("+"))
    return before, after


def function_of(mutant: str) -> str:
    """``controller.events.x__parse_date__mutmut_3`` -> ``_parse_date`` (``xǁClassǁmethod`` -> ``Class.method``)."""
    local = mutant.rpartition("__mutmut_")[0].rpartition(".")[2]
    return local.removeprefix("x").removeprefix("_").replace("ǁ", ".").strip(".")


def diffs(workspace: Path, source: str, mutants: list[str]) -> dict[str, str]:
    """Each mutant's unified diff, computed by mutmut itself inside the workspace."""
    if not mutants:
        return {}
    script = (
        "import json, sys\n"
        "from mutmut.mutation.diff_apply import get_diff_for_mutant\n"
        "print(json.dumps({name: get_diff_for_mutant(name, path=sys.argv[1]) for name in sys.argv[2:]}))\n"
    )
    shown = subprocess.run(  # noqa: S603 - our own interpreter, fixed script
        [sys.executable, "-c", script, source, *mutants], cwd=workspace, check=True, capture_output=True, text=True
    )
    return dict(json.loads(shown.stdout))


def load_equivalents() -> list[Equivalent]:
    entries = tomllib.loads(EQUIVALENTS_FILE.read_text()).get("equivalent", [])
    return [Equivalent(**entry) for entry in entries]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("units", nargs="*", metavar="UNIT", help=f"some of: {', '.join(UNITS)} (default: all)")
    parser.add_argument("--max-children", type=int, default=1, help="mutmut workers (default 1)")
    parser.add_argument("--keep", action="store_true", help="reuse the workspaces and their verdicts")
    parser.add_argument("--survivors", action="store_true", help="print each surviving mutant's diff")
    parser.add_argument("--rerun-survivors", action="store_true",
                        help="with --keep: run the tests again on the mutants that survived last time")
    parser.add_argument("--only", action="append", default=[], metavar="FUNCTION",
                        help="run only the mutants of functions whose name contains FUNCTION (repeatable)")
    parser.add_argument("--minimum", type=float, default=90.0, help="the lowest passing score, in percent")
    arguments = parser.parse_args()
    unknown = sorted(set(arguments.units) - set(UNITS))
    if unknown:
        parser.error(f"unknown unit(s) {', '.join(unknown)}; the units are {', '.join(UNITS)}")

    equivalents = load_equivalents()
    matched: set[Equivalent] = set()
    passed = True
    for unit in arguments.units or list(UNITS):
        sources = UNITS[unit]
        tests = (sorted(str(path.relative_to(ROOT)) for path in ROOT.glob(OWN_TESTS[unit])) if unit in OWN_TESTS
                 else tests_importing(sources))
        workspace = prepare_workspace(unit, sources, tests, keep=arguments.keep)
        print(f"# {unit}: {len(tests)} test modules ({', '.join(Path(test).stem for test in tests)})", flush=True)
        rerun = [f"{module_name(source).rpartition('.')[0]}.*{pattern}*" for source in sources
                 for pattern in arguments.only]
        if arguments.rerun_survivors:
            # With --only, the survivors of those functions (or files: "keys.") only.
            rerun = [name for source in sources for name, code in verdicts(workspace, source).items()
                     if code == SURVIVED and (not arguments.only or any(part in name for part in arguments.only))]
        run_mutmut(workspace, arguments.max_children, rerun, only_named=bool(arguments.only))
        for source in sources:
            results = verdicts(workspace, source)
            survivors = sorted(name for name, code in results.items() if code == SURVIVED)
            survivor_diffs = diffs(workspace, source, survivors)
            equivalent = []
            for name in survivors:
                before, after = changed_lines(survivor_diffs[name])
                for entry in equivalents:
                    same_change = (entry.before, entry.after) == (before, after)
                    if entry.module == source and entry.function == function_of(name) and same_change:
                        equivalent.append(name)
                        matched.add(entry)
                        break
            generated = len(results)
            untested = sum(1 for code in results.values() if code in NO_TESTS)
            pending = sum(1 for code in results.values() if code is PENDING)
            survived = len(survivors) - len(equivalent)
            killed = generated - untested - pending - len(survivors)
            scored = generated - len(equivalent)
            score = 100.0 * killed / scored if scored else 100.0
            passed = passed and score >= arguments.minimum
            print(
                f"{source}: generated {generated} / killed {killed} / survived {survived} / "
                f"equivalent {len(equivalent)} / no tests {untested} / score {score:.1f}%"
                + (f" ({pending} not run yet)" if pending else ""),
                flush=True,
            )
            if arguments.survivors:
                for name in survivors:
                    if name not in equivalent:
                        print(f"\n## {name}\n{survivor_diffs[name]}")
    ran = {source for unit in (arguments.units or UNITS) for source in UNITS[unit]}
    for entry in equivalents:
        if entry.module in ran and entry not in matched:
            change = f"{entry.before!r} -> {entry.after!r}"
            print(f"stale equivalent-mutant entry: {entry.module} {entry.function}: {change}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())

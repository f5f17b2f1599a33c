"""Shared pytest fixtures. Each section belongs to one part of the sandbox; keep them separate."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator

import pytest
from hypothesis import settings

# CI explores the same examples on every run (a red CI must be reproducible, and a random example must
# not decide whether a submission lands); local runs keep exploring new ones.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

# A suite started in the background by a shell without job control (`make test &` in a script, nohup) inherits
# SIGINT ignored, and so would every command it starts: the tests that press Ctrl-C on `cmkctl` would see it
# ignored. Each test process takes the disposition a terminal gives (in the main thread: xdist runs tests there).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN and threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGINT, signal.default_int_handler)

# --- Parallel runs (pytest-xdist: `make test` runs `pytest -n 2`) -----------------------------------
# Work is handed to the workers a unit at a time. A unit is one test module (its module fixtures, such as
# emulators, start once, on one worker), or a whole directory of ONE_WORKER_DIRECTORIES (its costly session
# fixture starts once per run). Session fixtures elsewhere (Azurite, the re-wrap vault) start once per worker,
# so they must not depend on fixed ports or paths. Units go out heaviest directory first (FIRST_DIRECTORIES),
# so the many small unit-test modules fill the end of the run instead of one long module.
# (xdist's own `--dist loadgroup` marks are not used: xdist 3.8 renames the test id, which pytest 9 ignores.)
ONE_WORKER_DIRECTORIES = ("tests/reliability/",)  # the reliability estate (tests/reliability/conftest.py)
FIRST_DIRECTORIES = ("tests/reliability/", "tests/integration/", "tests/e2e/", "tests/emulators/", "tests/infra/")
_DISTRIBUTED_BY_UNIT = ("load", "loadscope", "loadfile", "loadgroup")


def work_unit(nodeid: str) -> str:
    """The unit of work a test belongs to: its directory of ONE_WORKER_DIRECTORIES, else its module."""
    module = nodeid.split("::", 1)[0]
    return next((directory for directory in ONE_WORKER_DIRECTORIES if module.startswith(directory)), module)


def _heaviest_first(nodeid: str) -> int:
    return next((rank for rank, directory in enumerate(FIRST_DIRECTORIES) if nodeid.startswith(directory)),
                len(FIRST_DIRECTORIES))


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """The scheduler of ``-n N`` (unless ``--dist`` asks for each/worksteal): one work unit at a time."""
    if config.getoption("dist") not in _DISTRIBUTED_BY_UNIT:
        return None
    from xdist.scheduler import LoadScopeScheduling

    class WorkUnitScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    config.option.loadscopereorder = False  # keep the order below, not "most tests first"
    return WorkUnitScheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On an xdist worker: the heaviest directories first (a stable sort: every worker gets the same order,
    and each module keeps its own). A plain run keeps pytest's order."""
    if hasattr(config, "workerinput"):
        items.sort(key=lambda item: _heaviest_first(item.nodeid))


#: A test's user property holding a line of figures (tests/reliability's ``report_figures``).
FIGURES_PROPERTY = "figures"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """A worker's output reaches no terminal: the controller prints the lines of figures the tests' reports
    carry (a plain run printed them as the tests ran)."""
    if not config.getoption("numprocesses", None):
        return
    lines = [value for reports in terminalreporter.stats.values() for report in reports
             if getattr(report, "when", None) == "call"
             for name, value in getattr(report, "user_properties", ()) if name == FIGURES_PROPERTY]
    if lines:
        terminalreporter.section("figures")
        for line in lines:
            terminalreporter.write_line(line)


# --- Azurite (emulators/azurite.py) ----------------------------------------------------------------
from emulators.azurite import Azurite  # noqa: E402 - sections stay self-contained


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """One Azurite (blob, queue, table) for the whole session, on free loopback ports.

    Tests share it: give containers, queues and tables unique names (e.g. with a uuid suffix).
    Use ``azurite.connection_string`` with the Azure SDK clients.
    """
    with Azurite(location=tmp_path_factory.mktemp("azurite")) as running:
        yield running


# --- ARM emulator (emulators/arm) ------------------------------------------------------------------
from emulators.arm import ArmEmulator  # noqa: E402
from emulators.bus import SandboxBus  # noqa: E402
from emulators.clock import SandboxClock  # noqa: E402
from emulators.keyvault import KeyVaultEmulator  # noqa: E402


@pytest.fixture(scope="module")
def arm_sandbox(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArmEmulator]:
    """Per test module: an ARM emulator with its own Key Vault emulator, blob endpoints over the session Azurite.

    The storage timer is effectively off (one tick an hour): tests drive the storage key cycle with
    ``arm_sandbox.poll_storage()`` / ``check_storage_keys()`` / ``advance_clock()``.
    """
    keyvault = KeyVaultEmulator(SandboxClock(), SandboxBus(), directory=tmp_path_factory.mktemp("arm-kv"))
    with ArmEmulator(keyvault=keyvault, azurite=azurite, storage_tick_seconds=3600) as arm:
        yield arm


# --- Re-wrap sandbox vault (emulators/keyvault; used by tests/integration/test_rewrap_*.py) ---------
# A session-scoped emulated Key Vault with one vault the controller principal fully manages. Tests
# create their own keys (unique names) and reset throttling/faults they set. The vault is at its Azure host
# name (https://kv-rewrap.vault.azure.net) through the sandbox's egress proxy, as in the sandbox: clients get
# the proxy from tests.support.keyvault.client_kwargs, and the CLI from HTTPS_PROXY (tests/support/egress.py).
import emulators.keyvault as rewrap_kv  # noqa: E402 - sections stay self-contained
from emulators.egress_proxy import EgressProxy  # noqa: E402


@pytest.fixture(scope="session")
def rewrap_keyvault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[rewrap_kv.KeyVaultEmulator]:
    with (
        EgressProxy() as proxy,
        rewrap_kv.KeyVaultEmulator(directory=tmp_path_factory.mktemp("rewrap-kv"), proxy=proxy) as emulator,
    ):
        emulator.add_vault(
            "kv-rewrap",
            access_policies=[
                {"objectId": "c0000000-0000-0000-0000-00000000c0de", "permissions": {"keys": ["all"]}},
            ],
        )
        yield emulator


# --- end of re-wrap sandbox vault ------------------------------------------------------------------

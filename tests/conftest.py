"""Shared pytest fixtures. Each section belongs to one part of the sandbox; keep them separate."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

# CI explores the same examples on every run (a red CI must be reproducible, and a random example must
# not decide whether a submission lands); local runs keep exploring new ones.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

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
# create their own keys (unique names) and reset throttling/faults they set.
import emulators.keyvault as rewrap_kv  # noqa: E402 - sections stay self-contained


@pytest.fixture(scope="session")
def rewrap_keyvault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[rewrap_kv.KeyVaultEmulator]:
    with rewrap_kv.KeyVaultEmulator(directory=tmp_path_factory.mktemp("rewrap-kv")) as emulator:
        emulator.add_vault(
            "kv-rewrap",
            access_policies=[
                {"objectId": "c0000000-0000-0000-0000-00000000c0de", "permissions": {"keys": ["all"]}},
            ],
        )
        yield emulator


# --- end of re-wrap sandbox vault ------------------------------------------------------------------

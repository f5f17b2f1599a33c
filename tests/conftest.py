"""Shared pytest fixtures. Each section belongs to one part of the sandbox; keep them separate."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

# --- Azurite (emulators/azurite.py) ----------------------------------------------------------------
from emulators.azurite import Azurite


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """One Azurite (blob, queue, table) for the whole session, on free loopback ports.

    Tests share it: give containers, queues and tables unique names (e.g. with a uuid suffix).
    Use ``azurite.connection_string`` with the Azure SDK clients.
    """
    with Azurite(location=tmp_path_factory.mktemp("azurite")) as running:
        yield running

"""Create a table or queue of the app's own storage the first time it is needed, once per process."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from azure.core.exceptions import ResourceExistsError

from controller.adapters.azure_errors import translated


class CreatedOnce:
    """``CreatedOnce(table.create_table, f"table {name}")()`` creates the table if missing, then is free."""

    def __init__(self, create: Callable[[], object], what: str) -> None:
        self._create = create
        self._what = what
        self._done = False

    def __call__(self) -> None:
        if self._done:
            return
        with translated(f"create {self._what}"), contextlib.suppress(ResourceExistsError):
            self._create()
        self._done = True

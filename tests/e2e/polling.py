"""Polling for the end-to-end tests: the sandbox is asynchronous, so they wait for what they expect."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 30.0, interval: float = 0.2) -> T:
    """Call ``condition`` every ``interval`` seconds until it returns a truthy value, and return that value.

    AssertionError when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not reached before the deadline")

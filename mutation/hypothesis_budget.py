"""A pytest plugin loaded only by mutation/run.py: property tests run derandomized on a small example budget.

A surviving mutant runs every test that reaches its function, and the property tests' hundreds of
examples (100 s per run of controller.events' tests on this machine) would make a run take hours. The
first examples of a derandomized run are the same every time, so a score stays reproducible; the
property tests keep their full budget in `make test`.
"""

from __future__ import annotations

import pytest
from hypothesis import settings

MUTATION_EXAMPLES = 10


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        test = getattr(item, "obj", None)
        if not getattr(test, "is_hypothesis_test", False):
            continue
        # Where @given keeps a test's settings; read again on every call of the test.
        current = test._hypothesis_internal_use_settings  # type: ignore[union-attr]
        test._hypothesis_internal_use_settings = settings(  # type: ignore[union-attr]
            current, max_examples=min(current.max_examples, MUTATION_EXAMPLES), derandomize=True, database=None
        )

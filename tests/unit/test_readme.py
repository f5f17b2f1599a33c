"""The README documents every setting the code reads, with its real default, and opens with set-up."""

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from controller.settings import SETTINGS
from emulators.sdk_samples import EXPECTATIONS

pytestmark = pytest.mark.unit

README = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("spec", SETTINGS, ids=lambda spec: spec.name)
def test_every_setting_has_a_row_with_its_default(spec):
    rows = [line for line in README.splitlines() if line.startswith(f"| `{spec.name}` |")]
    assert len(rows) == 1, f"{spec.name} needs exactly one row in the README's settings table"
    expected_default = f"`{spec.default}`" if spec.default else "(empty)"
    assert rows[0].split("|")[2].strip() == expected_default


def test_readme_opens_with_the_setup_commands():
    first_block = README.split("```", 2)[1]
    assert "make test" in first_block


def test_the_readme_counts_the_sdk_samples_that_pass_and_those_expected_to_fail():
    """What `make sdk-samples` passes, as the README lists it, agrees with the expectations the run checks."""
    expected = json.loads(EXPECTATIONS.read_text(encoding="utf-8"))["expectedFailures"]
    found = re.search(r"\*\*(\d+) of (\d+) pass\*\*", README)
    assert found is not None, "the README says how many official samples pass"
    passing, total = int(found[1]), int(found[2])
    assert total - passing == len(expected)
    section = README[README.index(f"The {len(expected)} others"):README.index("### Azure's host names")]
    for package, count in Counter(name.split("/")[0] for name in expected).items():
        assert re.search(rf"\*\*{re.escape(package)}[^*]*\*\* \({count}\)", section), (package, count)

"""The README documents every setting the code reads, with its real default, and opens with set-up."""

from pathlib import Path

import pytest

from controller.settings import SETTINGS

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

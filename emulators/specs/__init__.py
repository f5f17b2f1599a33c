"""The official Azure REST API contracts the emulators and tests are checked against.

They are vendored, unmodified, under ``specification/`` at their upstream paths in
Azure/azure-rest-api-specs (provenance and license: README.md and LICENSE beside this file), so a
fresh clone needs nothing outside the repository.
"""

from __future__ import annotations

from pathlib import Path

SPECS_ROOT = Path(__file__).resolve().parent / "specification"


def spec_path(relative: str) -> Path:
    path = SPECS_ROOT / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not among the vendored Azure specs (see emulators/specs/README.md)")
    return path

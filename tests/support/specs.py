"""Where the official Azure REST API contracts are, for contract tests of the emulators and adapters:
../shared/specs beside the repository (as on every developer machine and in CI), or CMK_SPECS_DIR."""

from __future__ import annotations

import os
from pathlib import Path

SPECS_ROOT = Path(os.environ.get("CMK_SPECS_DIR") or Path(__file__).resolve().parents[3] / "shared" / "specs")


def spec_path(relative: str) -> Path:
    path = SPECS_ROOT / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the shared Azure specs are missing (set CMK_SPECS_DIR)")
    return path

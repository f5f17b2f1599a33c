"""The vendored Azure REST API specs are the upstream files, unmodified, and all of them are accounted for."""

from __future__ import annotations

import hashlib
import json

import pytest

from emulators.specs import SPECS_ROOT

pytestmark = pytest.mark.unit

SPECS_DIR = SPECS_ROOT.parent


def _recorded_digests() -> dict[str, str]:
    """SHA256SUMS (``sha256sum`` format): path relative to emulators/specs -> hex digest."""
    recorded = {}
    for line in (SPECS_DIR / "SHA256SUMS").read_text(encoding="utf-8").splitlines():
        digest, _, path = line.partition("  ")
        recorded[path] = digest
    return recorded


def test_every_vendored_file_has_its_recorded_digest() -> None:
    recorded = _recorded_digests()
    present = {path.relative_to(SPECS_DIR).as_posix() for path in SPECS_ROOT.rglob("*") if path.is_file()}
    assert present == set(recorded), "SHA256SUMS lists exactly the files under specification/"
    actual = {path: hashlib.sha256((SPECS_DIR / path).read_bytes()).hexdigest() for path in recorded}
    changed = sorted(path for path, digest in recorded.items() if actual[path] != digest)
    assert changed == [], "vendored specs must stay byte-identical to upstream"


def test_every_vendored_file_is_documented_with_its_provenance() -> None:
    readme = (SPECS_DIR / "README.md").read_text(encoding="utf-8")
    for path in _recorded_digests():
        upstream_path = path.removeprefix("specification/")
        assert f"| `{upstream_path}` |" in readme, f"{path} has no row (upstream path, commit) in README.md"
    assert "MIT License" in (SPECS_DIR / "LICENSE").read_text(encoding="utf-8")


def test_vendored_files_are_swagger_documents() -> None:
    for path in _recorded_digests():
        assert json.loads((SPECS_DIR / path).read_bytes())["swagger"] == "2.0", path

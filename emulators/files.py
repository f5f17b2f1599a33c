"""Files the sandbox writes that hold secrets (host keys, settings with the identity endpoint's header, the CA's
private key): readable by their owner only from their first byte, never chmod-ed after being written."""

from __future__ import annotations

import os
from pathlib import Path


def write_file(path: Path, text: str, *, mode: int = 0o600) -> None:
    """Write ``text`` to ``path`` with ``mode`` from its first byte, whatever mode the file had before (by default
    only its owner can read it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        os.fchmod(file.fileno(), mode)
        file.write(text)

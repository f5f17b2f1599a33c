"""Plain-text pieces shared by the human-readable formats (Markdown, HTML); each format escapes them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime

from controller.compliance.catalogue import RULES_BY_ID


def evidence_lines(evidence: Mapping[str, object]) -> list[str]:
    """One ``name: value`` line per observed value, values in JSON so strings and numbers stay distinct."""
    return [f"{name}: {json.dumps(value, ensure_ascii=False, sort_keys=True)}" for name, value in evidence.items()]


def timestamp(moment: datetime | None) -> str:
    """Minutes are enough for a reader; ``-`` when unknown."""
    if moment is None:
        return "-"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def rule_name(rule: str) -> str:
    """The catalogue's short name of a rule, or empty for a rule this build does not know."""
    info = RULES_BY_ID.get(rule)
    return info.name if info is not None else ""


def yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def blob_count(blobs: int | None) -> str:
    return "-" if blobs is None else str(blobs)

"""One structured record per decision: a readable message plus the same fields as JSON.

Application Insights stores ``custom_dimensions`` as queryable columns; the JSON in the message
keeps the record whole in plain log streams (the local host, `func start`, CI output). Callers pass
only identifiers and outcomes: never key material, tokens or blob contents; and as a net under that rule
both are scrubbed of anything shaped like a secret (controller/redaction.py: a refused input is quoted).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

from controller.redaction import scrub


def log_record(logger: logging.Logger, level: int, message: str, record: Mapping[str, object]) -> None:
    if not logger.isEnabledFor(level):
        return
    fields = dict(record)
    raw = json.dumps(fields, sort_keys=True, default=str)
    text = scrub(raw)
    logger.log(
        level,
        "%s %s",
        scrub(message),
        text,
        extra={"custom_dimensions": fields if text == raw else json.loads(text)},
    )

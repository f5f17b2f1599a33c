"""One structured record per decision: a readable message plus the same fields as JSON.

Application Insights stores ``custom_dimensions`` as queryable columns; the JSON in the message
keeps the record whole in plain log streams (the local host, `func start`, CI output). Callers pass
only identifiers and outcomes: never key material, tokens or blob contents.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping


def log_record(logger: logging.Logger, level: int, message: str, record: Mapping[str, object]) -> None:
    fields = dict(record)
    logger.log(
        level,
        "%s %s",
        message,
        json.dumps(fields, sort_keys=True, default=str),
        extra={"custom_dimensions": fields},
    )

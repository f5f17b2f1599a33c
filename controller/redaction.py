"""Secrets out of what the controller writes for people: log records and alerts.

The controller never logs key material on purpose, but it does quote what it was given when it refuses
it (a malformed work item, a bad event field, an SDK error naming a request): whatever a careless operator
or a hostile sender put there would be echoed into the logs, the alert ledger and every alert channel. So
log records and alerts pass through ``scrub``, which replaces what has the shape of a secret:

* ``name=value`` pairs of connection strings and SAS URLs (AccountKey, SharedAccessKey, sig, ...);
* JSON Web Tokens, bearer credentials and PEM private keys;
* long random-looking base64 (40 characters or more mixing upper case, lower case and digits, with no
  run of six lower-case letters, which every resource id or path has) and long hex (64 digits or more:
  a 256-bit key; key versions, 32 digits, stay readable).

It is a net under the rule, not the rule: callers still pass identifiers and outcomes only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REDACTED = "[redacted]"

_SECRET_PAIRS = re.compile(
    r"(?i)\b(AccountKey|SharedAccessKey|SharedAccessSignature|sig|client_secret|password|pwd|token)"
    r"(\s*[=:]\s*)([^;&\s'\"]+)")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}(?:\.[A-Za-z0-9_-]*)?")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/-]{16,}=*")
_PEM = re.compile(r"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)", re.DOTALL)
_BASE64_RUN = re.compile(r"(?<![A-Za-z0-9+/=_-])[A-Za-z0-9+/=_-]{40,}(?![A-Za-z0-9+/=_-])")
_HEX_RUN = re.compile(r"(?<![0-9A-Za-z])[0-9A-Fa-f]{64,}(?![0-9A-Za-z])")
_WORDLIKE = re.compile(r"[a-z]{6}")


def _random_looking(match: re.Match[str]) -> str:
    text = match.group(0)
    mixed = any(c.isupper() for c in text) and any(c.islower() for c in text) and any(c.isdigit() for c in text)
    return REDACTED if mixed and not _WORDLIKE.search(text) else text


def scrub(text: str) -> str:
    """``text`` with everything shaped like a secret replaced by ``[redacted]``."""
    text = _PEM.sub(REDACTED, text)
    text = _JWT.sub(REDACTED, text)
    text = _BEARER.sub(lambda match: match.group(1) + REDACTED, text)
    text = _SECRET_PAIRS.sub(lambda match: match.group(1) + match.group(2) + REDACTED, text)
    text = _HEX_RUN.sub(REDACTED, text)
    return _BASE64_RUN.sub(_random_looking, text)


def scrub_value(value: Any) -> Any:
    """``scrub`` over every string in a JSON-like value (mappings become dicts; lists and tuples stay so)."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, Mapping):
        return {key: scrub_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [scrub_value(item) for item in value]
    if isinstance(value, tuple):
        return tuple(scrub_value(item) for item in value)
    return value

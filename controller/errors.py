"""The controller's one exception hierarchy.

Lower layers (the Azure SDKs, JSON, the standard library) are translated into these exactly once, at
the boundary that meets them (controller/adapters/ for the SDKs, controller/events.py for payloads),
with ``raise ... from err``. Two kinds of failure matter to the host:

* TransientError: retry later (the Functions host / Event Grid / the queue redelivers); it may carry
  the delay the service asked for.
* PermanentError: retrying cannot help; record it as a failed condition, alert, and return.

Messages never contain key material: no content keys, no private keys, no plaintext, no tokens.
"""

from __future__ import annotations


class ControllerError(Exception):
    """Base of every error the controller raises on purpose."""


class TransientError(ControllerError):
    """A temporary failure (throttling, timeouts, 5xx): retry, after ``retry_after`` seconds if given."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unreachable(TransientError):
    """A service could not be reached at all (DNS, TLS verification, connection refused or reset):
    not throttling, so it is not worth a long back-off; the message names the cause."""


class ConnectionLost(Unreachable):
    """The connection dropped after the request was sent (reset, or no answer in time): the service may or
    may not have acted. Unlike a service that cannot be reached, it comes and goes: retry after a pause."""


class PermanentError(ControllerError):
    """A failure that retrying will not fix: record, alert, do not retry."""


class NotFound(PermanentError):
    """The resource (key, version, account, blob ...) does not exist."""


class Forbidden(PermanentError):
    """The caller lacks permission, or a firewall refused it."""


class NotAuthenticated(Forbidden):
    """No credential gave a token: nobody is logged in (a configuration problem, not a refusal)."""


class Conflict(ControllerError):
    """A conditional write lost a race (ETag mismatch) or the resource is in a conflicting state."""


class InvalidInput(PermanentError):
    """Input from outside (an event, a file, a setting) is malformed or not allowed."""


class InvalidKeyId(InvalidInput):
    """A string is not a valid Key Vault key identifier or vault origin."""


class InvalidResourceId(InvalidInput):
    """A string is not a valid ARM resource id of the expected type."""


class InvalidEvent(InvalidInput):
    """An event delivery was rejected. ``reason`` is a stable code from events.RejectReason."""

    def __init__(self, reason: str, message: str, *, event_id: str | None = None) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.detail = message
        self.event_id = event_id


class SettingsError(InvalidInput):
    """A setting is missing or invalid. ``setting`` names it, so start-up failures are actionable."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"setting {setting}: {message}")
        self.setting = setting


# --- client-side encryption re-wrap (controller/envelope.py, controller/rewrap/) ------------------


class MalformedEnvelope(PermanentError):
    """A blob's ``encryptiondata`` metadata is not a valid client-side encryption envelope.

    ``reason`` is a stable code from envelope.MalformedReason; ``detail`` names the offending field,
    never a value from it (the envelope carries wrapped key material).
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# --- compliance reports (controller/compliance/report.py) --------------------------------------------


class InvalidReport(InvalidInput):
    """A stored compliance report does not match its schema, or has a schema version this build cannot read."""

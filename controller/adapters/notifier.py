"""Alert delivery: always a structured log record; optionally a JSON POST to a webhook.

The webhook receives the alert as JSON (severity, title, resource, reason, message, fingerprint,
details); receivers dedupe on ``fingerprint``. Redirects are never followed. Delivery is retried on
429/5xx and connection errors; if it still fails, TransientError propagates so the triggering invocation is
retried (the reconciler is idempotent, so the retry re-raises the same alert, not new work).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence

import requests

from controller.errors import PermanentError, TransientError
from controller.logs import log_record
from controller.model import Severity
from controller.ports import Alert, Notifier

log = logging.getLogger("controller.alerts")

_LEVELS = {Severity.CRITICAL: logging.CRITICAL, Severity.HIGH: logging.ERROR, Severity.MEDIUM: logging.WARNING}


def alert_json(alert: Alert) -> dict[str, object]:
    return {
        "severity": alert.severity.value,
        "title": alert.title,
        "resource": alert.resource,
        "reason": alert.reason.value,
        "message": alert.message,
        "fingerprint": alert.fingerprint,
        "details": dict(alert.details),
    }


class LogNotifier:
    def send(self, alert: Alert) -> None:
        log_record(log, _LEVELS.get(alert.severity, logging.INFO), f"alert: {alert.title}",
                   {"kind": "alert", **alert_json(alert)})


class WebhookNotifier:
    def __init__(self, url: str, *, session: requests.Session | None = None, attempts: int = 3,
                 timeout: float = 10.0, sleep: Callable[[float], None] = time.sleep) -> None:
        self._url = url
        self._session = session or requests.Session()
        self._attempts = attempts
        self._timeout = timeout
        self._sleep = sleep

    def send(self, alert: Alert) -> None:
        body = json.dumps(alert_json(alert))
        last_error = ""
        for attempt in range(self._attempts):
            if attempt:
                self._sleep(min(2.0**attempt, 10.0))
            try:
                # Never follow a redirect: it would hand the alert (and any token in the URL) to
                # whatever host the receiver, or someone who took over its name, points at.
                response = self._session.post(self._url, data=body, timeout=self._timeout,
                                              headers={"Content-Type": "application/json"}, allow_redirects=False)
            except requests.RequestException as err:
                last_error = type(err).__name__
                continue
            if 200 <= response.status_code < 300:
                return
            if 300 <= response.status_code < 400:
                raise PermanentError(f"the alert webhook answered HTTP {response.status_code} (a redirect): "
                                     "alerts are never forwarded; configure the final URL")
            last_error = f"HTTP {response.status_code}"
            if response.status_code not in (408, 429) and response.status_code < 500:
                # The URL is a secret in many receivers: never echo it.
                raise PermanentError(f"the alert webhook refused the alert: {last_error}")
        raise TransientError(f"the alert webhook is unavailable: {last_error}")


class FanOutNotifier:
    """Sends every alert to each notifier in turn (the log first, so nothing is lost if a webhook fails)."""

    def __init__(self, notifiers: Sequence[Notifier]) -> None:
        self._notifiers = tuple(notifiers)

    def send(self, alert: Alert) -> None:
        for notifier in self._notifiers:
            notifier.send(alert)

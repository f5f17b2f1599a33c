"""Alert delivery to a webhook (the sandbox's sink) and to the log."""

from __future__ import annotations

import http.server
import logging
import threading
from collections.abc import Iterator

import pytest

from controller.adapters.notifier import FanOutNotifier, LogNotifier, WebhookNotifier
from controller.errors import PermanentError, TransientError
from controller.model import Severity
from controller.ports import Alert
from controller.reasons import Reason
from emulators.webhook_sink import WebhookSink

pytestmark = pytest.mark.integration

ALERT = Alert(severity=Severity.CRITICAL, title="st1: IdentityLacksAccess", resource="/subscriptions/s/st1",
              reason=Reason.IDENTITY_LACKS_ACCESS, message="identity cannot unwrap", fingerprint="f" * 32,
              details={"key": "https://kv.vault.azure.net/keys/k"})


def test_the_alert_reaches_the_webhook_as_json_and_the_log(caplog):
    with WebhookSink() as sink, caplog.at_level(logging.INFO, logger="controller.alerts"):
        FanOutNotifier([LogNotifier(), WebhookNotifier(f"{sink.url}/alerts", sleep=lambda _: None)]).send(ALERT)
        [record] = sink.wait_for(1)
    assert record.body["reason"] == "IdentityLacksAccess"
    assert record.body["fingerprint"] == "f" * 32
    assert record.body["details"] == {"key": "https://kv.vault.azure.net/keys/k"}
    assert any(item.levelno == logging.CRITICAL and "IdentityLacksAccess" in item.getMessage()
               for item in caplog.records)


def test_a_failing_webhook_is_retried_then_reported_as_transient():
    with WebhookSink() as sink:
        sink.respond_with(503)
        with pytest.raises(TransientError):
            WebhookNotifier(f"{sink.url}/alerts", sleep=lambda _: None).send(ALERT)
        assert len(sink.records) == 3


def test_a_refusing_webhook_is_permanent_and_the_url_is_not_echoed():
    with WebhookSink() as sink:
        sink.respond_with(404)
        with pytest.raises(PermanentError) as caught:
            WebhookNotifier(f"{sink.url}/secret-token", sleep=lambda _: None).send(ALERT)
        assert "secret-token" not in str(caught.value)
        assert len(sink.records) == 1


@pytest.fixture
def redirector() -> Iterator[tuple[str, list[str]]]:
    """A webhook that answers every POST with 307 to ``target`` (set by the test)."""
    target: list[str] = []

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(307)
            self.send_header("Location", target[0])
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", target
    finally:
        server.shutdown()
        server.server_close()


def test_the_webhook_never_follows_a_redirect(redirector):
    """A receiver (or whoever took over its name) must not be able to send our alert elsewhere."""
    url, target = redirector
    with WebhookSink() as elsewhere:
        target.append(f"{elsewhere.url}/stolen")
        with pytest.raises(PermanentError, match="redirect") as caught:
            WebhookNotifier(f"{url}/alerts", sleep=lambda _: None).send(ALERT)
        assert elsewhere.records == []
    assert "stolen" not in str(caught.value)

"""Alert delivery to a webhook (the sandbox's sink) and to the log."""

from __future__ import annotations

import logging

import pytest

from controller.adapters.notifier import FanOutNotifier, LogNotifier, WebhookNotifier
from controller.errors import PermanentError, TransientError
from controller.ports import Alert
from emulators.webhook_sink import WebhookSink

pytestmark = pytest.mark.integration

ALERT = Alert(severity="critical", title="st1: IdentityLacksAccess", resource="/subscriptions/s/st1",
              reason="IdentityLacksAccess", message="identity cannot unwrap", fingerprint="f" * 32,
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

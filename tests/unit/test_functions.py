"""The function app: indexing (names, triggers, bindings) and invocations with real trigger objects."""

from __future__ import annotations

import importlib
import json
import logging
import sys
from datetime import UTC, datetime

import azure.functions as func
import pytest
from azure.functions.timer import TimerRequest

from controller import bootstrap
from controller.compliance.formats.html import CONTENT_SECURITY_POLICY
from controller.errors import TransientError
from controller.model import Severity
from controller.reasons import Reason
from controller.settings import load_settings
from tests.unit import estate_builders
from tests.unit.fakes import FakeEstateReader, FakeLedger, FakeReportStore, fake_dependencies

pytestmark = pytest.mark.unit

VAULT = "https://contoso-cmk.vault.azure.net"
TOPIC = ("/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg-keys"
         "/providers/Microsoft.KeyVault/vaults/contoso-cmk")
VERSION = "0123456789abcdef0123456789abcdef"


def key_data(version: str = VERSION) -> dict[str, object]:
    return {
        "Id": f"{VAULT}/keys/storage-cmk/{version}",
        "VaultName": "contoso-cmk",
        "ObjectType": "Key",
        "ObjectName": "storage-cmk",
        "Version": version,
        "NBF": 1764460800,
        "EXP": 1796083200,
    }


def grid_event(event_id: str = "e1", event_type: str = "Microsoft.KeyVault.KeyNewVersionCreated",
               data: dict[str, object] | None = None) -> dict[str, object]:
    return {
        "id": event_id,
        "topic": TOPIC,
        "subject": "storage-cmk",
        "eventType": event_type,
        "eventTime": "2026-11-30T12:00:00.1234567Z",
        "data": key_data() if data is None else data,
        "dataVersion": "1",
        "metadataVersion": "1",
    }


@pytest.fixture
def ledger(monkeypatch):
    monkeypatch.setenv("CMK_VAULTS", "contoso-cmk.vault.azure.net")
    fake = FakeLedger()
    bootstrap.override(fake_dependencies(load_settings({"CMK_VAULTS": VAULT}), ledger=fake,
                                         estate=FakeEstateReader(estate_builders.estate()),
                                         reports=FakeReportStore()))
    yield fake
    bootstrap.override(None)


@pytest.fixture
def app(monkeypatch):
    monkeypatch.setenv("CMK_VAULTS", "contoso-cmk.vault.azure.net")
    sys.modules.pop("function_app", None)
    module = importlib.import_module("function_app")
    return module.app


def test_function_app_refuses_to_start_with_invalid_settings(monkeypatch):
    monkeypatch.setenv("CMK_VAULTS", "http://insecure.vault.azure.net")
    sys.modules.pop("function_app", None)
    with pytest.raises(Exception, match="CMK_VAULTS"):
        importlib.import_module("function_app")
    sys.modules.pop("function_app", None)


def test_indexing_names_triggers_and_bindings(app):
    functions = {function.get_function_name(): function for function in app.get_functions()}
    assert set(functions) == {"on_key_event", "on_resource_event", "compliance_sweep", "process_work", "health",
                              "events", "report"}

    def bindings(name):
        return {binding.name: binding.get_dict_repr() for binding in functions[name].get_bindings()}

    assert bindings("on_key_event")["event"]["type"] == "eventGridTrigger"
    assert bindings("on_resource_event")["event"]["type"] == "eventGridTrigger"

    timer = bindings("compliance_sweep")["timer"]
    assert timer["type"] == "timerTrigger"
    assert timer["schedule"] == "%CMK_SWEEP_SCHEDULE%"
    assert timer["runOnStartup"] is False

    work = bindings("process_work")
    assert work["message"]["type"] == "queueTrigger"
    assert work["message"]["queueName"] == "%CMK_WORK_QUEUE%"
    assert work["message"]["connection"] == "AzureWebJobsStorage"
    assert work["poison"]["type"] == "queue"
    assert work["poison"]["direction"].name == "OUT"
    assert work["poison"]["queueName"] == "%CMK_WORK_QUEUE%-poison"

    events = bindings("events")
    trigger = next(value for value in events.values() if value["type"] == "httpTrigger")
    assert trigger["route"] == "events"
    assert {method.value for method in trigger["methods"]} == {"POST", "OPTIONS"}
    assert trigger["authLevel"].value == "function"
    health = next(value for value in bindings("health").values() if value["type"] == "httpTrigger")
    assert health["route"] == "health"
    assert {method.value for method in health["methods"]} == {"GET"}
    report = next(value for value in bindings("report").values() if value["type"] == "httpTrigger")
    assert report["route"] == "report"
    assert {method.value for method in report["methods"]} == {"GET"}
    assert report["authLevel"].value == "function"


def user_function(app, name):
    function = next(function for function in app.get_functions() if function.get_function_name() == name)
    return function.get_user_function()


def test_on_key_event_claims_and_drops_redelivery(app, ledger, caplog):
    handler = user_function(app, "on_key_event")
    event = func.EventGridEvent(
        id="evt-1", data=key_data(), topic=TOPIC, subject="storage-cmk",
        event_type="Microsoft.KeyVault.KeyNewVersionCreated",
        event_time=datetime(2026, 11, 30, 12, tzinfo=UTC), data_version="1",
    )
    with caplog.at_level(logging.INFO, logger="controller"):
        handler(event)
        handler(event)
    assert list(ledger.claims) == ["evt-1"]
    records = [json.loads(record.getMessage().split(" ", 3)[3]) for record in caplog.records
               if record.getMessage().startswith("key event ")]
    assert [record["outcome"] for record in records] == ["accepted", "duplicate"]
    assert records[0]["key"] == f"{VAULT}/keys/storage-cmk/{VERSION}"
    assert records[0]["kind"] == "new_version"


def test_on_key_event_acknowledges_rejected_and_ignored_events_without_claiming(app, ledger, caplog):
    handler = user_function(app, "on_key_event")
    outsider = dict(key_data(), Id=f"https://evil.vault.azure.net/keys/storage-cmk/{VERSION}", VaultName="evil")
    rejected = func.EventGridEvent(
        id="evt-2", data=outsider, topic=TOPIC.replace("contoso-cmk", "evil"), subject="storage-cmk",
        event_type="Microsoft.KeyVault.KeyNewVersionCreated", event_time=None, data_version="1",
    )
    secret = func.EventGridEvent(
        id="evt-3", data=dict(key_data(), ObjectType="Secret"), topic=TOPIC, subject="s",
        event_type="Microsoft.KeyVault.SecretNewVersionCreated", event_time=None, data_version="1",
    )
    with caplog.at_level(logging.INFO, logger="controller"):
        handler(rejected)
        handler(secret)
    assert ledger.claims == {}
    messages = [record.getMessage() for record in caplog.records]
    assert any(message.startswith("key event rejected") and "vault_not_allowed" in message for message in messages)
    assert any(message.startswith("event ignored") for message in messages)


def resource_event(event_id: str, *, subject: str = estate_builders.VAULT_ID,
                   operation: str = "Microsoft.KeyVault/vaults/write") -> func.EventGridEvent:
    data = {"resourceUri": subject, "operationName": operation, "status": "Succeeded",
            "subscriptionId": estate_builders.SUB, "tenantId": estate_builders.TENANT, "claims": {}}
    return func.EventGridEvent(
        id=event_id, data=data, topic=f"/subscriptions/{estate_builders.SUB}", subject=subject,
        event_type="Microsoft.Resources.ResourceWriteSuccess", event_time=datetime(2026, 12, 3, tzinfo=UTC),
        data_version="2")


def test_on_resource_event_re_evaluates_once_and_acknowledges_rejected_and_ignored_events(app, ledger, caplog):
    handler = user_function(app, "on_resource_event")
    with caplog.at_level(logging.INFO, logger="controller"):
        handler(resource_event("arm-1"))
        handler(resource_event("arm-1"))  # redelivered
        handler(resource_event("arm-2", operation="Microsoft.KeyVault/vaults/delete"))  # a write is not a delete
        handler(resource_event("arm-3", subject=f"/subscriptions/{estate_builders.SUB}/resourceGroups/rg"
                               "/providers/Microsoft.Web/sites/app", operation="Microsoft.Web/sites/write"))
    assert list(ledger.claims) == ["arm-1"]
    messages = [record.getMessage() for record in caplog.records]
    assert sum(message.startswith("drift re-evaluated") for message in messages) == 1
    assert any(message.startswith("resource events dropped as duplicates") for message in messages)
    assert any(message.startswith("resource event rejected") and "operation_mismatch" in message
               for message in messages)
    assert any(message.startswith("resource event ignored") and "Microsoft.Web/sites" in message
               for message in messages)


def test_on_key_event_propagates_transient_failures_so_event_grid_retries(app, ledger):
    ledger.fail_with = TransientError("table throttled", retry_after=2)
    handler = user_function(app, "on_key_event")
    event = func.EventGridEvent(
        id="evt-4", data=key_data(), topic=TOPIC, subject="storage-cmk",
        event_type="Microsoft.KeyVault.KeyNewVersionCreated", event_time=datetime(2026, 11, 30, tzinfo=UTC),
        data_version="1",
    )
    with pytest.raises(TransientError):
        handler(event)


def http_request(body: object, method: str = "POST", headers: dict[str, str] | None = None,
                 params: dict[str, str] | None = None) -> func.HttpRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return func.HttpRequest(method=method, url="http://localhost/api/events", headers=headers or {}, body=raw,
                            params=params or {})


def test_events_endpoint_answers_the_subscription_validation_handshake(app, ledger):
    handler = user_function(app, "events")
    validation = [{
        "id": "v1", "topic": TOPIC, "subject": "", "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
        "eventTime": "2026-11-30T12:00:00Z", "metadataVersion": "1", "dataVersion": "2",
        "data": {"validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6",
                 "validationUrl": "https://rp-eastus2.eventgrid.azure.net/validate?id=x&t=y"},
    }]
    response = handler(http_request(validation, headers={"aeg-event-type": "SubscriptionValidation"}))
    assert response.status_code == 200
    assert json.loads(response.get_body()) == {"validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"}
    assert ledger.claims == {}


def test_events_endpoint_handles_a_batch_and_reports_rejections(app, ledger):
    handler = user_function(app, "events")
    bad = grid_event("e-bad", data=dict(key_data(), ObjectName="other-key"))
    batch = [grid_event("e-1"), grid_event("e-2", "Microsoft.KeyVault.KeyNearExpiry"), bad,
             grid_event("e-3", "Microsoft.Storage.BlobCreated")]
    response = handler(http_request(batch, headers={"aeg-event-type": "Notification"}))
    body = json.loads(response.get_body())
    assert response.status_code == 400
    assert body["accepted"] == 2
    assert body["ignored"] == 1
    assert [item["reason"] for item in body["rejected"]] == ["id_mismatch_object_name"]
    assert set(ledger.claims) == {"e-1", "e-2"}

    replay = handler(http_request([grid_event("e-1"), grid_event("e-2", "Microsoft.KeyVault.KeyNearExpiry")]))
    assert replay.status_code == 200
    assert json.loads(replay.get_body())["duplicates"] == 2


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"\x00\xff not json", 400, None),
        (b"{}" + b" " * (1024 * 1024), 413, "too_large"),
        (b"42", 400, None),
    ],
)
def test_events_endpoint_rejects_garbage_with_a_reason(app, ledger, body, status, code):
    response = user_function(app, "events")(http_request(body))
    assert response.status_code == status
    error = json.loads(response.get_body())["error"]
    assert error["code"]
    if code:
        assert error["code"] == code
    assert ledger.claims == {}


def test_events_endpoint_maps_transient_failures_to_503_with_retry_after(app, ledger):
    ledger.fail_with = TransientError("throttled", retry_after=7)
    response = user_function(app, "events")(http_request([grid_event("e-9")]))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "7"


def test_events_endpoint_answers_the_cloudevents_abuse_protection_handshake(app, ledger):
    handler = user_function(app, "events")
    response = handler(http_request(b"", method="OPTIONS", headers={"WebHook-Request-Origin": "eventgrid.azure.net"}))
    assert response.status_code == 200
    assert response.headers["WebHook-Allowed-Origin"] == "eventgrid.azure.net"
    assert handler(http_request(b"", method="OPTIONS")).status_code == 400


def test_health_reports_ok_without_naming_vaults(app, ledger):
    response = user_function(app, "health")(http_request(b"", method="GET"))
    assert response.status_code == 200
    body = json.loads(response.get_body())
    assert body == {"status": "ok", "vaults": 1}


def test_sweep_purges_expired_claims(app, ledger):
    clock = bootstrap.dependencies().clock
    ledger.claims = {"old": clock.now(), "fresh": clock.now().replace(year=2027)}
    timer = TimerRequest(past_due=True)
    user_function(app, "compliance_sweep")(timer)
    assert ledger.claims == {"fresh": clock.now().replace(year=2027)}


def user_functions(app):
    """Every function's handler (the app indexes its functions once: one get_functions per test)."""
    return {function.get_function_name(): function.get_user_function() for function in app.get_functions()}


def test_sweep_stores_the_compliance_report_the_report_function_serves(app, ledger):
    handlers = user_functions(app)
    report = handlers["report"]
    assert report(http_request(b"", method="GET")).status_code == 404
    assert "no compliance report yet" in json.loads(report(http_request(b"", method="GET")).get_body())[
        "error"]["message"]

    handlers["compliance_sweep"](TimerRequest(past_due=False))

    stored = bootstrap.dependencies().reports.load("latest.json")
    served = report(http_request(b"", method="GET"))
    assert served.status_code == 200
    assert served.mimetype == "application/json"
    assert served.get_body() == stored


@pytest.mark.parametrize(("value", "media_type"), [("md", "text/markdown"), ("sarif", "application/sarif+json"),
                                                    ("HTML", "text/html")])
def test_report_renders_the_requested_format(app, ledger, value, media_type):
    handlers = user_functions(app)
    handlers["compliance_sweep"](TimerRequest(past_due=False))

    served = handlers["report"](http_request(b"", method="GET", params={"format": value}))

    assert served.status_code == 200
    assert served.mimetype == media_type
    if media_type == "text/html":
        assert served.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert served.get_body().startswith(b"<!DOCTYPE html>")
    else:
        assert "Content-Security-Policy" not in served.headers


def test_report_refuses_an_unknown_format(app, ledger):
    served = user_function(app, "report")(http_request(b"", method="GET", params={"format": "pdf"}))
    assert served.status_code == 400
    assert "json|md|sarif|html" in json.loads(served.get_body())["error"]["message"]


class Out:
    def __init__(self) -> None:
        self.value: str | None = None

    def set(self, value: str) -> None:
        self.value = value

    def get(self) -> str | None:
        return self.value


def queue_message(body: str) -> func.QueueMessage:
    return func.QueueMessage(id="m1", body=body.encode(), pop_receipt="p1")


def test_process_work_handles_a_replayed_delivery(app, ledger):
    poison = Out()
    item = {"kind": "key_event", "delivery": [grid_event("q-1")]}
    user_function(app, "process_work")(queue_message(json.dumps(item)), poison)
    assert poison.value is None
    assert set(ledger.claims) == {"q-1"}


@pytest.mark.parametrize(
    "body",
    ["not json", "[]", json.dumps({"kind": "launch_missiles"}), json.dumps({"kind": "key_event"}),
     json.dumps({"kind": "key_event", "delivery": 7}), "x" * 70000],
)
def test_process_work_moves_malformed_items_to_poison_with_the_reason(app, ledger, body):
    poison = Out()
    user_function(app, "process_work")(queue_message(body), poison)
    assert poison.value is not None
    parked = json.loads(poison.value)
    assert parked["reason"]
    assert parked["body"] == body
    assert ledger.claims == {}
    [alert] = bootstrap.dependencies().notifier.alerts
    assert (alert.severity, alert.reason) == (Severity.HIGH, Reason.WORK_ITEM_POISONED)
    assert alert.resource == "cmk-work-poison"
    assert alert.message == parked["reason"]
    assert alert.details == {"message_id": "m1", "dequeue_count": 0}


def test_process_work_propagates_transient_failures_so_the_host_redelivers(app, ledger):
    ledger.fail_with = TransientError("throttled")
    with pytest.raises(TransientError):
        user_function(app, "process_work")(
            queue_message(json.dumps({"kind": "key_event", "delivery": grid_event("q-2")})), Out()
        )

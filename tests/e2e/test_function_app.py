"""function_app.py on the local Functions host, with Azurite as its storage: the real trigger paths."""

from __future__ import annotations

import base64
import json
import pstats
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from azure.data.tables import TableClient
from azure.storage.queue import QueueClient

from emulators.functions_host import LocalFunctionsHost
from tests.e2e.polling import wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
VAULT = "https://contoso-cmk.vault.azure.net"
TOPIC = ("/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg-keys"
         "/providers/Microsoft.KeyVault/vaults/contoso-cmk")


def key_event(event_id: str, version: str = "0123456789abcdef0123456789abcdef") -> dict[str, object]:
    return {
        "id": event_id, "topic": TOPIC, "subject": "storage-cmk",
        "eventType": "Microsoft.KeyVault.KeyNewVersionCreated", "eventTime": "2026-11-30T12:00:00.1234567Z",
        "dataVersion": "1", "metadataVersion": "1",
        "data": {"Id": f"{VAULT}/keys/storage-cmk/{version}", "VaultName": "contoso-cmk", "ObjectType": "Key",
                 "ObjectName": "storage-cmk", "Version": version, "NBF": 1764460800, "EXP": 1796083200},
    }


def post(url: str, body: object, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(  # noqa: S310 - loopback test host
        url, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.fixture(scope="module")
def names():
    suffix = uuid.uuid4().hex[:8]
    return {"queue": f"work-{suffix}", "table": f"ledger{suffix}"}


@pytest.fixture(scope="module")
def host(azurite, names, tmp_path_factory):
    values = {
        "FUNCTIONS_WORKER_RUNTIME": "python",
        "AzureWebJobsStorage": azurite.connection_string,
        "CMK_VAULTS": "contoso-cmk.vault.azure.net",
        "CMK_WORK_QUEUE": names["queue"],
        "CMK_LEDGER_TABLE": names["table"],
        "CMK_SWEEP_SCHEDULE": "*/1 * * * * *",
        "CMK_AUDIT_SCHEDULE": "0 0 0 1 1 *",  # the audit timer stays out of these tests: once a year
    }
    for queue_name in (names["queue"], names["queue"] + "-poison"):  # as the deployment creates them
        QueueClient.from_connection_string(azurite.connection_string, queue_name).create_queue()
    with LocalFunctionsHost(ROOT, values, work_dir=tmp_path_factory.mktemp("host"), max_polling_seconds=0.5) as running:
        yield running


def ledger_event_ids(azurite, names) -> set[str]:
    table = TableClient.from_connection_string(azurite.connection_string, table_name=names["table"])
    # The ledger table also holds the alert desk's states and outbox: event claims are the "event-" partitions.
    return {entity["EventId"] for entity in table.list_entities() if entity["PartitionKey"].startswith("event-")}


def test_event_grid_webhook_handshake_then_events_are_claimed_once(host, azurite, names):
    url = host.eventgrid_webhook("on_key_event")
    validation = [{"id": "v", "topic": TOPIC, "subject": "",
                   "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
                   "eventTime": "2026-11-30T12:00:00Z", "dataVersion": "2", "metadataVersion": "1",
                   "data": {"validationCode": "code-123", "validationUrl": None}}]
    status, body = post(url, validation, {"aeg-event-type": "SubscriptionValidation"})
    assert (status, json.loads(body)) == (200, {"validationResponse": "code-123"})

    status, _ = post(url, [key_event("grid-1"), key_event("grid-2")], {"aeg-event-type": "Notification"})
    assert status == 200
    status, _ = post(url, [key_event("grid-1")], {"aeg-event-type": "Notification"})  # redelivery
    assert status == 200
    assert {"grid-1", "grid-2"} <= ledger_event_ids(azurite, names)

    assert post(url.replace(host.keys["eventgrid_extension"], "wrong"), [key_event("grid-3")])[0] == 401


def post_raw(url: str, body: bytes) -> int:
    request = urllib.request.Request(url, data=body, method="POST",  # noqa: S310 - loopback test host
                                     headers={"Content-Type": "application/json", "aeg-event-type": "Notification"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.mark.parametrize("case", [
    ("nested 10,000 deep", b"[" * 10_000 + b"]" * 10_000, 400),
    ("an array of a number", b"[1]", 400),
    ("200,000 integers", b"[" + b",".join(b"1" for _ in range(200_000)) + b"]", 400),
    ("an empty array", b"[]", 400),
    ("a string", b'"event"', 400),
    ("not JSON", b"{", 400),
    ("over 1 MB", b'[{"id": "' + b"x" * (1024 * 1024) + b'"}]', 413),
])
def test_the_event_grid_webhook_refuses_what_it_cannot_bind_with_4xx_never_5xx(host, azurite, names, case):
    """A 5xx makes Event Grid retry the delivery for a day; a 400 dead-letters it at once."""
    label, body, status = case
    before = ledger_event_ids(azurite, names)
    assert post_raw(host.eventgrid_webhook("on_key_event"), body) == status, label
    assert ledger_event_ids(azurite, names) == before


def test_http_events_endpoint_requires_the_function_key(host, azurite, names):
    url = f"{host.url}/api/events"
    assert post(url, [key_event("http-1")])[0] == 401
    status, body = post(f"{url}?code={host.keys['function']}", [key_event("http-1")])
    assert status == 200
    assert json.loads(body)["accepted"] == 1
    status, body = post(f"{url}?code={host.keys['function']}", [key_event("http-1")])
    assert json.loads(body)["duplicates"] == 1
    with urllib.request.urlopen(f"{host.url}/api/health", timeout=10) as response:  # noqa: S310
        assert json.loads(response.read())["status"] == "ok"


def get_status(url: str, key: str | None) -> int:
    request = urllib.request.Request(url, headers={"x-functions-key": key} if key else {})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback test host
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_admin_routes_need_the_master_key_as_on_azure(host):
    status = f"{host.url}/admin/host/status"
    assert get_status(status, None) == 401
    assert get_status(status, host.keys["function"]) == 401
    assert get_status(status, host.keys["master"]) == 200
    assert get_status(f"{host.url}/admin/host/ping", None) == 200
    run = f"{host.url}/admin/functions/compliance_sweep"
    assert post(run, {"input": ""})[0] == 401
    assert post(run, {"input": ""}, {"x-functions-key": host.keys["function"]})[0] == 401


def test_timer_fires_on_its_schedule(host):
    def sweeps() -> int:
        request = urllib.request.Request(f"{host.url}/admin/host/status",  # noqa: S310 - loopback test host
                                         headers={"x-functions-key": host.keys["master"]})
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return json.loads(response.read())["invocations"]["compliance_sweep"]

    first = wait_for(sweeps)
    wait_for(lambda: sweeps() > first)


def test_queue_items_are_processed_and_malformed_ones_parked_with_the_reason(host, azurite, names):
    work = QueueClient.from_connection_string(azurite.connection_string, names["queue"])
    item = {"kind": "key_event", "delivery": [key_event("queue-1")]}
    work.send_message(base64.b64encode(json.dumps(item).encode()).decode())
    work.send_message(base64.b64encode(b'{"kind": "unknown"}').decode())
    wait_for(lambda: "queue-1" in ledger_event_ids(azurite, names))

    poison = QueueClient.from_connection_string(azurite.connection_string, names["queue"] + "-poison")
    parked = wait_for(lambda: list(poison.peek_messages(max_messages=5)))
    record = json.loads(base64.b64decode(parked[0].content))
    assert "unknown work item kind" in record["reason"]
    assert record["body"] == '{"kind": "unknown"}'


def test_the_host_moves_a_message_to_poison_after_five_failed_dequeues(azurite, tmp_path):
    queue_name = f"failing-{uuid.uuid4().hex[:8]}"
    values = {"AzureWebJobsStorage": azurite.connection_string, "FAILING_QUEUE": queue_name}
    app_dir = ROOT / "tests" / "e2e" / "apps" / "always_failing"
    queue = QueueClient.from_connection_string(azurite.connection_string, queue_name)
    queue.create_queue()
    poison = QueueClient.from_connection_string(azurite.connection_string, queue_name + "-poison")
    poison.create_queue()
    with LocalFunctionsHost(app_dir, values, work_dir=tmp_path, max_polling_seconds=0.2):
        queue.send_message(base64.b64encode(b"doomed").decode())
        parked = wait_for(lambda: list(poison.peek_messages()))
    assert base64.b64decode(parked[0].content) == b"doomed"
    assert list(queue.peek_messages()) == []
    log = (tmp_path / "functions-host.log").read_text()
    assert log.count("Executed 'Functions.always_fails' (Failed") == 5


def test_one_slow_message_does_not_hold_up_the_messages_behind_it(azurite, tmp_path):
    """As the real host: the next batch is fetched once the messages in flight drop to newBatchThreshold
    (batchSize / 2 by default), not when the whole batch is done."""
    queue_name = f"slow-{uuid.uuid4().hex[:8]}"
    values = {"AzureWebJobsStorage": azurite.connection_string, "SLOW_QUEUE": queue_name,
              "SLOW_DIRECTORY": str(tmp_path)}
    queue = QueueClient.from_connection_string(azurite.connection_string, queue_name)
    queue.create_queue()
    QueueClient.from_connection_string(azurite.connection_string, queue_name + "-poison").create_queue()
    with LocalFunctionsHost(ROOT / "tests" / "e2e" / "apps" / "slow_message", values, work_dir=tmp_path,
                            max_polling_seconds=0.2):
        for body in ("slow", "fast-1", "fast-2", "fast-3", "fast-4", "fast-5"):
            queue.send_message(base64.b64encode(body.encode()).decode())
        # batchSize 2: "slow" and "fast-1" first; the other four are fetched while "slow" is still held.
        wait_for(lambda: all((tmp_path / f"done-fast-{index}").exists() for index in range(1, 6)))
        assert not (tmp_path / "done-slow").exists()
        (tmp_path / "release").write_text("")
        wait_for((tmp_path / "done-slow").exists)


def test_the_host_profiles_its_invocations_when_asked(azurite, tmp_path):
    """FUNCTIONS_HOST_PROFILE: every invocation under cProfile, the statistics written when the host stops."""
    queue_name = f"profiled-{uuid.uuid4().hex[:8]}"
    profile = tmp_path / "host.prof"
    values = {"AzureWebJobsStorage": azurite.connection_string, "FAILING_QUEUE": queue_name,
              "FUNCTIONS_HOST_PROFILE": str(profile)}
    queue = QueueClient.from_connection_string(azurite.connection_string, queue_name)
    queue.create_queue()
    QueueClient.from_connection_string(azurite.connection_string, queue_name + "-poison").create_queue()
    log = tmp_path / "functions-host.log"
    with LocalFunctionsHost(ROOT / "tests" / "e2e" / "apps" / "always_failing", values, work_dir=tmp_path,
                            max_polling_seconds=0.2):
        queue.send_message(base64.b64encode(b"profiled").decode())
        wait_for(lambda: "Executed 'Functions.always_fails'" in log.read_text())
    calls = {name: count for (_, _, name), (count, *_) in pstats.Stats(str(profile)).stats.items()}
    assert calls["always_fails"] >= 1

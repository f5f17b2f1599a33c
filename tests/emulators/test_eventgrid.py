"""Event Grid delivery emulator against real aiohttp webhook receivers on loopback and Azurite."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema
import pytest
from aiohttp import web
from azure.storage.blob import BlobServiceClient, ContainerClient

from emulators.azurite import Azurite
from emulators.background import ServerThread
from emulators.bus import SandboxBus, VaultEvent
from emulators.clock import SandboxClock
from emulators.eventgrid import (
    CLOUD_EVENT_SCHEMA,
    EventGridEmulator,
    EventGridError,
    WebhookSubscription,
    cloud_event_envelope,
)
from emulators.specs import SPECS_ROOT

pytestmark = pytest.mark.integration

SPECS = SPECS_ROOT / "eventgrid" / "data-plane"
SUBSCRIPTION_ID = "5f2a1c3e-0000-4000-8000-000000000001"
EVENT_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{7}Z$")
FAST = 0.001  # retry schedule compression: 10 s -> 10 ms
EVENT_GRID_FIELDS = {"id", "topic", "subject", "eventType", "eventTime", "data", "dataVersion", "metadataVersion"}
DEAD_LETTER_FIELDS = {
    "deadLetterReason",
    "deliveryAttempts",
    "lastDeliveryOutcome",
    "lastHttpStatusCode",
    "publishTime",
    "lastDeliveryAttemptTime",
}


# --- contracts ------------------------------------------------------------------------------------


def _definition(relative: str, name: str) -> dict[str, Any]:
    swagger = json.loads((SPECS / relative).read_text())
    return {"$ref": f"#/definitions/{name}", "definitions": swagger["definitions"]}


EVENT_GRID_EVENT = _definition("EventGrid/stable/2018-01-01/EventGrid.json", "EventGridEvent")
CLOUD_EVENT = _definition("EventGrid/stable/2018-01-01/EventGrid.json", "CloudEventEvent")
VALIDATION_DATA = _definition("Microsoft.EventGrid/stable/2018-01-01/EventGrid.json", "SubscriptionValidationEventData")
KEY_NEW_VERSION_DATA = _definition(
    "Microsoft.KeyVault/stable/2018-01-01/KeyVault.json", "KeyVaultKeyNewVersionCreatedEventData"
)


def _validate(instance: Any, schema: dict[str, Any]) -> None:
    jsonschema.validate(instance, schema, format_checker=jsonschema.FormatChecker())


# --- a real webhook endpoint ------------------------------------------------------------------------

HANG = -1  # a scripted status that means: do not answer (the emulator's response timeout fires)


@dataclass(frozen=True)
class Received:
    method: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class WebhookReceiver:
    """An aiohttp endpoint on its own thread and loop that records every request.

    validation: "code" answers the validation code, "manual" answers 200 without it (the validation
    URL must be GET-ed), "reject" answers 403, "wrong" answers a wrong code. allowed_origin is what
    the CloudEvents OPTIONS handshake answers (None: no WebHook-Allowed-Origin header). statuses
    script the answers to notifications in order; after the script, every notification gets 200.
    """

    def __init__(
        self,
        *,
        validation: str = "code",
        allowed_origin: str | None = "eventgrid.azure.net",
        statuses: list[int] | None = None,
        default_status: int = 200,
    ) -> None:
        self.validation = validation
        self.allowed_origin = allowed_origin
        self.statuses = list(statuses or [])
        self.default_status = default_status
        self.requests: list[Received] = []
        self._lock = threading.Lock()
        self._release = asyncio.Event()  # bound to the server's loop when first awaited
        app = web.Application()
        app.router.add_route("*", "/api/events", self._handle)
        self._server = ServerThread("webhook-receiver", timeout=10.0)
        port = self._server.listen(app, "127.0.0.1", 0, shutdown_timeout=0.5)
        self.url = f"http://127.0.0.1:{port}/api/events"

    async def _handle(self, request: web.Request) -> web.Response:
        received = Received(request.method, dict(request.headers), await request.read())
        with self._lock:
            self.requests.append(received)
        if request.method == "OPTIONS":
            headers = {"WebHook-Allowed-Origin": self.allowed_origin} if self.allowed_origin else {}
            return web.Response(status=200, headers=headers)
        if request.headers.get("aeg-event-type") == "SubscriptionValidation":
            code = received.json[0]["data"]["validationCode"]
            if self.validation == "code":
                return web.json_response({"validationResponse": code})
            if self.validation == "manual":
                return web.json_response({})
            if self.validation == "wrong":
                return web.json_response({"validationResponse": "not-the-code"})
            return web.Response(status=403)
        with self._lock:
            status = self.statuses.pop(0) if self.statuses else self.default_status
        if status == HANG:
            await self._release.wait()
            status = 200
        return web.Response(status=status)

    def notifications(self) -> list[Received]:
        with self._lock:
            return [
                r
                for r in self.requests
                if r.method == "POST" and r.headers.get("aeg-event-type") != ("SubscriptionValidation")
            ]

    def close(self) -> None:
        async def release() -> None:
            self._release.set()

        self._server.run(release())
        self._server.stop()


@pytest.fixture
def receiver() -> Iterator[Callable[..., WebhookReceiver]]:
    started: list[WebhookReceiver] = []

    def start(**options: Any) -> WebhookReceiver:
        started.append(WebhookReceiver(**options))
        return started[-1]

    yield start
    for each in started:
        each.close()


# --- the emulator ---------------------------------------------------------------------------------


@pytest.fixture
def bus() -> SandboxBus:
    return SandboxBus()


@pytest.fixture
def clock() -> SandboxClock:
    return SandboxClock()


@pytest.fixture
def dead_letters(azurite: Azurite) -> ContainerClient:
    """A fresh dead-letter container in the session's Azurite."""
    blobs = BlobServiceClient.from_connection_string(azurite.connection_string)
    return blobs.create_container(f"deadletter-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def eventgrid(bus: SandboxBus, clock: SandboxClock, azurite: Azurite) -> Iterator[EventGridEmulator]:
    with EventGridEmulator(bus, clock=clock, dead_letter_connection_string=azurite.connection_string) as emulator:
        yield emulator


def vault_id(vault: str) -> str:
    return f"/subscriptions/{SUBSCRIPTION_ID}/resourceGroups/rg-cmk/providers/Microsoft.KeyVault/vaults/{vault}"


def key_event(
    *,
    vault: str = "contoso-cmk",
    key: str = "storage-kek",
    event_type: str = "Microsoft.KeyVault.KeyNewVersionCreated",
) -> VaultEvent:
    version = uuid.uuid4().hex
    return VaultEvent(
        event_id=str(uuid.uuid4()),
        event_type=event_type,
        topic=vault_id(vault),
        subject=key,
        event_time=datetime(2026, 11, 30, 4, 21, 7, 123456, tzinfo=UTC),
        data={
            "Id": f"https://{vault}.vault.azure.net/keys/{key}/{version}",
            "VaultName": vault,
            "ObjectType": "Key",
            "ObjectName": key,
            "Version": version,
            "NBF": 1796000000,
            "EXP": 1827536000,
        },
    )


def settle(eventgrid: EventGridEmulator) -> None:
    assert eventgrid.wait_until_idle(timeout=20), "deliveries did not settle"


def read_dead_letter(container: ContainerClient, blob_path: str) -> list[dict[str, Any]]:
    container_name, name = blob_path.split("/", 1)
    assert container_name == container.container_name
    return json.loads(container.download_blob(name).readall())


# --- handshakes -----------------------------------------------------------------------------------


def test_validation_handshake_comes_first_then_the_exact_event_grid_envelope(
    eventgrid: EventGridEmulator, bus: SandboxBus, receiver: Callable[..., WebhookReceiver]
) -> None:
    endpoint = receiver()
    status = eventgrid.create_subscription(
        WebhookSubscription(name="kv-events", endpoint_url=endpoint.url, topic=vault_id("contoso-cmk"))
    )
    assert status.provisioning_state == "Succeeded"
    event = key_event()
    bus.publish_event(event)
    settle(eventgrid)

    validation, delivery = endpoint.requests
    assert validation.method == "POST"
    assert validation.headers["aeg-event-type"] == "SubscriptionValidation"
    [handshake] = validation.json
    assert set(handshake) == EVENT_GRID_FIELDS
    assert handshake["eventType"] == "Microsoft.EventGrid.SubscriptionValidationEvent"
    assert handshake["topic"] == vault_id("contoso-cmk")
    assert (handshake["dataVersion"], handshake["metadataVersion"]) == ("2", "1")
    assert set(handshake["data"]) == {"validationCode", "validationUrl"}
    assert handshake["data"]["validationUrl"].startswith(eventgrid.base_url)
    _validate(handshake, EVENT_GRID_EVENT)
    _validate(handshake["data"], VALIDATION_DATA)

    assert delivery.method == "POST"
    assert delivery.headers["Content-Type"] == "application/json"
    assert delivery.headers["aeg-event-type"] == "Notification"
    assert delivery.headers["aeg-subscription-name"] == "KV-EVENTS"
    assert delivery.headers["aeg-delivery-count"] == "0"
    assert delivery.headers["aeg-data-version"] == "1"
    assert delivery.headers["aeg-metadata-version"] == "1"
    assert delivery.headers["aeg-output-event-id"] == event.event_id
    [envelope] = delivery.json
    assert envelope == {
        "id": event.event_id,
        "topic": event.topic,
        "subject": "storage-kek",
        "eventType": "Microsoft.KeyVault.KeyNewVersionCreated",
        "eventTime": "2026-11-30T04:21:07.1234560Z",
        "data": event.data,
        "dataVersion": "1",
        "metadataVersion": "1",
    }
    assert EVENT_TIME.match(envelope["eventTime"])
    _validate(envelope, EVENT_GRID_EVENT)
    _validate(envelope["data"], KEY_NEW_VERSION_DATA)

    [record] = eventgrid.deliveries("kv-events")
    assert record.state == "delivered"
    assert [(a.number, a.status_code, a.outcome) for a in record.attempts] == [(1, 200, "Success")]


@pytest.mark.parametrize(("validation", "reason"), [("reject", "HTTP 403"), ("wrong", "does not match")])
def test_endpoint_that_fails_the_handshake_gets_nothing(
    eventgrid: EventGridEmulator,
    bus: SandboxBus,
    receiver: Callable[..., WebhookReceiver],
    validation: str,
    reason: str,
) -> None:
    endpoint = receiver(validation=validation)
    status = eventgrid.create_subscription(WebhookSubscription(name="kv-events", endpoint_url=endpoint.url))
    assert status.provisioning_state == "Failed"
    assert reason in (status.failure_reason or "")
    bus.publish_event(key_event())
    settle(eventgrid)
    assert [r.headers["aeg-event-type"] for r in endpoint.requests] == ["SubscriptionValidation"]
    assert eventgrid.deliveries() == []


def test_unreachable_endpoint_fails_validation(eventgrid: EventGridEmulator, bus: SandboxBus) -> None:
    status = eventgrid.create_subscription(
        WebhookSubscription(name="kv-events", endpoint_url="http://127.0.0.1:9/api/events")
    )
    assert status.provisioning_state == "Failed"
    bus.publish_event(key_event())
    settle(eventgrid)
    assert eventgrid.deliveries() == []


def test_manual_validation_through_the_validation_url(
    eventgrid: EventGridEmulator, bus: SandboxBus, receiver: Callable[..., WebhookReceiver]
) -> None:
    endpoint = receiver(validation="manual")
    status = eventgrid.create_subscription(WebhookSubscription(name="kv-events", endpoint_url=endpoint.url))
    assert status.provisioning_state == "AwaitingManualAction"
    bus.publish_event(key_event())  # the subscription does not exist yet: not delivered
    settle(eventgrid)
    assert endpoint.notifications() == []

    with urllib.request.urlopen(status.validation_url, timeout=5) as answer:  # noqa: S310
        assert answer.status == 200
    assert eventgrid.subscription("kv-events").provisioning_state == "Succeeded"
    later = key_event()
    bus.publish_event(later)
    settle(eventgrid)
    assert [n.json[0]["id"] for n in endpoint.notifications()] == [later.event_id]


def test_validation_url_expires_after_five_minutes_of_sandbox_time(
    eventgrid: EventGridEmulator, clock: SandboxClock, receiver: Callable[..., WebhookReceiver]
) -> None:
    endpoint = receiver(validation="manual")
    status = eventgrid.create_subscription(WebhookSubscription(name="kv-events", endpoint_url=endpoint.url))
    clock.advance(timedelta(minutes=6))
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(status.validation_url, timeout=5)  # noqa: S310
    assert refused.value.code == 400
    assert eventgrid.subscription("kv-events").provisioning_state == "AwaitingManualAction"


def test_cloud_events_abuse_protection_then_structured_delivery(
    eventgrid: EventGridEmulator, bus: SandboxBus, receiver: Callable[..., WebhookReceiver]
) -> None:
    endpoint = receiver()
    status = eventgrid.create_subscription(
        WebhookSubscription(name="kv-cloudevents", endpoint_url=endpoint.url, event_delivery_schema=CLOUD_EVENT_SCHEMA)
    )
    assert status.provisioning_state == "Succeeded"
    event = key_event()
    bus.publish_event(event)
    settle(eventgrid)

    handshake, delivery = endpoint.requests
    assert handshake.method == "OPTIONS"
    assert handshake.headers["WebHook-Request-Origin"] == "eventgrid.azure.net"
    assert delivery.method == "POST"
    assert delivery.headers["Content-Type"] == "application/cloudevents+json; charset=utf-8"
    assert delivery.headers["aeg-subscription-name"] == "KV-CLOUDEVENTS"
    assert delivery.headers["aeg-event-type"] == "Notification"
    assert delivery.headers["aeg-metadata-version"] == "1.0"
    assert "aeg-data-version" not in delivery.headers
    cloud_event = delivery.json
    assert cloud_event == {
        "id": event.event_id,
        "source": event.topic,
        "specversion": "1.0",
        "type": "Microsoft.KeyVault.KeyNewVersionCreated",
        "subject": "storage-kek",
        "time": "2026-11-30T04:21:07.1234560Z",
        "data": event.data,
    }
    _validate(cloud_event, CLOUD_EVENT)
    _validate(cloud_event["data"], KEY_NEW_VERSION_DATA)


def test_cloud_events_dead_letter_keeps_the_cloud_event(
    eventgrid: EventGridEmulator,
    bus: SandboxBus,
    receiver: Callable[..., WebhookReceiver],
    dead_letters: ContainerClient,
) -> None:
    endpoint = receiver(default_status=400)
    eventgrid.create_subscription(
        WebhookSubscription(
            name="kv-cloudevents",
            endpoint_url=endpoint.url,
            event_delivery_schema=CLOUD_EVENT_SCHEMA,
            dead_letter_container=dead_letters.container_name,
        )
    )
    event = key_event()
    bus.publish_event(event)
    settle(eventgrid)
    [record] = eventgrid.deliveries("kv-cloudevents")
    [dead] = read_dead_letter(dead_letters, record.dead_letter_blob or "")
    cloud_event = {k: v for k, v in dead.items() if k not in DEAD_LETTER_FIELDS}
    _validate(cloud_event, CLOUD_EVENT)
    assert cloud_event == cloud_event_envelope(event)
    assert (dead["deadLetterReason"], dead["lastHttpStatusCode"]) == ("UndeliverableDueToHttpBadRequest", 400)


def test_cloud_events_endpoint_that_does_not_allow_the_origin_gets_nothing(
    eventgrid: EventGridEmulator, bus: SandboxBus, receiver: Callable[..., WebhookReceiver]
) -> None:
    endpoint = receiver(allowed_origin=None)
    status = eventgrid.create_subscription(
        WebhookSubscription(name="kv-cloudevents", endpoint_url=endpoint.url, event_delivery_schema=CLOUD_EVENT_SCHEMA)
    )
    assert status.provisioning_state == "Failed"
    bus.publish_event(key_event())
    settle(eventgrid)
    assert [r.method for r in endpoint.requests] == ["OPTIONS"]


# --- retries and dead-lettering -------------------------------------------------------------------


def test_retries_follow_the_compressed_schedule_on_errors_and_timeouts(
    eventgrid: EventGridEmulator, bus: SandboxBus, receiver: Callable[..., WebhookReceiver]
) -> None:
    endpoint = receiver(statuses=[500, 503, HANG, 404, 200])
    eventgrid.create_subscription(
        WebhookSubscription(
            name="kv-events", endpoint_url=endpoint.url, retry_time_scale=FAST, response_timeout_seconds=1.0
        )
    )
    event = key_event()
    bus.publish_event(event)
    settle(eventgrid)

    [record] = eventgrid.deliveries("kv-events")
    assert record.state == "delivered"
    assert [(a.delay_before_seconds, a.status_code, a.outcome) for a in record.attempts] == [
        (0, 500, "GenericError"),
        (10, 503, "Busy"),
        (30, None, "TimedOut"),
        (60, 404, "NotFound"),
        (300, 200, "Success"),
    ]
    notifications = endpoint.notifications()
    assert [n.headers["aeg-delivery-count"] for n in notifications] == ["0", "1", "2", "3", "4"]
    assert {n.json[0]["id"] for n in notifications} == {event.event_id}


@pytest.mark.parametrize(
    "case",
    [
        (400, "UndeliverableDueToHttpBadRequest", "BadRequest"),
        (413, "UndeliverableDueToHttpRequestEntityTooLarge", "RequestEntityTooLarge"),
    ],
    ids=["400", "413"],
)
def test_bad_request_and_too_large_are_dead_lettered_at_once(
    eventgrid: EventGridEmulator,
    bus: SandboxBus,
    receiver: Callable[..., WebhookReceiver],
    dead_letters: ContainerClient,
    case: tuple[int, str, str],
) -> None:
    status, reason, outcome = case
    endpoint = receiver(default_status=status)
    eventgrid.create_subscription(
        WebhookSubscription(
            name="kv-events",
            endpoint_url=endpoint.url,
            dead_letter_container=dead_letters.container_name,
            retry_time_scale=FAST,
        )
    )
    event = key_event()
    bus.publish_event(event)
    settle(eventgrid)

    [record] = eventgrid.deliveries("kv-events")
    assert (record.state, record.dead_letter_reason, len(record.attempts)) == ("dead_lettered", reason, 1)
    assert len(endpoint.notifications()) == 1
    assert record.dead_letter_blob is not None
    now = eventgrid.clock.now()
    assert re.fullmatch(
        rf"{dead_letters.container_name}/CONTOSO-CMK/KV-EVENTS/{now.year}/{now.month}/{now.day}/\d{{1,2}}/[0-9a-f-]{{36}}\.json",
        record.dead_letter_blob,
    )
    [dead] = read_dead_letter(dead_letters, record.dead_letter_blob)
    assert set(dead) == EVENT_GRID_FIELDS | DEAD_LETTER_FIELDS
    assert dead["id"] == event.event_id
    assert dead["data"] == event.data
    assert dead["deadLetterReason"] == reason
    assert dead["deliveryAttempts"] == 1
    assert dead["lastDeliveryOutcome"] == outcome
    assert dead["lastHttpStatusCode"] == status
    assert EVENT_TIME.match(dead["publishTime"])
    assert EVENT_TIME.match(dead["lastDeliveryAttemptTime"])
    _validate({k: v for k, v in dead.items() if k in EVENT_GRID_FIELDS}, EVENT_GRID_EVENT)


@pytest.mark.parametrize(
    ("limit", "delays", "reason"),
    [
        ({"max_delivery_attempts": 4}, [0, 10, 30, 60], "MaxDeliveryAttemptsExceeded"),
        # attempts at 0 s, 10 s and 40 s; the next one (100 s) would be past the 60 s time to live
        ({"event_ttl_minutes": 1}, [0, 10, 30], "TimeToLiveExceeded"),
    ],
    ids=["max-delivery-attempts", "time-to-live-on-the-compressed-schedule"],
)
def test_dead_lettered_when_a_retry_limit_is_reached(
    eventgrid: EventGridEmulator,
    bus: SandboxBus,
    receiver: Callable[..., WebhookReceiver],
    dead_letters: ContainerClient,
    *,
    limit: dict[str, Any],
    delays: list[int],
    reason: str,
) -> None:
    endpoint = receiver(default_status=500)
    eventgrid.create_subscription(
        WebhookSubscription(
            name="kv-events",
            endpoint_url=endpoint.url,
            dead_letter_container=dead_letters.container_name,
            retry_time_scale=FAST,
            **limit,
        )
    )
    bus.publish_event(key_event())
    settle(eventgrid)

    [record] = eventgrid.deliveries("kv-events")
    assert record.state == "dead_lettered"
    assert [a.delay_before_seconds for a in record.attempts] == delays
    assert len(endpoint.notifications()) == len(delays)
    [dead] = read_dead_letter(dead_letters, record.dead_letter_blob or "")
    assert (dead["deadLetterReason"], dead["deliveryAttempts"]) == (reason, len(delays))
    assert (dead["lastDeliveryOutcome"], dead["lastHttpStatusCode"]) == ("GenericError", 500)


def test_advancing_the_sandbox_clock_expires_a_pending_retry(
    eventgrid: EventGridEmulator,
    bus: SandboxBus,
    clock: SandboxClock,
    receiver: Callable[..., WebhookReceiver],
    dead_letters: ContainerClient,
) -> None:
    endpoint = receiver(default_status=500)
    subscription = WebhookSubscription(
        name="kv-events", endpoint_url=endpoint.url, dead_letter_container=dead_letters.container_name
    )  # uncompressed: the second attempt is 10 real seconds away
    eventgrid.create_subscription(subscription)
    bus.publish_event(key_event())
    deadline = time.monotonic() + 10
    while not eventgrid.deliveries("kv-events") or not eventgrid.deliveries("kv-events")[0].attempts:
        assert time.monotonic() < deadline, "first attempt not made"
        time.sleep(0.01)
    clock.advance(timedelta(hours=25))
    settle(eventgrid)

    [record] = eventgrid.deliveries("kv-events")
    assert (record.state, record.dead_letter_reason, len(record.attempts)) == (
        "dead_lettered",
        "TimeToLiveExceeded",
        1,
    )


def test_without_a_dead_letter_destination_the_event_is_dropped(
    eventgrid: EventGridEmulator, bus: SandboxBus, receiver: Callable[..., WebhookReceiver]
) -> None:
    endpoint = receiver(default_status=400)
    eventgrid.create_subscription(WebhookSubscription(name="kv-events", endpoint_url=endpoint.url))
    bus.publish_event(key_event())
    settle(eventgrid)
    [record] = eventgrid.deliveries("kv-events")
    assert (record.state, record.dead_letter_reason, record.dropped_because) == (
        "dropped",
        "UndeliverableDueToHttpBadRequest",
        "no dead-letter destination",
    )


# --- filters, at-least-once and order, admin API --------------------------------------------------


def test_filters_select_event_types_vaults_and_subjects(
    eventgrid: EventGridEmulator, bus: SandboxBus, receiver: Callable[..., WebhookReceiver]
) -> None:
    endpoint = receiver()
    eventgrid.create_subscription(
        WebhookSubscription(
            name="kv-events",
            endpoint_url=endpoint.url,
            topic=vault_id("contoso-cmk"),
            included_event_types=("Microsoft.KeyVault.KeyNewVersionCreated", "Microsoft.KeyVault.KeyNearExpiry"),
            subject_begins_with="storage-",
        )
    )
    wanted = [key_event(), key_event(event_type="Microsoft.KeyVault.KeyNearExpiry")]
    unwanted = [
        key_event(event_type="Microsoft.KeyVault.SecretNewVersionCreated"),
        key_event(vault="other-vault"),
        key_event(key="app-kek"),
    ]
    for event in [*unwanted, *wanted]:
        bus.publish_event(event)
    settle(eventgrid)
    assert sorted(n.json[0]["id"] for n in endpoint.notifications()) == sorted(e.event_id for e in wanted)


def test_duplicates_and_shuffled_order_for_reliability_tests(
    bus: SandboxBus, clock: SandboxClock, receiver: Callable[..., WebhookReceiver]
) -> None:
    endpoint = receiver()
    with EventGridEmulator(
        bus, clock=clock, duplicate_probability=1.0, shuffle_window_seconds=0.02, seed=7
    ) as emulator:
        emulator.create_subscription(WebhookSubscription(name="kv-events", endpoint_url=endpoint.url))
        events = [key_event() for _ in range(10)]
        for event in events:
            bus.publish_event(event)
        settle(emulator)
        records = emulator.deliveries("kv-events")
    received = [n.json[0]["id"] for n in endpoint.notifications()]
    assert sorted(received) == sorted([e.event_id for e in events] * 2)
    assert all([a.duplicate for a in r.attempts] == [False, True] for r in records)


def test_publish_returns_while_the_endpoint_is_still_busy(
    eventgrid: EventGridEmulator, bus: SandboxBus, receiver: Callable[..., WebhookReceiver]
) -> None:
    endpoint = receiver(statuses=[HANG] * 3)
    eventgrid.create_subscription(
        WebhookSubscription(name="kv-events", endpoint_url=endpoint.url, response_timeout_seconds=2)
    )
    for _ in range(3):
        bus.publish_event(key_event())  # would hang here if publishing waited for delivery
    assert all(record.state == "pending" for record in eventgrid.deliveries("kv-events"))


def test_admin_api_lists_subscriptions_and_delivery_attempts(
    eventgrid: EventGridEmulator, bus: SandboxBus, receiver: Callable[..., WebhookReceiver]
) -> None:
    endpoint = receiver()
    eventgrid.create_subscription(WebhookSubscription(name="kv-events", endpoint_url=endpoint.url))
    event = key_event()
    bus.publish_event(event)
    settle(eventgrid)
    with urllib.request.urlopen(f"{eventgrid.base_url}/admin/eventgrid/subscriptions") as answer:  # noqa: S310
        [subscription] = json.load(answer)
    assert (subscription["name"], subscription["provisioning_state"]) == ("kv-events", "Succeeded")
    url = f"{eventgrid.base_url}/admin/eventgrid/deliveries?subscription=kv-events"
    with urllib.request.urlopen(url) as answer:  # noqa: S310
        [record] = json.load(answer)
    assert (record["event_id"], record["state"]) == (event.event_id, "delivered")
    assert record["attempts"][0]["outcome"] == "Success"
    assert EVENT_TIME.match(record["attempts"][0]["attempted_at"])


def test_subscription_settings_are_checked() -> None:
    with pytest.raises(EventGridError):
        WebhookSubscription(name="x", endpoint_url="http://127.0.0.1/")
    with pytest.raises(EventGridError):
        WebhookSubscription(name="kv-events", endpoint_url="http://127.0.0.1/", max_delivery_attempts=31)
    with pytest.raises(EventGridError):
        WebhookSubscription(name="kv-events", endpoint_url="http://127.0.0.1/", event_delivery_schema="Custom")

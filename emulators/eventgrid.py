"""Event Grid push delivery of Key Vault system events to webhook subscriptions.

Subscribes to the sandbox bus (``SandboxBus.on_event``) and behaves like an Event Grid system topic
on a vault with webhook event subscriptions:

* Creating a subscription runs the endpoint validation first. Event Grid schema: a POST of a
  ``Microsoft.EventGrid.SubscriptionValidationEvent`` with ``aeg-event-type: SubscriptionValidation``;
  the endpoint answers 200 ``{"validationResponse": code}`` or later GETs the ``validationUrl``
  (served here, valid five minutes of sandbox time). CloudEvents 1.0 schema: the OPTIONS
  abuse-protection handshake (``WebHook-Request-Origin`` -> ``WebHook-Allowed-Origin``). A subscription
  that is not validated receives nothing: in Azure it does not exist yet.
* Each matching event is delivered on its own (an array of one event for the Event Grid schema, one
  structured CloudEvent otherwise), at least once, in no guaranteed order, with Event Grid's headers.
* Success is 200-204 within the response timeout (30 s). 400, 401, 403 and 413 are not retried: the
  event is dead-lettered at once (the current Event Grid documentation lists 401 and 403 for
  webhooks too). Anything else is retried on Event Grid's schedule (10 s, 30 s, 1 min, 5 min, 10 min,
  30 min, 1 h, 3 h, 6 h, then every 12 h) until max delivery attempts or the event's time to live,
  then dead-lettered. Without a dead-letter destination the event is dropped, as in Azure.
* Dead-lettered events are written to a blob container (Azurite) at
  ``<TOPIC-NAME>/<SUBSCRIPTION-NAME>/<yyyy>/<M>/<d>/<H>/<uuid>.json`` (date and hour not zero padded,
  as the Event Grid documentation describes) holding a JSON array of the delivered event plus
  deadLetterReason, deliveryAttempts, lastDeliveryOutcome, lastHttpStatusCode, publishTime and
  lastDeliveryAttemptTime.

Time: the retry schedule can be compressed per subscription (``retry_time_scale``, e.g. 0.001 turns
10 s into 10 ms). A pending retry also becomes due when the sandbox clock is advanced past it, and
the time to live is measured on the sandbox clock, or on the (uncompressed) schedule, whichever is
further along: compressing the schedule does not make the TTL unreachable.

Reliability testing: ``duplicate_probability`` re-delivers successfully delivered events and
``shuffle_window_seconds`` delays first attempts by a random amount so that order varies; both use
``seed`` for reproducible runs.

Everything runs on one background thread with its own event loop; ``publish`` (the bus callback)
only hands the event over and never blocks. Attempts are recorded per subscription and event for
tests (``deliveries``) and for the admin API (``GET /admin/eventgrid/...`` on ``base_url``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import secrets
import threading
import uuid
from collections.abc import Coroutine
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from azure.core.exceptions import AzureError
from azure.storage.blob.aio import BlobServiceClient

from emulators.background import ServerThread
from emulators.bus import SandboxBus, VaultEvent
from emulators.clock import SandboxClock

logger = logging.getLogger(__name__)

T = TypeVar("T")

EVENT_GRID_SCHEMA = "EventGridSchema"
CLOUD_EVENT_SCHEMA = "CloudEventSchemaV1_0"
SCHEMAS = (EVENT_GRID_SCHEMA, CLOUD_EVENT_SCHEMA)

VALIDATION_EVENT_TYPE = "Microsoft.EventGrid.SubscriptionValidationEvent"
WEBHOOK_REQUEST_ORIGIN = "eventgrid.azure.net"
EVENT_GRID_CONTENT_TYPE = "application/json"
CLOUD_EVENT_CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"

# Delays before the 2nd, 3rd, ... attempt; after the last one, every 12 hours (until the TTL).
RETRY_SCHEDULE_SECONDS: tuple[float, ...] = (10, 30, 60, 300, 600, 1800, 3600, 10800, 21600)
RETRY_INTERVAL_AFTER_SCHEDULE_SECONDS = 12 * 3600.0
MANUAL_VALIDATION_WINDOW = timedelta(minutes=5)

# Not retried: dead-lettered at once (dropped without a dead-letter destination).
# 400 -> UndeliverableDueToHttpBadRequest is the reason Event Grid writes; the others follow its pattern.
NON_RETRIABLE_STATUS: dict[int, str] = {
    400: "UndeliverableDueToHttpBadRequest",
    401: "UndeliverableDueToHttpUnauthorized",
    403: "UndeliverableDueToHttpForbidden",
    413: "UndeliverableDueToHttpRequestEntityTooLarge",
}
MAX_ATTEMPTS_REASON = "MaxDeliveryAttemptsExceeded"
TTL_REASON = "TimeToLiveExceeded"

_OUTCOMES = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    408: "TimedOut",
    413: "RequestEntityTooLarge",
    429: "Busy",
    503: "Busy",
}
_SUBSCRIPTION_NAME = re.compile(r"^[A-Za-z0-9-]{3,64}$")
_CONTAINER_NAME = re.compile(r"^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
# How often a waiting retry looks at the sandbox clock (an advance makes it due early).
_CLOCK_POLL_SECONDS = 0.2
# Placeholder topic for the validation event of a subscription that listens to every vault.
SANDBOX_TOPIC = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/sandbox"
    "/providers/Microsoft.EventGrid/systemTopics/sandbox-keyvault"
)


class EventGridError(RuntimeError):
    """The emulator is not running, or a subscription request is invalid."""


def format_event_time(moment: datetime) -> str:
    """Event Grid's timestamp form: UTC, seven fractional digits, ``Z`` (2026-11-30T04:21:07.1234560Z)."""
    utc = moment.astimezone(UTC)
    return f"{utc:%Y-%m-%dT%H:%M:%S}.{utc.microsecond:06d}0Z"


def retry_delay_seconds(failed_attempts: int) -> float:
    """The schedule's delay after ``failed_attempts`` failed attempts (>= 1), uncompressed."""
    if failed_attempts < 1:
        raise ValueError("there is no retry before the first attempt")
    if failed_attempts <= len(RETRY_SCHEDULE_SECONDS):
        return RETRY_SCHEDULE_SECONDS[failed_attempts - 1]
    return RETRY_INTERVAL_AFTER_SCHEDULE_SECONDS


def dead_letter_blob_name(topic_name: str, subscription_name: str, moment: datetime, blob_id: str) -> str:
    utc = moment.astimezone(UTC)
    return (
        f"{topic_name.upper()}/{subscription_name.upper()}/{utc.year}/{utc.month}/{utc.day}/{utc.hour}/{blob_id}.json"
    )


def event_grid_envelope(event: VaultEvent) -> dict[str, Any]:
    return {
        "id": event.event_id,
        "topic": event.topic,
        "subject": event.subject,
        "eventType": event.event_type,
        "eventTime": format_event_time(event.event_time),
        "data": event.data,
        "dataVersion": event.data_version,
        "metadataVersion": "1",
    }


def cloud_event_envelope(event: VaultEvent) -> dict[str, Any]:
    return {
        "id": event.event_id,
        "source": event.topic,
        "specversion": "1.0",
        "type": event.event_type,
        "subject": event.subject,
        "time": format_event_time(event.event_time),
        "data": event.data,
    }


ADVANCED_OPERATORS = (
    "StringBeginsWith", "StringEndsWith", "StringContains", "StringIn",
    "StringNotBeginsWith", "StringNotEndsWith", "StringNotContains", "StringNotIn",
)


@dataclass(frozen=True, slots=True)
class AdvancedFilter:
    """One of Event Grid's string advanced filters: ``key`` is ``eventType``, ``subject``, ``topic``,
    ``id`` or a ``data.`` path. Comparisons ignore case, as Event Grid's do; a missing key (or one that
    is not a string) matches no positive operator and every negated one."""

    operator_type: str
    key: str
    values: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.operator_type not in ADVANCED_OPERATORS:
            raise EventGridError(f"advanced filter operator {self.operator_type!r}: one of {ADVANCED_OPERATORS}")
        if not self.values:
            raise EventGridError("an advanced filter needs at least one value")

    def matches(self, event: VaultEvent) -> bool:
        value = _event_value(event, self.key)
        negated = self.operator_type.startswith("StringNot")
        if not isinstance(value, str):
            return negated
        text = value.lower()
        wanted = [candidate.lower() for candidate in self.values]
        test = self.operator_type.removeprefix("StringNot").removeprefix("String")
        if test == "BeginsWith":
            found = any(text.startswith(candidate) for candidate in wanted)
        elif test == "EndsWith":
            found = any(text.endswith(candidate) for candidate in wanted)
        elif test == "Contains":
            found = any(candidate in text for candidate in wanted)
        else:  # In
            found = text in wanted
        return found != negated


def _event_value(event: VaultEvent, key: str) -> object:
    envelope: dict[str, Any] = {"eventtype": event.event_type, "subject": event.subject, "topic": event.topic,
                                "id": event.event_id}
    if not key.lower().startswith("data."):
        return envelope.get(key.lower())
    node: object = event.data
    for part in key.split(".")[1:]:
        if not isinstance(node, dict):
            return None
        node = next((value for name, value in node.items() if name.lower() == part.lower()), None)
    return node


@dataclass(frozen=True, slots=True)
class WebhookSubscription:
    """An Event Grid event subscription with a webhook destination.

    ``topic`` restricts it to one vault (the vault's ARM id, as in a system topic on that vault) or,
    for Azure Resource Manager's resource events, to one subscription (``/subscriptions/{id}``, as in a
    ``Microsoft.Resources.Subscriptions`` system topic); None listens to every vault of the sandbox
    (Key Vault events only). ``system_topic_name`` names the topic in dead-letter blob paths (default:
    the topic's last segment). ``retry_time_scale`` compresses the retry schedule.
    """

    name: str
    endpoint_url: str
    event_delivery_schema: str = EVENT_GRID_SCHEMA
    included_event_types: tuple[str, ...] | None = None
    subject_begins_with: str = ""
    subject_ends_with: str = ""
    advanced_filters: tuple[AdvancedFilter, ...] = ()
    topic: str | None = None
    system_topic_name: str | None = None
    max_delivery_attempts: int = 30
    event_ttl_minutes: int = 1440
    dead_letter_container: str | None = None
    retry_time_scale: float = 1.0
    response_timeout_seconds: float = 30.0

    def __post_init__(self) -> None:
        if not _SUBSCRIPTION_NAME.match(self.name):
            raise EventGridError(f"subscription name {self.name!r}: 3-64 letters, digits or hyphens")
        if self.event_delivery_schema not in SCHEMAS:
            raise EventGridError(f"event delivery schema {self.event_delivery_schema!r}: one of {SCHEMAS}")
        if not 1 <= self.max_delivery_attempts <= 30:
            raise EventGridError(f"max delivery attempts {self.max_delivery_attempts}: 1-30")
        if not 1 <= self.event_ttl_minutes <= 1440:
            raise EventGridError(f"event time to live {self.event_ttl_minutes} minutes: 1-1440")
        if self.retry_time_scale <= 0 or self.response_timeout_seconds <= 0:
            raise EventGridError("retry_time_scale and response_timeout_seconds must be positive")
        if self.dead_letter_container is not None and not _CONTAINER_NAME.match(self.dead_letter_container):
            raise EventGridError(f"dead-letter container {self.dead_letter_container!r} is not a container name")
        if not self.endpoint_url.startswith(("http://", "https://")):
            raise EventGridError(f"endpoint {self.endpoint_url!r} is not an http(s) URL")

    def matches(self, event: VaultEvent) -> bool:
        if self.topic is not None and self.topic.lower() != event.topic.lower():
            return False
        if self.topic is None and "/providers/microsoft.keyvault/" not in event.topic.lower():
            return False
        if self.included_event_types is not None and not any(
            wanted.lower() == event.event_type.lower() for wanted in self.included_event_types
        ):
            return False
        subject = event.subject.lower()
        if not subject.startswith(self.subject_begins_with.lower()):
            return False
        if not subject.endswith(self.subject_ends_with.lower()):
            return False
        return all(advanced.matches(event) for advanced in self.advanced_filters)

    def topic_name_for(self, event: VaultEvent) -> str:
        return self.system_topic_name or event.topic.rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True, slots=True)
class SubscriptionStatus:
    name: str
    endpoint_url: str
    event_delivery_schema: str
    provisioning_state: str  # Succeeded | AwaitingManualAction | Failed
    failure_reason: str | None = None
    validation_url: str | None = None


@dataclass(frozen=True, slots=True)
class DeliveryAttempt:
    number: int  # 1-based; duplicates continue the count
    attempted_at: datetime  # sandbox clock
    delay_before_seconds: float  # the (uncompressed) schedule step before this attempt; 0 for the first
    status_code: int | None  # None: no HTTP answer (timeout, connection error)
    outcome: str  # Success, BadRequest, TimedOut, GenericError, ...
    duplicate: bool = False
    error: str | None = None


@dataclass(slots=True)
class DeliveryRecord:
    """What happened to one event for one subscription."""

    subscription: str
    event_id: str
    event_type: str
    published_at: datetime  # sandbox clock
    state: str = "pending"  # pending | delivered | dead_lettered | dropped
    attempts: list[DeliveryAttempt] = field(default_factory=list)
    dead_letter_reason: str | None = None
    dead_letter_blob: str | None = None
    dropped_because: str | None = None

    def snapshot(self) -> DeliveryRecord:
        return replace(self, attempts=list(self.attempts))

    def to_dict(self) -> dict[str, Any]:
        plain: dict[str, Any] = json.loads(json.dumps(asdict(self), default=_json_default))
        return plain


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return format_event_time(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


@dataclass(slots=True)
class _Subscription:
    spec: WebhookSubscription
    state: str = "Creating"
    failure_reason: str | None = None
    validation_code: str | None = None
    validation_token: str | None = None
    validation_url: str | None = None
    validation_deadline: datetime | None = None

    def status(self) -> SubscriptionStatus:
        return SubscriptionStatus(
            name=self.spec.name,
            endpoint_url=self.spec.endpoint_url,
            event_delivery_schema=self.spec.event_delivery_schema,
            provisioning_state=self.state,
            failure_reason=self.failure_reason,
            validation_url=self.validation_url if self.state == "AwaitingManualAction" else None,
        )


@dataclass(frozen=True, slots=True)
class _AttemptResult:
    status_code: int | None
    outcome: str
    error: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code <= 204


class EventGridEmulator:
    """Event Grid delivery for the sandbox. ``start`` before creating subscriptions; ``stop`` ends it.

    ``dead_letter_connection_string`` is the storage account (Azurite) that holds the subscriptions'
    dead-letter containers. ``host``/``port`` are where the validation URL and the admin API listen.
    """

    def __init__(
        self,
        bus: SandboxBus | None = None,
        *,
        clock: SandboxClock | None = None,
        dead_letter_connection_string: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        duplicate_probability: float = 0.0,
        shuffle_window_seconds: float = 0.0,
        seed: int | None = None,
        max_concurrent_deliveries: int = 64,
    ) -> None:
        if not 0.0 <= duplicate_probability <= 1.0:
            raise EventGridError("duplicate_probability must be within [0, 1]")
        self._clock = clock or SandboxClock()
        self._dead_letter_connection_string = dead_letter_connection_string
        self._host = host
        self._port = port
        self._duplicate_probability = duplicate_probability
        self._shuffle_window = max(0.0, shuffle_window_seconds)
        self._random = random.Random(seed)
        self._max_concurrent = max_concurrent_deliveries

        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._in_flight = 0
        self._subscriptions: dict[str, _Subscription] = {}
        self._records: list[DeliveryRecord] = []
        self._closed = False

        self._server = ServerThread("eventgrid-delivery", join_timeout=30.0)
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._blob_service: BlobServiceClient | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._base_url: str | None = None
        if bus is not None:
            self.attach(bus)

    # -- lifecycle -------------------------------------------------------------------------------

    def attach(self, bus: SandboxBus) -> None:
        bus.on_event(self.publish)

    def start(self) -> EventGridEmulator:
        if self._server.running:
            return self
        with self._lock:
            self._closed = False
        self._server.start()
        try:
            self._call(self._async_start(), timeout=30)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if not self._server.running:
            return
        with self._lock:
            self._closed = True
        self._server.stop(self._async_stop())
        with self._idle:
            self._in_flight = 0
            self._idle.notify_all()

    def __enter__(self) -> EventGridEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """Where the validation URLs and the admin API are served."""
        if self._base_url is None:
            raise EventGridError("the Event Grid emulator is not running")
        return self._base_url

    @property
    def clock(self) -> SandboxClock:
        return self._clock

    # -- subscriptions ---------------------------------------------------------------------------

    def create_subscription(self, subscription: WebhookSubscription) -> SubscriptionStatus:
        """Create (or replace) a subscription; returns after the validation handshake, like ARM does."""
        timeout = subscription.response_timeout_seconds + 10
        return self._call(self._create_subscription(subscription), timeout=timeout)

    def delete_subscription(self, name: str) -> None:
        with self._lock:
            self._subscriptions.pop(name.lower(), None)

    def subscription(self, name: str) -> SubscriptionStatus:
        with self._lock:
            found = self._subscriptions.get(name.lower())
            if found is None:
                raise EventGridError(f"no event subscription named {name!r}")
            return found.status()

    def subscriptions(self) -> list[SubscriptionStatus]:
        with self._lock:
            return [entry.status() for entry in self._subscriptions.values()]

    # -- events ----------------------------------------------------------------------------------

    def publish(self, event: VaultEvent) -> None:
        """The bus callback: hand the event to the delivery loop and return at once."""
        published_at = self._clock.now()
        with self._lock:
            loop = self._server.loop
            if self._closed or loop is None:
                logger.debug("event grid emulator is not running: event %s not delivered", event.event_id)
                return
            self._in_flight += 1
        try:
            loop.call_soon_threadsafe(self._dispatch, event, published_at)
        except RuntimeError:  # the loop closed in between
            self._done()

    def deliveries(self, subscription: str | None = None, *, event_id: str | None = None) -> list[DeliveryRecord]:
        """Snapshots of the delivery records, in publish order."""
        with self._lock:
            return [
                record.snapshot()
                for record in self._records
                if (subscription is None or record.subscription.lower() == subscription.lower())
                and (event_id is None or record.event_id == event_id)
            ]

    def wait_until_idle(self, timeout: float = 30.0) -> bool:
        """Block until every published event is delivered, dead-lettered or dropped (True), or timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout=timeout)

    # -- internals: loop plumbing ----------------------------------------------------------------

    def _call(self, coroutine: Coroutine[Any, Any, T], *, timeout: float) -> T:
        if not self._server.running or self._closed:
            coroutine.close()
            raise EventGridError("the Event Grid emulator is not running")
        if self._server.in_loop_thread():
            coroutine.close()
            raise EventGridError("blocking emulator call from its own event loop")
        return self._server.run(coroutine, timeout=timeout)

    async def _async_start(self) -> None:
        self._semaphore = asyncio.Semaphore(self._max_concurrent)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._max_concurrent), trust_env=False
        )
        if self._dead_letter_connection_string:
            self._blob_service = BlobServiceClient.from_connection_string(self._dead_letter_connection_string)
        app = web.Application()
        app.router.add_get("/eventsubscriptions/{name}/validate", self._handle_validation_url)
        app.router.add_get("/admin/eventgrid/subscriptions", self._handle_admin_subscriptions)
        app.router.add_get("/admin/eventgrid/deliveries", self._handle_admin_deliveries)
        _, port = await self._server.serve(app, self._host, self._port, shutdown_timeout=1.0)
        self._base_url = f"http://{self._host}:{port}"

    async def _async_stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        if self._blob_service is not None:
            await self._blob_service.close()
        self._base_url = None  # the server thread cleans up the runner when it stops

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _done(self) -> None:
        with self._idle:
            self._in_flight -= 1
            if self._in_flight <= 0:
                self._in_flight = 0
                self._idle.notify_all()

    # -- internals: validation -------------------------------------------------------------------

    async def _create_subscription(self, spec: WebhookSubscription) -> SubscriptionStatus:
        entry = _Subscription(spec=spec)
        with self._lock:
            self._subscriptions[spec.name.lower()] = entry
        if spec.event_delivery_schema == EVENT_GRID_SCHEMA:
            await self._validate_event_grid(entry)
        else:
            await self._validate_cloud_events(entry)
        logger.info("event subscription %s: %s %s", spec.name, entry.state, entry.failure_reason or "")
        with self._lock:
            return entry.status()

    async def _validate_event_grid(self, entry: _Subscription) -> None:
        spec = entry.spec
        code = str(uuid.uuid4())
        token = secrets.token_hex(16)
        now = self._clock.now()
        validation_url = (
            f"{self.base_url}/eventsubscriptions/{spec.name}/validate?id={code}"
            f"&t={format_event_time(now)}&apiVersion=2018-05-01-preview&token={token}"
        )
        with self._lock:
            entry.validation_code = code
            entry.validation_token = token
            entry.validation_url = validation_url
            entry.validation_deadline = now + MANUAL_VALIDATION_WINDOW
        body = [
            {
                "id": str(uuid.uuid4()),
                "topic": spec.topic or SANDBOX_TOPIC,
                "subject": "",
                "data": {"validationCode": code, "validationUrl": validation_url},
                "eventType": VALIDATION_EVENT_TYPE,
                "eventTime": format_event_time(now),
                "metadataVersion": "1",
                "dataVersion": "2",
            }
        ]
        headers = {
            "Content-Type": EVENT_GRID_CONTENT_TYPE,
            "aeg-event-type": "SubscriptionValidation",
            "aeg-subscription-name": spec.name.upper(),
            "aeg-delivery-count": "0",
            "aeg-data-version": "2",
            "aeg-metadata-version": "1",
        }
        session = self._require_session()
        try:
            async with session.post(
                spec.endpoint_url,
                data=json.dumps(body).encode(),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=spec.response_timeout_seconds),
                allow_redirects=False,
            ) as response:
                status = response.status
                text = await response.text()
        except (TimeoutError, aiohttp.ClientError) as err:
            self._fail_validation(entry, f"validation request failed: {type(err).__name__} {err}")
            return
        if status != 200:
            self._fail_validation(entry, f"validation request answered HTTP {status}")
            return
        answered = _validation_response(text)
        with self._lock:
            if entry.state == "Succeeded":  # the endpoint already GET the validation URL
                return
            if answered == code:
                entry.state = "Succeeded"
            elif answered is None:
                entry.state = "AwaitingManualAction"  # until the validation URL is GET-ed in time
            else:
                entry.state = "Failed"
                entry.failure_reason = "validationResponse does not match the validation code"

    async def _validate_cloud_events(self, entry: _Subscription) -> None:
        spec = entry.spec
        session = self._require_session()
        try:
            async with session.options(
                spec.endpoint_url,
                headers={"WebHook-Request-Origin": WEBHOOK_REQUEST_ORIGIN},
                timeout=aiohttp.ClientTimeout(total=spec.response_timeout_seconds),
                allow_redirects=False,
            ) as response:
                status = response.status
                allowed = response.headers.get("WebHook-Allowed-Origin", "")
                await response.read()
        except (TimeoutError, aiohttp.ClientError) as err:
            self._fail_validation(entry, f"abuse-protection handshake failed: {type(err).__name__} {err}")
            return
        origins = {origin.strip().lower() for origin in allowed.split(",")}
        if status != 200:
            self._fail_validation(entry, f"abuse-protection handshake answered HTTP {status}")
        elif not origins & {"*", WEBHOOK_REQUEST_ORIGIN}:
            self._fail_validation(entry, "WebHook-Allowed-Origin does not allow eventgrid.azure.net")
        else:
            with self._lock:
                entry.state = "Succeeded"

    def _fail_validation(self, entry: _Subscription, reason: str) -> None:
        with self._lock:
            if entry.state != "Succeeded":
                entry.state = "Failed"
                entry.failure_reason = reason

    async def _handle_validation_url(self, request: web.Request) -> web.Response:
        name = request.match_info["name"].lower()
        with self._lock:
            entry = self._subscriptions.get(name)
            valid = (
                entry is not None
                and entry.validation_code is not None
                and secrets.compare_digest(request.query.get("id", ""), entry.validation_code)
                and secrets.compare_digest(request.query.get("token", ""), entry.validation_token or "")
                and entry.state in ("Creating", "AwaitingManualAction")
                and entry.validation_deadline is not None
                and self._clock.now() <= entry.validation_deadline
            )
            if entry is not None and valid:
                entry.state = "Succeeded"
        if not valid:
            return web.Response(status=400, text="Invalid or expired validation request")
        return web.Response(text="Webhook successfully validated as a part of the event subscription")

    # -- internals: admin API ----------------------------------------------------------------------

    async def _handle_admin_subscriptions(self, request: web.Request) -> web.Response:
        return web.json_response([asdict(status) for status in self.subscriptions()])

    async def _handle_admin_deliveries(self, request: web.Request) -> web.Response:
        records = self.deliveries(request.query.get("subscription"), event_id=request.query.get("eventId"))
        return web.json_response([record.to_dict() for record in records])

    # -- internals: delivery ---------------------------------------------------------------------

    def _dispatch(self, event: VaultEvent, published_at: datetime) -> None:
        try:
            with self._lock:
                targets = [
                    entry.spec
                    for entry in self._subscriptions.values()
                    if entry.state == "Succeeded" and entry.spec.matches(event)
                ]
                for spec in targets:
                    record = DeliveryRecord(
                        subscription=spec.name,
                        event_id=event.event_id,
                        event_type=event.event_type,
                        published_at=published_at,
                    )
                    self._records.append(record)
                    self._in_flight += 1
                    self._spawn(self._deliver(spec, event, record))
        finally:
            self._done()

    async def _deliver(self, spec: WebhookSubscription, event: VaultEvent, record: DeliveryRecord) -> None:
        try:
            await self._deliver_until_settled(spec, event, record)
        except asyncio.CancelledError:
            raise
        except Exception:  # an emulator bug must not leave wait_until_idle hanging
            logger.exception("delivery of %s to %s failed", event.event_id, spec.name)
            with self._lock:
                record.state = "dropped"
                record.dropped_because = "emulator error"
        finally:
            self._done()

    async def _deliver_until_settled(
        self, spec: WebhookSubscription, event: VaultEvent, record: DeliveryRecord
    ) -> None:
        envelope = (
            event_grid_envelope(event)
            if spec.event_delivery_schema == EVENT_GRID_SCHEMA
            else cloud_event_envelope(event)
        )
        ttl = timedelta(minutes=spec.event_ttl_minutes)
        schedule_elapsed = timedelta(0)  # uncompressed time the retry schedule has waited so far
        delay_before = 0.0
        if self._shuffle_window:
            await asyncio.sleep(self._random.uniform(0, self._shuffle_window))
        while True:
            age = max(self._clock.now() - record.published_at, schedule_elapsed)
            if age >= ttl:
                await self._dead_letter(spec, event, envelope, record, TTL_REASON)
                return
            result = await self._attempt(spec, envelope, record, delay_before)
            if result.succeeded:
                with self._lock:
                    record.state = "delivered"
                await self._maybe_duplicate(spec, envelope, record)
                return
            if result.status_code in NON_RETRIABLE_STATUS:
                reason = NON_RETRIABLE_STATUS[result.status_code]
                await self._dead_letter(spec, event, envelope, record, reason)
                return
            if len(record.attempts) >= spec.max_delivery_attempts:
                await self._dead_letter(spec, event, envelope, record, MAX_ATTEMPTS_REASON)
                return
            delay_before = retry_delay_seconds(len(record.attempts))
            age = max(self._clock.now() - record.published_at, schedule_elapsed)
            wait = max(timedelta(0), min(timedelta(seconds=delay_before), ttl - age))
            await self._wait(wait, spec.retry_time_scale)
            schedule_elapsed += wait

    async def _wait(self, delay: timedelta, scale: float) -> None:
        """Sleep ``delay`` compressed by ``scale``, or until the sandbox clock has moved past ``delay``."""
        loop = asyncio.get_running_loop()
        due = self._clock.now() + delay
        deadline = loop.time() + delay.total_seconds() * scale
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0 or self._clock.now() >= due:
                return
            await asyncio.sleep(min(remaining, _CLOCK_POLL_SECONDS))

    async def _attempt(
        self,
        spec: WebhookSubscription,
        envelope: dict[str, Any],
        record: DeliveryRecord,
        delay_before: float,
        *,
        duplicate: bool = False,
    ) -> _AttemptResult:
        number = len(record.attempts) + 1
        attempted_at = self._clock.now()
        result = await self._post(spec, envelope, delivery_count=number - 1)
        with self._lock:
            record.attempts.append(
                DeliveryAttempt(
                    number=number,
                    attempted_at=attempted_at,
                    delay_before_seconds=delay_before,
                    status_code=result.status_code,
                    outcome=result.outcome,
                    duplicate=duplicate,
                    error=result.error,
                )
            )
        return result

    async def _post(
        self, spec: WebhookSubscription, envelope: dict[str, Any], *, delivery_count: int
    ) -> _AttemptResult:
        # aeg-delivery-count is the number of attempts made before this one (0 on first delivery).
        headers = {
            "aeg-event-type": "Notification",
            "aeg-subscription-name": spec.name.upper(),
            "aeg-delivery-count": str(delivery_count),
            "aeg-output-event-id": envelope["id"],
        }
        if spec.event_delivery_schema == EVENT_GRID_SCHEMA:
            body = json.dumps([envelope]).encode()
            headers["Content-Type"] = EVENT_GRID_CONTENT_TYPE
            headers["aeg-data-version"] = envelope["dataVersion"]
            headers["aeg-metadata-version"] = envelope["metadataVersion"]
        else:  # for CloudEvents the metadata version is the spec version; there is no data version
            body = json.dumps(envelope).encode()
            headers["Content-Type"] = CLOUD_EVENT_CONTENT_TYPE
            headers["aeg-metadata-version"] = envelope["specversion"]
        session = self._require_session()
        semaphore = self._semaphore
        assert semaphore is not None  # noqa: S101 - set in _async_start
        async with semaphore:
            try:
                async with session.post(
                    spec.endpoint_url,
                    data=body,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=spec.response_timeout_seconds),
                    allow_redirects=False,
                ) as response:
                    await response.read()
                    status = response.status
            except TimeoutError:
                error = f"no response within {spec.response_timeout_seconds}s"
                return _AttemptResult(None, "TimedOut", error)
            except aiohttp.ClientError as err:
                return _AttemptResult(None, "GenericError", f"{type(err).__name__}: {err}")
        if 200 <= status <= 204:
            return _AttemptResult(status, "Success")
        return _AttemptResult(status, _OUTCOMES.get(status, "GenericError"))

    async def _maybe_duplicate(
        self, spec: WebhookSubscription, envelope: dict[str, Any], record: DeliveryRecord
    ) -> None:
        if self._duplicate_probability <= 0 or self._random.random() >= self._duplicate_probability:
            return
        if self._shuffle_window:
            await asyncio.sleep(self._random.uniform(0, self._shuffle_window))
        await self._attempt(spec, envelope, record, 0.0, duplicate=True)

    async def _dead_letter(
        self,
        spec: WebhookSubscription,
        event: VaultEvent,
        envelope: dict[str, Any],
        record: DeliveryRecord,
        reason: str,
    ) -> None:
        last = record.attempts[-1] if record.attempts else None
        if spec.dead_letter_container is None or self._blob_service is None:
            with self._lock:
                record.state = "dropped"
                record.dead_letter_reason = reason
                record.dropped_because = "no dead-letter destination"
            return
        now = self._clock.now()
        entry = {
            **envelope,
            "deadLetterReason": reason,
            "deliveryAttempts": len(record.attempts),
            "lastDeliveryOutcome": last.outcome if last else "NotAttempted",
            "lastHttpStatusCode": (last.status_code or 0) if last else 0,
            "publishTime": format_event_time(record.published_at),
            "lastDeliveryAttemptTime": format_event_time(last.attempted_at if last else now),
        }
        blob_name = dead_letter_blob_name(spec.topic_name_for(event), spec.name, now, str(uuid.uuid4()))
        try:
            container = self._blob_service.get_container_client(spec.dead_letter_container)
            await container.upload_blob(blob_name, json.dumps([entry]).encode(), overwrite=False)
        except AzureError as err:
            # Azure drops dead-lettered events whose destination is missing.
            logger.warning("dead-letter write for %s failed: %s", spec.name, err)
            with self._lock:
                record.state = "dropped"
                record.dead_letter_reason = reason
                record.dropped_because = f"dead-letter destination unavailable: {type(err).__name__}"
            return
        with self._lock:
            record.state = "dead_lettered"
            record.dead_letter_reason = reason
            record.dead_letter_blob = f"{spec.dead_letter_container}/{blob_name}"

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise EventGridError("the Event Grid emulator is not running")
        return self._session


def _validation_response(text: str) -> str | None:
    try:
        answer = json.loads(text)
    except ValueError:
        return None
    if isinstance(answer, dict):
        value = answer.get("validationResponse")
        return value if isinstance(value, str) else None
    return None

"""An Event Grid custom topic's publish endpoint: what the controller's alerts are published to.

``POST /api/events`` over HTTPS (the sandbox CA), as Azure serves it at
``https://<topic>.<region>-1.eventgrid.azure.net/api/events``: Microsoft Entra ID bearer tokens for
the audience ``https://eventgrid.azure.net`` only (the sandbox's managed-identity endpoint issues
them), and only principals holding "EventGrid Data Sender" on the topic (``senders``) may publish
(401 without a token or with another audience, 403 for anyone else, as Azure answers). The body is a
CloudEvents 1.0 batch (``application/cloudevents-batch+json``) or one Event Grid event array; every
event is checked for the attributes its schema requires (400 otherwise, nothing recorded), and the
accepted ones are kept for tests and the demo (``events``, ``wait_for``). At most 1 MB per request.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from emulators.background import ServerThread, wait_for_records
from emulators.keyvault.ca import SandboxCA
from emulators.keyvault.credential import InvalidToken, decode_token

AUDIENCE = "https://eventgrid.azure.net"
MAX_REQUEST_BYTES = 1024 * 1024
_CLOUD_EVENT_REQUIRED = ("id", "source", "type", "specversion")
_EVENT_GRID_REQUIRED = ("id", "subject", "eventType", "eventTime", "data", "dataVersion")


@dataclass(frozen=True, slots=True)
class PublishedEvent:
    schema: str  # CloudEvents | EventGrid
    event: dict[str, Any]
    sender: str
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))


class EventGridTopicEmulator:
    def __init__(self, ca: SandboxCA, *, senders: set[str] | None = None, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self._ca = ca
        self._host = host
        self._port = port
        #: Object ids of the principals with EventGrid Data Sender on the topic.
        self.senders = set(senders or ())
        self._events: list[PublishedEvent] = []
        self.refused: list[int] = []  # status codes of refused requests, for tests
        self._lock = threading.Lock()
        self._server = ServerThread("eventgrid-topic")

    @property
    def endpoint(self) -> str:
        return f"https://{self._host}:{self._port}/api/events"

    @property
    def events(self) -> list[PublishedEvent]:
        with self._lock:
            return list(self._events)

    def wait_for(self, count: int, timeout: float = 30.0) -> list[PublishedEvent]:
        return wait_for_records(lambda: self.events, count, timeout, "the topic")

    async def _publish(self, request: web.Request) -> web.Response:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return self._refuse(401, "Unauthorized", "the request carries no bearer token")
        try:
            principal = decode_token(token.strip())
        except InvalidToken:
            return self._refuse(401, "Unauthorized", "the access token is invalid")
        if principal.aud.rstrip("/") != AUDIENCE:
            return self._refuse(401, "Unauthorized", f"the token's audience must be {AUDIENCE}")
        if principal.oid not in self.senders:
            return self._refuse(403, "Forbidden", "the principal does not have EventGrid Data Sender on the topic")
        raw = await request.read()
        if len(raw) > MAX_REQUEST_BYTES:
            return self._refuse(413, "RequestEntityTooLarge", "the request is over 1 MB")
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            return self._refuse(400, "BadRequest", "the body is not JSON")
        items = body if isinstance(body, list) else [body]
        cloud = request.content_type.startswith("application/cloudevents")
        required = _CLOUD_EVENT_REQUIRED if cloud else _EVENT_GRID_REQUIRED
        for item in items:
            if not isinstance(item, dict) or any(name not in item for name in required):
                return self._refuse(400, "BadRequest", f"every event needs {', '.join(required)}")
            if cloud and item.get("specversion") != "1.0":
                return self._refuse(400, "BadRequest", "specversion must be 1.0")
        with self._lock:
            self._events.extend(PublishedEvent("CloudEvents" if cloud else "EventGrid", item, principal.oid)
                                for item in items)
        return web.Response(status=200)

    def _refuse(self, status: int, code: str, message: str) -> web.Response:
        with self._lock:
            self.refused.append(status)
        return web.json_response({"error": {"code": code, "message": message}}, status=status)

    def start(self) -> EventGridTopicEmulator:
        if self._server.running:
            return self
        app = web.Application(client_max_size=2 * MAX_REQUEST_BYTES)
        app.router.add_post("/api/events", self._publish)
        self._port = self._server.listen(app, self._host, self._port,
                                         ssl_context=self._ca.server_ssl_context(self._host))
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> EventGridTopicEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""A webhook sink that records what it is sent: the alert receiver of the sandbox, for tests and the demo.

POST /<any path> records the request (path, headers, JSON or text body, arrival time) and answers 200
(or the status set with ``respond_with`` to exercise a notifier's retries). GET /_records returns the
records as JSON; DELETE /_records clears them. It binds 127.0.0.1 on a free port and runs its own
event loop on a background thread, so synchronous tests can use it directly.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from emulators.background import ServerThread, wait_for_records


@dataclass(frozen=True, slots=True)
class SinkRecord:
    path: str
    headers: dict[str, str]
    body: Any
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "headers": self.headers, "body": self.body,
                "received_at": self.received_at.isoformat()}


class WebhookSink:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._port = port
        self._records: list[SinkRecord] = []
        self._lock = threading.Lock()
        self._status = 200
        self._server = ServerThread("webhook-sink")

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._port}"

    def respond_with(self, status: int) -> None:
        self._status = status

    @property
    def records(self) -> list[SinkRecord]:
        with self._lock:
            return list(self._records)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    def wait_for(self, count: int, timeout: float = 30.0) -> list[SinkRecord]:
        return wait_for_records(lambda: self.records, count, timeout, "the sink")

    async def _receive(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", errors="replace")
        record = SinkRecord(path=request.path, headers=dict(request.headers), body=body)
        with self._lock:
            self._records.append(record)
        return web.Response(status=self._status)

    async def _list(self, request: web.Request) -> web.Response:
        return web.json_response([record.to_json() for record in self.records])

    async def _clear(self, request: web.Request) -> web.Response:
        self.clear()
        return web.Response(status=204)

    def start(self) -> WebhookSink:
        if self._server.running:
            return self
        app = web.Application()
        app.router.add_get("/_records", self._list)
        app.router.add_delete("/_records", self._clear)
        app.router.add_post("/{path:.*}", self._receive)
        self._port = self._server.listen(app, self._host, self._port)
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> WebhookSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

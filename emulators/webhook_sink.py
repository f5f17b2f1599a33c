"""A webhook sink that records what it is sent: the alert receiver of the sandbox, for tests and the demo.

POST /<any path> records the request (path, headers, JSON or text body, arrival time) and answers 200
(or the status set with ``respond_with`` to exercise a notifier's retries). GET /_records returns the
records as JSON; DELETE /_records clears them. It binds 127.0.0.1 on a free port and runs its own
event loop on a background thread, so synchronous tests can use it directly.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web


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
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

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
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            records = self.records
            if len(records) >= count:
                return records
            time.sleep(0.05)
        raise TimeoutError(f"the sink received {len(self.records)} of {count} expected requests")

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
        ready = threading.Event()
        failure: list[BaseException] = []

        async def serve() -> None:
            app = web.Application()
            app.router.add_get("/_records", self._list)
            app.router.add_delete("/_records", self._clear)
            app.router.add_post("/{path:.*}", self._receive)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self._host, self._port)
            await site.start()
            server = site._server  # aiohttp exposes the bound port only here
            if server is not None and server.sockets:  # type: ignore[attr-defined]
                self._port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            try:
                self._loop.run_until_complete(serve())
            except BaseException as err:  # surfaced to the caller of start()
                failure.append(err)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="webhook-sink", daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        loop, runner = self._loop, self._runner
        if loop is None:
            return
        if runner is not None:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None

    def __enter__(self) -> WebhookSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""A local Azure Functions host for function_app.py (Azure Functions Core Tools cannot be installed here).

It does what the real host does for the triggers this app uses, with the host's semantics:

* loads ``function_app.py`` from the app directory and indexes it with azure.functions
  (``app.get_functions()``), after putting local.settings.json ``Values`` into the environment;
* resolves ``%SETTING%`` references in binding properties from those settings;
* HTTP triggers on ``/api/<route>``, with function / admin authorization levels checked against keys
  (``?code=`` or ``x-functions-key``) that it generates and writes to a keys file;
* Event Grid triggers on ``/runtime/webhooks/eventgrid?functionName=<name>&code=<eventgrid_extension key>``:
  answers the SubscriptionValidation handshake, then invokes the function once per event of a
  delivery (200 when all succeeded; 500 otherwise, so Event Grid retries);
* timer triggers fired on their NCRONTAB schedules;
* queue triggers polling Azurite: base64 message encoding, batchSize and newBatchThreshold, visibilityTimeout between
  attempts, maxDequeueCount (host.json, default 5) and then ``<queue>-poison``; queue output bindings;
  a message is held under a lease renewed while its invocation runs (the real host takes messages for
  10 minutes and renews them; here the lease is QUEUE_LEASE_SECONDS, so a crashed host's messages come
  back within seconds);
* host keys kept across restarts (the real host keeps them in its storage): a restarted host answers
  the same webhook URLs;
* ``POST /admin/functions/<name>`` (master key) runs a non-HTTP function now, as the real host does.

Performance work: with ``FUNCTIONS_HOST_PROFILE=<file>`` in its environment the host runs every invocation
under cProfile and writes the summed statistics to the file when it stops (SIGTERM); read them with
``python -m pstats <file>``. Times are wall times on the functions' threads (waits for the GIL included);
threads an invocation starts itself are not profiled.

Run: ``python -m emulators.functions_host --app-dir . --settings local.settings.json --port 7071``.
Tests use LocalFunctionsHost, which runs it as a child process like the real host's worker.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import cProfile
import importlib
import json
import logging
import os
import pstats
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from emulators.files import write_file
from emulators.processes import ProcessRecord

log = logging.getLogger("emulators.functions_host")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RECORD_NAME = "functions"  # its name in a sandbox's process record
_SETTING_REFERENCE = re.compile(r"%([A-Za-z0-9_]+)%")
_TIMESPAN = re.compile(r"^(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2})(?:\.(\d+))?$")
#: How long a received queue message stays invisible; renewed every half of it while its invocation runs.
QUEUE_LEASE_SECONDS = 6
KEY_NAMES = ("master", "function", "eventgrid_extension")
#: When set (in the host's environment), a file the host writes the functions' cProfile statistics to, summed
#: over every invocation, as it stops: where an invocation's time goes (performance work on the handlers).
PROFILE_VARIABLE = "FUNCTIONS_HOST_PROFILE"


def parse_timespan(text: str) -> timedelta:
    """host.json timespans: [d.]hh:mm:ss[.fff]."""
    match = _TIMESPAN.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a timespan")
    days, hours, minutes, seconds, fraction = match.groups()
    return timedelta(
        days=int(days or 0), hours=int(hours), minutes=int(minutes), seconds=int(seconds),
        microseconds=int((fraction or "0").ljust(6, "0")[:6]),
    )


def resolve_settings(value: str, environ: Mapping[str, str]) -> str:
    """Replace every %NAME% with the app setting NAME; a missing setting is an indexing error, as in the host."""

    def lookup(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise LookupError(f"binding expression %{name}% refers to an app setting that is not defined")
        return environ[name]

    return _SETTING_REFERENCE.sub(lookup, value)


class _Out:
    """An output binding value holder (azure.functions.Out)."""

    def __init__(self) -> None:
        self._value: Any = None

    def set(self, value: Any) -> None:
        self._value = value

    def get(self) -> Any:
        return self._value


class _Function:
    def __init__(self, indexed: Any, environ: Mapping[str, str]) -> None:
        self.name: str = indexed.get_function_name()
        self.user_function: Callable[..., Any] = indexed.get_user_function()
        self.trigger: dict[str, Any] = {}
        self.outputs: list[dict[str, Any]] = []
        for binding in indexed.get_bindings():
            spec = {
                key: resolve_settings(value, environ) if isinstance(value, str) else value
                for key, value in binding.get_dict_repr().items()
            }
            spec["direction"] = str(getattr(spec["direction"], "name", spec["direction"])).upper()
            if spec["type"].endswith("Trigger"):
                self.trigger = spec
            elif spec["direction"] == "OUT" and spec["name"] != "$return":
                self.outputs.append(spec)

    @property
    def trigger_type(self) -> str:
        return str(self.trigger.get("type", ""))


class FunctionsHost:
    """The host proper; runs in the process that loaded the app."""

    def __init__(self, app_dir: Path, environ: Mapping[str, str], *, keys: dict[str, str],
                 max_polling_interval: timedelta | None = None) -> None:
        self.app_dir = app_dir
        self.environ = environ
        self.keys = keys
        host_json = json.loads((app_dir / "host.json").read_text(encoding="utf-8"))
        queues = host_json.get("extensions", {}).get("queues", {})
        self.max_dequeue_count = int(queues.get("maxDequeueCount", 5))
        self.visibility_timeout = parse_timespan(queues.get("visibilityTimeout", "00:00:00"))
        self.batch_size = int(queues.get("batchSize", 16))
        # The real host fetches the next batch as soon as the messages in flight drop to this many, not when the
        # whole batch is done: one slow message does not hold the queue up (no head-of-line blocking).
        self.new_batch_threshold = int(queues.get("newBatchThreshold", self.batch_size // 2))
        self.message_encoding = str(queues.get("messageEncoding", "base64")).lower()
        self.max_polling_interval = max_polling_interval or parse_timespan(
            queues.get("maxPollingInterval", "00:01:00"))
        self.executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="function")
        # The host's own storage I/O (queue polling, leases, outputs) runs beside the functions' threads, as
        # the real host's runs in the host process: busy functions never starve a lease renewal or a poll.
        self.io = ThreadPoolExecutor(max_workers=4, thread_name_prefix="host-io")
        sys.path.insert(0, str(app_dir))
        module = importlib.import_module("function_app")
        self.functions = {function.name: function for function in
                          (_Function(indexed, environ) for indexed in module.app.get_functions())}
        self._tasks: list[asyncio.Task[None]] = []
        self.invocations: dict[str, int] = dict.fromkeys(self.functions, 0)
        self.profile = _InvocationProfile(Path(environ[PROFILE_VARIABLE])) if environ.get(PROFILE_VARIABLE) else None

    # -- invocation -------------------------------------------------------------------------------

    async def invoke(self, function: _Function, trigger_value: Any) -> tuple[Any, dict[str, _Out]]:
        outputs = {spec["name"]: _Out() for spec in function.outputs}
        arguments = {function.trigger["name"]: trigger_value, **outputs}
        loop = asyncio.get_running_loop()
        self.invocations[function.name] += 1
        started = time.perf_counter()
        try:
            call = (lambda: function.user_function(**arguments)) if self.profile is None else \
                (lambda: self.profile.run(function.user_function, arguments))  # type: ignore[union-attr]
            result = await loop.run_in_executor(self.executor, call)
        except Exception:
            log.exception("Executed 'Functions.%s' (Failed, %.0f ms)", function.name,
                          (time.perf_counter() - started) * 1000)
            raise
        log.info("Executed 'Functions.%s' (Succeeded, %.0f ms)", function.name, (time.perf_counter() - started) * 1000)
        return result, outputs

    # -- HTTP -------------------------------------------------------------------------------------

    def web_app(self) -> Any:
        from aiohttp import web

        app = web.Application(client_max_size=100 * 1024 * 1024)
        app.router.add_get("/admin/host/ping", self._ping)
        app.router.add_get("/admin/host/status", self._status)
        app.router.add_post("/admin/functions/{name}", self._admin_invoke)
        app.router.add_route("*", "/runtime/webhooks/eventgrid", self._eventgrid)
        app.router.add_route("*", "/api/{route:.*}", self._http_trigger)
        return app

    def _authorized(self, request: Any, level: str) -> bool:
        supplied = request.headers.get("x-functions-key") or request.query.get("code") or ""
        level = level.lower()
        if level == "anonymous":
            return True
        allowed = [self.keys["master"]]
        if level == "function":
            allowed += [self.keys["function"]]
        return any(secrets.compare_digest(supplied, key) for key in allowed)

    async def _ping(self, request: Any) -> Any:
        from aiohttp import web

        return web.Response(status=200)  # anonymous, as the real host's: says it is up, nothing more

    async def _status(self, request: Any) -> Any:
        from aiohttp import web

        if not self._authorized(request, "admin"):  # admin routes need the master key, as on Azure
            return web.Response(status=401)
        return web.json_response({"state": "Running", "functions": sorted(self.functions),
                                  "invocations": self.invocations})

    async def _http_trigger(self, request: Any) -> Any:
        import azure.functions as func
        from aiohttp import web

        route = request.match_info["route"]
        for function in self.functions.values():
            if function.trigger_type != "httpTrigger":
                continue
            route_params = _match_route(str(function.trigger.get("route") or function.name), route)
            if route_params is None:
                continue
            methods = {str(getattr(method, "value", method)).upper()
                       for method in function.trigger.get("methods") or []}
            if methods and request.method.upper() not in methods:
                return web.Response(status=405)
            level = str(getattr(function.trigger.get("authLevel"), "value", function.trigger.get("authLevel")))
            if not self._authorized(request, level):
                return web.Response(status=401)
            body = await request.read()
            http_request = func.HttpRequest(
                method=request.method, url=str(request.url), headers=dict(request.headers),
                params=dict(request.query), route_params=route_params, body=body,
            )
            try:
                response, _ = await self.invoke(function, http_request)
            except Exception:
                return web.Response(status=500)
            return web.Response(
                body=response.get_body(), status=response.status_code,
                headers={key: value for key, value in response.headers.items() if key.lower() != "content-length"},
            )
        return web.Response(status=404)

    async def _eventgrid(self, request: Any) -> Any:
        from aiohttp import web

        function = self.functions.get(request.query.get("functionName", ""))
        if function is None or function.trigger_type != "eventGridTrigger":
            return web.Response(status=404, text="no Event Grid function of that name")
        supplied = request.query.get("code", "")
        accepted = (self.keys["eventgrid_extension"], self.keys["master"])
        if not any(secrets.compare_digest(supplied, key) for key in accepted):
            return web.Response(status=401)
        if request.method == "OPTIONS":  # CloudEvents abuse protection
            origin = request.headers.get("WebHook-Request-Origin", "")
            return web.Response(status=200, headers={"WebHook-Allowed-Origin": origin} if origin else {})
        if request.method != "POST":
            return web.Response(status=405)
        body = await request.read()
        if len(body) > MAX_EVENTGRID_DELIVERY_BYTES:
            return web.Response(status=413, text="an Event Grid delivery is at most 1 MB")
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
            return web.Response(status=400, text="body is not JSON")
        events = payload if isinstance(payload, list) else [payload]
        if not events or not all(isinstance(item, dict) for item in events):
            # The extension refuses a delivery it cannot bind (400: Event Grid dead-letters it at once)
            # instead of failing it (5xx: Event Grid would retry it for a day).
            return web.Response(status=400, text="a delivery is one event object or an array of them")
        kind = request.headers.get("aeg-event-type", "")
        if kind == "SubscriptionValidation":
            first = events[0] if events and isinstance(events[0], dict) else {}
            code = (first.get("data") or {}).get("validationCode") if isinstance(first.get("data"), dict) else None
            if not code:
                return web.Response(status=400, text="no validationCode")
            return web.json_response({"validationResponse": code})
        failed = 0
        for item in events:
            try:
                await self.invoke(function, _event_grid_event(item))
            except Exception:
                failed += 1
        return web.Response(status=500 if failed else 200)

    async def _admin_invoke(self, request: Any) -> Any:
        from aiohttp import web

        if not self._authorized(request, "admin"):
            return web.Response(status=401)
        function = self.functions.get(request.match_info["name"])
        if function is None:
            return web.Response(status=404)
        body = await request.json() if request.can_read_body else {}
        text = str(body.get("input", ""))
        value: Any
        if function.trigger_type == "timerTrigger":
            from azure.functions.timer import TimerRequest

            value = TimerRequest(past_due=False)
        elif function.trigger_type == "queueTrigger":
            value = _queue_message(id="admin", body=text.encode(), dequeue_count=1)
        elif function.trigger_type == "eventGridTrigger":
            value = _event_grid_event(json.loads(text))
        else:
            return web.Response(status=400, text="only non-HTTP functions can be run this way")
        try:
            _, outputs = await self.invoke(function, value)
        except Exception:
            return web.Response(status=500)
        await self._send_outputs(function, outputs)
        return web.Response(status=202)

    # -- timers -----------------------------------------------------------------------------------

    async def _run_timer(self, function: _Function) -> None:
        from azure.functions.timer import TimerRequest

        from controller import ncrontab

        schedule = ncrontab.parse(str(function.trigger["schedule"]))
        if function.trigger.get("runOnStartup"):
            await self._invoke_quietly(function, TimerRequest(past_due=False))
        while True:
            now = datetime.now(UTC)
            due = schedule.next_after(now)
            await asyncio.sleep((due - now).total_seconds())
            late = datetime.now(UTC) - due > timedelta(seconds=30)
            await self._invoke_quietly(function, TimerRequest(past_due=late))

    async def _invoke_quietly(self, function: _Function, value: Any) -> None:
        with contextlib.suppress(Exception):  # the failure was logged; timers keep their schedule
            await self.invoke(function, value)

    # -- queues -----------------------------------------------------------------------------------

    def _queue(self, connection_setting: str, queue_name: str) -> Any:
        from azure.storage.queue import QueueClient

        connection = self.environ.get(connection_setting, "")
        if not connection:
            raise LookupError(f"queue connection {connection_setting} is not set")
        client = QueueClient.from_connection_string(connection, queue_name)
        with contextlib.suppress(Exception):  # exists already
            client.create_queue()
        return client

    def _encode(self, text: str) -> str:
        if self.message_encoding == "base64":
            return base64.b64encode(text.encode("utf-8")).decode("ascii")
        return text

    def _decode(self, content: str) -> bytes:
        if self.message_encoding == "base64":
            return base64.b64decode(content, validate=True)
        return content.encode("utf-8")

    async def _run_queue(self, function: _Function) -> None:
        loop = asyncio.get_running_loop()
        queue_name = str(function.trigger["queueName"])
        connection = str(function.trigger.get("connection") or "AzureWebJobsStorage")
        queue = await loop.run_in_executor(self.io, self._queue, connection, queue_name)
        poison = await loop.run_in_executor(self.io, self._queue, connection, f"{queue_name}-poison")
        idle = timedelta(milliseconds=100)
        in_flight: set[asyncio.Task[None]] = set()

        def settled(task: asyncio.Task[None]) -> None:
            in_flight.discard(task)
            if not task.cancelled() and task.exception() is not None:  # left as it was: visible again later
                log.warning("settling a message of %s failed (%s)", queue_name, type(task.exception()).__name__)

        while True:
            if len(in_flight) > self.new_batch_threshold:
                await asyncio.wait(set(in_flight), return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                messages = await loop.run_in_executor(self.io, lambda: list(queue.receive_messages(
                    messages_per_page=self.batch_size, max_messages=self.batch_size,
                    visibility_timeout=QUEUE_LEASE_SECONDS)))
            except Exception as err:  # Storage failed past the SDK's retries: the host keeps polling, as Azure's does
                log.warning("polling queue %s failed (%s): polling again", queue_name, type(err).__name__)
                messages = []
            if not messages:
                await asyncio.sleep(idle.total_seconds())
                idle = min(idle * 2, self.max_polling_interval)
                continue
            idle = timedelta(milliseconds=100)
            for message in messages:
                task = asyncio.create_task(self._process_message(function, queue, poison, message))
                in_flight.add(task)
                task.add_done_callback(settled)

    async def _process_message(self, function: _Function, queue: Any, poison: Any, message: Any) -> None:
        loop = asyncio.get_running_loop()
        lease = _MessageLease(queue, message, self.io)
        renewal = asyncio.create_task(lease.keep())
        try:
            await self._handle_message(function, queue, poison, message, lease)
        finally:
            renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewal
            await loop.run_in_executor(self.io, lease.settle)

    async def _handle_message(self, function: _Function, queue: Any, poison: Any, message: Any,
                              lease: _MessageLease) -> None:
        loop = asyncio.get_running_loop()
        if message.dequeue_count > 1:  # failed, or taken by a host that died before settling it
            log.info("message %s delivered again (attempt %d)", message.id, message.dequeue_count)
        try:
            body = self._decode(message.content)
        except ValueError:
            body = None
        if body is not None:
            value = _queue_message(
                id=message.id, body=body, dequeue_count=message.dequeue_count,
                expiration_time=message.expires_on, insertion_time=message.inserted_on,
                time_next_visible=message.next_visible_on, pop_receipt=message.pop_receipt,
            )
            try:
                _, outputs = await self.invoke(function, value)
            except Exception:
                log.info("message %s failed on attempt %d", message.id, message.dequeue_count)
            else:
                await self._send_outputs(function, outputs)
                lease.finish(delete=True)
                return
        if message.dequeue_count >= self.max_dequeue_count or body is None:
            log.warning("Message %s has reached MaxDequeueCount of %d: moving it to %s",
                        message.id, self.max_dequeue_count, poison.queue_name)
            await loop.run_in_executor(self.io, lambda: poison.send_message(message.content))
            lease.finish(delete=True)
        else:
            lease.finish(delete=False, visibility=int(self.visibility_timeout.total_seconds()))

    async def _send_outputs(self, function: _Function, outputs: dict[str, _Out]) -> None:
        loop = asyncio.get_running_loop()
        for spec in function.outputs:
            value = outputs[spec["name"]].get()
            if value is None or spec["type"] != "queue":
                continue
            values = value if isinstance(value, list) else [value]
            connection = str(spec.get("connection") or "AzureWebJobsStorage")
            target = await loop.run_in_executor(self.io, self._queue, connection, str(spec["queueName"]))
            for item in values:
                encoded = self._encode(item if isinstance(item, str) else json.dumps(item))
                await loop.run_in_executor(self.io, target.send_message, encoded)

    # -- lifecycle --------------------------------------------------------------------------------

    def start_background(self) -> None:
        for function in self.functions.values():
            if function.trigger_type == "timerTrigger":
                self._tasks.append(asyncio.create_task(self._run_timer(function)))
            elif function.trigger_type == "queueTrigger":
                self._tasks.append(asyncio.create_task(self._run_queue(function)))


class _InvocationProfile:
    """cProfile over the functions' threads: each invocation runs under a profiler of its own (a profiler
    sees one thread), whose statistics are added up and written to ``path`` by ``dump``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stats: pstats.Stats | None = None

    def run(self, function: Callable[..., Any], arguments: dict[str, Any]) -> Any:
        profiler = cProfile.Profile()
        try:
            return profiler.runcall(function, **arguments)
        finally:
            with self._lock:
                if self._stats is None:
                    self._stats = pstats.Stats(profiler)
                else:
                    self._stats.add(profiler)

    def dump(self) -> None:
        with self._lock:
            if self._stats is not None:
                self._stats.dump_stats(str(self.path))


class _MessageLease:
    """A received message held invisible while its invocation runs, then deleted or released.

    Renewals and the final delete or release use the newest pop receipt under one lock, so a renewal
    never races the settlement."""

    def __init__(self, queue: Any, message: Any, executor: ThreadPoolExecutor) -> None:
        self._queue, self._executor = queue, executor
        self._id, self._receipt = message.id, message.pop_receipt
        self._lock = threading.Lock()
        self._settled = False
        self._delete = False
        self._visibility: int | None = None

    async def keep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(QUEUE_LEASE_SECONDS / 2)
            await loop.run_in_executor(self._executor, self._renew)

    def _renew(self) -> None:
        with self._lock:
            if self._settled:
                return
            with contextlib.suppress(Exception):  # lost (e.g. Azurite restarted): the message comes back
                renewed = self._queue.update_message(self._id, self._receipt, visibility_timeout=QUEUE_LEASE_SECONDS)
                self._receipt = renewed.pop_receipt

    def finish(self, *, delete: bool, visibility: int | None = None) -> None:
        self._delete, self._visibility = delete, visibility

    def settle(self) -> None:
        """Delete the message (done, or moved to poison) or make it visible again after ``visibility``."""
        with self._lock:
            self._settled = True
            if self._delete:
                self._queue.delete_message(self._id, self._receipt)
            elif self._visibility is not None:
                self._queue.update_message(self._id, self._receipt, visibility_timeout=self._visibility)


def _match_route(template: str, path: str) -> dict[str, str] | None:
    template_parts = template.strip("/").split("/")
    path_parts = path.strip("/").split("/")
    if len(template_parts) != len(path_parts):
        return None
    params: dict[str, str] = {}
    for expected, actual in zip(template_parts, path_parts, strict=True):
        if expected.startswith("{") and expected.endswith("}"):
            params[expected[1:-1].split(":")[0].rstrip("?")] = actual
        elif expected.lower() != actual.lower():
            return None
    return params


#: Event Grid delivers at most 1 MB per request (an event or a batch).
MAX_EVENTGRID_DELIVERY_BYTES = 1024 * 1024


def _queue_message(**fields: Any) -> Any:
    from azure.functions.queue import QueueMessage

    return QueueMessage(**fields)


def _event_grid_event(item: Any) -> Any:
    """Build the trigger argument from an Event Grid or CloudEvents 1.0 event, as the extension does."""
    import azure.functions as func

    if not isinstance(item, dict):
        raise TypeError("an Event Grid event must be a JSON object")
    cloud = "specversion" in item
    time_text = item.get("time" if cloud else "eventTime")
    return func.EventGridEvent(
        id=str(item.get("id", "")),
        data=item.get("data"),  # type: ignore[arg-type]
        topic=str(item.get("source" if cloud else "topic", "")),
        subject=str(item.get("subject", "")),
        event_type=str(item.get("type" if cloud else "eventType", "")),
        event_time=_parse_time(time_text) if isinstance(time_text, str) else None,
        data_version=str(item.get("dataversion" if cloud else "dataVersion", "")),
    )


def _parse_time(text: str) -> datetime | None:
    cleaned = re.sub(r"(\.\d{6})\d+", r"\1", text.strip()).replace("Z", "+00:00")
    try:
        return datetime.fromisoformat(cleaned)
    except ValueError:
        return None


def host_keys(path: Path | None) -> dict[str, str]:
    """The keys file's keys when it holds them (a restart, or keys the sandbox made before the host's first
    start), else new ones written to it (0600)."""
    if path is not None and path.exists():
        with contextlib.suppress(ValueError, OSError):
            kept = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(kept, dict) and all(isinstance(kept.get(name), str) and kept[name] for name in KEY_NAMES):
                return {name: kept[name] for name in KEY_NAMES}
    keys = {name: secrets.token_urlsafe(32) for name in KEY_NAMES}
    if path is not None:
        write_file(path, json.dumps(keys))
    return keys


def _serve(args: argparse.Namespace) -> None:
    from aiohttp import web

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # As host.json's "default": "Warning" does for the real host: the SDKs log every request at INFO.
    logging.getLogger("azure").setLevel(logging.WARNING)
    settings = json.loads(Path(args.settings).read_text(encoding="utf-8")) if args.settings else {}
    os.environ.update({key: str(value) for key, value in settings.get("Values", {}).items()})
    keys = host_keys(Path(args.keys_file) if args.keys_file else None)
    polling = timedelta(seconds=args.max_polling_seconds) if args.max_polling_seconds else None
    host = FunctionsHost(Path(args.app_dir).resolve(), os.environ, keys=keys, max_polling_interval=polling)

    # Port 0: the kernel picks a free port as the socket binds (no window in which another process could take a
    # port chosen beforehand); the parent reads it from the port file.
    listener = socket.create_server(("127.0.0.1", args.port))
    port = int(listener.getsockname()[1])
    if args.port_file:
        Path(args.port_file).write_text(str(port), encoding="utf-8")

    async def main() -> None:
        runner = web.AppRunner(host.web_app(), access_log=None)
        await runner.setup()
        site = web.SockSite(runner, listener)
        await site.start()
        host.start_background()
        print(f"Functions host listening on http://127.0.0.1:{port} "
              f"({', '.join(sorted(host.functions))})", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        await runner.cleanup()
        if host.profile is not None:
            host.profile.dump()
        host.executor.shutdown(wait=False, cancel_futures=True)
        host.io.shutdown(wait=False, cancel_futures=True)

    asyncio.run(main())


class LocalFunctionsHost:
    """Runs the host as a child process (like the real host's worker) for tests and the sandbox."""

    def __init__(self, app_dir: Path, values: Mapping[str, str], *, work_dir: Path,
                 port: int = 0, max_polling_seconds: float = 1.0,
                 process_record: ProcessRecord | None = None) -> None:
        self.app_dir = app_dir
        self.values = dict(values)
        self.work_dir = work_dir
        self.port = port  # 0 until started on a port the host picked itself
        self.max_polling_seconds = max_polling_seconds
        self.process: subprocess.Popen[bytes] | None = None
        self.keys: dict[str, str] = {}
        self.process_record = process_record  # the sandbox's: the host is recorded the moment it exists

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "functions-host.log"

    def eventgrid_webhook(self, function_name: str) -> str:
        return (f"{self.url}/runtime/webhooks/eventgrid?functionName={function_name}"
                f"&code={self.keys['eventgrid_extension']}")

    def start(self, timeout: float = 60.0) -> LocalFunctionsHost:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        settings_path = self.work_dir / "local.settings.json"
        # The Values hold secrets (the identity endpoint's header, storage keys): 0600, as the real host's file.
        write_file(settings_path, json.dumps({"IsEncrypted": False, "Values": self.values}))
        keys_path = self.work_dir / "host-keys.json"  # kept: a restarted host keeps its keys
        port_path = self.work_dir / "host-port"
        port_path.unlink(missing_ok=True)
        log_file = self.log_path.open("ab")
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "emulators.functions_host", "--app-dir", str(self.app_dir),
             "--settings", str(settings_path), "--port", str(self.port), "--port-file", str(port_path),
             "--keys-file", str(keys_path),
             "--max-polling-seconds", str(self.max_polling_seconds)],
            cwd=str(PROJECT_ROOT),  # emulators/ is not installed: it is imported from the checkout
            stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log_file.close()
        if self.process_record is not None:
            self.process_record.add(RECORD_NAME, self.process.pid, own_group=True)
        deadline = time.monotonic() + timeout
        import urllib.request

        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the Functions host exited: {self.log_path.read_text(errors='replace')[-2000:]}")
            if keys_path.exists() and keys_path.stat().st_size and port_path.exists() and port_path.stat().st_size:
                try:
                    keys = json.loads(keys_path.read_text(encoding="utf-8"))
                    self.port = int(port_path.read_text(encoding="utf-8"))
                    status = urllib.request.Request(f"{self.url}/admin/host/status",  # noqa: S310 - loopback
                                                    headers={"x-functions-key": keys["master"]})
                    with urllib.request.urlopen(status, timeout=2) as response:  # noqa: S310
                        if response.status == 200:
                            self.keys = keys
                            return self
                except (OSError, ValueError, KeyError):  # not up yet, or the keys file half written
                    pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError("the Functions host did not start in time")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        if self.process_record is not None:
            self.process_record.remove(RECORD_NAME, self.process.pid)

    def __enter__(self) -> LocalFunctionsHost:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Local Azure Functions host for function_app.py")
    parser.add_argument("--app-dir", default=".")
    parser.add_argument("--settings", default="local.settings.json")
    parser.add_argument("--port", type=int, default=7071, help="0: a free port the host picks (see --port-file)")
    parser.add_argument("--port-file", help="where the host writes the port it listens on")
    parser.add_argument("--keys-file")
    parser.add_argument("--max-polling-seconds", type=float, default=0)
    _serve(parser.parse_args())

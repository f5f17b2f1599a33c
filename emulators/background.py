"""An asyncio event loop on a background thread that serves aiohttp apps, for the emulators.

The emulators are used from synchronous code (tests, the sandbox, the CLI) but serve HTTP with aiohttp,
so each owns a ServerThread::

    server = ServerThread("webhook-sink")
    port = server.listen(app, "127.0.0.1", 0)              # starts the loop, binds, serves; returns the port
    server.run(some_coroutine(), timeout=10)               # run a coroutine on the loop, from sync code
    server.stop(shutdown_coroutine())                      # runs it, cleans up every runner, stops, joins

``listen``/``serve`` bind one IPv4 socket (SO_REUSEADDR) on ``host``:``port`` (0: a free port) and serve
``app`` on it over HTTPS when ``ssl_context`` is given, plain HTTP otherwise. ``serve`` is the coroutine
for apps started from the loop itself (the ARM emulator's blob proxies); ``unserve`` stops one again.
``every`` runs a function periodically (the emulators' timers); ``stop`` cancels it.
A ServerThread can be started again after ``stop``.

``StreamServer`` is the base of the sandbox's byte relays (the egress proxy, the blob host relay): a raw
asyncio stream server on its own ServerThread whose open connections are cancelled when it stops.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, Self, TypeVar

from aiohttp import web

log = logging.getLogger(__name__)
T = TypeVar("T")


class ServerThread:
    """Owns a daemon thread running an event loop, and the aiohttp runners served on that loop.

    ``name`` names the thread and the error messages; ``timeout`` is ``run``'s default timeout in
    seconds and ``join_timeout`` how long ``stop`` waits for the thread (and for the runners' cleanup).
    """

    def __init__(self, name: str, *, timeout: float = 30.0, join_timeout: float = 10.0) -> None:
        self.name = name
        self.timeout = timeout
        self.join_timeout = join_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runners: list[web.AppRunner] = []
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- the loop -----------------------------------------------------------------------------------
    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The running loop, or None before ``start`` and after ``stop``."""
        return self._loop

    @property
    def running(self) -> bool:
        return self._loop is not None

    def in_loop_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def start(self) -> Self:
        """Start the thread and its loop (no-op when running); returns once the loop runs."""
        if self._loop is not None:
            return self
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        thread = threading.Thread(target=run, name=self.name, daemon=True)
        thread.start()
        if not ready.wait(timeout=self.join_timeout):
            loop.call_soon_threadsafe(loop.stop)
            raise RuntimeError(f"{self.name}: the event loop did not start")
        self._loop, self._thread = loop, thread
        return self

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result (``timeout`` seconds, default ``self.timeout``).

        RuntimeError when the loop is not running or when called from the loop's own thread (which would
        deadlock); the coroutine is closed unrun then.
        """
        loop = self._loop
        if loop is None:
            coro.close()
            raise RuntimeError(f"{self.name} is not running")
        if self.in_loop_thread():
            coro.close()
            raise RuntimeError(f"blocking call from {self.name}'s own event loop")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=self.timeout if timeout is None else timeout)

    # ---- servers ------------------------------------------------------------------------------------
    async def serve(
        self,
        app: web.Application,
        host: str,
        port: int = 0,
        *,
        ssl_context: ssl.SSLContext | None = None,
        **runner_options: Any,
    ) -> tuple[web.AppRunner, int]:
        """On the loop: serve ``app`` on ``host``:``port``; returns the runner and the bound port.

        ``runner_options`` go to ``web.AppRunner`` (``access_log=None`` unless given). The runner is
        cleaned up by ``unserve`` or ``stop``.
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except BaseException:
            sock.close()
            raise
        runner_options.setdefault("access_log", None)
        runner = web.AppRunner(app, **runner_options)
        try:
            await runner.setup()
        except BaseException:
            sock.close()
            raise
        self._runners.append(runner)
        await web.SockSite(runner, sock, ssl_context=ssl_context).start()
        return runner, int(sock.getsockname()[1])

    async def unserve(self, runner: web.AppRunner) -> None:
        """On the loop: stop serving a runner from ``serve``."""
        if runner in self._runners:
            self._runners.remove(runner)
        await runner.cleanup()

    def listen(
        self,
        app: web.Application,
        host: str,
        port: int = 0,
        *,
        ssl_context: ssl.SSLContext | None = None,
        **runner_options: Any,
    ) -> int:
        """``start`` the loop if need be and ``serve`` ``app`` on it; returns the bound port.

        If serving fails the loop is stopped again (when this call started it) and the error raised.
        """
        started = not self.running
        self.start()
        try:
            _, bound = self.run(self.serve(app, host, port, ssl_context=ssl_context, **runner_options))
        except BaseException:
            if started:
                self.stop()
            raise
        return bound

    # ---- periodic calls -----------------------------------------------------------------------------
    def every(
        self,
        seconds: float | Callable[[], float],
        fn: Callable[[], object],
        *,
        what: str = "periodic call",
        logger: logging.Logger | None = None,
    ) -> asyncio.Task[None]:
        """Call ``fn`` in the loop's default executor every ``seconds`` until ``cancel`` or ``stop``.

        ``seconds`` is a number or a callable read before each wait. A call that raises is logged
        ("<what> failed", on ``logger``, default this module's) and the timer goes on. Returns the task;
        from synchronous code only, like ``run``.
        """
        return self.run(self._every(seconds, fn, what, logger or log))

    async def _every(
        self, seconds: float | Callable[[], float], fn: Callable[[], object], what: str, logger: logging.Logger
    ) -> asyncio.Task[None]:
        async def tick() -> None:
            loop = asyncio.get_running_loop()
            while True:
                await asyncio.sleep(seconds() if callable(seconds) else seconds)
                try:
                    await loop.run_in_executor(None, fn)
                except Exception:
                    logger.exception("%s failed", what)

        task = asyncio.get_running_loop().create_task(tick(), name=f"{self.name}: {what}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def cancel(self, task: asyncio.Task[None]) -> None:
        """Cancel a task from ``every`` and wait until it is done (a call already running in the executor
        is not waited for). No-op when not running."""
        if self._loop is not None:
            self.run(self._cancel(task))

    async def _cancel(self, *tasks: asyncio.Task[None]) -> None:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _cancel_timers(self) -> None:
        await self._cancel(*self._tasks)  # the set is only changed on the loop

    # ---- shutdown -----------------------------------------------------------------------------------
    def stop(self, shutdown: Coroutine[Any, Any, object] | None = None) -> None:
        """Stop: cancel the ``every`` timers, run ``shutdown`` on the loop (the owner's own clean-up, e.g.
        tasks and client sessions), clean up every runner still served, stop the loop, join the thread and
        close the loop.

        The loop is stopped even when ``shutdown`` or a clean-up fails (the error is raised after).
        No-op when not running.
        """
        loop, thread = self._loop, self._thread
        if loop is None:
            if shutdown is not None:
                shutdown.close()
            return
        try:
            try:
                if self._tasks:
                    self.run(self._cancel_timers())
            finally:
                if shutdown is not None:
                    self.run(shutdown)
        finally:
            self._loop = None
            try:
                if thread is not None and thread.is_alive() and self._runners:
                    asyncio.run_coroutine_threadsafe(self._cleanup(), loop).result(timeout=self.timeout)
            finally:
                loop.call_soon_threadsafe(loop.stop)
                if thread is not None:
                    thread.join(timeout=self.join_timeout)
                self._thread = None
                if not loop.is_running():
                    loop.close()

    async def _cleanup(self) -> None:
        runners, self._runners = self._runners, []
        for runner in runners:
            await runner.cleanup()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *args: object) -> None:
        self.stop()


class StreamServer(abc.ABC):
    """An asyncio stream server (no HTTP framing: the relays pass bytes) on its own ServerThread.

    Subclasses implement ``serve_connection``; each connection runs as a task that ``stop`` cancels and
    awaits, and whose writer is closed when it ends. ``ssl_context`` makes the listener terminate TLS.
    ``port`` 0 binds a free port; ``port`` holds the bound one once started.
    """

    def __init__(self, name: str, host: str, port: int = 0, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.host = host
        self.port = port
        self._ssl_context = ssl_context
        self._server = ServerThread(name)
        self._listener: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()  # touched on the loop only

    @property
    def running(self) -> bool:
        return self._server.running

    def start(self) -> Self:
        if self._server.running:
            return self
        self._server.start()
        self._listener = self._server.run(
            asyncio.start_server(self._handle, self.host, self.port, ssl=self._ssl_context))
        self.port = int(self._listener.sockets[0].getsockname()[1])
        return self

    def stop(self) -> None:
        if not self._server.running:
            return
        listener, self._listener = self._listener, None
        if listener is not None:
            self._server.run(self._close(listener))
        self._server.stop()

    @abc.abstractmethod
    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """On the loop: serve one accepted connection (the writer is closed after it returns)."""

    async def _close(self, listener: asyncio.Server) -> None:
        listener.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None:
            return
        self._connections.add(task)
        try:
            await self.serve_connection(reader, writer)
        finally:
            self._connections.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *args: object) -> None:
        self.stop()


def wait_for_records(read: Callable[[], list[T]], count: int, timeout: float, what: str) -> list[T]:
    """Poll ``read`` until it holds at least ``count`` records (a recording endpoint's, for tests)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = read()
        if len(records) >= count:
            return records
        time.sleep(0.05)
    raise TimeoutError(f"{what} received {len(read())} of {count} expected")

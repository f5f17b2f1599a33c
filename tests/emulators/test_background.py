"""ServerThread: the event loop on a background thread that the emulators serve their aiohttp apps on."""

from __future__ import annotations

import asyncio
import socket
import threading
import urllib.request

import pytest
from aiohttp import web

from emulators.background import ServerThread

pytestmark = pytest.mark.integration


def hello_app() -> web.Application:
    async def hello(_request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", hello)
    return app


def get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
        return response.read().decode()


def test_listen_serves_on_a_free_port_and_stop_releases_it() -> None:
    server = ServerThread("test-server")
    port = server.listen(hello_app(), "127.0.0.1", 0)
    assert port > 0
    assert get(port) == "hello"
    server.stop()
    assert not server.running
    with socket.socket() as probe:  # the port is free again
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))


def test_run_returns_the_coroutines_result_from_the_loop_thread() -> None:
    with ServerThread("test-loop") as server:

        async def where() -> str:
            await asyncio.sleep(0)
            return threading.current_thread().name

        assert server.run(where()) == "test-loop"
        assert not server.in_loop_thread()


def test_run_refuses_when_stopped_and_from_the_loops_own_thread() -> None:
    server = ServerThread("test-refuse")
    with pytest.raises(RuntimeError, match="not running"):
        server.run(asyncio.sleep(0))
    with server:

        async def nested() -> None:
            server.run(asyncio.sleep(0))

        with pytest.raises(RuntimeError, match="own event loop"):
            server.run(nested())


def test_stop_runs_the_shutdown_first_and_the_thread_can_start_again() -> None:
    server = ServerThread("test-restart")
    port = server.listen(hello_app(), "127.0.0.1", 0)
    seen: list[bool] = []

    async def shutdown() -> None:
        seen.append(server.running)

    server.stop(shutdown())
    assert seen == [True]
    server.stop()  # a second stop is a no-op
    port = server.listen(hello_app(), "127.0.0.1", 0)
    assert get(port) == "hello"
    server.stop()


def test_a_failed_listen_stops_the_loop_it_started() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = ServerThread("test-taken")
        with pytest.raises(OSError):
            server.listen(hello_app(), "127.0.0.1", taken.getsockname()[1])
        assert not server.running


def test_unserve_stops_one_app_and_leaves_the_others() -> None:
    with ServerThread("test-unserve") as server:
        first, first_port = server.run(server.serve(hello_app(), "127.0.0.1"))
        _, second_port = server.run(server.serve(hello_app(), "127.0.0.1"))
        server.run(server.unserve(first))
        with pytest.raises(OSError):
            get(first_port)
        assert get(second_port) == "hello"


def test_every_calls_periodically_off_the_loop_logs_failures_and_stops_with_the_thread(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[str] = []
    done = threading.Event()

    def tick() -> None:
        calls.append(threading.current_thread().name)
        if len(calls) == 1:
            raise ValueError("first call fails")
        if len(calls) >= 3:
            done.set()

    server = ServerThread("test-every").start()
    task = server.every(0.01, tick, what="test tick")
    assert done.wait(timeout=10)
    assert "test-every" not in calls  # run in the executor, not on the loop
    assert "test tick failed" in caplog.text
    server.stop()
    assert task.cancelled()
    count = len(calls)
    threading.Event().wait(0.05)
    assert len(calls) == count


def test_the_interval_is_read_before_each_wait_and_cancel_stops_one_timer() -> None:
    intervals = iter([0.01, 0.01, 3600.0])
    calls: list[int] = []
    with ServerThread("test-cancel") as server:
        slow = server.every(3600, lambda: calls.append(0))
        fast = server.every(lambda: next(intervals), lambda: calls.append(1))
        for _ in range(1000):
            if len(calls) == 2:
                break
            threading.Event().wait(0.01)
        threading.Event().wait(0.1)
        assert calls == [1, 1]  # the third wait is an hour
        server.cancel(fast)
        assert fast.cancelled() and not slow.done()

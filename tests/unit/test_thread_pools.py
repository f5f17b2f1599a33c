"""interruptible_pool: waited for as a ThreadPoolExecutor is, except on Ctrl-C."""

from __future__ import annotations

import threading

import pytest

from controller.thread_pools import interruptible_pool

pytestmark = pytest.mark.unit


def test_ctrl_c_leaves_the_block_while_a_task_still_waits_and_cancels_the_queued_ones() -> None:
    release = threading.Event()
    started = threading.Event()

    def blocked() -> str:
        started.set()
        release.wait()
        return "done"

    with pytest.raises(KeyboardInterrupt), interruptible_pool(1, "test") as pool:
        running = pool.submit(blocked)
        queued = pool.submit(str, "never")
        started.wait()
        raise KeyboardInterrupt
    assert not running.done() and queued.cancelled()  # out of the block with the task still blocked
    release.set()
    assert running.result() == "done"


def test_otherwise_the_block_waits_for_its_tasks_as_a_thread_pool_does() -> None:
    finished: list[int] = []
    with interruptible_pool(2, "test") as pool:
        for number in range(4):
            pool.submit(finished.append, number)
    assert sorted(finished) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="boom"), interruptible_pool(2, "test") as pool:
        pool.submit(finished.append, 4)
        raise ValueError("boom")
    assert 4 in finished

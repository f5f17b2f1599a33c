"""Thread pools a Ctrl-C does not wait on.

``with ThreadPoolExecutor()`` waits, on leaving the block, for every task that runs: a worker blocked in a
request to a service that does not answer then holds an interrupted command for as long as the request
lasts. ``interruptible_pool`` waits for its tasks as usual when the block ends normally or with an error,
and on KeyboardInterrupt cancels the queued tasks and returns at once, leaving the running ones to the
process's exit (the CLI exits without joining them: controller/cli/main.py). Each task's writes are single
requests that either happened or did not, so what it leaves is consistent; a rerun resumes from checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager


@contextmanager
def interruptible_pool(workers: int, name: str) -> Iterator[ThreadPoolExecutor]:
    """A ThreadPoolExecutor of ``workers`` threads named ``name``-N, given up (not waited for) on Ctrl-C."""
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
    try:
        yield pool
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    except BaseException:
        pool.shutdown(wait=True)
        raise
    pool.shutdown(wait=True)

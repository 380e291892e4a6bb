"""A few threads of their own for checks that touch job paths, bounded in time.

A check of a path on a network mount that hangs blocks its thread in the kernel, and
no timeout can get the thread back. On asyncio's default executor (a handful of threads
on a small machine) a few such checks would fill it, and everything else that uses it
(the event store's writes) would wait behind them. Here a check runs on a daemon thread
of its own, at most PATH_THREADS of them touching paths at once, so a hung mount costs
those threads and nothing else, and never keeps the server from exiting.

The threads live on: starting a thread waits, on the event loop, until it runs (with
1,000 jobs on a busy machine that wait was a third of the loop's time spent saving
jobs). A check is queued to a path-check thread already there; one more is started only
when every thread is busy (a check still going, or stuck on a hung mount), up to
MAX_THREADS.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# Two hung checks are enough to tell a hung mount; more would only pile up threads.
PATH_THREADS = 2
_SLOTS = threading.BoundedSemaphore(PATH_THREADS)


def _deliver(future: asyncio.Future[T], value: T | None, error: BaseException | None) -> None:
    if future.done():
        return  # the caller gave up (timed out or was cancelled)
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)  # type: ignore[arg-type]


# Threads kept at most: a few beyond the slots, for checks that wait for a slot while
# others hang, so one stuck check does not hold up the next in the queue.
MAX_THREADS = 6

_work: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
_lock = threading.Lock()
_threads = 0  # started and still taking work
_free = 0  # of those, waiting for work
_queued = 0  # handed in and not yet taken


def _worker() -> None:
    """Take checks from the queue for ever (a daemon thread)."""
    global _free, _queued
    while True:
        with _lock:
            _free += 1
        job = _work.get()
        with _lock:
            _free -= 1
            _queued -= 1
        job()  # never raises: errors go to the awaiting caller


def _hand_in(job: Callable[[], None]) -> None:
    """Queue a check, starting a thread only when none is free to take it."""
    global _threads, _queued
    with _lock:
        _queued += 1
        start = _queued > _free and _threads < MAX_THREADS
        if start:
            _threads += 1
    _work.put(job)
    if start:
        threading.Thread(target=_worker, name="path-check", daemon=True).start()


async def run_path_check(check: Callable[[], T], within: float) -> T:
    """check() on a path-check thread; TimeoutError after `within` seconds.

    A check still waiting for a free slot when the caller gave up never starts.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    deadline = time.monotonic() + within

    def job() -> None:
        if future.done() or not _SLOTS.acquire(timeout=max(deadline - time.monotonic(), 0)):
            return  # the caller gave up, or every slot is stuck on a hung mount
        value: T | None = None
        error: BaseException | None = None
        try:
            if not future.done():
                value = check()
        except Exception as err:  # handed to the awaiting caller
            error = err
        finally:
            _SLOTS.release()
        # RuntimeError: the loop closed while the check ran, so nobody is waiting.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_deliver, future, value, error)

    _hand_in(job)
    return await asyncio.wait_for(future, within)

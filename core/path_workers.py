"""core.fs_threads.run_path_check on threads that live on, instead of one started per check.

Starting a thread waits, on the event loop, until the new thread runs: with 1,000 jobs
on a busy machine that wait was a third of the loop's time spent on saving jobs. Here a
check is queued to a path-check thread that is already there; one more is started only
when every thread is busy (a check still going, or stuck on a hung mount), up to
MAX_THREADS. The rules are fs_threads' and its slots are shared: at most PATH_THREADS
checks touch paths at once, a hung check keeps its slot and thread (never the server
from exiting: they are daemon threads), and a check still waiting for a slot when its
caller gave up never starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from core.fs_threads import _SLOTS, _deliver

T = TypeVar("T")

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

"""A few threads of their own for checks that touch job paths, bounded in time.

A check of a path on a network mount that hangs blocks its thread in the kernel, and
no timeout can get the thread back. On asyncio's default executor (a handful of threads
on a small machine) a few such checks would fill it, and everything else that uses it
(the event store's writes) would wait behind them. Here a check runs on a daemon thread
of its own, at most PATH_THREADS of them touching paths at once, so a hung mount costs
those threads and nothing else, and never keeps the server from exiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
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


async def run_path_check(check: Callable[[], T], within: float) -> T:
    """check() on a path-check thread; TimeoutError after `within` seconds.

    A check still waiting for a free slot when the caller gave up never starts.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def work() -> None:
        if not _SLOTS.acquire(timeout=within):
            return  # every slot is stuck on a hung mount; the caller has timed out
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

    threading.Thread(target=work, name="path-check", daemon=True).start()
    return await asyncio.wait_for(future, within)

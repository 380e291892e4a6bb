"""Sleeping until a wake-up or a time, whichever comes first, without losing a cancel."""

from __future__ import annotations

import asyncio
import contextlib


async def wait_a_while(wake: asyncio.Event, seconds: float) -> None:
    """Sleep up to `seconds`, or until `wake` is set."""
    # asyncio.timeout, not wait_for: on Python 3.11 wait_for drops a cancel that lands in
    # the step the wake does, so a stop that cancelled the wait was ignored (the
    # scheduler's stop then waited for good).
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await wake.wait()

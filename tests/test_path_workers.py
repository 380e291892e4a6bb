"""Path checks on long-lived threads: answers, errors, time limits and hung mounts."""

from __future__ import annotations

import asyncio
import threading

import pytest

from core.fs_threads import MAX_THREADS, PATH_THREADS, run_path_check


def _path_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "path-check")


async def test_checks_answer_and_fail_on_threads_that_are_kept() -> None:
    assert await run_path_check(lambda: 41 + 1, 5) == 42

    def broken() -> int:
        raise ValueError("no such mount")
    with pytest.raises(ValueError, match="no such mount"):
        await run_path_check(broken, 5)
    for _ in range(20):  # one after another: the same thread takes each
        assert (await run_path_check(threading.current_thread, 5)).name == "path-check"
    assert _path_threads() <= MAX_THREADS
    before = _path_threads()
    await asyncio.gather(*(run_path_check(lambda: None, 5) for _ in range(10)))
    assert _path_threads() <= max(before, MAX_THREADS)


async def test_hung_checks_keep_their_slots_and_a_late_check_never_starts() -> None:
    hang = threading.Event()
    started = threading.Event()
    try:
        hung = [asyncio.ensure_future(run_path_check(hang.wait, 0.3))
                for _ in range(PATH_THREADS)]
        for call in hung:  # every slot is stuck: the callers give up
            with pytest.raises(TimeoutError):
                await call
        with pytest.raises(TimeoutError):
            await run_path_check(started.set, 0.3)
    finally:
        hang.set()
    await asyncio.sleep(0.3)
    assert not started.is_set(), "a check whose caller gave up must not start later"
    assert await run_path_check(lambda: "free again", 5) == "free again"

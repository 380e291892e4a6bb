"""The bandwidth limit (`bwlimit`) as the native engines apply it."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

from engines.errors import EngineError


def bwlimit_option(options: Mapping[str, Any]) -> int | None:
    """The `bwlimit` option in KiB/s (as rsync reads it), checked; None when unset or 0."""
    raw = options.get("bwlimit")
    if raw in (None, 0, ""):
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise EngineError(f"option bwlimit must be a whole number of KiB/s, not {raw!r}")
    return int(raw)


class RateLimiter:
    """Keeps the bytes written per second under a limit, shared by every worker thread.

    Time spent not writing (a pause, a slow source) earns at most BURST seconds of
    credit: without the cap, a run paused for a minute at 1 MiB/s would write 60 MiB
    at full speed on resume.
    """

    BURST = 0.2  # seconds of bytes that may be written ahead of the steady rate

    def __init__(self, bytes_per_second: float) -> None:
        self.rate = bytes_per_second
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._total = 0

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> RateLimiter | None:
        """A limiter from the `bwlimit` option, or None without one."""
        limit = bwlimit_option(options)
        return None if limit is None else cls(limit * 1024)

    def consume(self, nbytes: int) -> None:
        """Count bytes just written and sleep as long as the limit asks."""
        with self._lock:
            now = time.monotonic()
            # Behind schedule by more than the burst (idle or paused): move the start so
            # the credit is the burst, not all the time that passed.
            earliest = now - self.BURST
            if self._start + self._total / self.rate < earliest:
                self._start = earliest - self._total / self.rate
            self._total += nbytes
            due = self._start + self._total / self.rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)

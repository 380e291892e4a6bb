"""The live tail: new application-log records and run-log lines, as they are written,
to whoever follows the live feed (the WebSocket sends them as `{"kind": "log"}`).

Lines come from any thread (logging calls, the run-log writer); they are handed to the
event loop in batches, at most MAX_LIVE_PER_SECOND a second: a flood is cut, not queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from core.live import LiveFeed
from core.logformat import app_formatter, iso_millis, level_name, parse_run_head
from core.runlog import RunLogs
from core.state import State

log = logging.getLogger(__name__)

MAX_LIVE_PER_SECOND = 200  # more than a person can read; the page and download have the rest
MAX_LIVE_PENDING = 1000
# Records that must not be broadcast: the access log (every request, the page's own
# fetches included), and loggers a WebSocket send itself may write to, which would
# feed back (send -> log -> broadcast -> send).
QUIET_LOGGERS = ("aiohttp.access", "aiohttp.websocket", "events.notifier", "core.live",
                 __name__)


class LogBroadcast:
    """Hands new log lines to the live feed on the event loop, from any thread, bounded."""

    def __init__(self, loop: asyncio.AbstractEventLoop, feed: LiveFeed, state: State) -> None:
        self._loop, self._feed, self._state = loop, feed, state
        self._pending: deque[dict[str, Any]] = deque(maxlen=MAX_LIVE_PENDING)
        self._lock = threading.Lock()
        self._scheduled = False
        self._closed = False
        self._window, self._sent_in_window = 0.0, 0
        self.dropped = 0

    @property
    def listening(self) -> bool:
        """Whether anyone could receive a line (skip formatting when nobody can)."""
        return not self._closed and self._feed.subscriber_count > 0

    def offer(self, message: dict[str, Any]) -> None:
        """Queue a message for the loop; drop it past MAX_LIVE_PER_SECOND (any thread)."""
        with self._lock:
            if self._closed:
                return
            now = time.monotonic()
            if now - self._window >= 1.0:
                self._window, self._sent_in_window = now, 0
            if self._sent_in_window >= MAX_LIVE_PER_SECOND:
                self.dropped += 1
                return
            self._sent_in_window += 1
            self._pending.append(message)
            if self._scheduled:
                return
            self._scheduled = True
        # One wake-up per batch, however many lines arrive before the loop runs it; a
        # closed loop (shutdown) has nobody left to send to.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._flush)

    def run_line(self, run_id: str, line: str) -> None:
        """A run-log line was written (RunLogs listener, on its writer thread)."""
        if not self.listening:
            return
        head = parse_run_head(line)
        self.offer({"kind": "log", "source": "run", "job_id": None, "run_id": run_id,
                    "level": head[1] if head else "INFO",
                    "time": head[0] if head else iso_millis(time.time()), "line": line})

    def close(self) -> None:
        """Stop sending; queued lines are dropped."""
        with self._lock:
            self._closed = True
            self._pending.clear()

    def _flush(self) -> None:
        with self._lock:
            items = list(self._pending)
            self._pending.clear()
            self._scheduled = False
        for message in items:
            if message["source"] == "run":
                # Looked up here, on the loop, where the state is safe to read.
                run = self._state.runs.get(message["run_id"])
                message["job_id"] = run.job_id if run is not None else None
            self._feed.publish(message)


class AppLogHandler(logging.Handler):
    """A root-logger handler that broadcasts each record as the file has it."""

    def __init__(self, broadcast: LogBroadcast) -> None:
        super().__init__()
        self.broadcast = broadcast
        self.setFormatter(app_formatter())
        self._local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        """Format the record and offer it to the broadcast (never recursively)."""
        name = record.name
        if any(name == q or name.startswith(q + ".") for q in QUIET_LOGGERS) \
                or (name == "asyncio" and record.levelno < logging.ERROR) \
                or getattr(self._local, "busy", False) or not self.broadcast.listening:
            return
        self._local.busy = True
        try:
            self.broadcast.offer({
                "kind": "log", "source": "app", "job_id": None, "run_id": None,
                "level": level_name(record.levelno), "time": iso_millis(record.created),
                "line": self.format(record)})
        except Exception:
            self.handleError(record)
        finally:
            self._local.busy = False


def install_log_broadcast(feed: LiveFeed, state: State, run_logs: RunLogs) -> Callable[[], None]:
    """Send new application-log records and run-log lines to the live feed's subscribers.

    Call it on the event loop once the state is set up; it returns the function that
    undoes it (call that on shutdown, before closing `run_logs`).
    """
    broadcast = LogBroadcast(asyncio.get_running_loop(), feed, state)
    handler = AppLogHandler(broadcast)
    root = logging.getLogger()
    root.addHandler(handler)
    run_logs.add_listener(broadcast.run_line)

    def uninstall() -> None:
        root.removeHandler(handler)
        run_logs.remove_listener(broadcast.run_line)
        broadcast.close()
        if broadcast.dropped:
            log.info("%d log line(s) were too many to show live", broadcast.dropped)

    return uninstall

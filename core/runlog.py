"""Per-run log files under logs/runs/, written by one background thread (never the loop).

The line format (core/logformat.py run_log_line) is read back by core/logread.py.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from pathlib import Path

from core.logformat import run_log_line

log = logging.getLogger(__name__)

# Called with (run_id, line without its newline) on the writer thread, after the write.
LineListener = Callable[[str, str], None]


class RunLogs:
    """Appends lines to logs/runs/<run_id>.log off the event loop."""

    def __init__(self, logs_dir: Path) -> None:
        self.dir = logs_dir / "runs"
        self._queue: queue.SimpleQueue[tuple[str, str] | None] = queue.SimpleQueue()
        self._listeners: list[LineListener] = []
        self._thread = threading.Thread(target=self._write_loop, name="run-logs", daemon=True)
        self._thread.start()

    def path(self, run_id: str) -> Path:
        """Where a run's log lives."""
        return self.dir / f"{run_id}.log"

    def write(self, run_id: str, message: str) -> None:
        """Queue one line for a run's log (returns at once)."""
        self._queue.put((run_id, run_log_line(message)))

    def add_listener(self, listener: LineListener) -> None:
        """Call `listener(run_id, line)` on the writer thread after each line is written."""
        # Copy-on-write: the writer thread iterates the old list without a lock.
        self._listeners = [*self._listeners, listener]

    def remove_listener(self, listener: LineListener) -> None:
        """Stop calling a listener added with add_listener."""
        self._listeners = [f for f in self._listeners if f is not listener]

    def close(self) -> None:
        """Write what is queued and stop the writer thread."""
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _write_loop(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        while (item := self._queue.get()) is not None:
            run_id, line = item
            try:
                with open(self.path(run_id), "a", encoding="utf-8") as fh:
                    fh.write(line)
            except OSError as err:
                log.error("cannot write the log of run %s: %s", run_id, err)
                continue
            for listener in self._listeners:
                try:
                    listener(run_id, line.rstrip("\n"))
                except Exception:  # a reader's bug must not stop the writer
                    log.exception("run log listener %r failed", listener)

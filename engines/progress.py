"""Where a run is (Progress), who hears it (Reporter), and the meter that builds honest ETAs."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol


@dataclass
class Progress:
    """Where a run is, the same for every engine; None means not known (yet)."""

    phase: str = "starting"
    counting: bool = True
    files_done: int = 0
    files_total: int | None = None
    bytes_done: int = 0
    bytes_total: int | None = None
    current_file: str = ""
    rate: float | None = None
    eta: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """Return the progress as a plain dict (JSON-ready)."""
        return asdict(self)


class Reporter(Protocol):
    """Where an engine sends what it has to say; called from the worker thread."""

    def progress(self, progress: Progress) -> None:
        """A progress update (throttled by the engine's meter)."""

    def checkpoint(self, state: Mapping[str, Any]) -> None:
        """What a crashed run needs to resume without redoing finished work."""

    def warning(self, message: str) -> None:
        """Something a person should know that did not stop the run (a file vanished)."""


class NullReporter:
    """A reporter that drops everything (for callers that do not watch)."""

    def progress(self, progress: Progress) -> None:
        """Drop a progress update."""

    def checkpoint(self, state: Mapping[str, Any]) -> None:
        """Drop a checkpoint."""

    def warning(self, message: str) -> None:
        """Drop a warning."""


class CollectingReporter:
    """Passes everything on to another reporter and keeps the warnings for the result."""

    def __init__(self, inner: Reporter) -> None:
        self.inner = inner
        self.warnings: list[str] = []

    def progress(self, progress: Progress) -> None:
        """Pass a progress update on."""
        self.inner.progress(progress)

    def checkpoint(self, state: Mapping[str, Any]) -> None:
        """Pass a checkpoint on."""
        self.inner.checkpoint(state)

    def warning(self, message: str) -> None:
        """Keep a warning and pass it on."""
        self.warnings.append(message)
        self.inner.warning(message)


class ProgressMeter:
    """Builds honest Progress: a smoothed rate, and an ETA only once totals are final."""

    # An ETA before this much time or this share of the work is more guess than estimate.
    ETA_MIN_SECONDS = 2.0
    ETA_MIN_SHARE = 0.01

    def __init__(self, reporter: Reporter, interval: float = 0.2) -> None:
        self.reporter = reporter
        self.interval = interval
        self.state = Progress()
        self._started = time.monotonic()
        self._last_emit = 0.0
        self._last_sample: tuple[float, int] = (self._started, 0)
        self._lock = threading.Lock()

    def update(self, force: bool = False, **changes: Any) -> None:
        """Change fields (or add with files/bytes deltas) and emit at most every interval."""
        with self._lock:
            for key, value in changes.items():
                setattr(self.state, key, value)
            self._maybe_emit(force)

    def add(self, files: int = 0, nbytes: int = 0, current_file: str | None = None) -> None:
        """Count finished work (thread-safe) and emit at most every interval."""
        with self._lock:
            self.state.files_done += files
            self.state.bytes_done += nbytes
            if current_file is not None:
                self.state.current_file = current_file
            self._maybe_emit(False)

    def _maybe_emit(self, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._last_emit < self.interval:
            return
        last_time, last_bytes = self._last_sample
        if now - last_time >= 0.5:
            instant = (self.state.bytes_done - last_bytes) / (now - last_time)
            # Exponential smoothing: steady enough to read, quick enough to follow.
            prev = self.state.rate
            self.state.rate = instant if prev is None else 0.7 * prev + 0.3 * instant
            self._last_sample = (now, self.state.bytes_done)
        self.state.eta = self._eta(now)
        self._last_emit = now
        self.reporter.progress(Progress(**asdict(self.state)))

    def _eta(self, now: float) -> float | None:
        s = self.state
        if s.counting or s.bytes_total is None or not s.rate or s.rate <= 0:
            return None
        if now - self._started < self.ETA_MIN_SECONDS:
            return None
        if s.bytes_total and s.bytes_done < self.ETA_MIN_SHARE * s.bytes_total:
            return None
        return max(0.0, (s.bytes_total - s.bytes_done) / s.rate)

"""The one interface every engine implements, and what it reports.

An engine runs in a worker thread (or drives a subprocess from one); it never touches
the event loop. It reports progress and checkpoints through a Reporter and obeys a
RunControl for pause, resume and cancel.
"""

from __future__ import annotations

import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from engines.errors import (
    BinaryMissing as BinaryMissing,
)
from engines.errors import (
    Cancelled as Cancelled,
)
from engines.errors import (
    DestinationInsideSource as DestinationInsideSource,
)
from engines.errors import (
    DestinationNotWritable as DestinationNotWritable,
)
from engines.errors import (
    DiskFull as DiskFull,
)
from engines.errors import (
    EngineError as EngineError,
)
from engines.errors import (
    Interrupted as Interrupted,
)
from engines.errors import (
    RestoreConflict as RestoreConflict,
)
from engines.errors import (
    SnapshotNotFound as SnapshotNotFound,
)
from engines.errors import (
    SourceMissing as SourceMissing,
)
from engines.errors import (
    SourceUnreadable as SourceUnreadable,
)
from engines.results import (
    BackupResult as BackupResult,
)
from engines.results import (
    RestoreResult as RestoreResult,
)
from engines.results import (
    Snapshot as Snapshot,
)
from engines.results import (
    VerifyResult as VerifyResult,
)
from models.retention import Retention, snapshots_to_keep

# --- what an engine is asked to do --------------------------------------------------


@dataclass(frozen=True)
class BackupSpec:
    """What to back up and where: the engine-facing part of a job."""

    sources: tuple[Path, ...]
    destination: Path
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    # The job the snapshots belong to: every snapshot records it, and listing, retention
    # and restore only ever see their own job's snapshots (issue 12, item 1). Empty for
    # callers outside a job (benchmarks), which then see every snapshot.
    job_id: str = ""

    @classmethod
    def build(cls, sources: Sequence[str | Path], destination: str | Path,
              include: Sequence[str] = (), exclude: Sequence[str] = (),
              options: Mapping[str, Any] | None = None, job_id: str = "") -> BackupSpec:
        """Make a spec from plain values (paths as strings are fine)."""
        return cls(tuple(Path(s) for s in sources), Path(destination), tuple(include),
                   tuple(exclude), dict(options or {}), job_id)

    def source_names(self) -> dict[str, Path]:
        """Map each source's top-level name in a snapshot to its path."""
        names: dict[str, Path] = {}
        for src in self.sources:
            name = src.name or "root"
            if name in names:
                raise EngineError(f"sources {names[name]} and {src} have the same name "
                                  f"{name!r}; a snapshot keeps each source under its name")
            names[name] = src
        return names

    def check_sources(self) -> None:
        """Raise a clear error unless every source exists, is readable and is absolute."""
        if not self.sources:
            raise SourceMissing("a job needs at least one source")
        for src in self.sources:
            if not src.is_absolute():
                raise SourceMissing(f"source {src} is not an absolute path")
            if not src.exists() and not src.is_symlink():
                raise SourceMissing(f"source {src} does not exist")
            # effective_ids: with the real uid unprivileged, plain access() ignores
            # capabilities, and a service reading sources with CAP_DAC_READ_SEARCH (the
            # systemd unit in deploy/) would be refused what it can in fact read.
            if not os.access(src, os.R_OK, effective_ids=True) or (
                    src.is_dir() and not os.access(src, os.X_OK, effective_ids=True)):
                raise SourceUnreadable(f"source {src} cannot be read (permission denied)")
        self.source_names()

    def check_destination(self) -> None:
        """Raise a clear error if the destination is inside a source or not writable."""
        dest = self.destination
        if not dest.is_absolute():
            raise DestinationNotWritable(f"destination {dest} is not an absolute path")
        real_dest = Path(os.path.realpath(dest))
        for src in self.sources:
            real_src = Path(os.path.realpath(src))
            if real_dest == real_src or real_src in real_dest.parents:
                raise DestinationInsideSource(f"destination {dest} is inside source {src}")
        try:
            dest.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise DestinationNotWritable(
                f"destination {dest} cannot be created: {err.strerror}") from err
        if not os.access(dest, os.W_OK | os.X_OK, effective_ids=True):
            raise DestinationNotWritable(f"destination {dest} is not writable")


# --- progress -----------------------------------------------------------------------


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


# --- pause, resume, cancel ------------------------------------------------------------


class RunControl:
    """Pause, resume and cancel flags, shared between the caller and the worker thread."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._paused = False
        self._cancelled = False
        self._interrupted = False

    def pause(self) -> None:
        """Ask the run to hold at its next safe point."""
        with self._cond:
            self._paused = True
            self._cond.notify_all()

    def resume(self) -> None:
        """Let a paused run continue."""
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def cancel(self) -> None:
        """Ask the run to stop as soon as it can and remove its partial output."""
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()

    def interrupt(self) -> None:
        """Ask the run to stop at its next safe point and keep its partial output."""
        with self._cond:
            self._interrupted = True
            self._cond.notify_all()

    @property
    def interrupted(self) -> bool:
        """Whether an interrupt (shutdown) was asked for."""
        return self._interrupted

    @property
    def paused(self) -> bool:
        """Whether a pause was asked for and not yet lifted."""
        return self._paused

    @property
    def cancelled(self) -> bool:
        """Whether cancel was asked for."""
        return self._cancelled

    def safe_point(self) -> None:
        """Called by engines between units of work: hold while paused, raise if cancelled."""
        with self._cond:
            while self._paused and not self._cancelled and not self._interrupted:
                self._cond.wait()
            if self._cancelled:
                raise Cancelled("the run was cancelled")
            if self._interrupted:
                raise Interrupted("the run was interrupted; it can resume from its checkpoint")

    def wait_for_change(self, timeout: float) -> None:
        """Sleep until pause/resume/cancel is asked for, or the timeout passes."""
        with self._cond:
            self._cond.wait(timeout)


class Engine(ABC):
    """A backup engine: back up, list, restore, verify and prune snapshots."""

    name: ClassVar[str]
    # Whether an interrupted backup continues its partial output (True) or starts over.
    resumes_partial: ClassVar[bool] = True

    def check_ready(self, spec: BackupSpec) -> None:  # noqa: B027 - optional hook
        """Raise a clear error if something the engine needs is missing (a binary)."""

    @abstractmethod
    def backup(self, spec: BackupSpec, control: RunControl, reporter: Reporter,
               resume: Mapping[str, Any] | None = None) -> BackupResult:
        """Make a new snapshot; with `resume` (a checkpoint) continue an interrupted one."""

    @abstractmethod
    def snapshots(self, spec: BackupSpec) -> list[Snapshot]:
        """List complete snapshots, oldest first."""

    @abstractmethod
    def restore(self, spec: BackupSpec, snapshot_id: str, target: Path, control: RunControl,
                reporter: Reporter, path: str | None = None,
                overwrite: bool = False) -> RestoreResult:
        """Restore a snapshot, or one path in it, into target."""

    @abstractmethod
    def verify(self, spec: BackupSpec, snapshot_id: str, control: RunControl,
               reporter: Reporter) -> VerifyResult:
        """Check a snapshot against its manifest (or the repository's own check)."""

    @abstractmethod
    def delete_snapshots(self, spec: BackupSpec, snapshot_ids: Sequence[str]) -> None:
        """Remove complete snapshots."""

    @abstractmethod
    def discard_partial(self, spec: BackupSpec, resume: Mapping[str, Any] | None = None) -> None:
        """Remove what an interrupted backup left behind."""

    def tidy(self, spec: BackupSpec) -> None:  # noqa: B027 - optional: most have nothing
        """Remove leftovers of killed attempts that cannot belong to a run still going."""

    def prune(self, spec: BackupSpec, policy: Retention) -> list[str]:
        """Remove the snapshots a retention policy does not keep; return their ids."""
        snaps = self.snapshots(spec)
        keep = snapshots_to_keep(((s.id, s.time) for s in snaps), policy)
        doomed = [s.id for s in snaps if s.id not in keep]
        if doomed:
            self.delete_snapshots(spec, doomed)
        return doomed

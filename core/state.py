"""The current state of jobs, runs and settings, folded from the log in memory.

Commands validate against it, the runner and scheduler read it, the API answers from
it. It is rebuilt by replaying the log on start and kept current by applying each
committed event, so it never disagrees with the log.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, assert_never

from events.record import StoredEvent
from events.types import (
    AnyRunEvent,
    Event,
    JobCreated,
    JobDeleted,
    JobDisabled,
    JobEnabled,
    JobUpdated,
    RestoreFinished,
    RestoreStarted,
    RunCancelled,
    RunCheckpointed,
    RunDiscarded,
    RunEvent,
    RunFailed,
    RunInterrupted,
    RunPaused,
    RunQueued,
    RunResumed,
    RunStarted,
    RunSucceeded,
    SettingsChanged,
    SnapshotPruned,
    UnknownEvent,
    VerifyFinished,
)
from models.ids import SETTINGS_STREAM
from models.runs import ACTIVE_STATES, TERMINAL_STATES
from models.settings import DEFAULT_SETTINGS

MAX_ACTIVITY = 20

# What State.apply does with each event type (tests/test_event_dispatch.py holds it to it).
HANDLED: frozenset[type[Event]] = frozenset({
    JobCreated, JobUpdated, JobEnabled, JobDisabled, JobDeleted, RunQueued, RunStarted,
    RunCheckpointed, RunPaused, RunResumed, RunSucceeded, RunFailed, RunCancelled,
    RunInterrupted, RunDiscarded, SnapshotPruned, RestoreStarted, RestoreFinished,
    VerifyFinished, SettingsChanged})
IGNORED: frozenset[type[Event]] = frozenset({UnknownEvent})


@dataclass
class RunView:
    """One run as the log tells it."""

    run_id: str
    job_id: str
    state: str
    trigger: str
    queued: str
    queued_seq: int
    started: str | None = None
    finished: str | None = None
    checkpoint: dict[str, Any] | None = None
    snapshot_id: str | None = None
    files: int = 0
    bytes: int = 0
    duration: float = 0.0
    error: str | None = None
    interrupted_reason: str | None = None
    resumes: int = 0
    warnings: int = 0  # files skipped or not kept as they were (a succeeded run's)
    warning_samples: list[str] = field(default_factory=list)
    kind: str = "backup"  # "backup", "restore", "verify" or "prune"
    params: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The run as JSON-ready values."""
        return {k: copy.deepcopy(v) for k, v in self.__dict__.items() if k != "queued_seq"}


@dataclass
class JobView:
    """One job: its spec and its run ids, newest last."""

    job_id: str
    spec: dict[str, Any]
    version: int
    created: str
    updated: str
    run_ids: list[str] = field(default_factory=list)
    # Restores, verifies and prunes, newest last, so the job page can show their outcome.
    activity: list[dict[str, Any]] = field(default_factory=list)
    # Snapshots the log says the job has (made by a run, not pruned since), oldest first.
    snapshots: list[str] = field(default_factory=list)

    @property
    def enabled(self) -> bool:
        """Whether the schedule may run this job."""
        return bool(self.spec.get("enabled", True))


RUN_FIELDS = tuple(f.name for f in fields(RunView))
JOB_FIELDS = tuple(f.name for f in fields(JobView))


class State:
    """Jobs, runs and settings folded from committed events."""

    def __init__(self) -> None:
        self.jobs: dict[str, JobView] = {}
        self.runs: dict[str, RunView] = {}
        self.settings: dict[str, Any] = copy.deepcopy(DEFAULT_SETTINGS)
        self.seq = 0
        # Runs not finished yet, kept apart so pages and the runner need not walk every
        # run ever made (tens of thousands after a few years) on each request.
        self._active: dict[str, RunView] = {}
        # The seq of the last event that changed what has finished (a run ending, a job
        # deleted): read models over finished runs are valid while it stays the same.
        self.finished_seq = 0

    def apply(self, ev: StoredEvent) -> None:
        """Fold one committed event (events at or below the applied seq are ignored)."""
        if ev.seq <= self.seq:
            return
        self.seq = ev.seq
        e = ev.event
        if ev.stream == SETTINGS_STREAM:
            if isinstance(e, SettingsChanged):
                self.settings.update(e.changes)
            return
        if isinstance(e, JobCreated):
            self.jobs[ev.stream] = JobView(ev.stream, dict(e.spec), ev.version, ev.time,
                                           ev.time)
            return
        job = self.jobs.get(ev.stream)
        if job is None:
            return
        job.version = ev.version
        # Run events first: they are nearly all of a long log.
        match e:
            case RunEvent():
                self._apply_run(ev, e, job)
                return
            case JobUpdated(spec=spec):
                job.spec, job.updated = dict(spec), ev.time
            case JobEnabled() | JobDisabled():
                job.spec = {**job.spec, "enabled": isinstance(e, JobEnabled)}
                job.updated = ev.time
            case JobDeleted():
                del self.jobs[ev.stream]
                self.finished_seq = ev.seq
            case SnapshotPruned(snapshot_id=snapshot_id):
                if snapshot_id in job.snapshots:
                    job.snapshots.remove(snapshot_id)
            case RestoreStarted() | RestoreFinished() | VerifyFinished():
                pass  # activity only, below
            case JobCreated() | SettingsChanged() | UnknownEvent():
                pass  # created above; settings live on their own stream; unknown: skipped
            case _:
                assert_never(e)
        if e.activity:
            job.activity.append({"seq": ev.seq, "time": ev.time, "type": ev.type,
                                 **ev.payload})
            del job.activity[:-MAX_ACTIVITY]

    def apply_all(self, events: Iterable[StoredEvent]) -> None:
        """Fold committed events in order."""
        for ev in events:
            self.apply(ev)

    def _apply_run(self, ev: StoredEvent, e: AnyRunEvent, job: JobView) -> None:
        if isinstance(e, RunQueued):
            queued = RunView(e.run_id, ev.stream, "queued", e.trigger, ev.time, ev.seq,
                             kind=e.kind, params=dict(e.params or {}))
            self.runs[e.run_id] = self._active[e.run_id] = queued
            job.run_ids.append(e.run_id)
            return
        run = self.runs.get(e.run_id)
        if run is None:
            return
        if isinstance(e, RunCheckpointed):
            run.checkpoint = dict(e.checkpoint)
            return
        previous = run.state
        run.state = e.next_run_state(previous)
        match e:
            case RunStarted():
                run.started = run.started or ev.time
            case RunResumed():
                if previous == "interrupted":
                    run.resumes += 1
                    run.queued_seq = ev.seq  # back in the queue, behind what is waiting
            case RunInterrupted(reason=reason):
                run.interrupted_reason = reason
            case RunSucceeded():
                run.snapshot_id = e.snapshot_id
                # Only a backup makes a snapshot; a restore or verify names the one it read.
                if run.snapshot_id and run.kind == "backup":
                    job.snapshots.append(run.snapshot_id)
                run.files, run.bytes = int(e.files), int(e.bytes)
                run.duration = float(e.duration)
                run.warnings = int(e.warnings)
                run.warning_samples = [str(w) for w in e.warning_samples]
            case RunFailed(error=error):
                run.error = error
            case RunPaused() | RunCancelled() | RunDiscarded():
                pass  # the state is all they change
            case _:
                assert_never(e)
        if run.state in TERMINAL_STATES:
            run.finished = ev.time
            self.finished_seq = ev.seq
        if run.state in ACTIVE_STATES:
            self._active[run.run_id] = run
        else:
            self._active.pop(run.run_id, None)

    # --- as plain data (core/snapshot.py keeps it in a file) ---------------------------

    def run_rows(self) -> list[tuple[Any, ...]]:
        """Every run as a tuple of RUN_FIELDS values, taken on the loop in one go.

        The dicts and lists a run holds are replaced by apply, never changed in place,
        so the tuples stay as they are while another thread encodes them.
        """
        return [tuple(run.__dict__.values()) for run in self.runs.values()]

    def job_rows(self) -> list[tuple[Any, ...]]:
        """Every job as a tuple of JOB_FIELDS values (its lists copied: apply appends)."""
        return [(j.job_id, j.spec, j.version, j.created, j.updated, list(j.run_ids),
                 list(j.activity), list(j.snapshots)) for j in self.jobs.values()]

    def add_rows(self, jobs: Iterable[Sequence[Any]], runs: Iterable[Sequence[Any]]) -> None:
        """Put back jobs and runs from rows as run_rows and job_rows give them."""
        for row in jobs:
            self.jobs[row[0]] = JobView(*row)
        active = self._active
        for row in runs:
            run = self.runs[row[0]] = RunView(*row)
            if run.state in ACTIVE_STATES:  # active_runs sorts them by queued_seq
                active[run.run_id] = run

    def add_run_columns(self, columns: Sequence[Iterable[Any]]) -> None:
        """Put back runs given as one sequence of values per RUN_FIELDS field."""
        runs, active = self.runs, self._active
        for run in map(RunView, *columns):  # no row tuple per run
            runs[run.run_id] = run
            if run.state in ACTIVE_STATES:
                active[run.run_id] = run

    def take_over(self, other: State) -> None:
        """Become `other` (a state loaded off the loop): every holder of this object sees it."""
        self.__dict__.update(other.__dict__)

    def active_runs(self, job_id: str | None = None) -> list[RunView]:
        """Runs not finished yet (queued, running, paused, interrupted), in queue order."""
        runs = [r for r in self._active.values() if job_id is None or r.job_id == job_id]
        return sorted(runs, key=lambda r: r.queued_seq)

    def job_runs(self, job_id: str) -> list[RunView]:
        """A job's runs, newest first."""
        job = self.jobs.get(job_id)
        return [self.runs[r] for r in reversed(job.run_ids)] if job else []

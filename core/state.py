"""The current state of jobs, runs and settings, folded from the log in memory.

Commands validate against it, the runner and scheduler read it, the API answers from
it. It is rebuilt by replaying the log on start and kept current by applying each
committed event, so it never disagrees with the log.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from events.record import StoredEvent
from models.ids import SETTINGS_STREAM
from models.runs import ACTIVE_STATES, TERMINAL_STATES, next_run_state
from models.settings import DEFAULT_SETTINGS

ACTIVITY_TYPES = ("RestoreStarted", "RestoreFinished", "VerifyFinished", "SnapshotPruned")
MAX_ACTIVITY = 20


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
        p = ev.payload
        if ev.stream == SETTINGS_STREAM:
            if ev.type == "SettingsChanged":
                self.settings.update(p.get("changes", {}))
            return
        job = self.jobs.get(ev.stream)
        if ev.type == "JobCreated":
            self.jobs[ev.stream] = JobView(ev.stream, dict(p["spec"]), ev.version, ev.time,
                                           ev.time)
            return
        if job is None:
            return
        job.version = ev.version
        if ev.type == "JobUpdated":
            job.spec, job.updated = dict(p["spec"]), ev.time
        elif ev.type in ("JobEnabled", "JobDisabled"):
            job.spec = {**job.spec, "enabled": ev.type == "JobEnabled"}
            job.updated = ev.time
        elif ev.type == "JobDeleted":
            del self.jobs[ev.stream]
            self.finished_seq = ev.seq
        elif ev.type == "RunQueued":
            run = RunView(p["run_id"], ev.stream, "queued", p.get("trigger", "manual"),
                          ev.time, ev.seq, kind=p.get("kind", "backup"),
                          params=dict(p.get("params") or {}))
            self.runs[run.run_id] = run
            self._active[run.run_id] = run
            job.run_ids.append(run.run_id)
        elif ev.type.startswith("Run"):
            self._apply_run(ev)
        elif ev.type in ACTIVITY_TYPES:
            if ev.type == "SnapshotPruned" and p.get("snapshot_id") in job.snapshots:
                job.snapshots.remove(p["snapshot_id"])
            job.activity.append({"seq": ev.seq, "time": ev.time, "type": ev.type, **p})
            del job.activity[:-MAX_ACTIVITY]

    def apply_all(self, events: Iterable[StoredEvent]) -> None:
        """Fold committed events in order."""
        for ev in events:
            self.apply(ev)

    def _apply_run(self, ev: StoredEvent) -> None:
        p = ev.payload
        run = self.runs.get(p.get("run_id", ""))
        if run is None:
            return
        if ev.type == "RunCheckpointed":
            run.checkpoint = dict(p.get("checkpoint", {}))
            return
        previous = run.state
        run.state = next_run_state(previous, ev.type)
        if ev.type == "RunStarted":
            run.started = run.started or ev.time
        elif ev.type == "RunResumed" and previous == "interrupted":
            run.resumes += 1
            run.queued_seq = ev.seq  # back in the queue, behind what is already waiting
        elif ev.type == "RunInterrupted":
            run.interrupted_reason = p.get("reason", "crash")
        elif ev.type == "RunSucceeded":
            run.snapshot_id = p.get("snapshot_id")
            job = self.jobs.get(ev.stream)
            # Only a backup makes a snapshot; a restore or verify names the one it read.
            if job is not None and run.snapshot_id and run.kind == "backup":
                job.snapshots.append(run.snapshot_id)
            run.files, run.bytes = int(p.get("files", 0)), int(p.get("bytes", 0))
            run.duration = float(p.get("duration", 0.0))
            run.warnings = int(p.get("warnings", 0))
            run.warning_samples = [str(w) for w in p.get("warning_samples", [])]
        elif ev.type == "RunFailed":
            run.error = p.get("error")
        if run.state in TERMINAL_STATES:
            run.finished = ev.time
            self.finished_seq = ev.seq
        if run.state in ACTIVE_STATES:
            self._active[run.run_id] = run
        else:
            self._active.pop(run.run_id, None)

    def active_runs(self, job_id: str | None = None) -> list[RunView]:
        """Runs not finished yet (queued, running, paused, interrupted), in queue order."""
        runs = [r for r in self._active.values() if job_id is None or r.job_id == job_id]
        return sorted(runs, key=lambda r: r.queued_seq)

    def job_runs(self, job_id: str) -> list[RunView]:
        """A job's runs, newest first."""
        job = self.jobs.get(job_id)
        return [self.runs[r] for r in reversed(job.run_ids)] if job else []

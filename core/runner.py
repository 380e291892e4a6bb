"""The runner: starts queued runs within the limits, off the event loop, and records them.

Limits: `max_concurrent_runs` (a setting) runs at once, one run per destination, and a
job never runs twice at once; the rest wait in queue order. Progress is broadcast to
WebSocket clients a few times a second and never stored; checkpoints are stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.runlog import RunLogs
from core.state import RunView, State
from core.webhooks import WebhookSender
from engines.base import (
    BackupResult,
    BackupSpec,
    Cancelled,
    EngineError,
    Interrupted,
    Progress,
    RunControl,
)
from engines.registry import get_engine
from events.record import StoredEvent
from events.store import EventStore, StoreError
from events.types import (
    Event,
    RunCheckpointed,
    RunFailed,
    RunInterrupted,
    RunStarted,
    RunSucceeded,
    SnapshotPruned,
)
from models.retention import Retention

log = logging.getLogger(__name__)

PROGRESS_EVERY = 0.25  # seconds between progress broadcasts per run


def backup_spec(spec: Mapping[str, Any], job_id: str) -> BackupSpec:
    """The engine-facing spec of a job's spec."""
    return BackupSpec.build(spec["sources"], spec["destination"], spec.get("include", ()),
                            spec.get("exclude", ()), spec.get("options", {}), job_id)


@dataclass
class ActiveRun:
    """A run this process is executing."""

    run: RunView
    destination: str
    control: RunControl = field(default_factory=RunControl)
    task: asyncio.Task[None] | None = None
    progress: dict[str, Any] | None = None  # the latest progress broadcast, for page renders


class _Reporter:
    """Carries an engine's reports from its worker thread to the event loop."""

    def __init__(self, runner: Runner, run: RunView, loop: asyncio.AbstractEventLoop) -> None:
        self.runner, self.run, self.loop = runner, run, loop
        self._last = 0.0

    def progress(self, progress: Progress) -> None:
        """Broadcast progress at most every PROGRESS_EVERY seconds (and the last one)."""
        now = time.monotonic()
        if now - self._last < PROGRESS_EVERY and progress.phase != "done":
            return
        self._last = now
        message = {"kind": "progress", "job_id": self.run.job_id, "run_id": self.run.run_id,
                   **progress.as_dict()}
        self.loop.call_soon_threadsafe(self.runner.broadcast, message)

    def checkpoint(self, state: Mapping[str, Any]) -> None:
        """Store a checkpoint so a crashed run can resume from it."""
        event = RunCheckpointed(job_id=self.run.job_id, run_id=self.run.run_id,
                                checkpoint=dict(state))
        self.loop.call_soon_threadsafe(self.runner.append_soon, self.run.job_id, event)

    def warning(self, message: str) -> None:
        """Keep a warning in the run's log."""
        self.runner.logs.write(self.run.run_id, f"WARNING {message}")


class Runner:
    """Executes queued runs with engines, within the concurrency limits."""

    def __init__(self, store: EventStore, state: State, logs: RunLogs,
                 webhooks: WebhookSender | None = None) -> None:
        self.store, self.state, self.logs = store, state, logs
        self.active: dict[str, ActiveRun] = {}
        self.webhooks = webhooks
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._pending: set[asyncio.Task[Any]] = set()

    # --- life cycle ---------------------------------------------------------------

    def start(self) -> None:
        """Follow the log and start runs as slots free up."""
        self.store.notifier.add_listener(self._on_events)
        self._task = asyncio.create_task(self._loop(), name="runner")
        self._wake.set()

    async def stop(self) -> None:
        """Stop every run at a safe point, recorded as interrupted so the next start resumes."""
        self._stopping = True
        for active in self.active.values():
            active.control.interrupt()
        tasks = [a.task for a in self.active.values() if a.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    def broadcast(self, message: dict[str, Any]) -> None:
        """Send a transient message (progress) to every live subscriber."""
        active = self.active.get(message.get("run_id", ""))
        if active is not None and message.get("kind") == "progress":
            active.progress = message
        self.store.notifier.broadcast(message)

    def append_soon(self, stream: str, event: Event) -> None:
        """Append an event in the background (from a thread's report), logging failures."""
        task = asyncio.create_task(self._append(stream, [event]))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _append(self, stream: str, events: list[Event]) -> None:
        try:
            await self.store.append(stream, None, events)
        except StoreError as err:
            log.error("could not record %s for %s: %s",
                      ", ".join(e.type_name for e in events), stream, err)

    # --- reacting to commands -------------------------------------------------------

    def _on_events(self, events: Sequence[StoredEvent]) -> None:
        for ev in events:
            run_id = ev.payload.get("run_id") if ev.type.startswith("Run") else None
            active = self.active.get(run_id) if isinstance(run_id, str) else None
            if active is not None:
                if ev.type == "RunPaused":
                    active.control.pause()
                    self.logs.write(active.run.run_id, "paused")
                elif ev.type == "RunResumed":
                    active.control.resume()
                    self.logs.write(active.run.run_id, "resumed")
                elif ev.type == "RunCancelled":
                    active.control.cancel()
                    self.logs.write(active.run.run_id, "cancel asked for")
            if ev.type == "RunDiscarded":
                self._discard_soon(ev)
            if ev.type in ("RunQueued", "RunResumed", "RunSucceeded", "RunFailed",
                           "RunCancelled", "RunInterrupted", "SettingsChanged", "JobUpdated"):
                self._wake.set()

    def _discard_soon(self, ev: StoredEvent) -> None:
        """Remove what an interrupted, now discarded run left in its destination."""
        job = self.state.jobs.get(ev.stream)
        run = self.state.runs.get(str(ev.payload.get("run_id")))
        if job is None or run is None:
            return
        spec = dict(job.spec)

        async def discard() -> None:
            try:
                await asyncio.to_thread(get_engine(spec["engine"]).discard_partial,
                                        backup_spec(spec, job.job_id), run.checkpoint)
                self.logs.write(run.run_id, "discarded; partial snapshot removed")
            except (EngineError, OSError) as err:
                self.logs.write(run.run_id, f"WARNING discard could not clean up: {err}")

        task = asyncio.create_task(discard())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def wait_stopped(self, job_id: str, within: float = 60.0) -> None:
        """Wait until no run of the job is executing here and its clean-ups are done."""
        tasks: list[asyncio.Task[Any]] = [a.task for a in self.active.values()
                                          if a.run.job_id == job_id and a.task is not None]
        tasks += self._pending
        if tasks:
            _, unfinished = await asyncio.wait(tasks, timeout=within)
            if unfinished:
                raise TimeoutError(f"runs of job {job_id} still going after {within:.0f} s")

    # --- scheduling slots ---------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._stopping:
                self._start_what_fits()

    def waiting(self) -> list[RunView]:
        """Queued runs in the order they will start."""
        return [r for r in self.state.active_runs() if r.state == "queued"
                and r.run_id not in self.active]

    def _start_what_fits(self) -> None:
        limit = int(self.state.settings.get("max_concurrent_runs", 2))
        for run in self.waiting():
            if len(self.active) >= limit:
                return
            job = self.state.jobs.get(run.job_id)
            if job is None:
                continue
            destination = str(job.spec.get("destination"))
            busy = {a.destination for a in self.active.values()}
            if destination in busy or any(a.run.job_id == run.job_id
                                          for a in self.active.values()):
                continue  # one run per destination; a job never runs twice at once
            active = ActiveRun(run, destination)
            self.active[run.run_id] = active
            active.task = asyncio.create_task(self._execute(active), name=f"run-{run.run_id}")

    # --- executing one run ----------------------------------------------------------

    async def _execute(self, active: ActiveRun) -> None:
        run = active.run
        job = self.state.jobs[run.job_id]
        spec = dict(job.spec)
        outcome, error, detail = "failed", None, {}
        try:
            resume = run.checkpoint if run.resumes else None
            await self.store.append(run.job_id, None,
                                    [RunStarted(job_id=run.job_id, run_id=run.run_id)])
            self.logs.write(run.run_id, f"started ({spec['engine']}"
                                        f"{', resuming from a checkpoint' if resume else ''})")
            engine = get_engine(spec["engine"])
            bspec = backup_spec(spec, run.job_id)
            reporter = _Reporter(self, run, asyncio.get_running_loop())
            result: BackupResult = await asyncio.to_thread(
                _run_engine, engine, bspec, active.control, reporter, resume)
            await self._succeeded(run, spec, result)
            outcome = "succeeded"
            detail = {"snapshot_id": result.snapshot_id, "files": result.files,
                      "bytes": result.bytes, "duration": round(result.duration, 3),
                      "warnings": len(result.warnings)}
        except Cancelled:
            outcome = "cancelled"
            self.logs.write(run.run_id, "cancelled; the partial snapshot was removed")
        except Interrupted:
            outcome = "interrupted"
            await self._append(run.job_id, [RunInterrupted(job_id=run.job_id, run_id=run.run_id,
                                                           reason="shutdown")])
            self.logs.write(run.run_id, "interrupted by shutdown; it resumes on the next start")
        except EngineError as err:
            error = str(err)
            if isinstance(err, CannotStart):
                outcome = "cannot_start"
            await self._append(run.job_id, [RunFailed(job_id=run.job_id, run_id=run.run_id,
                                                      error=error)])
            self.logs.write(run.run_id, f"FAILED {error}")
        except Exception as err:  # never leave a run hanging in "running"
            log.exception("run %s crashed", run.run_id)
            error = f"internal error: {err}"
            await self._append(run.job_id, [RunFailed(job_id=run.job_id, run_id=run.run_id,
                                                      error=error)])
            self.logs.write(run.run_id, f"FAILED {error}")
        finally:
            self.active.pop(run.run_id, None)
            self._wake.set()
        if self.webhooks is not None and outcome in ("succeeded", "failed", "cannot_start"):
            if error is not None:
                detail = {"error": error}
            self.webhooks.notify(run.job_id, str(spec.get("name", run.job_id)), f"run.{outcome}",
                                 run.run_id, detail)

    async def _succeeded(self, run: RunView, spec: Mapping[str, Any],
                         result: BackupResult) -> None:
        await self.store.append(run.job_id, None, [RunSucceeded(
            job_id=run.job_id, run_id=run.run_id, snapshot_id=result.snapshot_id,
            files=result.files, bytes=result.bytes, duration=round(result.duration, 3))])
        self.logs.write(run.run_id, f"succeeded: snapshot {result.snapshot_id}, "
                                    f"{result.files} files, {result.bytes} bytes, "
                                    f"{result.duration:.1f} s, {len(result.warnings)} warnings")
        policy = Retention.from_dict(spec.get("retention") or {})
        if policy.keeps_everything:
            policy = Retention.from_dict(self.state.settings.get("default_retention") or {})
        if policy.keeps_everything:
            return
        try:
            removed = await asyncio.to_thread(get_engine(spec["engine"]).prune,
                                              backup_spec(spec, run.job_id), policy)
        except EngineError as err:
            self.logs.write(run.run_id, f"WARNING retention could not prune: {err}")
            return
        if removed:
            await self._append(run.job_id, [SnapshotPruned(job_id=run.job_id, snapshot_id=s)
                                             for s in removed])
            self.logs.write(run.run_id, f"pruned {len(removed)} snapshot(s): "
                                        f"{', '.join(removed)}")


class CannotStart(EngineError):
    """A run could not even begin: a source or the destination missing, a binary missing."""


def _run_engine(engine: Any, spec: BackupSpec, control: RunControl, reporter: _Reporter,
                resume: Mapping[str, Any] | None) -> BackupResult:
    """Check the run can begin, then back up (in a worker thread)."""
    try:
        engine.check_ready(spec)
        spec.check_sources()
        spec.check_destination()
    except EngineError as err:
        raise CannotStart(str(err)) from err
    adopted = _finished_before_crash(engine, spec, resume)
    if adopted is not None:
        return adopted
    result: BackupResult = engine.backup(spec, control, reporter, resume)
    return result


def _finished_before_crash(engine: Any, spec: BackupSpec,
                           resume: Mapping[str, Any] | None) -> BackupResult | None:
    """The snapshot a resumed run had already completed, if the crash came after that.

    A kill between putting the snapshot in place and recording RunSucceeded leaves a
    complete snapshot no run claims; running again would make a second one. The
    checkpoint names the snapshot the run was making, so the run takes it as its result.
    """
    snapshot_id = (resume or {}).get("snapshot_id")
    if not isinstance(snapshot_id, str) or not snapshot_id:
        return None
    try:
        listed = engine.snapshots(spec)
    except EngineError:
        return None  # cannot tell (a busy restic repository): resume the normal way
    for snap in listed:
        if snap.id == snapshot_id:
            engine.tidy(spec)  # what the cut-off finalising would have removed
            return BackupResult(snap.id, snap.files, snap.size, 0.0)
    return None

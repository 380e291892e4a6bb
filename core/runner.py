"""The runner: starts queued runs within the limits, off the event loop, and records them.

Limits: `max_concurrent_runs` (a setting) runs at once, one run per destination, and a
job never runs twice at once; the rest wait in queue order. Progress is broadcast to
WebSocket clients a few times a second and never stored; checkpoints are stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from core.active import ActiveRun, RunReporter
from core.backup_end import record_success
from core.live import LiveFeed
from core.op_runs import discard_operation, execute_operation
from core.outcome import (
    CannotStart,
    append_until_stored,
    error_text,
    run_engine,
    storable,
    warning_samples,
)
from core.ownership import Owner, Owners, owner_conflict
from core.pruning import Pruning
from core.pruning import backup_spec as backup_spec  # where core.operations finds it
from core.runlog import RunLogs
from core.state import RunView, State
from core.webhooks import WebhookSender
from engines.base import (
    BackupResult,
    Cancelled,
    EngineError,
    Interrupted,
    Reporter,
)
from engines.registry import destination_key, get_engine
from events.record import StoredEvent
from events.store import EventStore, StoreError
from events.types import (
    Event,
    RunCancelled,
    RunDiscarded,
    RunEvent,
    RunFailed,
    RunInterrupted,
    RunPaused,
    RunResumed,
    RunStarted,
    RunSucceeded,
)

log = logging.getLogger(__name__)

class Runner:
    """Executes queued runs with engines, within the concurrency limits."""

    def __init__(self, store: EventStore, state: State, logs: RunLogs,
                 webhooks: WebhookSender | None = None, live: LiveFeed | None = None) -> None:
        self.store, self.state, self.logs = store, state, logs
        self.live = live if live is not None else LiveFeed()  # where progress goes
        self.active: dict[str, ActiveRun] = {}
        self.webhooks = webhooks
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._stop_wake = asyncio.Event()  # cuts retry waits short when the app stops
        self._pending: set[asyncio.Task[Any]] = set()
        self.pruning = Pruning(state, logs, self.record)
        self._owners = Owners()

    # --- life cycle ---------------------------------------------------------------

    def start(self) -> None:
        """Follow the log and start runs as slots free up."""
        self.store.notifier.add_listener(self._on_events)
        self._task = asyncio.create_task(self._loop(), name="runner")
        self._wake.set()

    async def stop(self) -> None:
        """Stop every run at a safe point, recorded as interrupted so the next start resumes."""
        self._stopping = True
        self._stop_wake.set()
        for active in self.active.values():
            active.control.interrupt()
            active.changed.set()
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
        self.live.publish(message)

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
            e = ev.event
            active = self.active.get(e.run_id) if isinstance(e, RunEvent) else None
            if active is not None:
                active.changed.set()
                match e:
                    case RunPaused():
                        active.control.pause()
                        self.logs.write(active.run.run_id, "paused")
                    case RunResumed():
                        active.control.resume()
                        self.logs.write(active.run.run_id, "resumed")
                    case RunCancelled():
                        active.control.cancel()
                        self.logs.write(active.run.run_id, "cancel asked for")
            if isinstance(e, RunDiscarded):
                self._discard_soon(ev)
            if e.wakes_runner:  # a run may start now (see Event.wakes_runner)
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
                if run.kind != "backup":  # only a restore leaves something: in its target
                    await discard_operation(self, run, spec)
                    return
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
            spec = job.spec  # the engine's key: one destination written two ways is one
            destination = destination_key(str(spec.get("engine")), str(spec.get("destination")))
            busy = {a.destination for a in self.active.values()}
            if destination in busy or any(a.run.job_id == run.job_id
                                          for a in self.active.values()):
                continue  # one run per destination; a job never runs twice at once
            active = ActiveRun(run, destination)
            self.active[run.run_id] = active
            active.task = asyncio.create_task(self._execute(active), name=f"run-{run.run_id}")

    # --- executing one run ----------------------------------------------------------

    @property
    def stopping(self) -> bool:
        """Whether the app is stopping (retries end; a held run is interrupted)."""
        return self._stopping

    @property
    def stop_wake(self) -> asyncio.Event:
        """Set when the app stops: cuts retry waits short."""
        return self._stop_wake

    def _stopping_now(self) -> bool:
        return self._stopping

    async def record(self, stream: str, events: list[Event]) -> bool:
        """Append an outcome, retried until the log can take it (see core.outcome)."""
        return await append_until_stored(self.store, stream, events, self._stopping_now,
                                         self._stop_wake)

    async def _execute(self, active: ActiveRun) -> None:
        run = active.run
        if run.kind != "backup":  # restore, verify, prune: core.op_runs
            try:
                await execute_operation(self, active)
            finally:
                self.active.pop(run.run_id, None)
                self._wake.set()
            return
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
            reporter = self.reporter_of(run)
            await self._refuse_shared_destination(run.job_id, spec)
            result, listed = await asyncio.to_thread(
                run_engine, engine, bspec, active.control, reporter, resume)
            outcome = await self._succeeded(active, spec, result, listed)
            if outcome == "cancelled":
                self.logs.write(run.run_id, "cancelled while held at its end; its snapshot "
                                            "was removed")
            elif outcome == "unrecorded":
                self.logs.write(run.run_id, "stopped before its success could be recorded "
                                            "(the event log cannot be written); the next "
                                            "start resumes it and adopts its snapshot")
            detail = {"snapshot_id": result.snapshot_id, "files": result.files,
                      "bytes": result.bytes, "duration": round(result.duration, 3),
                      "warnings": len(result.warnings),
                      "warning_samples": warning_samples(result.warnings)}
        except Cancelled:
            outcome = "cancelled"
            self.logs.write(run.run_id, "cancelled; the partial snapshot was removed")
        except Interrupted:
            outcome = "interrupted"
            # A person paused it: it stays paused (interrupted) until someone resumes it.
            reason = "shutdown_while_paused" if self.state_of(run) == "paused" else "shutdown"
            await self.record(run.job_id, [RunInterrupted(job_id=run.job_id,
                                                           run_id=run.run_id, reason=reason)])
            self.logs.write(run.run_id, "interrupted by shutdown; " + (
                "it waits for a resume" if reason != "shutdown" else
                "it resumes on the next start"))
        except EngineError as err:
            error = error_text(str(err))
            if isinstance(err, CannotStart):
                outcome = "cannot_start"
            await self.record(run.job_id, [RunFailed(job_id=run.job_id, run_id=run.run_id,
                                                      error=error)])
            self.logs.write(run.run_id, f"FAILED {error}")
        except Exception as err:  # never leave a run hanging in "running"
            log.exception("run %s crashed", run.run_id)
            error = error_text(f"internal error: {err}")
            await self.record(run.job_id, [RunFailed(job_id=run.job_id, run_id=run.run_id,
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

    def reporter_of(self, run: RunView) -> Reporter:
        """Where the engine of a run reports (goes through the hook tests replace)."""
        return self._reporter(run)

    def _reporter(self, run: RunView) -> Reporter:
        """Where the engine of a run reports (a hook tests use to act at a moment)."""
        return RunReporter(self, run, asyncio.get_running_loop())

    def state_of(self, run: RunView) -> str:
        """The run's state as the log shows it now (cancelled once it is gone)."""
        current = self.state.runs.get(run.run_id)
        return current.state if current is not None else "cancelled"

    async def _succeeded(self, active: ActiveRun, spec: Mapping[str, Any],
                         result: BackupResult, listed: set[str] | None) -> str:
        """Record the success (held while the run is paused), then apply retention."""
        run = active.run
        event = RunSucceeded(job_id=run.job_id, run_id=run.run_id,
                             snapshot_id=result.snapshot_id, files=result.files,
                             bytes=result.bytes, duration=round(result.duration, 3),
                             warnings=len(result.warnings),
                             warning_samples=warning_samples(result.warnings))
        if not storable(event):  # never retried forever: keep the figures, drop the samples
            event = dataclasses.replace(event, warning_samples=[])
        outcome = await record_success(self, active, event)
        if outcome == "succeeded":
            self.logs.write(run.run_id, f"succeeded: snapshot {result.snapshot_id}, "
                                        f"{result.files} files, {result.bytes} bytes, "
                                        f"{result.duration:.1f} s, "
                                        f"{len(result.warnings)} warnings")
            if self.store.chain.state != "passed":
                # A large log is checked in the background: until it has passed, an
                # event in it may be forged, and nothing is deleted on its word.
                self.logs.write(run.run_id, "retention waits until the event log's check "
                                            "has passed; the next run prunes")
                return outcome
            try:
                await self.pruning.forget_gone(run, listed)
                await self.pruning.retention(run, spec)
            except Exception as err:  # the run succeeded: what follows cannot undo that
                log.exception("after run %s succeeded, retention failed", run.run_id)
                self.logs.write(run.run_id, "WARNING retention could not prune: "
                                            f"{error_text(str(err))}")
        return outcome

    async def _refuse_shared_destination(self, job_id: str, spec: Mapping[str, Any]) -> None:
        """Refuse to run a job whose destination overlaps another job's.

        Saves refuse this since issue 12, but a log from before may hold two such jobs;
        running either would let its retention prune the other's older snapshots (which
        carry no job id), so neither runs until one is moved.
        """
        jobs = list(self.state.jobs.values())  # its owners are listed off the loop too

        def check() -> str | None:
            others = self._owners.except_(((j.job_id, j.spec) for j in jobs), job_id)
            return owner_conflict(str(spec.get("destination")), others)
        conflict = await asyncio.to_thread(check)
        if conflict is not None:
            raise CannotStart(f"{conflict}; move one of the jobs to a folder of its own "
                              "before running it (older snapshots there carry no job id, "
                              "so each job's retention could remove the other's)")

    def other_owners(self, job_id: str) -> list[Owner]:
        """Every other job's destination."""
        return self._owners.except_(((j.job_id, j.spec) for j in self.state.jobs.values()),
                                    job_id)

    def checkpoint_of(self, run: RunView) -> dict[str, Any]:
        """The run's latest checkpoint as the log holds it."""
        current = self.state.runs.get(run.run_id)
        return dict(current.checkpoint or {}) if current is not None else {}

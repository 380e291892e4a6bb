"""Commands: validate against the current state, then append events in one transaction.

Invalid input raises a CommandError with a message a person can act on and appends
nothing. The stream's expected version makes a command that raced another fail instead
of writing on top of a state it did not see.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from core import operations
from core.errors import Conflict, Invalid, NotFound
from core.fs_threads import run_path_check
from core.ownership import Owner, Owners
from core.pathcheck import PathReport, check_paths
from core.protected import destination_refusal
from core.state import JobView, RunView, State
from engines.registry import catalog, option_problems
from events.store import ConcurrencyError, EventStore
from events.types import (
    Event,
    JobCreated,
    JobDeleted,
    JobDisabled,
    JobEnabled,
    JobUpdated,
    RunCancelled,
    RunDiscarded,
    RunPaused,
    RunQueued,
    RunResumed,
    SettingsChanged,
)
from models.ids import SETTINGS_STREAM, check_job_id, check_run_id, new_job_id, new_run_id
from models.job import JobInvalid, JobSpec
from models.settings import SettingsInvalid, validate_settings


class RunWaiter(Protocol):
    """What delete_job(stop_runs=True) needs of the runner."""

    async def wait_stopped(self, job_id: str, within: float = 60.0) -> None:
        """Wait until no run of the job is executing and its clean-ups are done."""


RETRIES = 5  # version conflicts with the runner's own appends before giving up
PATH_CHECK_TIMEOUT = 10.0  # seconds a save waits for its paths (a hung network mount)


class Commands:
    """Every state change a person, a script or the scheduler can ask for."""

    def __init__(self, store: EventStore, state: State, data_dir: str | None = None) -> None:
        self.store = store
        self.state = state
        # The server's own folder (event log, job files, key): never a job's destination
        # nor a restore target. Absolute, so a relative --data compares with real paths.
        self.data_dir = os.path.abspath(data_dir) if data_dir else None
        # Saves check the paths off the loop and then append: one at a time, so two
        # jobs saved at once cannot both take the same destination.
        self._saving = asyncio.Lock()
        # Set by whoever builds the runner: delete_job(stop_runs=True) waits through it.
        self.runner: RunWaiter | None = None
        self._owners = Owners()

    # --- lookups ------------------------------------------------------------------

    def job(self, job_id: str) -> JobView:
        """The job with this id, or NotFound."""
        job = self.state.jobs.get(check_job_id(job_id))
        if job is None:
            raise NotFound(f"no job {job_id}")
        return job

    def run(self, run_id: str) -> RunView:
        """The run with this id, or NotFound."""
        run = self.state.runs.get(check_run_id(run_id))
        if run is None or run.job_id not in self.state.jobs:
            raise NotFound(f"no run {run_id}")
        return run

    async def _append(self, stream: str, events: list[Event]) -> None:
        version = self.store.stream_version(stream)
        await self.store.append(stream, version, events)

    async def _decide_and_append(self, job_id: str,
                                 decide: Callable[[JobView], list[Event]]) -> list[Event]:
        """Append what `decide` makes of the job's current state, deciding again on a race.

        A running run appends to the job's stream too; when one of its events lands
        between the check and the append, the append meets a version conflict that says
        nothing about this command, so the check is made again against the newer state
        (and may now refuse, in words, as a second start does).
        """
        for attempt in range(RETRIES):
            job = self.job(job_id)
            events = decide(job)
            if not events:
                return events
            try:
                await self.store.append(job_id, job.version, events)
                return events
            except ConcurrencyError:
                if attempt == RETRIES - 1:
                    raise
                await asyncio.sleep(0.01)  # the state catches up with what committed
        raise AssertionError("unreachable")

    # --- jobs -----------------------------------------------------------------------

    def _allow_link_local(self) -> bool:
        return self.state.settings.get("allow_link_local_webhooks") is True

    def allow_link_local_webhooks(self) -> bool:
        """Whether the settings allow webhooks to link-local addresses."""
        return self._allow_link_local()

    def other_owners(self, job_id: str | None) -> list[Owner]:
        """Every job's destination but this job's: where a save or restore may not go."""
        return self._owners.except_(((j.job_id, j.spec) for j in self.state.jobs.values()),
                                    job_id)

    def protected(self) -> list[str]:
        """Folders no destination and no restore may write into (the data directory)."""
        return [self.data_dir] if self.data_dir else []

    def _path_report(self, spec: dict[str, Any], old: Mapping[str, Any] | None,
                     others: list[Owner]) -> PathReport:
        report = check_paths(spec, old, others)
        refusal = destination_refusal(str(spec.get("destination") or ""), self.protected())
        if refusal is not None:
            report.errors["destination"] = refusal
        return report

    async def _check_paths(self, spec: JobSpec, job: JobView | None) -> None:
        """Refuse paths that cannot work, or another job's destination.

        What only may not work (a path on a disk not mounted yet) is saved; the job's
        page shows it, computed when the page is read (core.pathcheck.path_warnings).
        """
        jobs, exclude = list(self.state.jobs.values()), job.job_id if job else None
        try:
            # On the path-check threads: a hung mount must not fill the default executor.
            # The other owners are listed there too (1,000 jobs: not on the loop).
            old = job.spec if job else None
            report: PathReport = await run_path_check(
                lambda: self._path_report(spec.to_dict(), old, self._owners.except_(
                    ((j.job_id, j.spec) for j in jobs), exclude)), PATH_CHECK_TIMEOUT)
        except TimeoutError as err:
            raise Invalid("the job's folders did not answer within "
                          f"{PATH_CHECK_TIMEOUT:g} s (a network mount that hangs?)",
                          {"destination": "did not answer in time"}) from err
        if report.errors:
            raise Invalid("; ".join(f"{k}: {v}" for k, v in report.errors.items()),
                          report.errors)

    async def create_job(self, data: Mapping[str, Any]) -> JobView:
        """Validate a job spec and create the job; return it with its new id."""
        async with self._saving:
            spec = validate_job(data, self._allow_link_local())
            await self._check_paths(spec, None)
            job_id = new_job_id(spec.name)
            while job_id in self.state.jobs:
                job_id = new_job_id(spec.name)
            await self.store.append(job_id, 0, [JobCreated(job_id=job_id,
                                                           spec=spec.to_dict())])
            return self.state.jobs[job_id]

    async def update_job(self, job_id: str, data: Mapping[str, Any]) -> JobView:
        """Replace a job's spec (fields left out keep their current values)."""
        async with self._saving:
            job = self.job(job_id)
            spec = validate_job({**job.spec, **data}, self._allow_link_local())
            if spec.to_dict() == job.spec:
                return job
            self._refuse_engine_change(job, spec)
            await self._check_paths(spec, job)

            def update(job: JobView) -> list[Event]:
                self._refuse_engine_change(job, spec)  # a run may have succeeded meanwhile
                return [JobUpdated(job_id=job_id, spec=spec.to_dict())]
            await self._decide_and_append(job_id, update)
            return self.state.jobs[job_id]

    def _refuse_engine_change(self, job: JobView, spec: JobSpec) -> None:
        """Refuse a new engine while the job has snapshots the new one cannot read."""
        old = job.spec.get("engine")
        if spec.engine == old:
            return
        # Any succeeded run counts: retention never removes a job's newest snapshot,
        # so a job with one has snapshots on disk unless someone deleted them by hand.
        if any(r.state == "succeeded" for r in self.state.job_runs(job.job_id)):
            message = (f"{job.spec.get('name')} has backups made by the {old} engine, which "
                       f"the {spec.engine} engine cannot read or restore; keep {old}, or "
                       f"create a new job with the {spec.engine} engine and its own "
                       "destination")
            raise Invalid(message, {"engine": message})

    async def set_enabled(self, job_id: str, enabled: bool) -> JobView:
        """Switch a job's schedule on or off."""
        def switch(job: JobView) -> list[Event]:
            if job.enabled == enabled:
                return []
            return [JobEnabled(job_id=job_id) if enabled else JobDisabled(job_id=job_id)]
        await self._decide_and_append(job_id, switch)
        return self.state.jobs[job_id]

    async def delete_job(self, job_id: str, stop_runs: bool = False) -> None:
        """Delete a job; refused while it has a run that is not finished.

        With `stop_runs`, its runs are cancelled (interrupted ones discarded) first and
        the runner is waited for until they have stopped and cleaned up.
        """
        if stop_runs:
            await self.stop_runs(job_id)
            if self.runner is not None:
                try:
                    await self.runner.wait_stopped(job_id)
                except TimeoutError as err:
                    raise Conflict("the job's run did not stop within a minute; try "
                                   "again") from err

        def delete(job: JobView) -> list[Event]:
            active = self.state.active_runs(job_id)
            if active:
                raise Conflict(f"job {job.spec.get('name')} has a run that is "
                               f"{active[0].state}; cancel or discard it first")
            return [JobDeleted(job_id=job_id)]
        await self._decide_and_append(job_id, delete)

    async def stop_runs(self, job_id: str) -> None:
        """Cancel a job's queued, running and paused runs and discard interrupted ones."""
        def stop(job: JobView) -> list[Event]:
            events: list[Event] = []
            for run in self.state.active_runs(job_id):
                kind = RunDiscarded if run.state == "interrupted" else RunCancelled
                events.append(kind(job_id=job_id, run_id=run.run_id))
            return events
        await self._decide_and_append(job_id, stop)

    # --- runs -----------------------------------------------------------------------

    async def start_run(self, job_id: str, trigger: str = "manual") -> RunView:
        """Queue a run of a job; refused while the job already has one going.

        Two starts at once both pass the check; the second append then meets a version
        conflict, and the check made again names the run the first one queued.
        """
        run_id = new_run_id()  # kept across retries: nothing was written under it

        def queue(job: JobView) -> list[Event]:
            self._refuse_second_run(job)
            return [RunQueued(job_id=job_id, run_id=run_id, trigger=trigger)]
        await self._decide_and_append(job_id, queue)
        return self.state.runs[run_id]

    async def queue_restore(self, job_id: str, snapshot_id: str,
                            data: Mapping[str, Any]) -> RunView:
        """Queue a restore of a snapshot (or a path in it) into a target, checked first."""
        job = self.job(job_id)
        params = await operations.restore_params(job, snapshot_id, dict(data),
                                                 self.other_owners(job_id), self.protected())
        return await self._queue_operation(job_id, "restore", params)

    async def queue_verify(self, job_id: str, snapshot_id: str) -> RunView:
        """Queue a verify of one of the job's snapshots."""
        await operations.require_snapshot(self.job(job_id), snapshot_id)
        return await self._queue_operation(job_id, "verify", {"snapshot_id": snapshot_id})

    async def queue_prune(self, job_id: str) -> RunView:
        """Queue a prune: the job's retention applied now."""
        return await self._queue_operation(self.job(job_id).job_id, "prune", {})

    async def _queue_operation(self, job_id: str, kind: str, params: dict[str, Any]
                               ) -> RunView:
        """Append RunQueued of an operation; the runner starts it when the job's
        destination is free (a backup of the job and its operations take turns)."""
        run_id = new_run_id()
        await self._decide_and_append(job_id, lambda job: [RunQueued(
            job_id=job_id, run_id=run_id, trigger="manual", kind=kind, params=params)])
        return self.state.runs[run_id]

    def _refuse_second_run(self, job: JobView) -> None:
        # Only backups count: a restore or verify waiting does not refuse a backup.
        active = [r for r in self.state.active_runs(job.job_id) if r.kind == "backup"]
        if not active:
            return
        name, run = job.spec.get("name"), active[0]
        if run.state == "interrupted":
            raise Conflict(f"{name} has an interrupted run ({run.run_id}); resume or "
                           "discard it first")
        detail = {"queued": " is queued and waits for a free slot",
                  "paused": " is paused; resume or cancel it first"}.get(run.state, "")
        raise Conflict(f"{name} is already running (run {run.run_id}{detail})")

    async def pause_run(self, run_id: str) -> RunView:
        """Ask a running run to hold at its next safe point."""
        return await self._run_event(run_id, {"running"}, "pause", RunPaused)

    async def resume_run(self, run_id: str) -> RunView:
        """Continue a paused run, or put an interrupted one back in the queue."""
        return await self._run_event(run_id, {"paused", "interrupted"}, "resume", RunResumed)

    async def cancel_run(self, run_id: str) -> RunView:
        """Cancel a queued, running or paused run (its partial snapshot is removed)."""
        return await self._run_event(run_id, {"queued", "running", "paused"}, "cancel",
                                     RunCancelled)

    async def discard_run(self, run_id: str) -> RunView:
        """Give up an interrupted run; the runner cleans up its partial snapshot."""
        return await self._run_event(run_id, {"interrupted"}, "discard", RunDiscarded)

    async def _run_event(self, run_id: str, states: set[str], verb: str,
                         event: Callable[..., Event]) -> RunView:
        """Check the run's state, then append; checked again if the job's stream moved.

        A running run appends checkpoints to the same stream; one landing between the
        check and the append is a version conflict that says nothing about this
        command, so the check is made again against the newer state.
        """
        for attempt in range(RETRIES):
            run = self._run_in(run_id, states, verb)
            try:
                await self._append(run.job_id, [event(job_id=run.job_id, run_id=run_id)])
                return run
            except ConcurrencyError:
                if attempt == RETRIES - 1:
                    raise
                await asyncio.sleep(0.01)  # the state catches up with what committed
        raise AssertionError("unreachable")

    def _run_in(self, run_id: str, states: set[str], verb: str) -> RunView:
        run = self.run(run_id)
        if run.state not in states:
            raise Conflict(f"run {run_id} is {run.state}; only a run that is "
                           f"{' or '.join(sorted(states))} can {verb}")
        return run

    # --- settings ------------------------------------------------------------------

    async def change_settings(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Validate and record changed settings; return the settings now in force."""
        try:
            clean = validate_settings(changes, self.state.settings)
        except SettingsInvalid as err:
            raise Invalid(str(err), err.errors) from err
        changed = {k: v for k, v in clean.items() if self.state.settings.get(k) != v}
        if changed:
            await self._append(SETTINGS_STREAM, [SettingsChanged(changes=changed)])
        return dict(self.state.settings)


def validate_job(data: Mapping[str, Any], allow_link_local_webhooks: bool = False) -> JobSpec:
    """A job spec from input, or Invalid naming every bad field (engine options too)."""
    errors: dict[str, str] = {}
    spec = None
    try:
        spec = JobSpec.from_input(data, allow_link_local_webhooks, engines=catalog())
    except JobInvalid as err:
        errors.update(err.errors)
    engine, options = data.get("engine"), data.get("options")
    if options is None:
        options = {}  # no options at all still misses the ones an engine requires
    if "options" not in errors and isinstance(engine, str) and isinstance(options, Mapping):
        problem = option_problems(engine, options)
        if problem is not None:
            errors["options"] = problem
    if errors or spec is None:
        raise Invalid("; ".join(f"{k}: {v}" for k, v in errors.items()), errors)
    return spec


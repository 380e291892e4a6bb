"""Crash recovery: runs the log shows as cut off are marked interrupted, then resumed or
left for a person to resume or discard; restores cut off are recorded as ended."""

from __future__ import annotations

import asyncio
import logging

from core.state import State
from engines.child import stop_orphans_on
from events.store import EventStore
from events.types import Event, RestoreFinished, RestoreStarted, RunInterrupted, RunResumed

log = logging.getLogger(__name__)

RESTORE_CUT_OFF = ("cut off by a crash or a shutdown before it finished: the target may "
                   "hold only part of the files; restore again (with overwrite) to complete it")
RESTORE_RESTARTS = ("cut off by a crash or a shutdown before it finished; its run starts "
                    "again and writes over what this attempt left")


async def stop_leftover_programs(state: State) -> int:
    """Stop the rsync or restic a killed server left running on a job's destination.

    Children die with the server (PDEATHSIG), but one started by an older version, or a
    `restic check` whose server was killed before that existed, has no checkpoint to be
    found by: each carries its owner's mark, so a sweep of the destinations finds it.
    """
    destinations = [str(job.spec.get("destination") or "") for job in state.jobs.values()]
    stopped = await asyncio.to_thread(stop_orphans_on, destinations)
    if stopped:
        log.warning("stopped %d program(s) a previous server left running", stopped)
    return stopped


async def recover_runs(store: EventStore, state: State) -> list[str]:
    """Mark cut-off runs interrupted; resume those the settings (or a clean shutdown) allow.

    A run the log shows as running was cut off by a crash: it gets
    RunInterrupted(reason=crash) and, with `auto_resume` on, RunResumed. A run the log
    shows as paused was paused by a person: it gets reason crash_while_paused and stays
    interrupted until someone resumes it. A run interrupted by a clean shutdown resumes
    on this start, unless it was paused then. Returns the ids of runs resumed.
    """
    auto_resume = bool(state.settings.get("auto_resume", True))
    resumed: list[str] = []
    for run in state.active_runs():
        events: list[Event] = []
        if run.state == "running":
            events.append(RunInterrupted(job_id=run.job_id, run_id=run.run_id, reason="crash"))
            if auto_resume:
                events.append(RunResumed(job_id=run.job_id, run_id=run.run_id))
        elif run.state == "paused":
            events.append(RunInterrupted(job_id=run.job_id, run_id=run.run_id,
                                         reason="crash_while_paused"))
        elif run.state == "interrupted" and run.interrupted_reason == "shutdown":
            events.append(RunResumed(job_id=run.job_id, run_id=run.run_id))
        if not events:
            continue
        await store.append(run.job_id, None, events)
        if any(isinstance(e, RunResumed) for e in events):
            resumed.append(run.run_id)
        log.warning("run %s of job %s was cut off (%s); %s", run.run_id, run.job_id,
                    state.runs[run.run_id].interrupted_reason or "crash",
                    "resuming it" if run.run_id in resumed else "waiting for resume or discard")
    await recover_restores(store, state)
    return resumed


async def recover_restores(store: EventStore, state: State) -> int:
    """Record every restore the log shows as started and never finished as failed.

    Nothing is restoring while the app starts, so such a restore was cut off; without
    this its job would show it as going on forever. Returns how many were recorded.
    """
    count = 0
    for job in list(state.jobs.values()):
        open_restores: dict[tuple[str, str], None] = {}
        for item in job.activity:
            key = (str(item.get("snapshot_id")), str(item.get("target")))
            if item["type"] == RestoreStarted.type_name:
                open_restores[key] = None
            elif item["type"] == RestoreFinished.type_name:
                open_restores.pop(key, None)
        # A restore run that starts again says so (its next attempt is recorded anew).
        again = {(str(r.params.get("snapshot_id")), str(r.params.get("target")))
                 for r in state.active_runs(job.job_id)
                 if r.kind == "restore" and r.state == "queued"}
        for snapshot_id, target in open_restores:
            await store.append(job.job_id, None, [RestoreFinished(
                job_id=job.job_id, snapshot_id=snapshot_id, target=target,
                error=RESTORE_RESTARTS if (snapshot_id, target) in again
                else RESTORE_CUT_OFF)])
            log.warning("restore of %s into %s (job %s) was cut off; recorded as failed",
                        snapshot_id, target, job.job_id)
            count += 1
    return count

"""Crash recovery: runs the log shows as cut off are marked interrupted, then resumed or
left for a person to resume or discard."""

from __future__ import annotations

import logging

from core.state import State
from events.store import EventStore
from events.types import Event, RunInterrupted, RunResumed

log = logging.getLogger(__name__)


async def recover_runs(store: EventStore, state: State) -> list[str]:
    """Mark cut-off runs interrupted; resume those the settings (or a clean shutdown) allow.

    A run the log shows as running or paused was cut off by a crash: it gets
    RunInterrupted(reason=crash) and, with `auto_resume` on, RunResumed. A run interrupted
    by a clean shutdown resumes on this start. Returns the ids of runs resumed.
    """
    auto_resume = bool(state.settings.get("auto_resume", True))
    resumed: list[str] = []
    for run in state.active_runs():
        events: list[Event] = []
        if run.state in ("running", "paused"):
            events.append(RunInterrupted(job_id=run.job_id, run_id=run.run_id, reason="crash"))
            if auto_resume:
                events.append(RunResumed(job_id=run.job_id, run_id=run.run_id))
        elif run.state == "interrupted" and run.interrupted_reason == "shutdown":
            events.append(RunResumed(job_id=run.job_id, run_id=run.run_id))
        if not events:
            continue
        await store.append(run.job_id, None, events)
        if any(isinstance(e, RunResumed) for e in events):
            resumed.append(run.run_id)
        log.warning("run %s of job %s was cut off (%s); %s", run.run_id, run.job_id,
                    run.interrupted_reason or "crash",
                    "resuming it" if run.run_id in resumed else "waiting for resume or discard")
    return resumed

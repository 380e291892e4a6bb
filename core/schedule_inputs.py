"""What a job's next time is worked out from, read from the state for core.schedule_times."""

from __future__ import annotations

from typing import Any

from core.schedule_times import PlanInput
from core.state import JobView, State


def plan_key(job: JobView) -> tuple[Any, ...]:
    """What a job's next time depends on; a run queued grows run_ids (a new base)."""
    return (job.spec.get("schedule"), job.enabled, job.created, job.updated,
            len(job.run_ids))


def plan_input(state: State, job: JobView, key: tuple[Any, ...]) -> PlanInput | None:
    """The plain values a job's next time is worked out from; None: never scheduled."""
    schedule = job.spec.get("schedule")
    if not job.enabled or schedule is None:
        return None
    return (job.job_id, key, schedule, job.created, job.updated, last_backup(state, job))


def last_backup(state: State, job: JobView) -> str | None:
    """When the job's latest backup run was queued, or None."""
    for run_id in reversed(job.run_ids):  # newest last, so the first found is the latest
        run = state.runs.get(run_id)
        # Only backups: a restore or verify of the job must not push its schedule back.
        if run is not None and run.kind == "backup":
            return run.queued
    return None

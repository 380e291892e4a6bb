"""What a run removes from its destination once its success is recorded: what retention
does not keep, a snapshot a cancel asked away, and the log's record of snapshots gone.

Each removal is recorded as SnapshotPruned. A kill between a prune and its record left
the log (and so jobs/<id>.yaml) naming a snapshot that is no longer there; the next run
sees it missing from the listing that confirmed its own snapshot and records it gone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from core.runlog import RunLogs
from core.state import RunView, State
from engines.base import BackupSpec, EngineError
from engines.registry import destination_kind, get_engine
from events.types import Event, SnapshotPruned
from models.retention import Retention

Record = Callable[[str, list[Event]], Awaitable[bool]]


def backup_spec(spec: Mapping[str, Any], job_id: str) -> BackupSpec:
    """The engine-facing spec of a job's spec."""
    return BackupSpec.build(spec["sources"], spec["destination"], spec.get("include", ()),
                            spec.get("exclude", ()), spec.get("options", {}), job_id,
                            destination_kind(str(spec.get("engine", ""))))


class Pruning:
    """Removes snapshots for the runner and records what is gone."""

    def __init__(self, state: State, logs: RunLogs, record: Record) -> None:
        self.state, self.logs, self.record = state, logs, record

    async def forget_gone(self, run: RunView, listed: set[str] | None) -> None:
        """Record snapshots the log names but the destination no longer lists."""
        job = self.state.jobs.get(run.job_id)
        if job is None or listed is None:
            return
        gone = [s for s in job.snapshots if s not in listed]
        if not gone:
            return
        await self.record(run.job_id, [SnapshotPruned(job_id=run.job_id, snapshot_id=s)
                                       for s in gone])
        self.logs.write(run.run_id, f"no longer in the destination, now recorded as removed "
                                    f"(a prune cut off, or removed by hand): {', '.join(gone)}")

    async def retention(self, run: RunView, spec: Mapping[str, Any]) -> None:
        """Prune what the job's (or the default) retention policy does not keep."""
        try:
            await self.apply(run, spec)
        except EngineError as err:
            self.logs.write(run.run_id, f"WARNING retention could not prune: {err}")

    def policy(self, spec: Mapping[str, Any]) -> Retention:
        """The job's retention policy, or the default one when the job keeps everything."""
        policy = Retention.from_dict(spec.get("retention") or {})
        if policy.keeps_everything:
            policy = Retention.from_dict(self.state.settings.get("default_retention") or {})
        return policy

    async def apply(self, run: RunView, spec: Mapping[str, Any]) -> list[str]:
        """Prune by the policy, record what went and return its ids (EngineError raised)."""
        policy = self.policy(spec)
        if policy.keeps_everything:
            return []
        # A restore or verify accepted (queued, maybe behind this very backup) was told
        # its snapshot is there: retention must not take it away before it runs.
        held = {str(r.params.get("snapshot_id")) for r in self.state.active_runs(run.job_id)
                if r.kind in ("restore", "verify") and r.params.get("snapshot_id")}
        removed: list[str] = await asyncio.to_thread(get_engine(spec["engine"]).prune,
                                                     backup_spec(spec, run.job_id), policy,
                                                     held)
        if held:
            self.logs.write(run.run_id, "kept for a restore or verify waiting for it: "
                                        f"{', '.join(sorted(held))}")
        if removed:
            await self.record(run.job_id, [SnapshotPruned(job_id=run.job_id, snapshot_id=s)
                                           for s in removed])
            self.logs.write(run.run_id, f"pruned {len(removed)} snapshot(s): "
                                        f"{', '.join(removed)}")
        return removed

    async def remove_held(self, run: RunView, snapshot_id: str) -> None:
        """A run cancelled while held at its end: its snapshot goes, as a cancel says."""
        job = self.state.jobs.get(run.job_id)
        if job is None:
            return
        try:
            await asyncio.to_thread(get_engine(job.spec["engine"]).delete_snapshots,
                                    backup_spec(job.spec, job.job_id), [snapshot_id])
        except (EngineError, OSError) as err:
            self.logs.write(run.run_id, f"WARNING cancelled, but snapshot {snapshot_id} "
                                        f"could not be removed: {err}")

"""Snapshot operations a person asks for: list, restore and verify, recorded in the log."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from core.errors import Invalid
from core.runner import backup_spec
from core.state import JobView
from engines.base import NullReporter, RunControl, Snapshot
from engines.registry import get_engine
from events.store import EventStore
from events.types import RestoreFinished, RestoreStarted, VerifyFinished
from models.job import clean_path


async def list_snapshots(job: JobView) -> list[Snapshot]:
    """The job's complete snapshots, oldest first (read from its destination)."""
    engine = get_engine(job.spec["engine"])
    return await asyncio.to_thread(engine.snapshots, backup_spec(job.spec))


async def restore_snapshot(store: EventStore, job: JobView, snapshot_id: str,
                           data: dict[str, Any]) -> dict[str, Any]:
    """Restore a snapshot (or a path in it) into a target, recorded as events."""
    try:
        target = Path(clean_path(data.get("target"), "target"))
    except ValueError as err:
        raise Invalid(str(err), {"target": str(err)}) from err
    path = data.get("path") or None
    if path is not None and not isinstance(path, str):
        raise Invalid("path must be a path inside the snapshot", {"path": "not a path"})
    overwrite = data.get("overwrite", False)
    if not isinstance(overwrite, bool):
        raise Invalid("overwrite must be true or false", {"overwrite": "true or false"})
    engine = get_engine(job.spec["engine"])
    spec = backup_spec(job.spec)
    await store.append(job.job_id, None, [RestoreStarted(
        job_id=job.job_id, snapshot_id=snapshot_id, target=str(target), path=path)])
    try:
        result = await asyncio.to_thread(engine.restore, spec, snapshot_id, target,
                                         RunControl(), NullReporter(), path, overwrite)
    except Exception as err:
        await store.append(job.job_id, None, [RestoreFinished(
            job_id=job.job_id, snapshot_id=snapshot_id, target=str(target), error=str(err))])
        raise
    await store.append(job.job_id, None, [RestoreFinished(
        job_id=job.job_id, snapshot_id=snapshot_id, target=str(target), files=result.files,
        bytes=result.bytes)])
    return {"files": result.files, "bytes": result.bytes, "target": str(target)}


async def verify_snapshot(store: EventStore, job: JobView, snapshot_id: str) -> dict[str, Any]:
    """Verify a snapshot against its manifest (or restic check), recorded as an event."""
    engine = get_engine(job.spec["engine"])
    result = await asyncio.to_thread(engine.verify, backup_spec(job.spec), snapshot_id,
                                     RunControl(), NullReporter())
    await store.append(job.job_id, None, [VerifyFinished(
        job_id=job.job_id, snapshot_id=snapshot_id, ok=result.ok,
        problems=list(result.problems[:50]))])
    return {"ok": result.ok, "problems": list(result.problems), "files": result.files_checked}

"""Snapshot operations a person asks for: list, restore and verify, recorded in the log."""

from __future__ import annotations

import asyncio
import posixpath
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from core.errors import Invalid, NotFound
from core.outcome import error_text
from core.ownership import Owner, local_path
from core.protected import restore_refusal, written_relation
from core.runner import backup_spec
from core.state import JobView
from engines.base import EngineError, NullReporter, Progress, RunControl, Snapshot
from engines.manifest import check_rel_path
from engines.registry import get_engine
from events.store import EventStore
from events.types import RestoreFinished, RestoreStarted, VerifyFinished
from models.job import clean_path


async def list_snapshots(job: JobView) -> list[Snapshot]:
    """The job's complete snapshots, oldest first (read from its destination)."""
    engine = get_engine(job.spec["engine"])
    return await asyncio.to_thread(engine.snapshots, backup_spec(job.spec, job.job_id))


def target_refusal(target: str, job: JobView, path: str | None = None,
                   others: Iterable[Owner] = (), protected: Iterable[str] = ()
                   ) -> str | None:
    """Why a restore may not write into target, or None (touches the file system).

    A target equal to or inside a destination would write into the snapshots kept
    there (or a restic repository) and corrupt them; so would a target around one when
    the restore writes the folder that leads to it. A restore writes only
    target/<source name>/... (or target/<path>), so restoring /home/me/docs back into
    /home/me stays possible while the destination is /home/me/backups. The job's own
    destination is checked, and any other job's the caller names; then the folders in
    `protected` (the server's data directory), by the same rule.
    """
    written = ({path.split("/", 1)[0]} if path else
               {posixpath.basename(s.rstrip("/")) or "root"
                for s in job.spec.get("sources") or ()})
    owners = [Owner(job.job_id, str(job.spec.get("name")), str(job.spec.get("destination"))),
              *others]
    for owner in owners:
        dest = local_path(owner.destination)
        if dest is None:
            continue  # a remote repository: a local target cannot touch it
        # What the restore writes (target/<name>, symlinks followed) decides.
        found = written_relation(target, dest, written)
        if found is None:
            continue
        whose = ("this job's destination" if owner.job_id == job.job_id
                 else f"the destination of job {owner.name} (id {owner.job_id})")
        where = {"equal": "is", "inside": "is inside"}.get(found, found)
        return (f"restore target {target} {where} {dest}, {whose}, where its backups are "
                "kept; restoring there would change them: choose a folder outside it")
    return restore_refusal(target, written, protected)


async def restore_snapshot(store: EventStore, job: JobView, snapshot_id: str,
                           data: dict[str, Any], others: Iterable[Owner] = (),
                           protected: Iterable[str] = ()) -> dict[str, Any]:
    """Restore a snapshot (or a path in it) into a target, recorded as events.

    `others` are the other jobs' destinations, refused as targets like the job's own;
    `protected` are folders no restore may write into (the server's data directory).
    """
    try:
        target = Path(clean_path(data.get("target"), "target"))
    except ValueError as err:
        raise Invalid(str(err), {"target": str(err)}) from err
    path = data.get("path") or None
    if path is not None and not isinstance(path, str):
        raise Invalid("path must be a path inside the snapshot", {"path": "not a path"})
    if path is not None:
        try:
            check_rel_path(path)
        except EngineError as err:
            raise Invalid(str(err), {"path": str(err)}) from err
    refusal = await asyncio.to_thread(target_refusal, str(target), job, path,
                                      list(others), list(protected))
    if refusal is not None:
        raise Invalid(refusal, {"target": refusal})
    await require_snapshot(job, snapshot_id)  # before anything is recorded
    overwrite = data.get("overwrite", False)
    if not isinstance(overwrite, bool):
        raise Invalid("overwrite must be true or false", {"overwrite": "true or false"})
    engine = get_engine(job.spec["engine"])
    spec = backup_spec(job.spec, job.job_id)
    started = RestoreStarted(job_id=job.job_id, snapshot_id=snapshot_id, target=str(target),
                             path=path)
    recorder = _StartRecorder(store, asyncio.get_running_loop(), job.job_id, started)
    try:
        result = await asyncio.to_thread(engine.restore, spec, snapshot_id, target,
                                         RunControl(), recorder, path, overwrite)
    except Exception as err:
        if recorder.recorded:  # it had begun writing into the target: say how it ended
            await store.append(job.job_id, None, [RestoreFinished(
                job_id=job.job_id, snapshot_id=snapshot_id, target=str(target),
                error=error_text(str(err)))])  # a file name in it may not be UTF-8
        raise  # refused before writing anything (no such path, would overwrite): no record
    finished = RestoreFinished(job_id=job.job_id, snapshot_id=snapshot_id, target=str(target),
                               files=result.files, bytes=result.bytes)
    await store.append(job.job_id, None,
                       [finished] if recorder.recorded else [started, finished])
    return {"files": result.files, "bytes": result.bytes, "target": str(target)}


class _StartRecorder(NullReporter):
    """Records RestoreStarted when the engine starts writing (its input checks passed).

    Every engine reports the "restoring" phase only after it has checked the snapshot,
    the path and the target, so a refused restore leaves nothing in the log.
    """

    def __init__(self, store: EventStore, loop: asyncio.AbstractEventLoop, stream: str,
                 event: RestoreStarted) -> None:
        self.store, self.loop, self.stream, self.event = store, loop, stream, event
        self.recorded = False

    def progress(self, progress: Progress) -> None:
        """On the first "restoring" report, append RestoreStarted and wait for it."""
        if self.recorded or progress.phase != "restoring":
            return
        self.recorded = True
        # Waited for, from the engine's thread: Started is in the log before Finished.
        asyncio.run_coroutine_threadsafe(
            self.store.append(self.stream, None, [self.event]), self.loop).result(timeout=60)


async def require_snapshot(job: JobView, snapshot_id: str) -> None:
    """Raise NotFound unless the job's destination lists this complete snapshot."""
    if snapshot_id not in {s.id for s in await list_snapshots(job)}:
        raise NotFound(f"job {job.job_id} has no snapshot {snapshot_id[:80]!r}")


async def verify_snapshot(store: EventStore, job: JobView, snapshot_id: str) -> dict[str, Any]:
    """Verify a snapshot against its manifest (or restic check), recorded as an event."""
    engine = get_engine(job.spec["engine"])
    spec = backup_spec(job.spec, job.job_id)
    result = await asyncio.to_thread(engine.verify, spec, snapshot_id,
                                     RunControl(), NullReporter())
    await store.append(job.job_id, None, [VerifyFinished(
        job_id=job.job_id, snapshot_id=snapshot_id, ok=result.ok,
        problems=list(result.problems[:50]))])
    return {"ok": result.ok, "problems": list(result.problems), "files": result.files_checked}

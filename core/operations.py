"""Snapshot operations a person asks for, checked before they are queued as runs.

A restore, verify or prune is a run (core.op_runs executes it); what can be refused
before it is queued is refused here, with the same messages as when these ran in the
request, so a refused one records nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from core.errors import Invalid, NotFound
from core.ownership import Owner, local_path
from core.protected import restore_refusal, written_relation
from core.pruning import backup_spec
from core.restore_leftovers import RESTIC_STAGING, written_names
from core.state import JobView
from engines.base import (
    BackupSpec,
    EngineError,
    NullReporter,
    Progress,
    RunControl,
    Snapshot,
)
from engines.manifest import check_rel_path
from engines.registry import get_engine
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
    written = written_names(job.spec, path)
    owners = [Owner.of(job.job_id, job.spec), *others]
    for owner in owners:
        dest = local_path(owner.destination, owner.engine)  # as the owner's engine reads it
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


async def restore_params(job: JobView, snapshot_id: str, data: dict[str, Any],
                         others: Iterable[Owner] = (), protected: Iterable[str] = ()
                         ) -> dict[str, Any]:
    """The checked parameters of a restore run, or Invalid/NotFound/EngineError.

    `others` are the other jobs' destinations, refused as targets like the job's own;
    `protected` are folders no restore may write into (the server's data directory).
    The engine's own checks (the path is in the snapshot, nothing would be
    overwritten) run too, before anything is queued or written.
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
            # Kept as the engines read it: "/src/docs", "./src/docs" and "src/docs/" are
            # "src/docs", so the checks below (and a crashed run's sweep) take the
            # folder it writes, target/src, and not target itself.
            path = check_rel_path(path)
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
    await asyncio.to_thread(preflight_restore, engine, backup_spec(job.spec, job.job_id),
                            snapshot_id, target, path, overwrite)
    return {"snapshot_id": snapshot_id, "target": str(target), "path": path,
            "overwrite": overwrite}


class _Checked(Exception):
    """The engine's restore passed its checks: the preflight stops it here."""


class _StopAtWriting(NullReporter):
    """Stops a restore at its first "restoring" report, before it writes a file.

    Every engine reports the "restoring" phase only after it has checked the snapshot,
    the path and the target, so what it raised before that is a refusal.
    """

    def progress(self, progress: Progress) -> None:
        """Raise _Checked once the restore would begin writing."""
        if progress.phase == "restoring":
            raise _Checked


def preflight_restore(engine: Any, spec: BackupSpec, snapshot_id: str, target: Path,
                      path: str | None, overwrite: bool) -> None:
    """Run the engine's restore checks only; raise what it refuses (in a worker thread).

    The engine creates the target (and restic a staging folder in it) before its first
    "restoring" report; those are removed again, when empty.
    """
    missing = _missing_parents(target)
    before = set(_listing(target))
    try:
        engine.restore(spec, snapshot_id, target, RunControl(), _StopAtWriting(), path,
                       overwrite)
    except _Checked:
        pass
    finally:
        # Only restic's staging folder is made in the target before the first
        # "restoring" report; any other new name is someone else's (another job's
        # restore into the same target made its folder meanwhile, empty until its files
        # come) and stays, even empty.
        for name in set(_listing(target)) - before:
            if name.startswith(RESTIC_STAGING):
                with contextlib.suppress(OSError):
                    os.rmdir(target / name)  # empty only: nothing of anyone's is lost
        for folder in missing:
            with contextlib.suppress(OSError):
                os.rmdir(folder)


def _missing_parents(target: Path) -> list[Path]:
    """target and its parents that do not exist yet, deepest first."""
    missing = []
    for folder in (target, *target.parents):
        if os.path.lexists(folder):
            break
        missing.append(folder)
    return missing


def _listing(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []


async def require_snapshot(job: JobView, snapshot_id: str) -> None:
    """Raise NotFound unless the job's destination lists this complete snapshot."""
    if snapshot_id not in {s.id for s in await list_snapshots(job)}:
        raise NotFound(f"job {job.job_id} has no snapshot {snapshot_id[:80]!r}")

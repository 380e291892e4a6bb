"""A restic repository, through restic: open or create it, list its snapshots and their
contents, check, forget and prune, and tidy up after a run that did not finish.

Each call goes through call(), which removes a lock left by a restic that died and tries
once more. Jobs sharing a repository see only their own snapshots (engines.restic.jobs).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from engines.child import process_alive, stop_leftover, stop_orphans
from engines.contract import BackupSpec
from engines.control import RunControl
from engines.errors import (
    Cancelled,
    DestinationNotWritable,
    EngineError,
    Interrupted,
    SnapshotNotFound,
)
from engines.fsutil import remove_tree
from engines.progress import ProgressMeter, Reporter
from engines.restic.cli import ResticRepo, has_repository, repo_for
from engines.restic.jobs import seen_by
from engines.restic.output import (
    ID_RE,
    SHORT_ID_LEN,
    Listing,
    as_count,
    check_progress,
    json_object,
    known_failure,
    parse_time,
    restic_error,
)
from engines.restic.process import Finished, run_restic
from engines.results import VerifyResult

log = logging.getLogger(__name__)

MAX_PROBLEMS = 100
MTIME_SLACK = 2.0  # seconds: file times vs. the run's start, across clock granularity
_LOCK_NAME_RE = re.compile(r"^[0-9a-f]{64}$")

# File counts and sizes per snapshot. restic 0.14 keeps no summary in the snapshot and
# `restic ls` costs a key derivation plus a walk of the trees, but snapshots never change:
# each is counted once per process (or taken from its backup's summary). Keyed by
# (repository, short id), the id the backup summary gives.
_STATS: dict[tuple[str, str], tuple[int, int]] = {}
_STATS_LOCK = threading.Lock()


def remember_stats(repo: ResticRepo, snapshot_id: str, files: int, size: int) -> None:
    """Keep a snapshot's file count and size (from its backup's summary)."""
    with _STATS_LOCK:
        _STATS[(str(repo.path), snapshot_id[:SHORT_ID_LEN])] = (files, size)


def raise_if_stopped(fin: Finished, what: str) -> None:
    """Raise Cancelled or Interrupted if this engine stopped restic before it finished."""
    if fin.stopped == "cancel" and fin.code != 0:
        raise Cancelled(f"the {what} was cancelled")
    if fin.stopped == "interrupt" and fin.code != 0:
        raise Interrupted(f"the {what} was interrupted")


def pack_files(repo_path: Path) -> list[os.DirEntry[str]]:
    """The pack files in a repository's data/."""
    out: list[os.DirEntry[str]] = []
    with contextlib.suppress(FileNotFoundError), os.scandir(repo_path / "data") as buckets:
        for bucket in buckets:
            if bucket.is_dir(follow_symlinks=False):
                with os.scandir(bucket.path) as packs:
                    out.extend(p for p in packs if p.is_file(follow_symlinks=False))
    return out


def new_pack_files(repo_path: Path, since: float) -> list[os.DirEntry[str]]:
    """Pack files (and restic's half-written `-tmp-` files) written since a run started."""
    out = []
    for entry in pack_files(repo_path):
        with contextlib.suppress(FileNotFoundError):
            if entry.stat(follow_symlinks=False).st_mtime >= since - MTIME_SLACK:
                out.append(entry)
    return out


def remove_half_written(repo_path: Path, since: float) -> None:
    """Remove the `-tmp-` files a killed restic left in data/ (restic ignores them for
    good); only while no restic holds a lock, as a running one may be writing them."""
    with contextlib.suppress(FileNotFoundError):
        if any(_LOCK_NAME_RE.match(n) for n in os.listdir(repo_path / "locks")):
            return
    for entry in new_pack_files(repo_path, since):
        if "-tmp-" in entry.name:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)


def run_started(resume: Mapping[str, Any] | None) -> float | None:
    """When the first attempt of an interrupted run started (time.time()), if recorded."""
    value = resume.get("started") if resume else None
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


def stop_orphan(repo: ResticRepo, resume: Mapping[str, Any] | None) -> None:
    """Kill the restic of a crashed attempt if it is still there: one that was paused
    (SIGSTOP) would stay stopped for good, holding its lock."""
    stop_leftover(resume, "restic", str(repo.path))



# --- restic calls with this engine's policies -----------------------------------------

def call(repo: ResticRepo, args: Sequence[str], what: str,
          control: RunControl | None = None,
          on_stdout: Callable[[bytes], None] | None = None,
          on_stderr: Callable[[bytes], bool] | None = None,
          on_start: Callable[[int], None] | None = None,
          ok_codes: Sequence[int] = (0,), full_place: Path | None = None,
          env_extra: Mapping[str, str] | None = None, check: bool = True,
          watch: bool = False) -> Finished:
    """Run restic; on a lock left by a restic that died, remove it and try once more.
    With `watch`, restic is stopped as soon as the repository vanishes."""
    fin = run_restic(repo, args, control, on_stdout, on_stderr, on_start, env_extra,
               what if watch else None)
    if (fin.code not in ok_codes and fin.stopped is None
            and any("already locked" in line for line in fin.stderr)
            and remove_dead_locks(repo)):
        fin = run_restic(repo, args, control, on_stdout, on_stderr, on_start, env_extra,
                   what if watch else None)
    if check and fin.code not in ok_codes and fin.stopped is None:
        raise restic_error(repo, what, fin, full_place)
    return fin

def output(repo: ResticRepo, args: Sequence[str], what: str) -> bytes:
    chunks: list[bytes] = []
    call(repo, args, what, on_stdout=chunks.append)
    return b"".join(chunks)

def remove_dead_locks(repo: ResticRepo) -> int:
    """Remove locks of restic processes on this machine that no longer run; return how
    many. `restic unlock` would also remove locks merely older than 30 minutes, which
    includes the lock of a backup paused that long: not safe with pause."""
    locks = repo.path / "locks"
    try:
        names = [n for n in os.listdir(locks) if _LOCK_NAME_RE.match(n)]
    except OSError:
        return 0
    host = socket.gethostname()
    removed = 0
    for name in names:
        chunks: list[bytes] = []
        fin = run_restic(repo, ["cat", "lock", name, "--no-lock"], on_stdout=chunks.append)
        lock = json_object(b"".join(chunks)) if fin.code == 0 else None
        if lock is None or lock.get("hostname") != host:
            continue  # gone already, or another machine's: this one cannot tell
        pid = lock.get("pid")
        if not isinstance(pid, int) or process_alive(pid):
            continue
        with contextlib.suppress(FileNotFoundError):
            (locks / name).unlink()
            log.info("removed the lock of restic process %s, which no longer runs", pid)
            removed += 1
    return removed

def ensure_repository(repo: ResticRepo, control: RunControl) -> None:
    if has_repository(repo.path):
        return
    if not repo.init:
        raise EngineError(f"there is no restic repository at {repo.path}; create one "
                          "with restic init, or set the init option to let the backup "
                          "create it")
    with os.scandir(repo.path) as entries:
        if any(True for _ in entries):
            raise EngineError(f"destination {repo.path} is not empty and holds no restic "
                              "repository; choose an empty directory for a new one")
    fin = call(repo, ["init"], "init", control=control, check=False)
    if fin.code != 0 or not has_repository(repo.path):
        # The directory was empty: clear a half-made repository so the next run can
        # create it instead of finding a non-empty directory.
        for entry in os.listdir(repo.path):
            remove_tree(repo.path / entry)
        raise_if_stopped(fin, "backup")
        raise restic_error(repo, "init", fin)

def list_snapshots(repo: ResticRepo, job_id: str, *ids: str) -> list[dict[str, Any]]:
    """The snapshots the job sees (all of them, or those of `ids`) as restic describes
    them (with a parseable time)."""
    try:
        data = json.loads(output(repo, ["--no-lock", "snapshots", "--json", *ids],
                                       "snapshots"))
    except ValueError as err:
        raise EngineError(f"restic snapshots printed something that is not JSON: "
                          f"{err}") from err
    out = []
    for snap in data if isinstance(data, list) else ():
        if not isinstance(snap, dict) or not isinstance(snap.get("id"), str):
            continue
        try:
            parse_time(snap.get("time"))
        except ValueError:
            log.warning("restic snapshot %s has an unreadable time; skipped", snap["id"])
            continue
        if seen_by(snap, job_id):
            out.append(snap)
    return out

def snapshot_stats(repo: ResticRepo, snap: Mapping[str, Any]) -> tuple[int, int]:
    """Regular files and their bytes in a snapshot (restic >= 0.17 stores a summary)."""
    summary = snap.get("summary")
    if isinstance(summary, dict) and "total_files_processed" in summary:
        return (as_count(summary.get("total_files_processed")),
                as_count(summary.get("total_bytes_processed")))
    key = (str(repo.path), str(snap["id"])[:SHORT_ID_LEN])
    with _STATS_LOCK:
        known = _STATS.get(key)
    if known is not None:
        return known
    listing = list_snapshot(repo, str(snap["id"]), None, keep_nodes=False, job_id="")
    return listing.files, listing.size

def list_snapshot(repo: ResticRepo, snapshot_id: str, control: RunControl | None,
             keep_nodes: bool, job_id: str) -> Listing:
    """List a snapshot of the job (one restic call that also tells whether the id
    exists)."""
    if not isinstance(snapshot_id, str) or not ID_RE.match(snapshot_id):
        raise SnapshotNotFound(f"{str(snapshot_id)[:80]!r} is not a restic snapshot id")
    if not has_repository(repo.path):
        raise SnapshotNotFound(f"no snapshot {snapshot_id}: there is no restic "
                               f"repository at {repo.path}")
    listing = Listing(keep_nodes)
    fin = call(repo, ["ls", "--json", snapshot_id], "ls", control=control,
                     on_stdout=listing.feed)
    raise_if_stopped(fin, "listing")
    snap = listing.snapshot
    if snap is None or not isinstance(snap.get("id"), str) or not seen_by(snap, job_id):
        # Another job's snapshot in a shared repository is not this job's to see.
        # restic ls says "no matching ID found" on stderr and exits 0.
        raise SnapshotNotFound(f"no snapshot {snapshot_id} in the restic repository at "
                               f"{repo.path}")
    with _STATS_LOCK:
        _STATS[(str(repo.path), snap["id"][:SHORT_ID_LEN])] = (listing.files, listing.size)
    return listing

def adopt_partial_upload(repo: ResticRepo, resume: Mapping[str, Any],
                          warn: Reporter) -> None:
    """Before a resume: drop dead locks and index what the interrupted run uploaded."""
    stop_orphan(repo, resume)
    remove_dead_locks(repo)
    since = run_started(resume)
    if since is None or not new_pack_files(repo.path, since):
        return
    try:
        call(repo, ["rebuild-index"], "rebuild-index")
    except EngineError as err:
        warn.warning(f"the data uploaded before the interruption could not be reused "
                     f"({err}); it is uploaded again")
    remove_half_written(repo.path, since)

def drop_partial_upload(repo: ResticRepo, since: float, warn: Reporter) -> None:
    """After a cancel or a full disk: remove the packs the unfinished run uploaded."""
    if not new_pack_files(repo.path, since):
        return
    remove_dead_locks(repo)
    try:
        # Unindexed packs are unreferenced: prune deletes them first, before it needs
        # space for anything. `unlimited` keeps it from repacking anything else.
        call(repo, ["prune", "--max-unused", "unlimited"], "prune")
    except EngineError as err:
        warn.warning(f"restic could not remove what the unfinished backup uploaded "
                     f"({err}); the next prune will")
        return
    remove_half_written(repo.path, since)



# --- verify and delete -------------------------------------------------------------------

def verify_snapshot(spec: BackupSpec, snapshot_id: str, control: RunControl,
                    reporter: Reporter) -> VerifyResult:
    """Check the repository and read back its data (restic check --read-data)."""
    repo = repo_for(spec)
    # A check a killed server left running holds an exclusive lock: stop it first.
    stop_orphans("restic", str(repo.path))
    files = list_snapshot(repo, snapshot_id, control, keep_nodes=False,
                          job_id=spec.job_id).files
    data_bytes = 0
    for entry in pack_files(repo.path):
        with contextlib.suppress(FileNotFoundError):
            data_bytes += entry.stat(follow_symlinks=False).st_size
    meter = ProgressMeter(reporter)
    # check reads every pack; its progress is a share of the repository's data.
    meter.update(force=True, phase="verifying", counting=False, files_total=files,
                 bytes_total=data_bytes)

    def progress(raw: bytes) -> None:
        share = check_progress(raw)
        if share is not None:
            meter.update(bytes_done=int(share * data_bytes))

    args = ["check", f"--read-data-subset={repo.read_data_subset}"
            if repo.read_data_subset else "--read-data"]
    # Without a terminal restic prints check progress only when asked for a rate.
    fin = call(repo, args, "check", control=control, on_stdout=progress,
                     env_extra={"RESTIC_PROGRESS_FPS": "2"}, check=False)
    raise_if_stopped(fin, "verification")
    if fin.code == 0:
        meter.update(force=True, phase="done", files_done=files, bytes_done=data_bytes)
        return VerifyResult(True, (), files)
    known = known_failure(repo, "check", fin)
    if known is not None and not isinstance(known, DestinationNotWritable):
        raise known
    problems = tuple(line for line in fin.stderr
                     if not line.startswith(("using temporary cache", "create exclusive")))
    meter.update(force=True, phase="done")
    return VerifyResult(False, problems[:MAX_PROBLEMS] or
                        (f"restic check failed with exit code {fin.code}",), files)

def delete_snapshots(spec: BackupSpec, snapshot_ids: Sequence[str]) -> None:
    """Forget snapshots and prune the data only they used."""
    if not snapshot_ids:
        return
    repo = repo_for(spec)
    if not has_repository(repo.path):
        raise SnapshotNotFound(f"there is no restic repository at {repo.path}")
    stop_orphans("restic", str(repo.path))
    known = [str(s["id"]) for s in list_snapshots(repo, spec.job_id)]
    full = []
    for snap_id in snapshot_ids:
        found = [k for k in known if ID_RE.match(snap_id) and k.startswith(snap_id)]
        if len(found) != 1:
            raise SnapshotNotFound(f"no snapshot {snap_id[:80]} in the restic repository "
                                   f"at {repo.path}")
        full.append(found[0])
    call(repo, ["forget", "--prune", *full], "forget")

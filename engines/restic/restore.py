"""Restoring a restic snapshot, or one path in it, to target/<source name>/...

restic stores absolute paths; the snapshot's `paths` say which source each was. restic
restores into a staging directory inside the target (same file system, so putting the
result in place is a rename) and each source's subtree is moved out of it.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import stat
import tempfile
from collections.abc import Sequence
from pathlib import Path

from engines.contract import BackupSpec
from engines.control import RunControl
from engines.errors import DiskFull, EngineError, SnapshotNotFound
from engines.fsutil import is_disk_full, refuse_clashes, remove_tree
from engines.manifest import check_rel_path
from engines.progress import ProgressMeter, Reporter
from engines.restic.cli import repo_for, restic_binary, restore_keeps_holes
from engines.restic.output import Node, restic_error
from engines.restic.paths import restic_pattern
from engines.restic.repo import call, list_snapshot, raise_if_stopped
from engines.results import RestoreResult


def move_into(src: Path, dst: Path) -> None:
    """Put a restored entry at dst: merge directories, replace anything else."""
    try:
        dst_st = dst.lstat()
    except FileNotFoundError:
        os.rename(src, dst)
        return
    src_st = src.lstat()
    if stat.S_ISDIR(dst_st.st_mode) and stat.S_ISDIR(src_st.st_mode):
        for child in os.listdir(src):
            move_into(src / child, dst / child)
        # The directory that was already there takes the snapshot's metadata, as a fresh
        # one would; its owner only where this process may set it.
        with contextlib.suppress(OSError):
            os.chown(dst, src_st.st_uid, src_st.st_gid)
        os.chmod(dst, stat.S_IMODE(src_st.st_mode))
        os.utime(dst, ns=(src_st.st_atime_ns, src_st.st_mtime_ns))
        return
    remove_tree(dst)
    os.rename(src, dst)


def check_target(target: Path, nodes: Sequence[Node], overwrite: bool) -> None:
    """Refuse, before anything is written, a target that has what the restore would write."""
    refuse_clashes(target, ((n.rel, n.kind == "dir") for n in nodes), overwrite)


def restore_snapshot(spec: BackupSpec, snapshot_id: str, target: Path, control: RunControl,
                     reporter: Reporter, path: str | None = None,
                     overwrite: bool = False) -> RestoreResult:
    """Restore a snapshot, or one path in it, to target/<source name>/..."""
    repo = repo_for(spec)
    rel = check_rel_path(path) if path else ""
    meter = ProgressMeter(reporter)
    meter.update(force=True, phase="scanning", counting=True)
    listing = list_snapshot(repo, snapshot_id, control, keep_nodes=True, job_id=spec.job_id)
    snap, roots, nodes = listing.snapshot or {}, listing.roots, listing.nodes
    name, _, inner = rel.partition("/")
    if rel and name not in roots:
        raise SnapshotNotFound(f"{path} is not in snapshot {snapshot_id}")
    if rel:
        ancestors = {"/".join(rel.split("/")[:i]) for i in range(1, rel.count("/") + 1)}
        chosen = [n for n in nodes if n.rel == rel or n.rel.startswith(rel + "/")]
        if not chosen:
            raise SnapshotNotFound(f"{path} is not in snapshot {snapshot_id}")
        # restic restores the parents of the path too (as directories).
        nodes = [n for n in nodes if n.rel in ancestors] + chosen
    files = [n for n in nodes if n.kind == "file"]
    total_files, total_bytes = len(files), sum(n.size for n in files)
    check_target(target, nodes, overwrite)
    try:
        target.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".restic-restore-", dir=target))
    except OSError as err:
        raise EngineError(f"restore target {target} cannot be written: "
                          f"{err.strerror}") from err
    # restic 0.14 restore reports no progress: say what is coming, then when it is done.
    meter.update(force=True, phase="restoring", counting=False, files_total=total_files,
                 bytes_total=total_bytes)
    try:
        args = ["restore", str(snap["id"]), "--target", str(staging)]
        if restore_keeps_holes(restic_binary()):
            args.append("--sparse")  # sparse files keep their holes (issue 12)
        if rel:
            args.append(f"--include={restic_pattern(posixpath.join(roots[name], inner))}")
        fin = call(repo, args, "restore", control=control, full_place=target,
                         check=False)
        raise_if_stopped(fin, "restore")
        if fin.code != 0:
            raise restic_error(repo, "restore", fin, full_place=target)
        meter.update(force=True, phase="finalising")
        for source in ([name] if rel else list(roots)):
            staged = staging / roots[source].lstrip("/")
            if os.path.lexists(staged):
                move_into(staged, target / source)
    except OSError as err:
        if is_disk_full(err):
            raise DiskFull(f"restore target {target} is full ({err.strerror})") from err
        raise EngineError(f"restore into {target} failed: {err.strerror} "
                          f"({err.filename})") from err
    finally:
        with contextlib.suppress(FileNotFoundError):
            remove_tree(staging)
    meter.update(force=True, phase="done", files_done=total_files, bytes_done=total_bytes,
                 current_file="")
    return RestoreResult(total_files, total_bytes)

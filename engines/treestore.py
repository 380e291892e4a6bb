"""Snapshots kept as plain directory trees (mirror and rsync): list, restore, verify, delete.

Layout under the destination:
    <id>/                  a complete snapshot: one directory per source, plain files
    <id>.manifest.json     what it holds, with hashes (written before the rename below)
    <id>.partial/          a snapshot being written; never listed, never restored
A snapshot is complete only once `<id>.partial` has been renamed to `<id>`, which happens
after its manifest is durable, so a crash at any moment leaves nothing that looks complete.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from engines.contract import BackupSpec, Engine
from engines.control import RunControl
from engines.errors import DiskFull, EngineError, SnapshotNotFound
from engines.fsmeta import apply_meta, shown
from engines.fsutil import remove_tree
from engines.manifest import (
    SNAPSHOT_ID_RE,
    Manifest,
    ManifestError,
    belongs_to_job,
    check_rel_path,
    check_snapshot_id,
    sha256_file,
    unique_snapshot_id,
)
from engines.manifest_stream import StreamedManifest, is_streamed, listed_manifest
from engines.previndex import PreviousFiles
from engines.progress import ProgressMeter, Reporter
from engines.results import RestoreResult, Snapshot, VerifyResult
from engines.treerestore import restore_tree
from models.atomic import fsync_dir

PARTIAL = ".partial"
DELETING = ".deleting"
MANIFEST = ".manifest.json"


def manifest_path(dest: Path, snapshot_id: str) -> Path:
    """Where a snapshot's manifest lives."""
    return dest / f"{snapshot_id}{MANIFEST}"


def disk_full(dest: Path, err: OSError) -> DiskFull:
    """A DiskFull error naming the destination."""
    return DiskFull(f"destination {shown(dest)} is full ({err.strerror}); free some space "
                    "and run the job again")


def set_meta(path: Path | str, entry: Mapping[str, Any]) -> list[str]:
    """Give a restored or copied entry its owner, attributes, mode and mtime.

    Returns the extended attributes the filesystem refused (see engines.fsmeta).
    """
    return apply_meta(path, entry)


def belongs_to(dest: Path, snapshot_id: str, job_id: str) -> bool:
    """Whether a complete snapshot is the job's (see manifest.belongs_to_job)."""
    return belongs_to_job(manifest_path(dest, snapshot_id), job_id)


class TreeSnapshots(Engine):
    """Listing, restore, verify and delete for engines whose snapshots are directory trees."""

    def snapshot_dir(self, spec: BackupSpec, snapshot_id: str) -> Path:
        """The directory of a complete snapshot, or SnapshotNotFound."""
        check_snapshot_id(snapshot_id)
        dest = spec.destination
        path = dest / snapshot_id
        if not path.is_dir() or not manifest_path(dest, snapshot_id).is_file() \
                or not belongs_to(dest, snapshot_id, spec.job_id):
            # Another job's snapshot in a shared destination is not this job's to
            # restore, verify or delete (issue 12, item 1).
            raise SnapshotNotFound(f"no complete snapshot {snapshot_id} of this job in "
                                   f"{shown(dest)}")
        return path

    def complete_ids(self, dest: Path, job_id: str = "") -> list[str]:
        """Ids of complete snapshots (directory and manifest both present), oldest first.

        With a job id, only that job's (and those that name no job).
        """
        try:
            names = os.listdir(dest)
        except FileNotFoundError:
            return []
        ids = [n for n in names if SNAPSHOT_ID_RE.match(n) and (dest / n).is_dir()]
        return sorted(i for i in ids if manifest_path(dest, i).is_file()
                      and belongs_to(dest, i, job_id))

    def snapshots(self, spec: BackupSpec) -> list[Snapshot]:
        """List complete snapshots, oldest first."""
        out = []
        for snap_id in self.complete_ids(spec.destination):
            try:
                # Checked whole (its checksum), without holding its entries.
                m = listed_manifest(manifest_path(spec.destination, snap_id))
            except ManifestError:
                continue  # verify reports it; listing shows what can be restored
            if spec.job_id and m.job_id and m.job_id != spec.job_id:
                continue  # another job's snapshot in a shared destination
            out.append(Snapshot(snap_id, m.time, m.files, m.size))
        return sorted(out, key=lambda s: (s.time, s.id))

    def partial_for(self, spec: BackupSpec,
                    resume: Mapping[str, Any] | None) -> tuple[str, Path, bool]:
        """The snapshot id and partial directory to write, and whether it is a resume."""
        dest = spec.destination
        if resume and isinstance(resume.get("snapshot_id"), str):
            snap_id = check_snapshot_id(resume["snapshot_id"])
            partial = dest / f"{snap_id}{PARTIAL}"
            if partial.is_dir():
                return snap_id, partial, True
        taken = {n.split(".", 1)[0] for n in os.listdir(dest)}
        snap_id = unique_snapshot_id(taken)
        partial = dest / f"{snap_id}{PARTIAL}"
        partial.mkdir()
        return snap_id, partial, False

    def latest(self, spec: BackupSpec) -> tuple[str, PreviousFiles] | None:
        """The job's newest complete snapshot with a readable manifest, if any, and its
        files packed small (engines.previndex) for the next run's quick check."""
        for snap_id in reversed(self.complete_ids(spec.destination, spec.job_id)):
            path = manifest_path(spec.destination, snap_id)
            try:
                if is_streamed(path):
                    streamed = StreamedManifest(path)
                    if spec.job_id and streamed.job_id and streamed.job_id != spec.job_id:
                        continue
                    return snap_id, PreviousFiles(streamed.entries(), streamed.files)
                manifest = Manifest.read(path)
            except ManifestError:
                continue
            if spec.job_id and manifest.job_id and manifest.job_id != spec.job_id:
                continue
            return snap_id, PreviousFiles(manifest.entries)
        return None

    # --- restore ----------------------------------------------------------------------

    def restore(self, spec: BackupSpec, snapshot_id: str, target: Path, control: RunControl,
                reporter: Reporter, path: str | None = None,
                overwrite: bool = False) -> RestoreResult:
        """Copy a snapshot (or one path in it) into target, keeping its paths.

        Files keep their holes, hard links recorded in the manifest are links again, and
        owner, group and kept extended attributes come back where the server may set them
        (engines.treerestore, which reads the manifest one entry at a time).
        """
        root = self.snapshot_dir(spec, snapshot_id)
        return restore_tree(root, manifest_path(spec.destination, snapshot_id), target,
                            control, reporter, path, overwrite)

    # --- verify -----------------------------------------------------------------------

    def verify(self, spec: BackupSpec, snapshot_id: str, control: RunControl,
               reporter: Reporter) -> VerifyResult:
        """Re-hash every file of a snapshot and compare it with the manifest."""
        root = self.snapshot_dir(spec, snapshot_id)
        try:
            manifest = Manifest.read(manifest_path(spec.destination, snapshot_id))
        except ManifestError as err:
            return VerifyResult(False, (str(err),))
        meter = ProgressMeter(reporter)
        meter.update(force=True, phase="verifying", counting=False,
                     files_total=manifest.files, bytes_total=manifest.size)
        problems: list[str] = []
        expected = manifest.by_path()
        for entry in manifest.entries:
            control.safe_point()
            problem = check_entry(root, entry)
            if problem:
                problems.append(problem)
            if entry["type"] == "file":
                meter.add(files=1, nbytes=entry.get("size", 0), current_file=entry["path"])
        for rel in walk_rel(root):
            if rel not in expected:
                problems.append(f"{shown(rel)}: in the snapshot but not in its manifest")
        meter.update(force=True, phase="done", current_file="")
        return VerifyResult(not problems, tuple(problems), manifest.files)

    # --- delete and clean-up ------------------------------------------------------------

    def delete_snapshots(self, spec: BackupSpec, snapshot_ids: Sequence[str]) -> None:
        """Remove snapshots: renamed away first so a half-deleted one is never listed."""
        dest = spec.destination
        for snap_id in snapshot_ids:
            root = self.snapshot_dir(spec, snap_id)
            doomed = dest / f"{snap_id}{DELETING}"
            os.replace(root, doomed)
            fsync_dir(dest)
            manifest_path(dest, snap_id).unlink(missing_ok=True)
            remove_tree(doomed)

    def tidy(self, spec: BackupSpec) -> None:
        """Remove what killed attempts left that no run can still need.

        A kill while a manifest is written leaves its temp file; a kill just after the
        snapshot was renamed into place leaves its journal; a kill during a delete leaves
        `<id>.deleting` (never listed) and perhaps its manifest, alone under its id.
        """
        dest = spec.destination
        try:
            names = os.listdir(dest)
        except FileNotFoundError:
            return
        complete = set(self.complete_ids(dest))
        by_id: dict[str, set[str]] = {}
        for name in names:
            by_id.setdefault(name.split(".", 1)[0], set()).add(name)
        for name in names:
            snap_id = name.split(".", 1)[0]
            stale_manifest = name.startswith(".") and ".manifest.json." in name \
                and name.endswith(".tmp")
            done_journal = name.endswith(".journal") and name[:-len(".journal")] in complete
            if name == f"{snap_id}{DELETING}" and SNAPSHOT_ID_RE.fullmatch(snap_id):
                remove_tree(dest / name)  # finish a delete a kill cut short
            elif stale_manifest or done_journal or (
                    name == f"{snap_id}{MANIFEST}" and SNAPSHOT_ID_RE.fullmatch(snap_id)
                    and not by_id[snap_id] - {name, f"{snap_id}{DELETING}"}):
                # The last: a manifest with nothing else of its id (no snapshot, partial
                # or archive) describes a snapshot already deleted.
                (dest / name).unlink(missing_ok=True)

    def discard_partial(self, spec: BackupSpec, resume: Mapping[str, Any] | None = None) -> None:
        """Remove partial and half-deleted snapshot directories."""
        try:
            names = os.listdir(spec.destination)
        except FileNotFoundError:
            return
        for name in names:
            if name.endswith((PARTIAL, DELETING, ".journal")):
                path = spec.destination / name
                if path.is_dir() and not path.is_symlink():
                    remove_tree(path)
                else:
                    path.unlink(missing_ok=True)


def check_entry(root: Path, entry: Mapping[str, Any]) -> str | None:
    """Compare one entry on disk with its manifest record; return the problem, if any."""
    path = root / entry["path"]
    name = shown(entry["path"])
    try:
        st = path.lstat()
    except FileNotFoundError:
        return f"{name}: missing"
    kind = entry["type"]
    if kind == "symlink":
        if not stat.S_ISLNK(st.st_mode) or os.readlink(path) != entry["target"]:
            return f"{name}: symlink changed"
    elif kind == "dir":
        if not stat.S_ISDIR(st.st_mode):
            return f"{name}: not a directory any more"
    elif not stat.S_ISREG(st.st_mode):
        return f"{name}: not a regular file any more"
    elif entry.get("link") and _not_linked(root, entry, st):
        return f"{name}: no longer a hard link to {shown(entry['link'])}"
    elif st.st_size != entry["size"]:
        return f"{name}: size {st.st_size}, manifest says {entry['size']}"
    elif sha256_file(path) != entry["sha256"]:
        return f"{name}: content does not match its hash (damaged)"
    return None


def _not_linked(root: Path, entry: Mapping[str, Any], st: os.stat_result) -> bool:
    """Whether a file recorded as a hard link to another is now a separate file."""
    try:
        other = (root / check_rel_path(entry["link"])).lstat()
    except (OSError, EngineError):
        return True
    return (other.st_dev, other.st_ino) != (st.st_dev, st.st_ino)


def walk_rel(root: Path) -> Iterator[str]:
    """Every path under root, relative, without following symlinks."""
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath).relative_to(root)
        for name in dirnames + filenames:
            yield (base / name).as_posix()

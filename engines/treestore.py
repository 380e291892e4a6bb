"""Snapshots kept as plain directory trees (mirror and rsync): list, restore, verify, delete.

Layout under the destination:
    <id>/                  a complete snapshot: one directory per source, plain files
    <id>.manifest.json     what it holds, with hashes (written before the rename below)
    <id>.partial/          a snapshot being written; never listed, never restored
A snapshot is complete only once `<id>.partial` has been renamed to `<id>`, which happens
after its manifest is durable, so a crash at any moment leaves nothing that looks complete.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from engines.contract import BackupSpec, Engine
from engines.control import RunControl
from engines.errors import DiskFull, EngineError, SnapshotNotFound
from engines.filecopy import copy_file, link_into, restore_tmp, symlink_into
from engines.fsmeta import apply_meta, refused_message, shown
from engines.fsutil import is_disk_full, refuse_clashes, remove_tree
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
from engines.progress import ProgressMeter, Reporter
from engines.results import RestoreResult, Snapshot, VerifyResult
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
                m = Manifest.read(manifest_path(spec.destination, snap_id))
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

    def latest(self, spec: BackupSpec) -> tuple[str, Manifest] | None:
        """The job's newest complete snapshot with a readable manifest, if any."""
        for snap_id in reversed(self.complete_ids(spec.destination, spec.job_id)):
            try:
                manifest = Manifest.read(manifest_path(spec.destination, snap_id))
            except ManifestError:
                continue
            if spec.job_id and manifest.job_id and manifest.job_id != spec.job_id:
                continue
            return snap_id, manifest
        return None

    # --- restore ----------------------------------------------------------------------

    def restore(self, spec: BackupSpec, snapshot_id: str, target: Path, control: RunControl,
                reporter: Reporter, path: str | None = None,
                overwrite: bool = False) -> RestoreResult:
        """Copy a snapshot (or one path in it) into target, keeping its paths.

        Files keep their holes, hard links recorded in the manifest are links again, and
        owner, group and kept extended attributes come back where the server may set them.
        """
        root = self.snapshot_dir(spec, snapshot_id)
        manifest = Manifest.read(manifest_path(spec.destination, snapshot_id))
        entries = select_entries(manifest, path)
        prepare_target(target, entries, overwrite)
        meter = ProgressMeter(reporter)
        meter.update(force=True, phase="restoring", counting=False,
                     files_total=sum(1 for e in entries if e["type"] == "file"),
                     bytes_total=sum(e.get("size", 0) for e in entries if e["type"] == "file"))
        real_target = Path(os.path.realpath(target))
        restored: dict[str, Path] = {}  # files written so far, for hard links to them
        try:
            for entry in entries:
                control.safe_point()
                out = safe_output_path(real_target, entry["path"])
                if entry["type"] == "dir":
                    if overwrite and os.path.lexists(out) and not out.is_dir():
                        # Asked to overwrite: a file (or link) where the snapshot has a
                        # folder is replaced like any file, not left to fail half-way.
                        os.unlink(out)
                    out.mkdir(parents=True, exist_ok=True)
                    continue
                leader = restored.get(entry.get("link") or "")
                if leader is not None and link_into(leader, out, restore_tmp(out)):
                    restored[entry["path"]] = out
                    meter.add(files=1, nbytes=entry["size"], current_file=shown(entry["path"]))
                    continue
                refused = _place(out, entry, root)
                if refused:
                    reporter.warning(refused_message(entry["path"], refused))
                if entry["type"] == "file":
                    restored[entry["path"]] = out
                    meter.add(files=1, nbytes=entry["size"], current_file=shown(entry["path"]))
            for entry in reversed(entries):  # directories last, deepest first: mtimes stick
                if entry["type"] == "dir":
                    refused = set_meta(safe_output_path(real_target, entry["path"]), entry)
                    if refused:
                        reporter.warning(refused_message(entry["path"], refused))
        except OSError as err:
            if is_disk_full(err):
                raise disk_full(target, err) from err
            raise EngineError(f"restore into {shown(target)} failed: {err.strerror} "
                              f"({shown(err.filename or '')})") from err
        meter.update(force=True, phase="done", current_file="")
        return RestoreResult(meter.state.files_done, meter.state.bytes_done)

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


def _place(out: Path, entry: Mapping[str, Any], root: Path) -> list[str]:
    """Restore a file or symlink under a short temporary name beside `out`, then rename.

    A failure (a full disk) removes the half-written temp file. Returns the attributes
    the filesystem refused.
    """
    tmp = restore_tmp(out)
    try:
        if entry["type"] == "symlink":
            symlink_into(entry["target"], out, tmp)
        else:
            copy_file(root / entry["path"], tmp, exclusive=True)
        refused = set_meta(tmp, entry)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return refused


def select_entries(manifest: Manifest, path: str | None) -> list[dict[str, Any]]:
    """The manifest entries under `path` (all of them without one), parents first."""
    if not path:
        return list(manifest.entries)
    rel = check_rel_path(path)
    chosen = [e for e in manifest.entries
              if e["path"] == rel or e["path"].startswith(rel + "/")]
    if not chosen:
        raise SnapshotNotFound(f"{shown(path)} is not in snapshot {manifest.snapshot_id}")
    # The parents of the chosen path exist in the target as plain directories.
    parents = [p for p in Path(rel).parents if str(p) != "."]
    by_path = manifest.by_path()
    head = [by_path[str(p)] for p in reversed(parents) if str(p) in by_path]
    return head + chosen


def safe_output_path(real_target: Path, rel: str) -> Path:
    """Where an entry goes under target; refuse anything that would land outside it."""
    rel = check_rel_path(rel)
    out = real_target / rel
    parent = Path(os.path.realpath(out.parent))
    if parent != real_target and real_target not in parent.parents:
        raise EngineError(f"{shown(rel)} would be written outside {shown(real_target)}; "
                          "refused")
    return out


def prepare_target(target: Path, entries: Sequence[Mapping[str, Any]], overwrite: bool) -> None:
    """Create the target, refusing (before writing anything) to overwrite existing files."""
    refuse_clashes(target, ((e["path"], e["type"] == "dir") for e in entries), overwrite)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise EngineError(f"restore target {shown(target)} cannot be created: "
                          f"{err.strerror}") from err


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

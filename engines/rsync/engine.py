"""The rsync engine: dated snapshot directories made by the real `rsync`, like mirror's.

Same layout as the mirror engine (see engines.treestore), so listing, restore, verify,
delete and prune are TreeSnapshots'. A run:

1. scans the sources with engines.scan (the same include/exclude code as mirror), which
   gives exact totals for progress before any byte moves, and the list of paths;
2. runs `rsync --files-from` per source into `<id>.partial/<source name>/`, with
   `--link-dest` at the same source in the previous complete snapshot, so unchanged files
   are hard links and only changes take space. rsync's quick check trusts size and
   mtime; a file that kept both while its inode or change time moved (against what the
   previous manifest recorded) goes to a second rsync with --checksum, which compares
   contents (and still links a file that did not change). The job's `checksum` option
   compares every file's contents;
3. walks what rsync wrote and builds the manifest, taking hashes from the previous
   manifest for files that are hard links to the previous snapshot (same inode), and
   recording each entry's source owner, inode and change time (engines.rsync.manifest);
4. syncs, writes the manifest, renames `<id>.partial` to `<id>`, syncs the directory.

Resume after a crash or an interrupt: the checkpoint names the partial directory, and
rsync's quick check (size and mtime) leaves every file that was already finished alone;
only the file in flight and those not reached are copied.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engines.child import stop_leftover
from engines.contract import BackupSpec
from engines.control import RunControl
from engines.durable import make_durable
from engines.errors import Cancelled, DiskFull, EngineError, Interrupted
from engines.fsmeta import ACL_NAMES, read_xattrs, shown
from engines.fsutil import is_disk_full, remove_tree
from engines.manifest_stream import ManifestWriter
from engines.previndex import PreviousFiles
from engines.progress import CollectingReporter, ProgressMeter, Reporter
from engines.ratelimit import bwlimit_option
from engines.results import BackupResult
from engines.rsync.args import (
    CopyOptions,
    Keeps,
    LostExtras,
    checksum_option,
    probe_destination,
    rsync_binary,
    rsync_command,
)
from engines.rsync.links import link_across_sources
from engines.rsync.manifest import (
    SnapshotWalk,
    describe,
    hash_readable,
    linked_hash,
)
from engines.rsync.output import TransferTally, check_outcome
from engines.rsync.plan import Details, ListPlan, SourceDetails
from engines.rsync.process import Checkpointer, run_rsync
from engines.scan import Entry, walk
from engines.treestore import (
    TreeSnapshots,
    disk_full,
    manifest_path,
    set_meta,
)
from models.atomic import fsync_dir

# rsync's scratch space inside the partial snapshot: its temp files (--temp-dir) and the
# file lists. Kept inside `<id>.partial` so a cancel or discard removes it with the rest,
# and removed before the rename, so a complete snapshot holds only the sources.
WORK_DIR = ".bm-rsync-work"


# --- the engine ---------------------------------------------------------------------------


class RsyncEngine(TreeSnapshots):
    """Snapshots as directories made by rsync, hard-linked to the previous snapshot."""

    name = "rsync"
    resumes_partial = True

    def discard_partial(self, spec: BackupSpec, resume: Mapping[str, Any] | None = None) -> None:
        """Stop an rsync the interrupted run left behind, then remove partial snapshots."""
        stop_leftover(resume, "rsync", str(spec.destination / str((resume or {}).get(
            "partial", ""))))
        super().discard_partial(spec, resume)

    def check_ready(self, spec: BackupSpec) -> None:
        """Raise BinaryMissing unless rsync is installed."""
        rsync_binary()

    def backup(self, spec: BackupSpec, control: RunControl, reporter: Reporter,
               resume: Mapping[str, Any] | None = None) -> BackupResult:
        """Make a new snapshot with rsync, or finish the one a checkpoint names."""
        started = time.monotonic()
        rsync = rsync_binary()
        bwlimit = bwlimit_option(spec.options)  # a bad option changes nothing on disk
        checksum = checksum_option(spec.options)
        spec.check_sources()
        spec.check_destination()
        dest = spec.destination
        self.tidy(spec)
        stop_leftover(resume, "rsync", str(dest / str((resume or {}).get("partial", ""))))
        snap_id, partial, resuming = self.partial_for(spec, resume)
        checkpoint = {"engine": self.name, "snapshot_id": snap_id, "partial": partial.name}
        warn = CollectingReporter(reporter)
        meter = ProgressMeter(warn)
        checkpointer = Checkpointer(warn, checkpoint, meter)
        checkpointer.emit()
        work = partial / WORK_DIR
        try:
            if work.exists():
                remove_tree(work)  # temp files of an rsync that was killed
            (work / "tmp").mkdir(parents=True)
            options = CopyOptions(probe_destination(work), bwlimit, checksum)
            lost = LostExtras(options.keeps)
            # Scan first: the same selection as mirror, exact totals before copying (so
            # progress never has to guess), and the lists rsync copies. rsync's own totals
            # cover entries of every kind and grow while it lists; ours are final. The
            # scan is a stream written to files as it goes (engines.rsync.plan).
            meter.update(force=True, phase="scanning", counting=True)
            # A resumed run prunes its partial against the very walk rsync copies from,
            # not one of its own before it (a file deleted between the two would stay).
            wanted: dict[str, str] | None = {} if resuming else None
            previous = self.latest(spec)
            prev_root = dest / previous[0] if previous else None
            prev_entries = previous[1] if previous else PreviousFiles()
            names = list(spec.source_names())
            # Files whose content may have changed behind an unchanged size and mtime get
            # their contents compared (all of them with the job's checksum option).
            plan = ListPlan(work, names, prev_entries, checksum)
            try:
                for entry in walk(spec, control, warn):
                    plan.add(entry)
                    if wanted is not None:
                        wanted[entry.rel] = entry.kind
                plan.finish()
            finally:
                plan.close()
            if wanted is not None:
                _prune_stale(partial, wanted)
                del wanted
            meter.update(force=True, phase="copying", counting=False, files_total=plan.files,
                         bytes_total=plan.bytes)
            self._copy_sources(rsync, spec, plan, partial, prev_root, options, control,
                               meter, warn, checkpointer)
            # One rsync per source: -H cannot link a file linked into two sources.
            link_across_sources(partial, plan.linked, work)
            del plan
            created = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
            with ManifestWriter(manifest_path(dest, snap_id), snap_id, self.name, created,
                                {n: str(p) for n, p in spec.source_names().items()},
                                spec.job_id) as manifest:
                details = SourceDetails(work / "sources", names)
                try:
                    self._manifest_entries(spec, partial, prev_root, prev_entries, details,
                                           lost, control, warn, checkpointer, manifest)
                finally:
                    details.close()
                for message in lost.warnings():
                    warn.warning(message)
                remove_tree(work)
                checkpointer.meter.update(force=True, phase="finalising", current_file="")
                # Data first, then the manifest, then the rename that makes it complete.
                # Only the destination's filesystem: os.sync() waited for every other
                # program's.
                make_durable(partial)
                manifest.commit()
            os.replace(partial, dest / snap_id)
            fsync_dir(dest)
        except Cancelled:
            _discard(partial)
            raise
        except Interrupted:
            # Keep the partial snapshot: a resume continues it.
            checkpointer.emit()
            raise
        except DiskFull:
            _discard(partial)  # free the space so the next run can succeed
            raise
        except OSError as err:
            if is_disk_full(err):
                _discard(partial)
                raise disk_full(dest, err) from err
            raise EngineError(f"backup to {dest} failed: {err.strerror} "
                              f"({err.filename})") from err
        checkpointer.meter.update(force=True, phase="done", counting=False, current_file="",
                                  files_done=manifest.files, files_total=manifest.files,
                                  bytes_done=manifest.bytes, bytes_total=manifest.bytes)
        return BackupResult(snap_id, manifest.files, manifest.bytes,
                            time.monotonic() - started, tuple(warn.warnings))

    def _copy_sources(self, rsync: str, spec: BackupSpec, plan: ListPlan, partial: Path,
                      prev_root: Path | None, options: CopyOptions, control: RunControl,
                      meter: ProgressMeter, warn: Reporter, checkpointer: Checkpointer) -> None:
        """Run rsync per source (twice where some files need their contents compared),
        counting progress across all of them."""
        work = plan.work
        base_files, base_bytes = 0, 0
        bytes_total = meter.state.bytes_total or 0
        for index, (name, src) in enumerate(spec.source_names().items()):
            top = plan.tops.get(name)
            if top is None:
                continue  # a special file, skipped by the scan with a warning
            control.safe_point()
            if top.kind == "dir":
                # The contents of the source directory go into <partial>/<name>/; the
                # directory itself is not listed (rsync would also send "." contents).
                target = partial / name
                target.mkdir(exist_ok=True)
                source_arg, target_arg = os.path.join(src, ""), os.path.join(target, "")
                link = prev_root / name if prev_root and (prev_root / name).is_dir() else None
                prefix = f"{name}/"
            else:
                # A single file or symlink: copy it by name from its parent directory.
                target = partial
                source_arg, target_arg = os.path.join(src.parent, ""), os.path.join(partial, "")
                link = prev_root if prev_root and os.path.lexists(prev_root / name) else None
                prefix = ""
            # Pass 1: rsync's quick check. Pass 2: the suspects, compared by content (a
            # match is still hard-linked to the previous snapshot).
            for number in (0, 1):
                if not plan.counts.get((index, number)):
                    continue
                files_from = plan.list_path(index, number)
                argv = rsync_command(rsync, source_arg, target_arg, files_from, work / "tmp",
                                     link, options, checksum=number == 1)

                def on_tally(tally: TransferTally, files: int = base_files,
                             done: int = base_bytes, prefix: str = prefix) -> None:
                    meter.update(files_done=files + tally.files_done,
                                 bytes_done=min(bytes_total, done + tally.bytes_done),
                                 current_file=prefix + tally.current_file
                                 if tally.current_file else "")

                run = run_rsync(argv, control, meter, on_tally, checkpointer)
                for message in check_outcome(run.returncode, run.stderr, spec.destination):
                    warn.warning(message)
                if run.stderr_dropped:
                    warn.warning(f"rsync printed {run.stderr_dropped} more messages than "
                                 "are kept")
                base_files += run.tally.files_done
                base_bytes += run.tally.bytes_done
            if top.kind == "dir":
                # Not in rsync's list (only its contents are), so its owner and
                # attributes are set here, as rsync does for the rest.
                set_meta(target, {"type": "dir", "mode": top.mode, "mtime_ns": top.mtime_ns,
                                  "uid": top.uid, "gid": top.gid,
                                  "xattrs": _holdable(top.path, options.keeps)})
        meter.update(force=True, current_file="")

    def _manifest_entries(self, spec: BackupSpec, partial: Path, prev_root: Path | None,
                          prev_entries: PreviousFiles, sources: SourceDetails,
                          lost: LostExtras, control: RunControl, warn: Reporter,
                          checkpointer: Checkpointer, manifest: ManifestWriter) -> None:
        """Describe what rsync wrote, entry by entry into the manifest; hash files, except
        those linked to the previous snapshot, and each file hard-linked in the source
        once. Nothing is held per file but the first names of those hard-linked ones."""
        meter = ProgressMeter(warn)
        checkpointer.meter = meter
        meter.update(force=True, phase="hashing", counting=True)
        # Files hard-linked in the source, by their inode in the snapshot: the first
        # name, which source file it was, and its hash (links share content).
        first: dict[tuple[int, int], tuple[str, tuple[int, int], str]] = {}

        def on_chunk(n: int) -> None:
            meter.add(nbytes=n)
            control.safe_point()  # pause or cancel inside a large file too

        walker = SnapshotWalk()
        try:
            for name in spec.source_names():
                if not os.path.lexists(partial / name):
                    continue
                for rel, path, st in walker.walk(partial / name, name):
                    details = sources.get(rel)
                    source = _entry(details) if details is not None else None
                    record = describe(rel, path, st, source)
                    if record is None:
                        warn.warning(f"{shown(rel)} is a special file; left out of the "
                                     "manifest")
                        continue
                    if source is not None and record["type"] != "symlink":
                        self._add_xattrs(record, source, lost, warn)
                    if record["type"] == "file":
                        control.safe_point()
                        checkpointer.maybe()
                        self._hash(record, path, st, source, first, prev_root,
                                   prev_entries.get(rel), meter, on_chunk)
                    manifest.add(record)
        finally:
            walker.close()

    @staticmethod
    def _hash(record: dict[str, Any], path: Path, st: os.stat_result, source: Entry | None,
              first: dict[tuple[int, int], tuple[str, tuple[int, int], str]],
              prev_root: Path | None, prev: Mapping[str, Any] | None, meter: ProgressMeter,
              on_chunk: Callable[[int], None]) -> None:
        """Give a file's record its hash, and its first name if -H linked it to one."""
        rel, inode = record["path"], (st.st_dev, st.st_ino)
        linked = source is not None and source.nlink > 1
        was = first.get(inode) if linked else None
        if was is not None and source is not None and was[1] == (source.dev, source.ino):
            # -H made it a link to an earlier name: restore links it again. (Two names
            # can also share a copy because both matched one old file; unless they are
            # one file in the source, they stay two.)
            record["link"], record["sha256"] = was[0], was[2]
            return
        digest = linked_hash(st, prev_root, rel, prev)
        if digest is None:
            meter.update(current_file=rel)
            digest = hash_readable(path, record["mode"], on_chunk)
            meter.add(files=1)
        record["sha256"] = digest
        if linked and source is not None and was is None:
            first[inode] = (rel, (source.dev, source.ino), digest)

    @staticmethod
    def _add_xattrs(record: dict[str, Any], source: Entry, lost: LostExtras,
                    warn: Reporter) -> None:
        """Record the source's kept xattrs and ACLs (restore sets them from here)."""
        try:
            xattrs = read_xattrs(source.path)
        except OSError as err:
            warn.warning(f"extended attributes of {shown(source.path)} cannot be read "
                         f"({err.strerror}); kept without them")
            return
        if xattrs:
            record["xattrs"] = xattrs
            lost.note(source.path, xattrs)


def _prune_stale(partial: Path, wanted: Mapping[str, str]) -> None:
    """Remove what an interrupted run copied that the sources no longer hold (or that
    changed kind, `wanted`: path -> kind), so the resumed snapshot matches today's."""

    def prune(path: Path, rel: str) -> None:
        st = path.lstat()
        kind = _KINDS.get(stat.S_IFMT(st.st_mode))
        if wanted.get(rel) != kind:
            if kind == "dir":
                remove_tree(path)
            else:
                path.unlink()
        elif kind == "dir":
            with os.scandir(path) as it:
                children = [(Path(c.path), f"{rel}/{c.name}") for c in it]
            for child, child_rel in children:
                prune(child, child_rel)

    for top in list(partial.iterdir()):
        if top.name != WORK_DIR:
            prune(top, top.name)


_KINDS = {stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFREG: "file"}


def _entry(details: Details) -> Entry:
    """A scanned entry again, from what ListPlan wrote of it (its size and times unused)."""
    rel, kind, path, uid, gid, ino, dev, ctime_ns, nlink = details
    return Entry(rel, path, kind, 0, 0, 0, "", uid, gid, ino, dev, nlink, ctime_ns)


def _holdable(path: str, keeps: Keeps) -> dict[str, str]:
    """The kept xattrs and ACLs of a source folder that the destination can hold."""
    with contextlib.suppress(OSError):  # unreadable: the manifest walk warns
        return {name: value for name, value in read_xattrs(path).items()
                if (keeps.acls if name in ACL_NAMES else keeps.xattrs)}
    return {}


def _discard(partial: Path) -> None:
    """Remove one run's partial snapshot."""
    if partial.is_dir():
        remove_tree(partial)

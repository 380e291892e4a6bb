"""The mirror engine: dated snapshot directories of plain files, unchanged files hard-linked.

Like `rsync --link-dest`: a file the quick check finds unchanged since the previous
snapshot of the same job (copier.py) is a hard link to it, so every snapshot is
complete and browsable while only changes take space. Hard links inside the sources stay
hard links, sparse files keep their holes, and owner, group, `user.*` attributes and
ACLs are kept where the server may set them (engines.fsmeta). Files are written under a
short temporary name and renamed; the snapshot directory is `<id>.partial` until its
manifest is durable, then renamed to `<id>`.

Resume after a crash: the checkpoint names the partial directory; files already in it
with the source's size and mtime, copied after the source last changed, are kept (their
hashes come from the journal written beside it, journal.py), so only unfinished files
are copied again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engines.contract import BackupSpec
from engines.control import RunControl
from engines.durable import make_durable
from engines.errors import Cancelled, EngineError
from engines.filecopy import link_into, symlink_into
from engines.fsmeta import refused_message, shown
from engines.fsutil import is_disk_full, remove_tree
from engines.manifest_stream import ManifestWriter
from engines.mirror.copier import FileCopier, tree_record
from engines.mirror.journal import Journal
from engines.previndex import PreviousFiles
from engines.progress import CollectingReporter, ProgressMeter, Reporter
from engines.ratelimit import RateLimiter
from engines.results import BackupResult
from engines.scan import Entry, scan
from engines.treestore import (
    TreeSnapshots,
    disk_full,
    manifest_path,
    set_meta,
)
from models.atomic import fsync_dir

CHECKPOINT_EVERY = 2.0  # seconds
# Files per task: big enough that thread hand-off costs little per file, small enough
# that pause and cancel take effect quickly.
CHUNK_FILES = 64
CHUNK_BYTES = 32 << 20


class MirrorEngine(TreeSnapshots):
    """Snapshots as directories of plain files, hard-linked to the previous snapshot."""

    name = "mirror"
    resumes_partial = True

    def backup(self, spec: BackupSpec, control: RunControl, reporter: Reporter,
               resume: Mapping[str, Any] | None = None) -> BackupResult:
        """Make a new snapshot, or finish the one a checkpoint names."""
        started = time.monotonic()
        spec.check_sources()
        spec.check_destination()
        dest = spec.destination
        self.tidy(spec)
        snap_id, partial, resuming = self.partial_for(spec, resume)
        journal_path = dest / f"{snap_id}.journal"
        checkpoint = {"engine": self.name, "snapshot_id": snap_id, "partial": partial.name}
        reporter.checkpoint(checkpoint)
        warn = CollectingReporter(reporter)
        meter = ProgressMeter(warn)
        threads = int(spec.options.get("threads") or min(8, (os.cpu_count() or 2) * 2))
        limiter = RateLimiter.from_options(spec.options)
        created = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        try:
            meter.update(force=True, phase="scanning", counting=True)
            # The previous snapshot first: the memory its manifest's parsing used is then
            # reused by the scan instead of adding to it.
            previous = self.latest(spec)  # this job's own: never another job's files
            prev_root = dest / previous[0] if previous else None
            prev_files = previous[1] if previous else PreviousFiles()
            entries = scan(spec, control, warn)
            if resuming:
                _remove_strays(partial, {e.rel for e in entries})
            meter.update(force=True, phase="copying", counting=False,
                         files_total=sum(1 for e in entries if e.kind == "file"),
                         bytes_total=sum(e.size for e in entries if e.kind == "file"))
            journal = Journal(journal_path)
            copier = FileCopier(str(partial), str(prev_root) if prev_root else None,
                                prev_files, journal.done, control, meter, warn, limiter,
                                resuming, bool(spec.options.get("checksum")))
            # The manifest is written as files are placed, never held whole (format 2,
            # engines.manifest_stream); it is put in place only after the data is durable.
            with ManifestWriter(manifest_path(dest, snap_id), snap_id, self.name, created,
                                {n: str(p) for n, p in spec.source_names().items()},
                                spec.job_id) as manifest:
                try:
                    folders = self._copy_all(entries, partial, copier, journal, checkpoint,
                                             threads, manifest)
                finally:
                    journal.close()
                control.safe_point()  # a pause or cancel asked for now still takes effect
                meter.update(force=True, phase="finalising", current_file="")
                for entry in reversed(entries):  # deepest first so parents' mtimes stick
                    if entry.kind == "dir":
                        refused = set_meta(partial / entry.rel, folders[entry.rel])
                        if refused:
                            warn.warning(refused_message(entry.path, refused))
                # Data first, then the manifest, then the rename that makes it complete.
                # Only the destination's filesystem: os.sync() waited for every other
                # program's writes too.
                make_durable(partial)
                manifest.commit()
            os.replace(partial, dest / snap_id)
            fsync_dir(dest)
            journal_path.unlink(missing_ok=True)
        except Cancelled:
            _discard(partial, journal_path)
            raise
        except OSError as err:
            if is_disk_full(err):
                # Free the space the partial snapshot took so the next run can succeed.
                _discard(partial, journal_path)
                raise disk_full(dest, err) from err
            raise EngineError(f"backup to {shown(dest)} failed: {err.strerror} "
                              f"({shown(err.filename or '')})") from err
        meter.update(force=True, phase="done")
        return BackupResult(snap_id, manifest.files, manifest.bytes,
                            time.monotonic() - started, tuple(warn.warnings))

    def _copy_all(self, entries: list[Entry], partial: Path, copier: FileCopier,
                  journal: Journal, checkpoint: dict[str, Any], threads: int,
                  manifest: ManifestWriter) -> dict[str, dict[str, Any]]:
        """Create directories and symlinks, copy or link files on worker threads, then
        make the other names of files hard-linked in the source links again. Every
        record goes to the manifest as it is made (parents before what they hold);
        only the folders' records are returned, for their times at the end."""
        folders: dict[str, dict[str, Any]] = {}
        for entry in entries:
            if entry.kind == "file":
                continue
            out = partial / entry.rel
            made = tree_record(entry, copier.warn)
            manifest.add(made)
            if entry.kind == "dir":
                folders[entry.rel] = made
                out.mkdir(exist_ok=True)
            elif entry.kind == "symlink":
                if not out.is_symlink() or os.readlink(out) != entry.target:
                    os.replace(symlink_into(entry.target, out), out)
                set_meta(out, made)
        leaders, followers = _link_groups(entries)
        wanted = {leader.rel for _, leader in followers}
        linked: dict[str, dict[str, Any]] = {}  # records of first names with other names
        last_checkpoint = time.monotonic()
        chunks = _chunks(leaders)
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mirror") as pool:
            pending: set[Future[list[dict[str, Any] | None]]] = set()
            try:
                while True:
                    # A few chunks in flight, not all of them: memory stays flat.
                    while len(pending) < threads * 4:
                        chunk = next(chunks, None)
                        if chunk is None:
                            break
                        pending.add(pool.submit(copier.copy_chunk, chunk))
                    if not pending:
                        break
                    done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                    for fut in done:
                        for placed in fut.result():
                            if placed is not None:
                                journal.record(placed)
                                manifest.add(placed)
                                if placed["path"] in wanted:
                                    linked[placed["path"]] = placed
                    if time.monotonic() - last_checkpoint >= CHECKPOINT_EVERY:
                        journal.sync()
                        state = copier.meter.state
                        copier.warn.checkpoint({**checkpoint, "files_done": state.files_done,
                                                "bytes_done": state.bytes_done})
                        last_checkpoint = time.monotonic()
            except BaseException:
                for fut in pending:
                    fut.cancel()
                raise
        for entry, leader in followers:
            copier.control.safe_point()
            record = _link_follower(partial, entry, linked.get(leader.rel))
            if record is None:  # the first name was skipped, or no link possible: copy
                record = copier.copy_chunk([entry])[0]
            else:
                copier.meter.add(files=1, nbytes=entry.size, current_file=shown(entry.rel))
            if record is not None:
                manifest.add(record)
        journal.sync()
        return folders


def _chunks(files: list[Entry]) -> Iterator[list[Entry]]:
    """Files in chunks of at most CHUNK_FILES files or about CHUNK_BYTES bytes."""
    chunk: list[Entry] = []
    size = 0
    for entry in files:
        if chunk and (len(chunk) >= CHUNK_FILES or size >= CHUNK_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(entry)
        size += entry.size
    if chunk:
        yield chunk


def _link_groups(entries: list[Entry]) -> tuple[list[Entry], list[tuple[Entry, Entry]]]:
    """Split files into those copied (the first name of each inode) and the other names
    of inodes hard-linked in the source, each with its first name."""
    first: dict[tuple[int, int], Entry] = {}
    leaders: list[Entry] = []
    followers: list[tuple[Entry, Entry]] = []
    for entry in entries:
        if entry.kind != "file":
            continue
        if entry.nlink > 1:
            key = (entry.dev, entry.ino)
            if key in first:
                followers.append((entry, first[key]))
                continue
            first[key] = entry
        leaders.append(entry)
    return leaders, followers


def _link_follower(partial: Path, entry: Entry,
                   leader: dict[str, Any] | None) -> dict[str, Any] | None:
    """Make another name of a hard-linked file a link to its first name's copy."""
    if leader is None or not link_into(partial / leader["path"], partial / entry.rel):
        return None
    return {**leader, "path": entry.rel, "link": leader["path"]}


def _remove_strays(partial: Path, wanted: set[str]) -> None:
    """Before resuming, drop half-written temp files and whatever the source no longer has."""
    for dirpath, dirnames, filenames in os.walk(partial, topdown=True):
        base = Path(dirpath)
        rel_base = base.relative_to(partial).as_posix()
        for name in list(dirnames) + filenames:
            rel = name if rel_base == "." else f"{rel_base}/{name}"
            path = base / name
            # Temporary names (engines.filecopy.tmp_name) are never wanted either.
            if rel not in wanted:
                if path.is_dir() and not path.is_symlink():
                    remove_tree(path)
                    if name in dirnames:
                        dirnames.remove(name)
                else:
                    path.unlink()


def _discard(partial: Path, journal: Path) -> None:
    """Remove one run's partial snapshot and its journal."""
    if partial.is_dir():
        remove_tree(partial)
    journal.unlink(missing_ok=True)

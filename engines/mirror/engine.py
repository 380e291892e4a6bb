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
from collections.abc import Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

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
from engines.scan import Entry, walk
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
            # A resumed run notes every name it records; what else the partial holds
            # (the source no longer has it, a temporary name) goes once all is placed.
            # Not against a walk of its own before: a file deleted between the two walks
            # would stay in the snapshot without being in its manifest.
            placed: set[str] | None = set() if resuming else None
            # The scan is a stream, consumed as it is read: totals grow while it runs.
            entries = walk(spec, control, warn)
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
                    sink: _Sink = manifest if placed is None else _Noting(manifest, placed)
                    folders = _Placer(partial, copier, journal, checkpoint, threads,
                                      sink).run(entries)
                finally:
                    journal.close()
                if placed is not None:
                    _remove_strays(partial, placed)
                control.safe_point()  # a pause or cancel asked for now still takes effect
                meter.update(force=True, phase="finalising", current_file="")
                for rel, path, record in reversed(folders):  # deepest first: mtimes stick
                    refused = set_meta(partial / rel, record)
                    if refused:
                        warn.warning(refused_message(path, refused))
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


class _Sink(Protocol):
    """Where the placed records go (the manifest)."""

    def add(self, entry: Mapping[str, Any]) -> None:
        """Take one record."""


class _Noting:
    """The manifest, noting each name recorded in it."""

    def __init__(self, manifest: _Sink, names: set[str]) -> None:
        self.manifest, self.names = manifest, names

    def add(self, entry: Mapping[str, Any]) -> None:
        """Record an entry and note its name."""
        self.names.add(entry["path"])
        self.manifest.add(entry)


class _Placer:
    """One run's walk turned into a snapshot: directories and symlinks made as the scan
    yields them, files copied or linked on worker threads in chunks, then the other names
    of files hard-linked in the source linked again. Every record goes to the manifest
    as it is made (parents before what they hold). Nothing is kept per file but what
    hard links need, so memory stays flat in the number of files."""

    def __init__(self, partial: Path, copier: FileCopier, journal: Journal,
                 checkpoint: dict[str, Any], threads: int, manifest: _Sink) -> None:
        self.partial, self.copier, self.journal = partial, copier, journal
        self.checkpoint, self.threads, self.manifest = checkpoint, threads, manifest
        self.folders: list[tuple[str, str, dict[str, Any]]] = []  # rel, source, record
        self.first: dict[tuple[int, int], str] = {}  # (dev, ino) -> first name's rel
        self.leaders: set[str] = set()  # those first names
        self.followers: list[tuple[Entry, str]] = []  # other names, with the first's rel
        self.linked: dict[str, dict[str, Any]] = {}  # records of first names of links
        self.pending: set[Future[list[dict[str, Any] | None]]] = set()
        self.pool: ThreadPoolExecutor | None = None
        self.files = self.bytes = 0
        self.last_checkpoint = time.monotonic()

    def run(self, entries: Iterable[Entry]) -> list[tuple[str, str, dict[str, Any]]]:
        """Place every entry; return the folders' (rel, source path, record)."""
        copier = self.copier
        with ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="mirror") as pool:
            self.pool = pool
            try:
                chunk: list[Entry] = []
                size = 0
                for entry in entries:
                    if entry.kind != "file":
                        self._tree_entry(entry)
                        continue
                    self.files += 1
                    self.bytes += entry.size
                    if entry.nlink > 1:
                        key = (entry.dev, entry.ino)
                        if key in self.first:
                            self.followers.append((entry, self.first[key]))
                            continue
                        self.first[key] = entry.rel
                        self.leaders.add(entry.rel)
                    chunk.append(entry)
                    size += entry.size
                    if len(chunk) >= CHUNK_FILES or size >= CHUNK_BYTES:
                        self._submit(chunk)
                        chunk, size = [], 0
                if chunk:
                    self._submit(chunk)
                copier.meter.update(force=True, phase="copying", counting=False,
                                    files_total=self.files, bytes_total=self.bytes)
                while self.pending:
                    self._collect(0.5)
            except BaseException:
                for fut in self.pending:
                    fut.cancel()
                raise
        for entry, leader in self.followers:
            copier.control.safe_point()
            record = _link_follower(self.partial, entry, self.linked.get(leader))
            if record is None:  # the first name was skipped, or no link possible: copy
                record = copier.copy_chunk([entry])[0]
            else:
                copier.meter.add(files=1, nbytes=entry.size, current_file=shown(entry.rel))
            if record is not None:
                self.manifest.add(record)
        self.journal.sync()
        return self.folders

    def _tree_entry(self, entry: Entry) -> None:
        """Make a directory or a symlink in the snapshot, and record it."""
        out = self.partial / entry.rel
        made = tree_record(entry, self.copier.warn)
        self.manifest.add(made)
        if entry.kind == "dir":
            self.folders.append((entry.rel, entry.path, made))
            out.mkdir(exist_ok=True)
        elif entry.kind == "symlink":
            if not out.is_symlink() or os.readlink(out) != entry.target:
                os.replace(symlink_into(entry.target, out), out)
            set_meta(out, made)

    def _submit(self, chunk: list[Entry]) -> None:
        """Hand a chunk to the workers; a few chunks in flight, not all: memory stays flat."""
        # Copying starts with the first chunk; the totals so far are still counting.
        meter = self.copier.meter
        meter.update(force=meter.state.phase != "copying", phase="copying", counting=True,
                     files_total=self.files, bytes_total=self.bytes)
        assert self.pool is not None
        self.pending.add(self.pool.submit(self.copier.copy_chunk, chunk))
        while len(self.pending) >= self.threads * 4:
            self._collect(None)
        self._maybe_checkpoint()

    def _collect(self, timeout: float | None) -> None:
        """Write the records of the chunks done (the manifest is this thread's alone)."""
        done, self.pending = wait(self.pending, timeout=timeout, return_when=FIRST_COMPLETED)
        for fut in done:
            for placed in fut.result():
                if placed is not None:
                    self.journal.record(placed)
                    self.manifest.add(placed)
                    if placed["path"] in self.leaders:
                        self.linked[placed["path"]] = placed
        self._maybe_checkpoint()

    def _maybe_checkpoint(self) -> None:
        if time.monotonic() - self.last_checkpoint >= CHECKPOINT_EVERY:
            self.journal.sync()
            state = self.copier.meter.state
            self.copier.warn.checkpoint({**self.checkpoint, "files_done": state.files_done,
                                         "bytes_done": state.bytes_done})
            self.last_checkpoint = time.monotonic()


def _link_follower(partial: Path, entry: Entry,
                   leader: dict[str, Any] | None) -> dict[str, Any] | None:
    """Make another name of a hard-linked file a link to its first name's copy."""
    if leader is None or not link_into(partial / leader["path"], partial / entry.rel):
        return None
    return {**leader, "path": entry.rel, "link": leader["path"]}


def _remove_strays(partial: Path, wanted: set[str]) -> None:
    """After a resumed run placed its files, drop what it did not record (temporary names,
    what the source no longer has): the snapshot holds its manifest's names only."""
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

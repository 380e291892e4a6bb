"""The mirror engine: dated snapshot directories of plain files, unchanged files hard-linked.

Like `rsync --link-dest`: a file whose size and mtime match the previous snapshot is a
hard link to it, so every snapshot is complete and browsable while only changes take
space. Files are written under a temporary name and renamed; the snapshot directory is
`<id>.partial` until its manifest is durable, then renamed to `<id>`.

Resume after a crash: the checkpoint names the partial directory; files already in it
with the source's size and mtime are kept (their hashes come from the journal written
beside it), so only unfinished files are copied again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from engines.base import (
    BackupResult,
    BackupSpec,
    Cancelled,
    CollectingReporter,
    EngineError,
    ProgressMeter,
    RateLimiter,
    Reporter,
    RunControl,
)
from engines.fsutil import is_disk_full, remove_tree
from engines.manifest import Manifest, sha256_file
from engines.scan import Entry, scan
from engines.treestore import (
    COPY_CHUNK,
    TMP_PREFIX,
    TreeSnapshots,
    copy_file,
    disk_full,
    manifest_path,
    set_meta,
)
from storage.atomic import fsync_dir

CHECKPOINT_EVERY = 2.0  # seconds
# Files per task: big enough that thread hand-off costs little per file, small enough
# that pause and cancel take effect quickly.
CHUNK_FILES = 64
CHUNK_BYTES = 32 << 20


class _Journal:
    """Hashes of files already complete in a partial snapshot, for resume."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: dict[str, tuple[int, int, str]] = {}
        with contextlib.suppress(FileNotFoundError):
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                parts = line.split("\t", 3)
                if len(parts) == 4 and parts[0].isdigit() and parts[1].isdigit():
                    self.done[parts[3]] = (int(parts[0]), int(parts[1]), parts[2])
        self._fh: IO[str] = open(path, "a", encoding="utf-8")  # noqa: SIM115

    def record(self, entry: Entry, digest: str) -> None:
        """Note a finished file (the write is made durable at the next sync)."""
        if "\n" not in entry.rel:
            self._fh.write(f"{entry.size}\t{entry.mtime_ns}\t{digest}\t{entry.rel}\n")

    def sync(self) -> None:
        """Flush the journal to disk (before a checkpoint refers to it)."""
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        """Close the journal file."""
        self._fh.close()


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
        try:
            meter.update(force=True, phase="scanning", counting=True)
            entries = scan(spec, control, warn)
            files = [e for e in entries if e.kind == "file"]
            if resuming:
                _remove_strays(partial, {e.rel for e in entries})
            meter.update(force=True, phase="copying", counting=False, files_total=len(files),
                         bytes_total=sum(e.size for e in files))
            previous = self.latest(spec)
            prev_root = dest / previous[0] if previous else None
            prev_files = previous[1].by_path() if previous else {}
            journal = _Journal(journal_path)
            copier = _FileCopier(str(partial), str(prev_root) if prev_root else None,
                                 prev_files, journal.done, control, meter, warn, limiter,
                                 resuming)
            try:
                records = self._copy_all(entries, partial, copier, journal, checkpoint,
                                         threads)
            finally:
                journal.close()
            control.safe_point()  # a pause or cancel asked for now still takes effect
            meter.update(force=True, phase="finalising", current_file="")
            for entry in reversed(entries):  # deepest first so parents' mtimes stick
                if entry.kind == "dir":
                    set_meta(partial / entry.rel, records[entry.rel])
            # Data first, then the manifest, then the rename that makes it complete.
            os.sync()
            created = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
            manifest = Manifest(snap_id, self.name, created,
                                {n: str(p) for n, p in spec.source_names().items()},
                                [records[e.rel] for e in entries if e.rel in records])
            manifest.write(manifest_path(dest, snap_id))
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
            raise EngineError(f"backup to {dest} failed: {err.strerror} "
                              f"({err.filename})") from err
        meter.update(force=True, phase="done")
        return BackupResult(snap_id, manifest.files, manifest.size,
                            time.monotonic() - started, tuple(warn.warnings))

    def _copy_all(self, entries: list[Entry], partial: Path, copier: _FileCopier,
                  journal: _Journal, checkpoint: dict[str, Any],
                  threads: int) -> dict[str, dict[str, Any]]:
        """Create directories and symlinks, then copy or link files on worker threads."""
        records: dict[str, dict[str, Any]] = {}
        for entry in entries:
            if entry.kind == "file":
                continue
            out = partial / entry.rel
            if entry.kind == "dir":
                out.mkdir(exist_ok=True)
                records[entry.rel] = {"path": entry.rel, "type": "dir", "mode": entry.mode,
                                      "mtime_ns": entry.mtime_ns}
            elif entry.kind == "symlink":
                if not out.is_symlink() or os.readlink(out) != entry.target:
                    tmp = out.with_name(f"{TMP_PREFIX}{out.name}")
                    with contextlib.suppress(FileNotFoundError):
                        tmp.unlink()
                    os.symlink(entry.target, tmp)
                    os.replace(tmp, out)
                record = {"path": entry.rel, "type": "symlink", "target": entry.target,
                          "mode": entry.mode, "mtime_ns": entry.mtime_ns}
                set_meta(out, record)
                records[entry.rel] = record
        chunks: list[list[Entry]] = [[]]
        size = 0
        for entry in entries:
            if entry.kind != "file":
                continue
            if len(chunks[-1]) >= CHUNK_FILES or size >= CHUNK_BYTES:
                chunks.append([])
                size = 0
            chunks[-1].append(entry)
            size += entry.size
        last_checkpoint = time.monotonic()
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mirror") as pool:
            pending: set[Future[list[tuple[Entry, str, int] | None]]] = {
                pool.submit(copier.copy_chunk, chunk) for chunk in chunks if chunk}
            try:
                while pending:
                    done, pending = wait(pending, timeout=0.5, return_when=FIRST_EXCEPTION)
                    for fut in done:
                        for item in fut.result():
                            if item is not None:
                                entry, digest, size = item
                                journal.record(entry, digest)
                                records[entry.rel] = {
                                    "path": entry.rel, "type": "file", "size": size,
                                    "mtime_ns": entry.mtime_ns, "mode": entry.mode,
                                    "sha256": digest}
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
        journal.sync()
        return records



@dataclass
class _FileCopier:
    """One run's copying of files into its partial snapshot, shared by worker threads.

    Paths are plain strings: this runs once per file, and building Path objects cost
    more than the hard link itself on a no-change run.
    """

    partial: str
    prev_root: str | None
    prev_files: dict[str, dict[str, Any]]
    journal_done: dict[str, tuple[int, int, str]]
    control: RunControl
    meter: ProgressMeter
    warn: Reporter
    limiter: RateLimiter | None
    resuming: bool

    def copy_chunk(self, chunk: list[Entry]) -> list[tuple[Entry, str, int] | None]:
        """Place each file of a chunk; return (entry, sha256, size), None for skipped."""
        control, meter = self.control, self.meter
        out: list[tuple[Entry, str, int] | None] = []
        for entry in chunk:
            control.safe_point()
            copied = 0

            def on_chunk(n: int, rel: str = entry.rel) -> None:
                nonlocal copied
                copied += n
                meter.add(nbytes=n, current_file=rel)
                if self.limiter is not None:
                    self.limiter.consume(n)
                control.safe_point()  # pause or cancel inside a large file too

            placed = self.place_file(entry, os.path.join(self.partial, entry.rel), on_chunk)
            out.append((entry, *placed) if placed else None)
            # Count the whole file as done: linked, kept or copied, and any size change.
            meter.add(files=1, nbytes=max(0, entry.size - copied), current_file=entry.rel)
        return out

    def place_file(self, entry: Entry, out: str,
                   on_chunk: Callable[[int], None]) -> tuple[str, int] | None:
        """Put one file in the snapshot (kept, linked or copied); return sha256 and size."""
        key = (entry.size, entry.mtime_ns)
        # Resume: a file already complete in the partial directory is kept. A fresh
        # partial directory is empty, so the look is skipped (a syscall per file).
        if self.resuming:
            kept = _already_in_place(entry, out, self.journal_done)
            if kept is not None:
                return kept
        prev = self.prev_files.get(entry.rel)
        if self.prev_root is not None and prev and prev.get("type") == "file" and \
                (prev["size"], prev["mtime_ns"]) == key and prev.get("mode") == entry.mode:
            linked = os.path.join(self.prev_root, entry.rel)
            try:
                os.link(linked, out)
                return str(prev["sha256"]), entry.size
            except FileExistsError:
                os.unlink(out)
                os.link(linked, out)
                return str(prev["sha256"]), entry.size
            except OSError as err:
                if err.errno not in (errno.EMLINK, errno.EXDEV, errno.ENOENT, errno.EPERM):
                    raise
                # Too many links, another filesystem or a pruned file: copy instead.
        head, name = os.path.split(out)
        tmp = os.path.join(head, f"{TMP_PREFIX}{name}")
        try:
            # Under a bandwidth limit, copy in pieces of about a quarter second each so
            # the rate stays even and progress moves steadily instead of in 4 MB jumps.
            chunk = (COPY_CHUNK if self.limiter is None
                     else max(64 << 10, min(COPY_CHUNK, int(self.limiter.rate / 4))))
            copy_file(entry.path, tmp, on_chunk, chunk)
        except FileNotFoundError:
            if os.path.lexists(entry.path):
                raise
            self.warn.warning(f"{entry.path} vanished during the backup; skipped")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            return None
        except PermissionError as err:
            self.warn.warning(f"{entry.path} cannot be read ({err.strerror}); skipped")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            return None
        # Hash what landed in the snapshot (still in the page cache), so the manifest
        # describes the copy even if the source changed while it was read.
        digest = sha256_file(tmp)
        size = os.stat(tmp).st_size
        if size != entry.size:
            self.warn.warning(f"{entry.path} changed while it was copied; the snapshot holds "
                         "the version read")
        os.chmod(tmp, entry.mode)
        os.utime(tmp, ns=(entry.mtime_ns, entry.mtime_ns))
        os.replace(tmp, out)
        return digest, size


def _already_in_place(entry: Entry, out: str, journal_done: dict[str, tuple[int, int, str]]
                      ) -> tuple[str, int] | None:
    """The hash and size of a file an interrupted run already finished, if it did."""
    try:
        st = os.lstat(out)
    except FileNotFoundError:
        return None
    key = (entry.size, entry.mtime_ns)
    if (st.st_size, st.st_mtime_ns) != key:
        return None
    known = journal_done.get(entry.rel)
    if known and known[:2] == key:
        return known[2], entry.size
    return sha256_file(out), entry.size


def _remove_strays(partial: Path, wanted: set[str]) -> None:
    """Before resuming, drop half-written temp files and whatever the source no longer has."""
    for dirpath, dirnames, filenames in os.walk(partial, topdown=True):
        base = Path(dirpath)
        rel_base = base.relative_to(partial).as_posix()
        for name in list(dirnames) + filenames:
            rel = name if rel_base == "." else f"{rel_base}/{name}"
            path = base / name
            if name.startswith(TMP_PREFIX) or rel not in wanted:
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

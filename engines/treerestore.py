"""Restoring a tree snapshot (mirror and rsync), its manifest read one entry at a time.

Memory stays flat in the number of files: the manifest is streamed (format 2, engines.
manifest_stream; a format 1 manifest is read whole as before), and only folders (for
their times, set last), the first names of hard-linked files and the folders already
proven to lie inside the target are remembered. The containment check (no entry lands
outside the target, whatever symlinks it meets) resolves each folder once, not each file:
a folder resolved inside the target stays inside it, since a restore replaces only
files and symlinks, and a symlink restored over a path drops what was proven under it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from engines.control import RunControl
from engines.errors import EngineError, SnapshotNotFound
from engines.filecopy import copy_file, link_into, symlink_into
from engines.fsmeta import apply_meta, refused_message, shown
from engines.fsutil import is_disk_full, refuse_clashes
from engines.manifest import Manifest, check_rel_path
from engines.manifest_stream import StreamedManifest, is_streamed
from engines.progress import ProgressMeter, Reporter
from engines.results import RestoreResult
from engines.tmpnames import derived_tmp_path, restore_tmp

# Small dense files are read and written in one call each, not through copy_file's
# hole-seeking loop (most of a restore of many small files was that loop's syscalls).
SMALL_FILE = 1 << 20
THREADS = 4
CHUNK_FILES = 64
MADE_LIMIT = 100_000  # folders remembered as created by this restore


def manifest_entries(path: Path) -> tuple[str, Callable[[], Iterator[dict[str, Any]]]]:
    """The snapshot id and a way to read the entries again from the start.

    A format 2 manifest is checked whole here (its checksum), before any entry is used.
    """
    if is_streamed(path):
        streamed = StreamedManifest(path)
        return streamed.snapshot_id, streamed.entries
    manifest = Manifest.read(path)
    return manifest.snapshot_id, lambda: iter(manifest.entries)


def selected(entries: Iterable[dict[str, Any]], path: str | None) -> Iterator[dict[str, Any]]:
    """The entries under `path` (all without one) and its parent folders, in manifest
    order (parents first)."""
    if not path:
        yield from entries
        return
    rel = check_rel_path(path)
    parents = {str(p) for p in Path(rel).parents if str(p) != "."}
    for entry in entries:
        name = entry["path"]
        if name == rel or name.startswith(rel + "/") or name in parents:
            yield entry


class _Plan:
    """What one pass over the selection found: totals, and the first names of links."""

    def __init__(self) -> None:
        self.files = self.bytes = self.chosen = 0
        self.leaders: set[str] = set()

    def watch(self, entries: Iterable[dict[str, Any]]) -> Iterator[tuple[str, bool]]:
        for entry in entries:
            self.chosen += 1
            if entry["type"] == "file":
                self.files += 1
                self.bytes += entry.get("size", 0)
                if entry.get("link"):
                    self.leaders.add(entry["link"])
            yield entry["path"], entry["type"] == "dir"


class _Inside:
    """Where entries go under the target, refusing any that would land outside it."""

    def __init__(self, target: Path) -> None:
        self.real = os.path.realpath(target)
        self.proven: set[str] = set()  # parent folders (relative) resolved inside

    def out(self, rel: str) -> str:
        rel = check_rel_path(rel)
        head = rel.rpartition("/")[0]
        if head not in self.proven:
            parent = os.path.realpath(os.path.join(self.real, head))
            if parent != self.real and not parent.startswith(self.real.rstrip("/") + "/"):
                raise EngineError(f"{shown(rel)} would be written outside "
                                  f"{shown(self.real)}; refused")
            self.proven.add(head)
        return os.path.join(self.real, rel)

    def replaced(self, rel: str) -> None:
        """A symlink now stands at rel: nothing under it is proven any more."""
        under = rel + "/"
        self.proven = {p for p in self.proven if p != rel and not p.startswith(under)}


class _Workers:
    """Files copied on a few threads (their syscalls overlap; the GIL is released in
    them), at most a few chunks in flight so memory stays flat; errors surface here."""

    def __init__(self, threads: int, meter: ProgressMeter, reporter: Reporter,
                 root: Path) -> None:
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="restore")
        self.limit = threads * 2
        self.pending: set[Future[None]] = set()
        self.chunk: list[tuple[str, dict[str, Any], bool]] = []
        self.meter, self.reporter, self.root = meter, reporter, root
        # Temporary names of the files handed out since the last finish(). Two names in
        # one folder can share one (8 hex digits of a hash); written at once on two
        # threads, each would remove or rename the other's bytes.
        self.in_flight: set[str] = set()

    def add(self, out: str, entry: dict[str, Any], fresh: bool) -> None:
        self.wait_for(out)
        self.in_flight.add(derived_tmp_path(out))
        self.chunk.append((out, entry, fresh))
        if len(self.chunk) >= CHUNK_FILES:
            self.flush()

    def flush(self) -> None:
        if self.chunk:
            self.pending.add(self.pool.submit(self._run, self.chunk))
            self.chunk = []
        while len(self.pending) >= self.limit:
            self._collect(FIRST_COMPLETED)

    def _collect(self, when: str) -> None:
        done, self.pending = wait(self.pending, return_when=when)
        for fut in done:
            fut.result()

    def _run(self, chunk: list[tuple[str, dict[str, Any], bool]]) -> None:
        for out, entry, fresh in chunk:
            refused = _place(out, entry, self.root, fresh)
            if refused:
                self.reporter.warning(refused_message(entry["path"], refused))
            self.meter.add(files=1, nbytes=entry["size"], current_file=shown(entry["path"]))

    def wait_for(self, out: str) -> None:
        """Let every file in flight land first if one of them shares out's temp name."""
        if derived_tmp_path(out) in self.in_flight:
            self.finish()

    def finish(self) -> None:
        self.flush()
        self._collect(ALL_COMPLETED)
        self.in_flight.clear()

    def close(self) -> None:
        for fut in self.pending:
            fut.cancel()
        self.pool.shutdown(wait=True)


def restore_tree(root: Path, manifest: Path, target: Path, control: RunControl,
                 reporter: Reporter, path: str | None, overwrite: bool,
                 threads: int = THREADS) -> RestoreResult:
    """Copy a snapshot (or one path in it) into target, keeping its paths."""
    snapshot_id, entries = manifest_entries(manifest)
    plan = _Plan()
    items = plan.watch(selected(entries(), path))
    prepare_target(target, items, overwrite)
    for _ in items:  # the clash check may stop early: count the rest
        pass
    if path and not plan.chosen:
        raise SnapshotNotFound(f"{shown(path)} is not in snapshot {snapshot_id}")
    meter = ProgressMeter(reporter)
    meter.update(force=True, phase="restoring", counting=False, files_total=plan.files,
                 bytes_total=plan.bytes)
    inside = _Inside(target)
    folders: list[tuple[str, dict[str, Any]]] = []
    made: set[str] = set()  # folders this restore created: nothing of a killed one in them
    links: list[tuple[str, dict[str, Any]]] = []  # other names of hard-linked files
    placed: set[str] = set()  # their first names, restored as files by this restore
    workers = _Workers(threads, meter, reporter, root)
    try:
        for entry in selected(entries(), path):
            control.safe_point()
            rel, kind = entry["path"], entry["type"]
            out = inside.out(rel)
            if kind == "dir":
                if _make_folder(out, overwrite):
                    made.add(rel)
                folders.append((rel, entry))
                continue
            fresh = rel.rpartition("/")[0] in made
            if kind == "symlink":
                if os.path.lexists(out):
                    # It replaces what stands there (a folder, a link): files queued
                    # under that path must land before it can point elsewhere.
                    workers.finish()
                workers.wait_for(out)
                refused = _place(out, entry, root, fresh)
                if refused:
                    reporter.warning(refused_message(rel, refused))
                inside.replaced(rel)
            elif entry.get("link") in placed:
                links.append((out, entry))  # after the first names are all in place
            else:
                workers.add(out, entry, fresh)
                if rel in plan.leaders:
                    placed.add(rel)
            if len(made) > MADE_LIMIT:
                made.clear()  # only a shortcut: bound it
        workers.finish()
        for _queued, entry in links:
            control.safe_point()
            # Worked out again: a symlink placed since it was queued may stand on its path.
            out, leader = inside.out(entry["path"]), inside.out(entry["link"])
            if not link_into(leader, out, restore_tmp(out)):
                refused = _place(out, entry, root, False)
                if refused:
                    reporter.warning(refused_message(entry["path"], refused))
            meter.add(files=1, nbytes=entry["size"], current_file=shown(entry["path"]))
        for rel, entry in reversed(folders):  # deepest first: their mtimes stick
            refused = _folder_meta(inside.out(rel), entry)
            if refused:
                reporter.warning(refused_message(rel, refused))
    except OSError as err:
        if is_disk_full(err):
            from engines.treestore import disk_full
            raise disk_full(target, err) from err
        raise EngineError(f"restore into {shown(target)} failed: {err.strerror} "
                          f"({shown(err.filename or '')})") from err
    finally:
        workers.close()
    meter.update(force=True, phase="done", current_file="")
    return RestoreResult(meter.state.files_done, meter.state.bytes_done)


def _place(out: str, entry: Mapping[str, Any], root: Path, fresh: bool) -> list[str]:
    """Restore a file or symlink under a short temporary name beside `out`, then rename.

    A failure (a full disk) removes the half-written temp file. Returns the attributes
    the filesystem refused. In a folder this restore created (`fresh`), no earlier
    restore left a temporary file to remove first.
    """
    tmp = derived_tmp_path(out) if fresh else restore_tmp(out)
    try:
        if entry["type"] == "symlink":
            symlink_into(entry["target"], out, tmp)
            refused = apply_meta(tmp, entry)
        else:
            refused_small = _copy_small(os.path.join(root, entry["path"]), tmp, entry)
            if refused_small is None:
                copy_file(os.path.join(root, entry["path"]), tmp, exclusive=True)
                refused = apply_meta(tmp, entry)
            else:
                refused = refused_small
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return refused


def _make_folder(out: str, overwrite: bool) -> bool:
    """Make a folder (or keep the real one there); True if this restore made it.

    Asked to overwrite, a file or a symlink where the snapshot has a folder is replaced
    like any file: a symlink to a folder is never kept, or its mode and times (and the
    files under it) would go to wherever it points, outside the target.
    """
    try:
        st = os.lstat(out)
    except FileNotFoundError:
        st = None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            return False
        if not overwrite:
            raise FileExistsError(errno.EEXIST, "not a folder", out)
        os.unlink(out)  # a symlink itself goes, never what it points at
    try:
        os.mkdir(out)
    except FileNotFoundError:
        os.makedirs(out, exist_ok=True)
        return False
    return True


def _folder_meta(out: str, entry: Mapping[str, Any]) -> list[str]:
    """apply_meta on a restored folder through an fd opened without following a symlink,
    so a link put in its place since cannot send the mode and times elsewhere."""
    fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return apply_meta(fd, entry)
    finally:
        os.close(fd)


def _copy_small(src: str, dst: str, entry: Mapping[str, Any]) -> list[str] | None:
    """Copy a small file with one read and one write, and give it its owner, mode and
    times through the open file; None (nothing written) for a large or sparse one,
    which copy_file handles with its holes. Returns the attributes refused."""
    if entry.get("size", 0) > SMALL_FILE:
        return None
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if st.st_size > SMALL_FILE or st.st_blocks * 512 < st.st_size:
            return None
        # Its size, plus one to see it grew: os.read allocates all it is asked for.
        data = os.read(fd, st.st_size + 1)
    finally:
        os.close(fd)
    if len(data) != st.st_size:
        return None  # it changed while read: copy_file reads it to its end
    out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(out, view):]
        return apply_meta(out, entry)
    finally:
        os.close(out)


def prepare_target(target: Path, items: Iterable[tuple[str, bool]], overwrite: bool) -> None:
    """Create the target, refusing (before writing anything) to overwrite existing files;
    `items` are (path inside the snapshot, is a directory). An empty target has nothing
    to clash with: its entries are not looked up one by one."""
    refuse_clashes(target, () if _empty_dir(target) else items, overwrite)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise EngineError(f"restore target {shown(target)} cannot be created: "
                          f"{err.strerror}") from err


def _empty_dir(path: Path) -> bool:
    """Whether path is a folder with nothing in it (False if it is anything else)."""
    try:
        with os.scandir(path) as it:
            return next(it, None) is None
    except OSError:
        return False

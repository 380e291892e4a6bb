"""Walk the sources: what a snapshot will hold, with sizes and times, in a stable order."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from engines.contract import BackupSpec
from engines.control import RunControl
from engines.errors import SourceUnreadable
from engines.fsmeta import shown
from engines.progress import Reporter
from engines.selection import Selector


@dataclass(frozen=True, slots=True)
class Entry:
    """One file, directory or symlink to back up."""

    rel: str  # path inside the snapshot: "<source name>/<path in source>"
    path: str  # where it is now (a str: a Path per file cost more than the walk itself)
    kind: str  # "file", "dir" or "symlink"
    size: int
    mtime_ns: int
    mode: int  # permission bits only
    target: str = ""  # symlink target
    # Ownership, identity and change time: kept by snapshots when the server may set
    # them, and (ctime, inode) catch a change that kept size and mtime (issue 12).
    uid: int = 0
    gid: int = 0
    ino: int = 0
    dev: int = 0
    nlink: int = 1
    ctime_ns: int = 0


def _entry(rel: str, path: str, st: os.stat_result) -> Entry | None:
    mode = stat.S_IMODE(st.st_mode)
    ident = (st.st_uid, st.st_gid, st.st_ino, st.st_dev, st.st_nlink, st.st_ctime_ns)
    if stat.S_ISLNK(st.st_mode):
        return Entry(rel, path, "symlink", 0, st.st_mtime_ns, mode, os.readlink(path), *ident)
    if stat.S_ISDIR(st.st_mode):
        return Entry(rel, path, "dir", 0, st.st_mtime_ns, mode, "", *ident)
    if stat.S_ISREG(st.st_mode):
        return Entry(rel, path, "file", st.st_size, st.st_mtime_ns, mode, "", *ident)
    return None  # sockets, fifos, devices: not something a file backup can copy


def _kind_of(st: os.stat_result) -> str:
    """What a special file is, in words, for the warning that it was skipped."""
    if stat.S_ISFIFO(st.st_mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(st.st_mode):
        return "a socket"
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        return "a device file"
    return "not a file, directory or symlink"


def scan(spec: BackupSpec, control: RunControl, reporter: Reporter) -> list[Entry]:
    """Every entry walk() yields, as a list (for callers that need them all at once)."""
    return list(walk(spec, control, reporter))


def walk(spec: BackupSpec, control: RunControl, reporter: Reporter) -> Iterator[Entry]:
    """Yield every entry the job takes, sources in order, each tree depth-first and sorted,
    parents before what they hold.

    A stream, so a backup holds one folder's listing at a time, not the whole tree (memory
    flat in the number of files). A file or directory that vanishes or cannot be read
    during the walk is a warning, not an error: the run goes on with what is there. Names
    that are not UTF-8 (valid on Linux) are taken too: paths are str with surrogate
    escapes, as os.fsdecode makes them, and every message shows them with \\xNN escapes
    (engines.fsmeta.shown).
    """
    selector = Selector(spec.include, spec.exclude)
    for name, src in spec.source_names().items():
        try:
            top = _entry(name, str(src), src.lstat())
        except OSError as err:
            raise SourceUnreadable(f"source {shown(src)} cannot be read: {err.strerror}") \
                from err
        if top is None:
            reporter.warning(f"{shown(src)} is {_kind_of(src.lstat())}; skipped (only files, "
                             "directories and symlinks are backed up)")
            continue
        yield top
        if top.kind == "dir":
            yield from _walk(str(src), name, "", selector, False, control, reporter)


def _listing(directory: str, reporter: Reporter) -> list[tuple[os.DirEntry[str], os.stat_result]]:
    """A folder's children, sorted by name, each with its lstat; all of them stat'ed
    before any is used (a folder at a time: what was there when it was read)."""
    try:
        with os.scandir(directory) as it:
            children = sorted(it, key=lambda e: e.name)
    except FileNotFoundError:
        reporter.warning(f"folder {shown(directory)} vanished during the backup; skipped")
        return []
    except OSError as err:
        reporter.warning(f"folder {shown(directory)} cannot be read ({err.strerror}); its "
                         "contents were skipped")
        return []
    out = []
    for child in children:
        try:
            out.append((child, child.stat(follow_symlinks=False)))
        except FileNotFoundError:
            reporter.warning(f"{shown(child.path)} vanished during the backup; skipped")
        except OSError as err:
            reporter.warning(f"{shown(child.path)} cannot be read ({err.strerror}); skipped")
    return out


def _walk(directory: str, rel_dir: str, inner_dir: str, selector: Selector,
          parent_included: bool, control: RunControl,
          reporter: Reporter) -> Iterator[Entry]:
    control.safe_point()
    for child, st in _listing(directory, reporter):
        inner = f"{inner_dir}/{child.name}" if inner_dir else child.name
        is_dir = stat.S_ISDIR(st.st_mode)
        if selector.excluded(inner, is_dir):
            continue
        taken = selector.included(inner, is_dir, parent_included)
        try:
            entry = _entry(f"{rel_dir}/{child.name}", child.path, st)
        except OSError as err:
            reporter.warning(f"{shown(child.path)} cannot be read ({err.strerror}); skipped")
            continue
        if entry is None:
            if taken:
                reporter.warning(f"{shown(child.path)} is {_kind_of(st)}; skipped (only "
                                 "files, directories and symlinks are backed up)")
            continue
        if is_dir:
            below = _walk(child.path, entry.rel, inner, selector, taken, control, reporter)
            if taken or not selector.include:
                yield entry
                yield from below
            else:
                # Not included itself, but something below may be: the directory is
                # yielded only once something under it is, just before it.
                first = next(below, None)
                if first is not None:
                    yield entry
                    yield first
                    yield from below
        elif taken:
            yield entry

"""The mirror engine's work on one file: keep it, hard-link it to the previous snapshot,
or copy it, and describe the result for the manifest.

The quick check that lets a file be a hard link to the previous snapshot's copy asks for
the same size, mtime and mode, and the same inode and inode change time (ctime) as the
previous run recorded: a write that put the mtime back still moves the ctime, as does a
chown, chmod or attribute change (issue 12, item 7; restic checks the same). A manifest
written before ctime was recorded cannot vouch for anything, so those files are copied
once. With the job option `checksum`, metadata is not trusted: owner, attributes and a
hash of the source's content must match instead.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from engines.control import RunControl
from engines.durable import start_writeback
from engines.filecopy import COPY_CHUNK, copy_file, tmp_name
from engines.fsmeta import apply_meta, read_xattrs, refused_message, shown
from engines.manifest import sha256_file
from engines.previndex import PreviousFiles
from engines.progress import ProgressMeter, Reporter
from engines.ratelimit import RateLimiter
from engines.scan import Entry
from engines.treestore import set_meta


def file_record(entry: Entry, digest: str, size: int,
                xattrs: Mapping[str, str] | None) -> dict[str, Any]:
    """The manifest entry of a file: content, metadata, and the source's identity."""
    record: dict[str, Any] = {
        "path": entry.rel, "type": "file", "size": size, "mtime_ns": entry.mtime_ns,
        "mode": entry.mode, "sha256": digest, "uid": entry.uid, "gid": entry.gid,
        "ctime_ns": entry.ctime_ns, "ino": entry.ino}
    if xattrs:
        record["xattrs"] = dict(xattrs)
    return record


def tree_record(entry: Entry, warn: Reporter) -> dict[str, Any]:
    """The manifest entry of a directory or symlink, with owner and attributes."""
    record: dict[str, Any] = {"path": entry.rel, "type": entry.kind, "mode": entry.mode,
                              "mtime_ns": entry.mtime_ns, "uid": entry.uid, "gid": entry.gid}
    if entry.kind == "symlink":
        record["target"] = entry.target
        return record
    try:
        xattrs = read_xattrs(entry.path)
    except OSError as err:
        warn.warning(f"extended attributes of {shown(entry.path)} cannot be read "
                     f"({err.strerror}); the folder is kept without them")
        xattrs = {}
    if xattrs:
        record["xattrs"] = xattrs
    return record


# Files up to this size are read, hashed and written in one pass (most of an initial
# backup of many small files was copy_file's hole-seeking and a second read to hash).
SMALL_FILE = 1 << 20


@dataclass
class FileCopier:
    """One run's placing of files into its partial snapshot, shared by worker threads.

    Paths are plain strings: this runs once per file, and building Path objects cost
    more than the hard link itself on a no-change run.
    """

    partial: str
    prev_root: str | None
    prev_files: PreviousFiles
    journal_done: dict[str, tuple[int, int, str]]
    control: RunControl
    meter: ProgressMeter
    warn: Reporter
    limiter: RateLimiter | None
    resuming: bool
    checksum: bool = False

    def copy_chunk(self, chunk: list[Entry]) -> list[dict[str, Any] | None]:
        """Place each file of a chunk; return its manifest record, None for skipped."""
        control, meter = self.control, self.meter
        out: list[dict[str, Any] | None] = []
        for entry in chunk:
            control.safe_point()
            copied = 0

            def on_chunk(n: int, rel: str = entry.rel) -> None:
                nonlocal copied
                copied += n
                meter.add(nbytes=n, current_file=shown(rel))
                if self.limiter is not None:
                    self.limiter.consume(n)
                control.safe_point()  # pause or cancel inside a large file too

            out.append(self.place_file(entry, os.path.join(self.partial, entry.rel),
                                       on_chunk))
            # Count the whole file as done: linked, kept or copied, holes, size changes.
            meter.add(files=1, nbytes=max(0, entry.size - copied),
                      current_file=shown(entry.rel))
        return out

    def unchanged(self, entry: Entry, prev: Mapping[str, Any]) -> bool:
        """Whether the previous snapshot's copy of a file can stand for it (see above)."""
        if prev.get("type") != "file" or prev.get("size") != entry.size or \
                prev.get("mtime_ns") != entry.mtime_ns or prev.get("mode") != entry.mode:
            return False
        if not self.checksum:
            return prev.get("ctime_ns") == entry.ctime_ns and prev.get("ino") == entry.ino
        # The hard link shares the inode, so owner and attributes must match too.
        if (prev.get("uid"), prev.get("gid")) != (entry.uid, entry.gid):
            return False
        try:
            if read_xattrs(entry.path) != (prev.get("xattrs") or {}):
                return False
            return sha256_file(entry.path, lambda _n: self.control.safe_point()) == \
                prev.get("sha256")
        except OSError:
            return False  # the copy below reports what is wrong with the file

    def place_file(self, entry: Entry, out: str,
                   on_chunk: Callable[[int], None]) -> dict[str, Any] | None:
        """Put one file in the snapshot (kept, linked or copied); return its record."""
        # Resume: a file already complete in the partial directory is kept. A fresh
        # partial directory is empty, so the look is skipped (a syscall per file).
        if self.resuming:
            kept = already_in_place(entry, out, self.journal_done)
            if kept is not None:
                with contextlib.suppress(OSError):
                    return file_record(entry, kept, entry.size, read_xattrs(entry.path))
        prev = self.prev_files.get(entry.rel)
        if self.prev_root is not None and prev and self.unchanged(entry, prev):
            linked = os.path.join(self.prev_root, entry.rel)
            record = file_record(entry, str(prev["sha256"]), entry.size, prev.get("xattrs"))
            try:
                os.link(linked, out)
                return record
            except FileExistsError:
                os.unlink(out)
                os.link(linked, out)
                return record
            except OSError as err:
                if err.errno not in (errno.EMLINK, errno.EXDEV, errno.ENOENT, errno.EPERM):
                    raise
                # Too many links, another filesystem or a pruned file: copy instead.
        return self.copy_in(entry, out, on_chunk)

    def copy_in(self, entry: Entry, out: str,
                on_chunk: Callable[[int], None]) -> dict[str, Any] | None:
        """Copy a file into the snapshot under a short temporary name, then rename it."""
        head = os.path.dirname(out)
        tmp = ""
        # Under a bandwidth limit, copy in pieces of about a quarter second each so the
        # rate stays even and progress moves steadily instead of in 4 MB jumps.
        chunk = (COPY_CHUNK if self.limiter is None
                 else max(64 << 10, min(COPY_CHUNK, int(self.limiter.rate / 4))))
        small: bytes | None = None
        try:
            xattrs = read_xattrs(entry.path)
            small = read_small(entry.path) if entry.size <= SMALL_FILE else None
            while True:
                tmp = os.path.join(head, tmp_name())
                try:
                    if small is None:
                        copy_file(entry.path, tmp, on_chunk, chunk, exclusive=True)
                    else:
                        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    break
                except FileExistsError:
                    tmp = ""  # the name is taken (a file of the user's): draw another
        except FileNotFoundError:
            if os.path.lexists(entry.path):
                raise
            self.warn.warning(f"{shown(entry.path)} vanished during the backup; skipped")
            _remove(tmp)
            return None
        except PermissionError as err:
            self.warn.warning(f"{shown(entry.path)} cannot be read ({err.strerror}); "
                              "skipped")
            _remove(tmp)
            return None
        if small is not None:
            # Read once: what is written is what is hashed, so the manifest describes
            # the copy exactly, as hashing it afterwards did.
            try:
                view = memoryview(small)
                while view:
                    view = view[os.write(fd, view):]
                on_chunk(len(small))
                record = file_record(entry, hashlib.sha256(small).hexdigest(), len(small),
                                     xattrs)
                refused = apply_meta(fd, record)
                start_writeback(fd)
            except BaseException:
                os.close(fd)
                _remove(tmp)
                raise
            os.close(fd)
        else:
            # Hash what landed in the snapshot (still in the page cache), so the manifest
            # describes the copy even if the source changed while it was read; its
            # writing to disk starts meanwhile.
            written = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                start_writeback(written)
            finally:
                os.close(written)
            digest = sha256_file(tmp)
            record = file_record(entry, digest, os.stat(tmp).st_size, xattrs)
            refused = set_meta(tmp, record)
        if record["size"] != entry.size:
            self.warn.warning(f"{shown(entry.path)} changed while it was copied; the "
                              "snapshot holds the version read")
        if refused:
            self.warn.warning(refused_message(entry.path, refused))
        os.replace(tmp, out)
        return record


def read_small(path: str) -> bytes | None:
    """A small dense file's whole content in one read; None for one that is sparse or
    larger than SMALL_FILE (copy_file keeps its holes), or that grew while read."""
    fd = os.open(path, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        if st.st_size > SMALL_FILE or st.st_blocks * 512 < st.st_size:
            return None
        # Its size plus one (os.read allocates all it is asked for); more means it grew.
        data = os.read(fd, st.st_size + 1)
        return data if len(data) <= st.st_size else None
    finally:
        os.close(fd)


def _remove(path: str) -> None:
    """Remove a temporary file if there is one."""
    if path:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def already_in_place(entry: Entry, out: str, journal_done: dict[str, tuple[int, int, str]]
                     ) -> str | None:
    """The hash of a file an interrupted run already finished, if it did.

    The copy counts only if it was made after the source last changed: its own ctime
    (set when it was renamed into place) is later than the source's.
    """
    try:
        st = os.lstat(out)
    except FileNotFoundError:
        return None
    key = (entry.size, entry.mtime_ns)
    if (st.st_size, st.st_mtime_ns) != key or st.st_ctime_ns <= entry.ctime_ns:
        return None
    known = journal_done.get(entry.rel)
    if known and known[:2] == key:
        return known[2]
    return sha256_file(out)

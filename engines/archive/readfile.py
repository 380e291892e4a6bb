"""Reading a source file for the archive: small ones whole, with what changed meanwhile."""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from engines.scan import Entry

# Large files are read, hashed and counted in pieces of this size: at most this much
# is read before progress is reported and before a change to the file can show.
READ_CHUNK = 1 << 20
# Files up to this size (at scan time) are read whole, in one read.
SMALL_FILE = 1 << 20
# A small file that has grown past this since the scan is streamed like a large one.
LOAD_LIMIT = 2 << 20
OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(slots=True)
class SmallRead:
    """A small file read whole, or why it was not."""

    # "ok"; "partly" (read, but it changed, shrank or failed part way: see below);
    # "vanished", "unreadable" or "not regular" (skipped); or "too big" (it grew past
    # LOAD_LIMIT since the scan, so it is streamed like a large file instead).
    outcome: str
    data: bytes = b""  # exactly `size` bytes, zero-padded if the file shrank or failed
    size: int = 0
    mtime_ns: int = 0
    mode: int = 0
    changed: bool = False  # its size or mtime moved while it was read
    shortfall: int = 0  # bytes missing at the end (it shrank)
    error: str = ""  # why reading stopped early, or why it could not be opened


def read_small(entry: Entry) -> SmallRead:
    """Read a small file whole.

    The usual case costs one read and one fstat: ask for a byte more than the scan saw;
    when exactly the scan's size comes back and the file still has the scan's size and
    mtime, nothing changed since. Anything else (it changed since the scan, it is no
    longer a regular file, the read failed) reads it again, between two fstats.
    """
    try:
        # O_NOFOLLOW: it was a file at scan time, a symlink now is a change, not a file to
        # follow; O_NONBLOCK: a FIFO swapped in must not hang the run.
        fd = os.open(entry.path, OPEN_FLAGS)
    except FileNotFoundError:
        return SmallRead("vanished")
    except OSError as err:
        return SmallRead("unreadable", error=err.strerror or str(err))
    try:
        try:
            data = os.read(fd, entry.size + 1)
            after = os.fstat(fd)
        except OSError:
            pass
        else:
            if (len(data) == entry.size == after.st_size and stat.S_ISREG(after.st_mode)
                    and after.st_mtime_ns == entry.mtime_ns):
                return SmallRead("ok", data, entry.size, entry.mtime_ns,
                                 stat.S_IMODE(after.st_mode))
        return _read_carefully(fd)
    finally:
        os.close(fd)


def _read_carefully(fd: int) -> SmallRead:
    """Read an open file whole between two fstats, which tell whether it changed meanwhile."""
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            return SmallRead("not regular")
        size = before.st_size
        if size > LOAD_LIMIT:
            return SmallRead("too big")
        parts: list[bytes] = []
        got, error = 0, ""
        try:
            while got < size and (part := os.pread(fd, size - got, got)):
                parts.append(part)
                got += len(part)
        except OSError as err:
            error = err.strerror or str(err)
        after = os.fstat(fd)
    except OSError as err:
        return SmallRead("unreadable", error=err.strerror or str(err))
    shortfall = 0 if error else size - got
    parts.append(bytes(size - got))  # tar holds the size announced in the header
    changed = after.st_size != size or after.st_mtime_ns != before.st_mtime_ns
    return SmallRead("partly" if changed or shortfall or error else "ok", b"".join(parts),
                     size, before.st_mtime_ns, stat.S_IMODE(before.st_mode), changed,
                     shortfall, error)


def next_data(fd: int, pos: int, size: int) -> int:
    """Where the data after `pos` starts (`size` if only a hole follows); `pos` if unknown."""
    try:
        return min(os.lseek(fd, pos, os.SEEK_DATA), size)
    except OSError as err:
        return size if err.errno == errno.ENXIO else pos  # ENXIO: a hole to the end

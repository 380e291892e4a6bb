"""The archive engine's writer: a compressed tar, about as fast as `tar --zstd -cf`.

What made the tarfile-based writer slow, and what this does instead:

- tarfile builds every header through a TarInfo, a dict, a pax check and a copy, which
  cost more than tar spends on a whole small file. The usual header (a short ASCII name,
  numbers that fit) is packed here in one step; anything else still goes through
  tarfile, so the bytes are the same either way.
- Everything ran on one thread, one write into the compressor per header and per piece
  of data. Here the tar stream is gathered into STREAM_BLOCK blocks, and each block
  goes on to a hashing thread (for the pieces of large files in it) and a compressing
  thread (several, while the data compresses well) while the next one fills. Reading,
  hashing and compressing release the GIL, so the cores stay busy.
- A zstd stream compressor copies its input into a ring buffer and matches across the
  wrap, a third slower than compressing a block in place. Each block is its own zstd
  frame instead: a .tar.zst of several frames is still one valid zstd stream (zstd,
  GNU tar and the restore here read it straight through). Matches cannot reach back
  into the previous block, which costs about 1% in size on compressible data.
- The archive is fsynced before it counts, and flushing a whole archive at the end took
  a fifth of the run. Writeback is started every WRITEBACK_BYTES instead, so the fsync
  finds little left to write.

Small files are read whole and hashed on the writer's thread. Reading (or hashing) them
on other threads was tried and was slower: each file is a few short system calls, and
handing the GIL between threads around every one of them cost more than it saved.
Large files are read READ_CHUNK at a time, with progress, and a safe point every
safe_point_bytes, between pieces.
"""

from __future__ import annotations

import os
import stat
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, Any, Protocol

import blake3

from engines.archive.compress import HASH, Compressor
from engines.archive.meta import LinkGroups, entry_xattrs, owner_fields, pax_records
from engines.archive.readfile import (
    OPEN_FLAGS,
    READ_CHUNK,
    SMALL_FILE,
    next_data,
    read_small,
)
from engines.archive.tarheader import tar_header
from engines.archive.tarstream import TarStream
from engines.control import RunControl
from engines.fsmeta import shown
from engines.progress import ProgressMeter, Reporter
from engines.scan import Entry

_ZEROS = memoryview(bytes(READ_CHUNK))


class RecordSink(Protocol):
    """Where manifest entries go, in order, as soon as each is complete."""

    def add(self, entry: Mapping[str, Any]) -> None:
        """Take one entry."""


def write_archive(raw: IO[bytes], compression: str, level: int, entries: Iterable[Entry],
                  control: RunControl, reporter: Reporter, meter: ProgressMeter,
                  safe_point_bytes: int, sink: RecordSink) -> None:
    """Stream entries, in scan order, into a compressed tar on raw; each manifest entry
    goes to sink as soon as it is complete (in the same order).

    Entries are taken from a stream (the walk) as they are written, so neither they nor
    the manifest entries are all held at once (issue 14). Pause and cancel are checked
    between entries and every safe_point_bytes inside a large file. Progress and
    warnings come from this (the calling) thread only.
    """
    compressor = Compressor(raw, compression, level)
    try:
        writer = _EntryWriter(TarStream(compressor), reporter, meter, control,
                              safe_point_bytes)
        links = LinkGroups()
        pending = _Pending(sink)
        for entry in _counted(entries, meter):
            control.safe_point()
            record: dict[str, Any] | None
            leader = links.leader_of(entry)
            if leader is not None:
                record = writer.add_link(entry, links.follower(entry, leader), leader)
            elif entry.kind != "file":
                record = writer.add_other(entry)
            elif entry.size <= SMALL_FILE:
                record = writer.add_small(entry)
            else:
                record = writer.add_large(entry)
            if record is not None:
                pending.add(record, leader)
                if leader is None and entry.kind == "file":
                    links.written(entry, record)
        writer.tar.end()
        compressor.finish()
        pending.flush(final=True)  # after the hashing thread has set every hash
    except BaseException:
        compressor.abandon()
        raise


def _counted(entries: Iterable[Entry], meter: ProgressMeter) -> Iterator[Entry]:
    """The entries, each file added to the totals as it comes; totals final at the end."""
    for entry in entries:
        if entry.kind == "file":
            state = meter.state  # totals are set on this thread only
            meter.update(files_total=(state.files_total or 0) + 1,
                         bytes_total=(state.bytes_total or 0) + entry.size)
        yield entry
    meter.update(force=True, counting=False)


class _Pending:
    """Manifest entries waiting, in order, for their content hash (a large file's is set
    on the hashing thread; a later hard-link name's comes from its first name's)."""

    def __init__(self, sink: RecordSink) -> None:
        self._sink = sink
        self._waiting: deque[tuple[dict[str, Any], dict[str, Any] | None]] = deque()

    def add(self, record: dict[str, Any], leader: dict[str, Any] | None) -> None:
        """Queue one entry, and pass on every entry at the front that is complete."""
        self._waiting.append((record, leader))
        self.flush()

    def flush(self, final: bool = False) -> None:
        """Pass on the complete entries at the front (with `final`, all of them)."""
        waiting = self._waiting
        while waiting:
            record, leader = waiting[0]
            source = record if leader is None else leader
            if not final and source.get("type") == "file" and HASH not in source:
                return
            if leader is not None:  # a later name: its leader's size, times, owner, hash
                for key, value in leader.items():
                    if key != "path":
                        record[key] = value
            waiting.popleft()
            self._sink.add(record)


class _EntryWriter:
    """Writes one entry at a time into the tar stream, with its warnings and progress."""

    def __init__(self, tar: TarStream, reporter: Reporter, meter: ProgressMeter,
                 control: RunControl, safe_point_bytes: int) -> None:
        self.tar = tar
        self.reporter = reporter
        self.meter = meter
        self.control = control
        self.safe_point_bytes = safe_point_bytes

    def add_other(self, entry: Entry) -> dict[str, Any]:
        """A directory or symlink, as the scan saw it."""
        self.meter.update(current_file=entry.rel)
        owner = self._owner(entry)
        mtime = entry.mtime_ns // 1_000_000_000  # tar keeps seconds; the manifest keeps ns
        self.tar.write(tar_header(entry.rel, entry.kind, 0, mtime, entry.mode, entry.target,
                                  entry.uid, entry.gid, pax_records(owner.get("xattrs"))))
        record: dict[str, Any] = {"path": entry.rel, "type": entry.kind, "size": 0,
                                  "mtime_ns": entry.mtime_ns, "mode": entry.mode, **owner}
        if entry.kind == "symlink":
            record["target"] = entry.target
        return record

    def add_link(self, entry: Entry, record: dict[str, Any],
                 leader: dict[str, Any]) -> dict[str, Any]:
        """A later name of a file already in the archive: a hard-link member, no data."""
        self.meter.update(current_file=entry.rel)
        self.tar.write(tar_header(entry.rel, "hardlink", 0, leader["mtime_ns"] // 1_000_000_000,
                                  leader["mode"], leader["path"], leader["uid"],
                                  leader["gid"]))
        self.meter.add(files=1, nbytes=leader["size"])
        return record

    def _owner(self, entry: Entry) -> dict[str, Any]:
        """Owner, group and kept attributes; attributes that cannot be read are a warning."""
        try:
            xattrs = entry_xattrs(entry)
        except OSError as err:
            self.reporter.warning(f"{shown(entry.path)}: its extended attributes cannot be "
                                  f"read ({err.strerror or err}); backed up without them")
            xattrs = {}
        return owner_fields(entry, xattrs)

    def add_small(self, entry: Entry) -> dict[str, Any] | None:
        """A small file, read whole."""
        read = read_small(entry)
        if read.outcome == "too big":
            return self.add_large(entry)
        if read.outcome not in ("ok", "partly"):
            self._skipped(entry, read.outcome, read.error)
            return None
        size = read.size
        if size != entry.size:
            self._size_changed(entry, size)
        owner = self._owner(entry)
        self.tar.write_file(tar_header(entry.rel, "file", size, read.mtime_ns // 1_000_000_000,
                                       read.mode, "", entry.uid, entry.gid,
                                       pax_records(owner.get("xattrs"))), read.data)
        if read.outcome == "partly":
            self._warn_if_changed(entry, read.error, read.shortfall, read.changed)
        self.meter.add(files=1, nbytes=size, current_file=entry.rel)
        return {"path": entry.rel, "type": "file", "size": size, "mtime_ns": read.mtime_ns,
                "mode": read.mode, HASH: blake3.blake3(read.data).hexdigest(), **owner}

    def add_large(self, entry: Entry) -> dict[str, Any] | None:
        """A large file, read and hashed a piece at a time."""
        self.meter.update(current_file=entry.rel)
        try:
            fd = os.open(entry.path, OPEN_FLAGS)
        except FileNotFoundError:
            self._skipped(entry, "vanished", "")
            return None
        except OSError as err:
            self._skipped(entry, "unreadable", err.strerror or str(err))
            return None
        try:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                self._skipped(entry, "not regular", "")
                return None
            size = before.st_size
            if size != entry.size:
                self._size_changed(entry, size)
            mode = stat.S_IMODE(before.st_mode)
            owner = self._owner(entry)
            self.tar.write(tar_header(entry.rel, "file", size,
                                      before.st_mtime_ns // 1_000_000_000, mode, "",
                                      entry.uid, entry.gid, pax_records(owner.get("xattrs"))))
            record: dict[str, Any] = {"path": entry.rel, "type": "file", "size": size,
                                      "mtime_ns": before.st_mtime_ns, "mode": mode, **owner}
            holes = before.st_blocks * 512 < size  # sparse: its holes need not be read
            shortfall, error = self._copy(fd, size, record, holes)
            self.tar.pad()
            after = os.fstat(fd)
        finally:
            os.close(fd)
        changed = after.st_size != size or after.st_mtime_ns != before.st_mtime_ns
        self._warn_if_changed(entry, error, shortfall, changed)
        self.meter.add(files=1)
        return record

    def _copy(self, fd: int, size: int, record: dict[str, Any],
              holes: bool = False) -> tuple[int, str]:
        """Exactly `size` bytes of a file into the tar, zero-padded past an early end (tar
        announces a member's size before its data); they are hashed into record[HASH]
        on the hashing thread. Return how many bytes were missing at the end, and the read
        error that stopped it, if one did."""
        digest = blake3.blake3()
        if not size:
            record[HASH] = digest.hexdigest()
        left, since_safe_point = size, 0
        shortfall, error, ended = 0, "", False
        data_at = 0  # before this offset the file is known to hold data (or unknown)
        while left:
            want = min(READ_CHUNK, left)
            room = self.tar.reserve(want)
            got = 0
            pos = size - left
            if holes and pos >= data_at:
                data_at = next_data(fd, pos, size)
            if data_at - pos >= want:  # a hole all the way: zeros, nothing to read
                room[:] = _ZEROS[:want]
                got = want
            while not ended and got < want:
                try:
                    n = os.preadv(fd, [room[got:]], pos + got)
                except OSError as err:
                    error, ended = err.strerror or str(err), True
                    break
                if not n:
                    ended = True
                    break
                got += n
            if got < want:
                room[got:] = _ZEROS[:want - got]
                if not error:
                    shortfall += want - got
            left -= want
            self.tar.commit(want, digest, None if left else record)
            self.meter.add(nbytes=want)
            since_safe_point += want
            if since_safe_point >= self.safe_point_bytes:
                since_safe_point = 0
                self.control.safe_point()
        return shortfall, error

    def _size_changed(self, entry: Entry, size: int) -> None:
        """It grew or shrank since the scan: keep the progress totals honest."""
        self.meter.update(bytes_total=(self.meter.state.bytes_total or 0) + size - entry.size)

    def _skipped(self, entry: Entry, outcome: str, error: str) -> None:
        if outcome == "vanished":
            self.reporter.warning(f"{shown(entry.path)} vanished during the backup; skipped")
        elif outcome == "not regular":
            self.reporter.warning(f"{shown(entry.path)} is no longer a regular file; skipped")
        else:
            self.reporter.warning(f"{shown(entry.path)} cannot be read ({error}); skipped")

    def _warn_if_changed(self, entry: Entry, error: str, shortfall: int,
                         changed: bool) -> None:
        if error:
            self.reporter.warning(f"{shown(entry.path)} could not be read to the end ({error}); "
                                  "the archive holds it with the unread rest filled with "
                                  "zeros")
        elif shortfall:
            self.reporter.warning(f"{shown(entry.path)} shrank by {shortfall} bytes while it was "
                                  "backed up; the archive holds it padded with zeros to its "
                                  "earlier size")
        elif changed:
            self.reporter.warning(f"{shown(entry.path)} changed while it was backed up; the "
                                  "archived copy may mix old and new content")

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

import contextlib
import errno
import gzip
import os
import queue
import stat
import struct
import tarfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any

import blake3
import zstandard

from engines.control import RunControl
from engines.fsmeta import shown
from engines.manifest import Hasher
from engines.progress import ProgressMeter, Reporter
from engines.scan import Entry
from engines.tarmeta import LinkGroups, entry_xattrs, owner_fields, pax_records

# The manifest key of each file's content hash (see engines/manifest.py CONTENT_HASHES).
HASH = "blake3"

BLOCKSIZE = tarfile.BLOCKSIZE  # 512
RECORDSIZE = tarfile.RECORDSIZE  # 20 blocks; an archive is padded to whole records
# Large files are read, hashed and counted in pieces of this size: at most this much
# is read before progress is reported and before a change to the file can show.
READ_CHUNK = 1 << 20
# Files up to this size (at scan time) are read whole, in one read.
SMALL_FILE = 1 << 20
# A small file that has grown past this since the scan is streamed like a large one.
LOAD_LIMIT = 2 << 20
# The tar stream goes to the compressor in blocks of this size, each its own zstd frame.
STREAM_BLOCK = 4 << 20
# Blocks are compressed on several threads at once while they shrink below this share.
PARALLEL_BELOW = 0.9
# The archive is written at most this much at a time: on Linux, 4 MiB writes were slower
# and far less steady than 1 MiB ones (the page cache takes bigger pieces of memory for
# them, which can take longer to find).
WRITE_CHUNK = 1 << 20
# Writeback of the archive is started after every this many bytes written.
WRITEBACK_BYTES = 32 << 20

_ZEROS = memoryview(bytes(max(READ_CHUNK, RECORDSIZE)))
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


# --- tar headers -------------------------------------------------------------------------

# name, mode, uid, gid, size, mtime, checksum, type, linkname, magic and version, uname,
# gname, devmajor, devminor, prefix, then 12 bytes of padding: one 512-byte block.
_USTAR = struct.Struct("100s8s8s8s12s12s8sc100s8s32s32s8s8s155s12x")
_MAGIC = tarfile.POSIX_MAGIC  # b"ustar\x0000"
# The checksum counts its own field as eight spaces, plus every other byte of the block.
_CHECKSUM_BASE = 8 * ord(" ") + sum(_MAGIC)
_NUMBER_LIMIT = 8 ** 11  # size and mtime fit 11 octal digits; beyond, pax records them
_ID_LIMIT = 8 ** 7  # uid and gid fit 7 octal digits; beyond, pax records them
_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
          "hardlink": tarfile.LNKTYPE}


def tar_header(name: str, kind: str, size: int, mtime: int, mode: int,
               linkname: str = "", uid: int = 0, gid: int = 0,
               pax: dict[str, str] | None = None) -> bytes:
    """The header block(s) of one member: byte for byte what tarfile writes in pax format.

    A short ASCII name and link target and numbers that fit make one ustar block, packed
    here; anything else (a long or non-ASCII name, a huge size, a time before 1970, extra
    pax records such as extended attributes) goes through tarfile, which puts a pax
    extended header in front. A "hardlink" names its first path in linkname.
    """
    if kind == "dir" and not name.endswith("/"):
        name += "/"  # as tarfile does; readers strip it again
    if (not pax and name.isascii() and len(name) <= 100 and linkname.isascii()
            and len(linkname) <= 100 and 0 <= size < _NUMBER_LIMIT
            and 0 <= mtime < _NUMBER_LIMIT and 0 <= uid < _ID_LIMIT and 0 <= gid < _ID_LIMIT):
        name_b, link_b = name.encode("ascii"), linkname.encode("ascii")
        mode_b = b"%07o\x00" % (mode & 0o7777)
        uid_b, gid_b = b"%07o\x00" % uid, b"%07o\x00" % gid
        size_b = b"%011o\x00" % size
        mtime_b = b"%011o\x00" % mtime
        kind_b = _TYPES[kind]
        checksum = (_CHECKSUM_BASE + sum(name_b) + sum(link_b) + sum(mode_b) + sum(uid_b)
                    + sum(gid_b) + sum(size_b) + sum(mtime_b) + kind_b[0])
        return _USTAR.pack(name_b, mode_b, uid_b, gid_b, size_b, mtime_b,
                           b"%06o\x00 " % checksum, kind_b, link_b, _MAGIC, b"", b"", b"",
                           b"", b"")
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mtime, info.mode = _TYPES[kind], size, mtime, mode
    info.linkname, info.uid, info.gid = linkname, uid, gid
    if pax:
        info.pax_headers = dict(pax)
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


# --- hashing, compressing and writing on threads of their own ------------------------------


class _FileOut:
    """The archive file as the compressor writes to it: every byte, or an error."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self._fd = raw.fileno()
        self._written = 0
        self._flushed = 0

    def write(self, data: bytes | memoryview) -> int:
        """Write all of data: a write can be short when the disk fills part way, and
        gzip does not look at what write returns, so the rest is written here or fails."""
        view = memoryview(data).cast("B")
        total = len(view)
        while view:
            written = self._raw.write(view[:WRITE_CHUNK])
            if not written:
                raise OSError(f"the archive file took no bytes ({written!r})")
            view = view[written:]
        self._written += total
        if self._written - self._flushed >= WRITEBACK_BYTES:
            self._start_writeback()
        return total

    def flush(self) -> None:
        """Nothing to flush: writes go straight to the file."""

    def _start_writeback(self) -> None:
        # On Linux, "don't need" starts writing out the range's dirty pages without
        # waiting for them (os has no sync_file_range; the pages themselves stay cached,
        # being dirty or under writeback). Elsewhere the final fsync does all of it.
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self._fd, self._flushed, self._written - self._flushed,
                             os.POSIX_FADV_DONTNEED)
        self._flushed = self._written


# A piece of a large file in a block: where it starts and ends, the file's running hash,
# and, with its last piece, its manifest entry, which gets the hash.
_Span = tuple[int, int, Hasher, "dict[str, Any] | None"]


class _Compressor:
    """Hashes, compresses and writes blocks of the tar stream, on threads of their own.

    Each block goes from the writer to a hashing thread (which hashes the pieces of large
    files in it), on to one of the compressing threads, and is written out in its turn;
    then it comes back for reuse. So only a few blocks are ever in memory, and the writer
    waits when the others fall behind. zstd frames are independent, so several blocks
    can be compressed at once; that is done while the data compresses well, which is
    when compressing is slow. Data that hardly compresses (media, or the benchmark's
    random bytes) compresses fast, and more compressing threads would only take cores
    from the reading and hashing. A gzip stream is one, so it has one compressing
    thread. Small files are hashed by the writer itself: for them, handing the GIL to
    another thread would cost more than the hashing.

    An error on any of the threads (a full disk) is raised in the writer at its next
    hand-over.
    """

    def __init__(self, raw: IO[bytes], compression: str, level: int) -> None:
        self._out = _FileOut(raw)
        self._level = level
        self._gzip: gzip.GzipFile | None = None
        compressing = _compressing_threads()
        if compression == "gzip":
            self._gzip = gzip.GzipFile(filename="", mode="wb", compresslevel=level,
                                       fileobj=self._out)
            compressing = 1
        self._to_hash: queue.SimpleQueue[tuple[bytearray, int, list[_Span]] | None] = (
            queue.SimpleQueue())
        self._to_compress: queue.SimpleQueue[tuple[int, bytearray, int] | None] = (
            queue.SimpleQueue())
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        self._blocks = compressing + 4  # one filling, one hashing, the rest queued
        self._allocated = 0
        self._turn = threading.Condition()
        self._in_parallel = threading.Event()
        self._next_to_write = 0
        self._error: BaseException | None = None
        self._dropping = False
        self._compressing = [threading.Thread(target=self._compress_blocks, args=(n == 0,),
                                              name=f"archive-compress-{n}", daemon=True)
                             for n in range(compressing)]
        self._hashing = threading.Thread(target=self._hash_blocks, name="archive-hash",
                                         daemon=True)
        for thread in (self._hashing, *self._compressing):
            thread.start()

    def free_block(self) -> bytearray:
        """An empty block to fill: a new one while there are few, else the next one
        written out."""
        self._raise_error()
        try:
            return self._free.get_nowait()
        except queue.Empty:
            pass
        if self._allocated < self._blocks:
            self._allocated += 1
            return bytearray(STREAM_BLOCK)
        while True:
            try:
                block = self._free.get(timeout=1.0)
                break
            except queue.Empty:
                # Only a bug could stop a thread early; fail rather than wait forever.
                if not all(t.is_alive() for t in (self._hashing, *self._compressing)):
                    raise RuntimeError("the archive's compressing threads stopped") from None
        self._raise_error()
        return block

    def put(self, block: bytearray, length: int, spans: list[_Span]) -> None:
        """Hand over the first `length` bytes of a block, and the pieces of files in it
        to hash, to be hashed, compressed and written."""
        self._raise_error()
        self._to_hash.put((block, length, spans))

    def finish(self) -> None:
        """Write out everything handed over and end the compressed stream; raise a write
        error."""
        self._stop()
        self._raise_error()
        if self._gzip is not None:
            self._gzip.close()  # its trailer; the file itself stays open

    def abandon(self) -> None:
        """Stop, dropping what is queued (the archive is being thrown away)."""
        self._dropping = True
        self._stop()
        if self._gzip is not None:
            with contextlib.suppress(Exception):
                self._gzip.close()

    def _stop(self) -> None:
        self._to_hash.put(None)
        for thread in (self._hashing, *self._compressing):
            thread.join()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _hash_blocks(self) -> None:
        number = 0
        while (item := self._to_hash.get()) is not None:
            block, length, spans = item
            try:
                if self._error is None and not self._dropping:
                    view = memoryview(block)
                    for start, end, digest, record in spans:
                        digest.update(view[start:end])
                        if record is not None:
                            record[HASH] = digest.hexdigest()
            except BaseException as err:  # raised again in the writer's thread
                self._error = err
            self._to_compress.put((number, block, length))
            number += 1
        for _ in self._compressing:
            self._to_compress.put(None)

    def _compress_blocks(self, first: bool) -> None:
        """Compress blocks and write them out in order. The first compressing thread
        takes every block it can; the others only while the data compresses well."""
        # write_checksum: a flipped byte breaks its frame's checksum, which verify reports.
        zstd = zstandard.ZstdCompressor(level=self._level, write_checksum=True)
        try:
            while first or self._in_parallel.wait():
                item = self._to_compress.get()
                if item is None:
                    break
                self._compress_block(zstd, first, *item)
        finally:
            if first:  # from now on the others only have their end-of-work None to get
                self._in_parallel.set()

    def _compress_block(self, zstd: zstandard.ZstdCompressor, first: bool, number: int,
                        block: bytearray, length: int) -> None:
        data = memoryview(block)[:length]
        frame = b""
        try:
            if self._error is None and not self._dropping and self._gzip is None:
                frame = zstd.compress(data)
                if first and len(frame) < length * PARALLEL_BELOW:
                    self._in_parallel.set()
                elif first:
                    self._in_parallel.clear()
        except BaseException as err:  # raised again in the writer's thread
            self._error = err
        with self._turn:
            while self._next_to_write != number:  # frames go out in order
                self._turn.wait()
            try:
                if self._error is None and not self._dropping:
                    if self._gzip is not None:
                        self._gzip.write(data)
                    else:
                        self._out.write(frame)
            except BaseException as err:  # raised again in the writer's thread
                self._error = err
            self._next_to_write += 1
            self._turn.notify_all()
        self._free.put(block)


def _compressing_threads() -> int:
    """How many blocks to compress at once: one per core this process may use, up to 4."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        cores = os.cpu_count() or 1
    return max(1, min(cores, 4))


class _TarStream:
    """The uncompressed tar stream, gathered into blocks for the compressor."""

    def __init__(self, compressor: _Compressor) -> None:
        self._compressor = compressor
        self._block = compressor.free_block()
        self._view = memoryview(self._block)
        self._pos = 0
        self._flushed = 0
        self._spans: list[_Span] = []

    @property
    def offset(self) -> int:
        """Bytes in the stream so far."""
        return self._flushed + self._pos

    def write(self, data: bytes | memoryview) -> None:
        """Append bytes."""
        view = memoryview(data)
        while view:
            if self._pos == STREAM_BLOCK:
                self.flush()
            take = min(len(view), STREAM_BLOCK - self._pos)
            self._view[self._pos:self._pos + take] = view[:take]
            self._pos += take
            view = view[take:]

    def write_file(self, header: bytes, data: bytes) -> None:
        """Append a whole small file: its header, its data and the padding after it,
        in one block (a small file is at most LOAD_LIMIT, well under a block)."""
        size = len(data)
        padding = -size % BLOCKSIZE
        start = self._pos
        if start + len(header) + size + padding > STREAM_BLOCK:
            self.flush()
            start = 0
        view = self._view
        end = start + len(header)
        view[start:end] = header
        view[end:end + size] = data
        end += size
        view[end:end + padding] = _ZEROS[:padding]
        self._pos = end + padding

    def reserve(self, size: int) -> memoryview:
        """Room for exactly `size` (at most STREAM_BLOCK) bytes, to fill then commit()."""
        if self._pos + size > STREAM_BLOCK:
            self.flush()
        return self._view[self._pos:self._pos + size]

    def commit(self, size: int, digest: Hasher | None = None,
               record: dict[str, Any] | None = None) -> None:
        """Count the bytes just put into the room reserve() gave; with `digest`, they are
        hashed into it (on the hashing thread), and with `record` too, that is the last
        piece of the file and record[HASH] is set."""
        if digest is not None:
            self._spans.append((self._pos, self._pos + size, digest, record))
        self._pos += size

    def pad(self) -> None:
        """Zeros up to the next 512-byte boundary, as after a member's data."""
        if rest := self.offset % BLOCKSIZE:
            self.write(_ZEROS[:BLOCKSIZE - rest])

    def end(self) -> None:
        """The end-of-archive marker (two zero blocks), padded to whole records as tarfile
        pads it; then everything goes to the compressor."""
        self.write(_ZEROS[:2 * BLOCKSIZE])
        if rest := self.offset % RECORDSIZE:
            self.write(_ZEROS[:RECORDSIZE - rest])
        self.flush()

    def flush(self) -> None:
        """Hand the filled part of the current block to the compressor; start a new one."""
        if self._pos:
            self._compressor.put(self._block, self._pos, self._spans)
            self._spans = []
            self._flushed += self._pos
            self._block = self._compressor.free_block()
            self._view = memoryview(self._block)
            self._pos = 0


# --- reading small files ----------------------------------------------------------------


@dataclass(slots=True)
class _Read:
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


def _read_small(entry: Entry) -> _Read:
    """Read a small file whole.

    The usual case costs one read and one fstat: ask for a byte more than the scan saw;
    when exactly the scan's size comes back and the file still has the scan's size and
    mtime, nothing changed since. Anything else (it changed since the scan, it is no
    longer a regular file, the read failed) reads it again, between two fstats.
    """
    try:
        # O_NOFOLLOW: it was a file at scan time, a symlink now is a change, not a file to
        # follow; O_NONBLOCK: a FIFO swapped in must not hang the run.
        fd = os.open(entry.path, _OPEN_FLAGS)
    except FileNotFoundError:
        return _Read("vanished")
    except OSError as err:
        return _Read("unreadable", error=err.strerror or str(err))
    try:
        try:
            data = os.read(fd, entry.size + 1)
            after = os.fstat(fd)
        except OSError:
            pass
        else:
            if (len(data) == entry.size == after.st_size and stat.S_ISREG(after.st_mode)
                    and after.st_mtime_ns == entry.mtime_ns):
                return _Read("ok", data, entry.size, entry.mtime_ns,
                             stat.S_IMODE(after.st_mode))
        return _read_carefully(fd)
    finally:
        os.close(fd)


def _read_carefully(fd: int) -> _Read:
    """Read an open file whole between two fstats, which tell whether it changed meanwhile."""
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            return _Read("not regular")
        size = before.st_size
        if size > LOAD_LIMIT:
            return _Read("too big")
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
        return _Read("unreadable", error=err.strerror or str(err))
    shortfall = 0 if error else size - got
    parts.append(bytes(size - got))  # tar holds the size announced in the header
    changed = after.st_size != size or after.st_mtime_ns != before.st_mtime_ns
    return _Read("partly" if changed or shortfall or error else "ok", b"".join(parts), size,
                 before.st_mtime_ns, stat.S_IMODE(before.st_mode), changed, shortfall, error)


def _next_data(fd: int, pos: int, size: int) -> int:
    """Where the data after `pos` starts (`size` if only a hole follows); `pos` if unknown."""
    try:
        return min(os.lseek(fd, pos, os.SEEK_DATA), size)
    except OSError as err:
        return size if err.errno == errno.ENXIO else pos  # ENXIO: a hole to the end


# --- the writer ------------------------------------------------------------------------------


def write_archive(raw: IO[bytes], compression: str, level: int, entries: Sequence[Entry],
                  control: RunControl, reporter: Reporter, meter: ProgressMeter,
                  safe_point_bytes: int) -> list[dict[str, Any]]:
    """Stream entries, in scan order, into a compressed tar on raw; return manifest entries.

    Pause and cancel are checked between entries and every safe_point_bytes inside a
    large file. Progress and warnings come from this (the calling) thread only.
    """
    compressor = _Compressor(raw, compression, level)
    try:
        writer = _EntryWriter(_TarStream(compressor), reporter, meter, control,
                              safe_point_bytes)
        links = LinkGroups()
        records: list[dict[str, Any]] = []
        for entry in entries:
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
                records.append(record)
                if leader is None and entry.kind == "file":
                    links.written(entry, record)
        writer.tar.end()
        compressor.finish()
        links.finish()  # after the hashing thread has set every leader's hash
    except BaseException:
        compressor.abandon()
        raise
    return records


class _EntryWriter:
    """Writes one entry at a time into the tar stream, with its warnings and progress."""

    def __init__(self, tar: _TarStream, reporter: Reporter, meter: ProgressMeter,
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
        read = _read_small(entry)
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
            fd = os.open(entry.path, _OPEN_FLAGS)
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
                data_at = _next_data(fd, pos, size)
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

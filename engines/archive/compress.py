"""Hashing, compressing and writing the tar stream's blocks, on threads of their own."""

from __future__ import annotations

import contextlib
import gzip
import os
import queue
import threading
from typing import IO, Any

import zstandard

from engines.manifest import Hasher

# The manifest key of each file's content hash (see engines/manifest.py CONTENT_HASHES).
HASH = "blake3"
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


class FileOut:
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
Span = tuple[int, int, Hasher, "dict[str, Any] | None"]


class Compressor:
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
        self._out = FileOut(raw)
        self._level = level
        self._gzip: gzip.GzipFile | None = None
        compressing = _compressing_threads()
        if compression == "gzip":
            self._gzip = gzip.GzipFile(filename="", mode="wb", compresslevel=level,
                                       fileobj=self._out)
            compressing = 1
        self._to_hash: queue.SimpleQueue[tuple[bytearray, int, list[Span]] | None] = (
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

    def put(self, block: bytearray, length: int, spans: list[Span]) -> None:
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

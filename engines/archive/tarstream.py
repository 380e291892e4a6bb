"""The uncompressed tar stream, gathered into blocks for the compressor."""

from __future__ import annotations

from typing import Any

from engines.archive.compress import STREAM_BLOCK, Compressor, Span
from engines.archive.tarheader import BLOCKSIZE, RECORDSIZE
from engines.manifest import Hasher

_ZEROS = memoryview(bytes(RECORDSIZE))


class TarStream:
    """The uncompressed tar stream, gathered into blocks for the compressor."""

    def __init__(self, compressor: Compressor) -> None:
        self._compressor = compressor
        self._block = compressor.free_block()
        self._view = memoryview(self._block)
        self._pos = 0
        self._flushed = 0
        self._spans: list[Span] = []

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

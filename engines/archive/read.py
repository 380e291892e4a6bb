"""Reading an archive back: the decompressed tar stream, its members, their content hashes."""

from __future__ import annotations

import contextlib
import gzip
import queue
import tarfile
import threading
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, Protocol

import zstandard

from engines.archive.errors import ArchiveDamaged
from engines.control import RunControl
from engines.manifest import CONTENT_HASHES, content_hash
from engines.progress import ProgressMeter

CHUNK = 1 << 20
# Decompressed chunks read ahead of the restore or verify.
AHEAD = 8
# tarfile's stream reader keeps what it read ahead in one bytes object and slices the
# rest off it on every read (a header, a small file's data): with a 1 MiB buffer that
# copied up to 1 MiB per read, most of a small-file restore's time. Small, it copies
# little, and ReadAhead hands out its chunks in pieces this size.
TAR_BUFFER = 16 << 10


class Pacer:
    """Counts bytes into the progress meter and stops at a safe point every `every` bytes."""

    def __init__(self, meter: ProgressMeter, control: RunControl, every: int) -> None:
        self.meter = meter
        self.control = control
        self.every = every
        self._since_safe_point = 0

    def __call__(self, nbytes: int) -> None:
        self.meter.add(nbytes=nbytes)
        self._since_safe_point += nbytes
        if self._since_safe_point >= self.every:
            self._since_safe_point = 0
            self.control.safe_point()


class _Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


class CountingReader:
    """The decompressed tar stream as tarfile reads it: counts bytes, names damage."""

    def __init__(self, inner: _Readable) -> None:
        self._inner = inner
        self.total = 0

    def read(self, size: int = -1, /) -> bytes:
        """Read decompressed bytes; a broken stream becomes ArchiveDamaged."""
        try:
            data = self._inner.read(size)
        except (OSError, EOFError, zlib.error, zstandard.ZstdError) as err:
            raise ArchiveDamaged(str(err) or type(err).__name__) from err
        self.total += len(data)
        return data

    def write(self, data: bytes, /) -> int:
        """Not writable (tarfile's file protocol asks for the method)."""
        raise OSError("the archive is open for reading")

    def tell(self) -> int:
        """How many decompressed bytes were read."""
        return self.total

    def seek(self, pos: int, /) -> int:
        """Not seekable (tarfile's stream mode never seeks)."""
        raise OSError("the archive stream cannot seek")

    def close(self) -> None:
        """Nothing to do: the raw file is closed by its owner."""


class ReadAhead:
    """Reads and decompresses the archive on a thread of its own, a few chunks ahead.

    Decompressing and reading the archive release the GIL, so they go on while the
    reader writes files out (tar and zstd are two processes for the same reason).
    """

    def __init__(self, inner: _Readable) -> None:
        self._inner = inner
        self._chunks: queue.Queue[bytes | BaseException] = queue.Queue(AHEAD)
        self._stop = threading.Event()
        self._rest = b""
        self._at = 0  # how much of _rest was read
        self._ended = False
        self._thread = threading.Thread(target=self._fill, name="archive-read", daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        item: bytes | BaseException
        while not self._stop.is_set():
            try:
                item = self._inner.read(CHUNK)
            except BaseException as err:  # raised in the reader, as if read there
                item = err
            self._chunks.put(item)
            if not isinstance(item, bytes) or not item:
                return

    def read(self, size: int = -1, /) -> bytes:
        """The next decompressed bytes (at most size; b"" at the end)."""
        if self._at == len(self._rest) and not self._ended:
            item = self._chunks.get()
            if isinstance(item, BaseException):
                self._ended = True
                raise item
            self._ended = not item
            self._rest, self._at = item, 0
        start, left = self._at, len(self._rest) - self._at
        take = left if size < 0 else min(size, left)
        self._at += take
        if start == 0 and take == len(self._rest):
            return self._rest  # the whole chunk, as it came: no copy
        return self._rest[start:start + take]

    def close(self) -> None:
        """Stop the thread (it may be waiting to hand over a chunk) and wait for it."""
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._chunks.get(timeout=0.05)
        self._thread.join()


@contextlib.contextmanager
def read_archive(path: Path, compression: str
                 ) -> Iterator[tuple[tarfile.TarFile, CountingReader]]:
    """Open an archive as a tar stream, decompressing as it is read (never all in memory)."""
    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except OSError as err:
        raise ArchiveDamaged(f"cannot open it: {err.strerror or err}") from err
    with raw:
        inner: _Readable
        if compression == "zstd":
            inner = zstandard.ZstdDecompressor().stream_reader(raw, read_size=CHUNK,
                                                               read_across_frames=True)
        else:
            inner = gzip.GzipFile(filename="", mode="rb", fileobj=raw)
        ahead = ReadAhead(inner)
        try:
            counter = CountingReader(ahead)
            with tarfile.open(fileobj=counter, mode="r|", bufsize=TAR_BUFFER) as tar:
                yield tar, counter
        finally:
            ahead.close()  # before the file it reads is closed


def next_member(tar: tarfile.TarFile) -> tarfile.TarInfo | None:
    """The stream's next member, or None at its end. tarfile keeps every member it has
    read in tar.members (for getmembers and link look-ups, neither of which a stream
    needs): 100,000 of them were most of a restore's memory, so they are let go."""
    member = tar.next()
    held = getattr(tar, "members", None)  # not in tarfile's type stubs
    if isinstance(held, list):
        held.clear()
    return member


def member_kind(member: tarfile.TarInfo) -> str:
    if member.islnk():
        return "hardlink"
    if member.isreg():
        return "file"
    if member.isdir():
        return "dir"
    if member.issym():
        return "symlink"
    return "special file"


def member_data(tar: tarfile.TarFile, member: tarfile.TarInfo) -> IO[bytes]:
    data = tar.extractfile(member)
    if data is None:  # only for non-files, which callers never pass
        raise ArchiveDamaged(f"{member.name!r} has no data")
    return data


def hash_stream(data: IO[bytes], entry: Mapping[str, Any], pacer: Pacer,
                sink: Callable[[bytes], object] | None = None) -> tuple[int, str]:
    """Read a member to its end: its size and hash, by the entry's algorithm (and each
    chunk to sink)."""
    digest = CONTENT_HASHES[algorithm(entry)]()
    size = 0
    while chunk := data.read(CHUNK):
        digest.update(chunk)
        if sink is not None:
            sink(chunk)
        size += len(chunk)
        pacer(len(chunk))
    return size, digest.hexdigest()


def algorithm(entry: Mapping[str, Any]) -> str:
    """The hash a (shape-checked) file entry was made with."""
    found = content_hash(entry)
    return "sha256" if found is None else found[0]

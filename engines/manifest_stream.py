"""Manifests written and read one entry at a time (format 2), so memory stays flat.

A format 1 manifest (engines.manifest.Manifest) is one JSON document built and parsed
whole: a 100,000-file snapshot held hundreds of MB of dicts while it was written or read.
Format 2 is still one JSON document, laid out so it streams:

    {"format": 2, "snapshot_id": ..., "created": ..., "sources": {...}, "entries": [
    {one entry},
    {one entry}
    ], "files": N, "bytes": B, "checksum": "<sha256 of everything before , "checksum">"}

The first line is the head (engines.manifest.read_head reads it alone); every entry is
one line (JSON escapes newlines inside names); the last line carries the counts and the
checksum, so the writer needs nothing but a running hash. A reader checks the checksum
over the raw bytes first, then parses entry by entry: a damaged manifest is refused
before anything is restored from it. Format 1 manifests are still read (Manifest.read).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from engines.fsmeta import shown
from engines.manifest import (
    Manifest,
    ManifestError,
    check_entry_shape,
    entry_line,
    head_text,
    read_head_line,
)
from models.atomic import fsync_dir

STREAM_FORMAT = 2
_TRAILER = re.compile(rb'\n\], "files": (\d+), "bytes": (\d+)'
                      rb'(, "checksum": "([0-9a-f]{64})"\}\n)\Z')
_TAIL_READ = 256
_BUFFER = 256 << 10
_GATHER = 256


class ManifestWriter:
    """Writes a format 2 manifest entry by entry under a temporary name; commit() makes
    it durable and puts it in place, abort() (or leaving the block on an error) drops it."""

    def __init__(self, path: Path, snapshot_id: str, engine: str, created: str,
                 sources: Mapping[str, str], job_id: str = "") -> None:
        self.path = path
        self.files = 0
        self.bytes = 0
        head: dict[str, Any] = {"format": STREAM_FORMAT, "snapshot_id": snapshot_id,
                                "engine": engine, "created": created,
                                "sources": dict(sources)}
        if job_id:
            head["job_id"] = job_id
        # The name engines.treestore's tidy() removes if a kill leaves it behind.
        fd, self._tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                         suffix=".tmp")
        self._fh: IO[bytes] = os.fdopen(fd, "wb", buffering=_BUFFER)
        self._hash = hashlib.sha256()
        # Entry lines gathered, then hashed and written _GATHER at a time (a hash update
        # and a write per line were a third of the cost of adding one).
        self._lines: list[str] = []
        self._sep = ""
        self._write(head_text(head).encode())

    def _write(self, data: bytes) -> None:
        self._hash.update(data)
        self._fh.write(data)

    def add(self, entry: Mapping[str, Any]) -> None:
        """Append one entry (a dict as Manifest.entries holds them)."""
        # Refused here, failing the backup: the checksum covers whatever is written, so
        # an entry restore cannot use would otherwise pass the listing and fail later.
        check_entry_shape(entry if isinstance(entry, dict) else dict(entry))
        lines = self._lines
        lines.append(entry_line(entry))
        if len(lines) >= _GATHER:
            self._flush_lines()
        if entry["type"] == "file":
            self.files += 1
            self.bytes += int(entry.get("size", 0))

    def _flush_lines(self) -> None:
        """Hash and write the gathered lines (after a separator if lines came before)."""
        if self._lines:
            self._write((self._sep + ",\n".join(self._lines)).encode())
            self._sep = ",\n"
            self._lines.clear()

    def commit(self) -> None:
        """Write the counts and checksum, fsync, rename into place, fsync the folder."""
        self._flush_lines()
        self._write(f'\n], "files": {self.files}, "bytes": {self.bytes}'.encode())
        self._fh.write(f', "checksum": "{self._hash.hexdigest()}"}}\n'.encode())
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.chmod(self._tmp, 0o644)
        os.replace(self._tmp, self.path)
        fsync_dir(self.path.parent)

    def abort(self) -> None:
        """Drop the unfinished manifest."""
        with contextlib.suppress(OSError):
            self._fh.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)

    def __enter__(self) -> ManifestWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is not None or not self._fh.closed:
            self.abort()


def is_streamed(path: Path) -> bool:
    """Whether a manifest is format 2 (its head line says so); ManifestError if unreadable."""
    return _head(path)[0].get("format") == STREAM_FORMAT


def _head(path: Path) -> tuple[dict[str, Any], int]:
    """The head as a dict and the offset where the entries start."""
    return read_head_line(path)


class StreamedManifest:
    """A format 2 manifest, checked whole on open, its entries read one at a time."""

    def __init__(self, path: Path, fh: IO[bytes] | None = None) -> None:
        # With `fh` (the manifest opened by the caller), every read goes through it: a
        # restore that reads the entries twice reads the same file both times.
        self.path = path
        self._fh = fh
        head, self._start = _head(path)
        try:
            if head.get("format") != STREAM_FORMAT:
                raise ValueError(f"unknown format {head.get('format')!r}")
            unknown = set(head) - {"format", "snapshot_id", "engine", "created", "sources",
                                   "job_id"}
            if unknown:
                raise ValueError(f"unknown key(s) {', '.join(sorted(unknown))[:80]}")
            self.snapshot_id = str(head["snapshot_id"])
            self.engine = str(head["engine"])
            self.created = str(head["created"])
            self.sources = {str(k): str(v) for k, v in dict(head["sources"]).items()}
            self.job_id = str(head.get("job_id", ""))
            self.time  # noqa: B018 - raises ValueError for a damaged time
            self.files, self.size, self._end = self._check()
        except OSError as err:
            raise ManifestError(f"manifest {shown(path)} is damaged: {err}") from err
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ManifestError(f"manifest {shown(path)} is damaged: {err}") from err

    @property
    def time(self) -> datetime:
        """When the snapshot was started."""
        return datetime.fromisoformat(self.created.replace("Z", "+00:00"))

    def _check(self) -> tuple[int, int, int]:
        """Hash the raw bytes against the trailer's checksum; return files, bytes and
        where the entries end."""
        with self._open() as fh:
            total = os.fstat(fh.fileno()).st_size
            fh.seek(max(0, total - _TAIL_READ))
            match = _TRAILER.search(fh.read())
            if match is None:
                raise ValueError("no trailer with counts and checksum (cut short?)")
            covered = total - len(match.group(3))
            digest = hashlib.sha256()
            fh.seek(0)
            left = covered
            while left > 0:
                chunk = fh.read(min(_BUFFER, left))
                if not chunk:
                    raise ValueError("shorter than it was a moment ago")
                digest.update(chunk)
                left -= len(chunk)
        if digest.hexdigest() != match.group(4).decode():
            raise ValueError("its content does not match its checksum (changed or damaged)")
        return int(match.group(1)), int(match.group(2)), total - len(match.group(0))

    @contextlib.contextmanager
    def _open(self) -> Iterator[IO[bytes]]:
        """The manifest file: the caller's, or opened here for this read."""
        if self._fh is not None:
            yield self._fh
            return
        with open(self.path, "rb") as fh:
            yield fh

    def entries(self) -> Iterator[dict[str, Any]]:
        """Every entry in order, each checked for the keys restore and verify need."""
        files = size = 0
        try:
            with self._open() as fh:
                fh.seek(self._start)
                pos = self._start
                while pos < self._end:
                    line = fh.readline()
                    pos += len(line)
                    text = line.rstrip(b"\n")
                    if text.endswith(b","):
                        text = text[:-1]
                    entry = json.loads(text)
                    check_entry_shape(entry)
                    if entry["type"] == "file":
                        files += 1
                        size += entry["size"]
                    yield entry
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ManifestError(f"manifest {shown(self.path)} is damaged: {err}") from err
        if (files, size) != (self.files, self.size):
            raise ManifestError(f"manifest {shown(self.path)} is damaged: its counts do not "
                                "match its entries")


def listed_manifest(path: Path) -> StreamedManifest | Manifest:
    """A manifest checked whole for listing: format 2 without holding its entries."""
    return StreamedManifest(path) if is_streamed(path) else Manifest.read(path)

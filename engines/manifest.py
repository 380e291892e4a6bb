"""Snapshot manifests: every path with its type, size, mtime, mode and content hash."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import blake3

from engines.errors import EngineError
from engines.fsmeta import shown
from models.atomic import write_atomic

FORMAT = 1
HASH_CHUNK = 1 << 20


class Hasher(Protocol):
    """What hashlib's and blake3's hash objects have in common."""

    def update(self, data: bytes | memoryview, /) -> object:
        """Hash more data."""

    def hexdigest(self) -> str:
        """The digest so far, in hex."""


# Content hashes an entry may carry, by key (both 64 hex digits). Archives hash with
# BLAKE3, about five times sha256's speed here: sha256 was most of the work the archive
# engine did beyond tar's. Mirror and rsync keep sha256, and archives made with it
# still verify and restore.
CONTENT_HASHES: dict[str, Callable[[], Hasher]] = {"sha256": hashlib.sha256,
                                                    "blake3": blake3.blake3}


def content_hash(entry: Mapping[str, Any]) -> tuple[str, str] | None:
    """The entry's content hash as (algorithm, hex digest), or None when it has none."""
    for algorithm in CONTENT_HASHES:
        value = entry.get(algorithm)
        if isinstance(value, str) and len(value) == 64:
            return algorithm, value
    return None
# Snapshot ids are UTC times, sortable and safe in file names: 2026-11-24T025312Z(-2).
SNAPSHOT_ID_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{6}Z(?:-\d+)?$")


class ManifestError(EngineError):
    """A manifest is missing, unreadable or not one this app wrote."""


def new_snapshot_id(now: datetime | None = None) -> str:
    """A snapshot id for a run starting now."""
    return (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H%M%SZ")


def unique_snapshot_id(taken: set[str], now: datetime | None = None) -> str:
    """A new snapshot id that is not in `taken` (adds -2, -3, ... within one second)."""
    base = new_snapshot_id(now)
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def check_snapshot_id(snapshot_id: str) -> str:
    """Return a well-formed snapshot id, or raise a clear error (ids name files)."""
    if not SNAPSHOT_ID_RE.fullmatch(snapshot_id):
        raise EngineError(f"{snapshot_id[:80]!r} is not a snapshot id")
    return snapshot_id


def check_rel_path(path: str) -> str:
    """Normalise a path inside a snapshot; refuse absolute paths, '..' and NUL bytes."""
    if "\x00" in path:
        raise EngineError("a path inside a snapshot cannot contain a NUL byte")
    # Already normal (every name a manifest holds): no Path object, run once per entry.
    if path and path[0] != "/" and path[-1] != "/" and "//" not in path and \
            not any(part in (".", "..") for part in path.split("/")):
        return path
    pure = PurePosixPath(path.strip("/"))
    if any(part in ("..", "") for part in pure.parts) or pure.is_absolute():
        raise EngineError(f"path {path!r} is not a path inside the snapshot")
    return "" if str(pure) == "." else str(pure)


def sha256_file(path: str | Path, on_chunk: Callable[[int], None] | None = None) -> str:
    """Hash a file's content in chunks, calling on_chunk(n) after each (it may raise).

    A sparse file's holes are hashed from memory instead of read: the kernel zero-fills
    every page of a hole it is asked to read, which made a 10 GiB file holding 6 bytes
    the slowest part of its backup. The digest is the same.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        fd = fh.fileno()
        st = os.fstat(fd)
        pos = 0
        if st.st_blocks * 512 < st.st_size:
            pos = _hash_sparse(fd, st.st_size, digest, on_chunk)
        fh.seek(pos)
        buf = bytearray(HASH_CHUNK)
        view = memoryview(buf)
        while n := fh.readinto(buf):  # all of a dense file; the rest of a sparse one
            digest.update(view[:n])
            if on_chunk is not None:
                on_chunk(n)
    return digest.hexdigest()


_ZEROS = memoryview(bytes(HASH_CHUNK))


def _hash_sparse(fd: int, size: int, digest: Hasher,
                 on_chunk: Callable[[int], None] | None) -> int:
    """Hash a file's holes as zeros and its data as read, up to `size` or up to where
    the filesystem cannot tell (no SEEK_DATA) or the file shrank; return that offset."""
    pos = 0
    while pos < size:
        try:
            data = min(os.lseek(fd, pos, os.SEEK_DATA), size)
        except OSError as err:
            if err.errno != errno.ENXIO:
                return pos  # no SEEK_DATA here: the plain read does the rest
            data = size  # nothing but a hole up to the end
        while pos < data:
            n = min(HASH_CHUNK, data - pos)
            digest.update(_ZEROS[:n])
            pos += n
            if on_chunk is not None:
                on_chunk(n)
        if pos >= size:
            break
        end = min(os.lseek(fd, pos, os.SEEK_HOLE), size)
        while pos < end:
            chunk = os.pread(fd, min(HASH_CHUNK, end - pos), pos)
            if not chunk:
                return pos  # shrank since fstat: the plain read finds the end
            digest.update(chunk)
            pos += len(chunk)
            if on_chunk is not None:
                on_chunk(len(chunk))
    return pos


@dataclass
class Manifest:
    """What a snapshot holds; entries are dicts with path, type and the rest."""

    snapshot_id: str
    engine: str
    created: str
    sources: dict[str, str]
    entries: list[dict[str, Any]]
    # The job that made it (issue 12): listing, retention and restore of a job only see
    # its own snapshots. Empty in manifests written before it was recorded.
    job_id: str = ""

    @property
    def files(self) -> int:
        """How many regular files the snapshot holds."""
        return sum(1 for e in self.entries if e["type"] == "file")

    @property
    def size(self) -> int:
        """Total bytes of the regular files."""
        return sum(int(e.get("size", 0)) for e in self.entries if e["type"] == "file")

    @property
    def time(self) -> datetime:
        """When the snapshot was started."""
        return datetime.fromisoformat(self.created.replace("Z", "+00:00"))

    def by_path(self) -> dict[str, dict[str, Any]]:
        """Entries keyed by path."""
        return {e["path"]: e for e in self.entries}

    def to_bytes(self, checksum: bool = True) -> bytes:
        """Serialise as JSON (one entry per line, so diffs and greps stay readable).

        The head carries a sha256 of the rest, so a changed byte anywhere (a mode, an
        mtime, the creation time) is noticed, not only in what verify re-hashes.
        """
        head: dict[str, Any] = {
            "format": FORMAT, "snapshot_id": self.snapshot_id, "engine": self.engine,
            "created": self.created, "sources": self.sources, "files": self.files,
            "bytes": self.size}
        if self.job_id:  # left out when empty, so older manifests keep their checksum
            head["job_id"] = self.job_id
        lines = _escape_surrogates(",\n".join(_ENCODER.encode(e) for e in self.entries))
        body = f'{_dumps(head)[:-1]}, "entries": [\n'
        tail = f"{lines}\n]}}\n"
        if not checksum:
            return (body + tail).encode()
        head["checksum"] = hashlib.sha256((body + tail).encode()).hexdigest()
        text = _dumps(head)[:-1]
        return f'{text}, "entries": [\n{tail}'.encode()

    def write(self, path: Path) -> None:
        """Write the manifest atomically."""
        write_atomic(path, self.to_bytes())

    @classmethod
    def read(cls, path: Path) -> Manifest:
        """Read a manifest whole (either format), with a clear error if it is missing or
        damaged. Streaming readers use engines.manifest_stream instead."""
        from engines.manifest_stream import StreamedManifest, is_streamed

        if is_streamed(path):
            streamed = StreamedManifest(path)
            return cls(streamed.snapshot_id, streamed.engine, streamed.created,
                       streamed.sources, list(streamed.entries()), streamed.job_id)
        try:
            data = json.loads(path.read_bytes())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            if data.get("format") != FORMAT:
                raise ValueError(f"unknown format {data.get('format')!r}")
            unknown = set(data) - _HEAD_KEYS
            if unknown:  # a renamed key (a flipped byte in "checksum") is damage too
                raise ValueError(f"unknown key(s) {', '.join(sorted(unknown))[:80]}")
            manifest = cls(str(data["snapshot_id"]), str(data["engine"]), str(data["created"]),
                           dict(data["sources"]), list(data["entries"]),
                           str(data.get("job_id", "")))
            for entry in manifest.entries:
                check_entry_shape(entry)
            manifest.time  # noqa: B018 - raises ValueError for a damaged time
            stored = data.get("checksum")
            if stored is not None and (
                    hashlib.sha256(manifest.to_bytes(checksum=False)).hexdigest() != stored
                    or data.get("files") != manifest.files
                    or data.get("bytes") != manifest.size):
                raise ValueError("its content does not match its checksum (changed or damaged)")
        except FileNotFoundError as err:
            raise ManifestError(f"manifest {shown(path)} is missing") from err
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise ManifestError(f"manifest {shown(path)} is damaged: {err}") from err
        return manifest


# A file name that is not UTF-8 (valid on Linux) is a str with lone surrogates
# (os.fsdecode); JSON can carry them as \\udcXX escapes, and json.loads gives the same
# str back. Only those are escaped, so manifests of UTF-8 names keep their checksums.
_SURROGATE = re.compile("[\ud800-\udfff]")


# One encoder for every entry: building one per call cost a tenth of a no-change run.
_ENCODER = json.JSONEncoder(sort_keys=True, ensure_ascii=False)


def _escape_surrogates(text: str) -> str:
    """JSON text with lone surrogates written as \\uXXXX escapes, so it encodes as UTF-8."""
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _dumps(value: Any) -> str:
    """Sorted JSON text (as json.dumps), lone surrogates escaped."""
    return _escape_surrogates(_ENCODER.encode(value))


# A head names up to 32 sources of up to 4096 characters (models.job), each written
# as up to 6 bytes (a \u escape), twice (name and path): about 1.6 MB, plus ids and counts.
HEAD_LIMIT = 2 << 20


def read_head(path: Path, limit: int = HEAD_LIMIT) -> dict[str, Any]:
    """The head of a manifest (its first line: ids, times, job, counts), without entries.

    Listing a destination of many snapshots needs only whose each one is; this reads a
    line, not the whole manifest. An unreadable head is ManifestError.
    """
    return read_head_line(path, limit)[0]


def read_head_line(path: Path, limit: int = HEAD_LIMIT) -> tuple[dict[str, Any], int]:
    """The head as read_head gives it, and the offset where the entries start."""
    try:
        with open(path, "rb") as fh:
            line = fh.readline(limit)
        text = line.decode("utf-8").rstrip()
        if not text.endswith('"entries": ['):
            raise ValueError("no head line")
        data = json.loads(text[:-len('"entries": [')].rstrip().rstrip(",") + "}")
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except FileNotFoundError as err:
        raise ManifestError(f"manifest {shown(path)} is missing") from err
    except (OSError, ValueError) as err:
        raise ManifestError(f"manifest {shown(path)} is damaged: {err}") from err
    return data, len(line)


_KINDS = {"file", "dir", "symlink"}
_HEAD_KEYS = {"format", "snapshot_id", "engine", "created", "sources", "files", "bytes",
              "checksum", "entries", "job_id"}


def entry_line(entry: Mapping[str, Any]) -> str:
    """One entry as the JSON text a manifest holds (sorted keys, surrogates escaped)."""
    text = _ENCODER.encode(entry)
    # Nearly every line is ASCII, which holds no surrogate: the search is skipped.
    return text if text.isascii() else _escape_surrogates(text)


def head_text(head: Mapping[str, Any]) -> str:
    """A manifest's first line: the head's keys, then the opening of its entries."""
    return f'{_dumps(head)[:-1]}, "entries": [\n'


def check_entry_shape(entry: Any) -> None:
    """Refuse an entry that lacks what restore and verify need (ValueError)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
        raise ValueError(f"an entry has no path: {str(entry)[:80]}")
    kind = entry.get("type")
    if kind not in _KINDS:
        raise ValueError(f"entry {entry['path']!r} has an unknown type {kind!r}")
    if kind == "file" and (not isinstance(entry.get("size"), int) or
                           content_hash(entry) is None):
        raise ValueError(f"file entry {entry['path']!r} lacks its size or hash")
    if kind == "symlink" and not isinstance(entry.get("target"), str):
        raise ValueError(f"symlink entry {entry['path']!r} lacks its target")


def belongs_to_job(path: Path, job_id: str) -> bool:
    """Whether the snapshot a manifest describes is the job's: it names the job, or none.

    Manifests made before snapshots recorded their job, and callers outside a job (an
    empty job_id), see every snapshot as before. Only the manifest's head is read.
    """
    if not job_id:
        return True
    try:
        owner = read_head(path).get("job_id") or ""
    except ManifestError:
        # Whose it is cannot be known: seen by every job, one job's prune or delete
        # could remove another's. Listing skips a damaged manifest anyway.
        return False
    return not owner or owner == job_id

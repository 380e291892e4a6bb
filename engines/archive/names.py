"""The archive engine's files in a destination: their names, which snapshots are complete.

For a snapshot id such as 2026-11-24T025312Z:

    <id>.tar.zst            the archive (<id>.tar.gz with options {"compression": "gzip"})
    <id>.manifest.json      every entry: type, size, mtime, mode, blake3 (or sha256) or target
    <id>.tar.zst.partial    an archive still being written, or left behind by a crash

A snapshot exists when its archive (final name) and its manifest both exist.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engines.contract import BackupSpec
from engines.errors import EngineError, SnapshotNotFound
from engines.manifest import SNAPSHOT_ID_RE, belongs_to_job, check_snapshot_id
from models.atomic import fsync_dir

EXTENSIONS = {"zstd": ".tar.zst", "gzip": ".tar.gz"}
LEVELS = {"zstd": (1, 22, 3), "gzip": (1, 9, 6)}  # lowest, highest, default
PARTIAL = ".partial"
MANIFEST = ".manifest.json"


def compression_option(options: Mapping[str, Any]) -> tuple[str, int]:
    """The compression and level a job asks for, or a clear error."""
    name = options.get("compression") or "zstd"
    if name not in EXTENSIONS:
        raise EngineError(f"archive compression must be one of {', '.join(EXTENSIONS)}, "
                          f"not {name!r}")
    low, high, default = LEVELS[name]
    level = options.get("level")
    if level is None:
        level = default
    if isinstance(level, bool) or not isinstance(level, int) or not low <= level <= high:
        raise EngineError(f"{name} level must be a whole number from {low} to {high}, "
                          f"not {level!r}")
    return name, level


@dataclass(frozen=True)
class Stored:
    """A complete snapshot's files: its archive, how it is compressed, its manifest."""

    snapshot_id: str
    archive: Path
    compression: str
    manifest: Path


@dataclass(frozen=True)
class Name:
    """A file name this engine owns in a destination, taken apart."""

    file_name: str
    snapshot_id: str
    kind: str  # "archive", "partial" or "manifest"
    compression: str  # "" for a manifest


def parse_name(name: str) -> Name | None:
    """Take a destination file name apart, or None if it is not one of ours."""
    if name.endswith(MANIFEST):
        snapshot_id, kind, compression = name[: -len(MANIFEST)], "manifest", ""
    else:
        is_partial = name.endswith(PARTIAL)
        stem = name[: -len(PARTIAL)] if is_partial else name
        found = [(c, ext) for c, ext in EXTENSIONS.items() if stem.endswith(ext)]
        if not found:
            return None
        compression, ext = found[0]
        snapshot_id, kind = stem[: -len(ext)], "partial" if is_partial else "archive"
    if not SNAPSHOT_ID_RE.match(snapshot_id):
        return None
    return Name(name, snapshot_id, kind, compression)


def dir_names(dest: Path) -> list[str]:
    """Every name in the destination (none if it does not exist yet)."""
    try:
        return os.listdir(dest)
    except FileNotFoundError:
        return []
    except OSError as err:
        raise EngineError(f"destination {dest} cannot be read: {err.strerror or err}") from err


def listing(dest: Path) -> list[Name]:
    """The archives, partial archives and manifests in the destination."""
    return [parsed for name in dir_names(dest) if (parsed := parse_name(name))]


def complete_snapshots(dest: Path, job_id: str = "") -> dict[str, str]:
    """Complete snapshots (archive and manifest both present): id -> compression.

    With a job id, only that job's: another job's archive in the same destination is
    never listed, pruned, restored or verified as this one's (issue 12, item 1).
    """
    names = listing(dest)
    manifests = {n.snapshot_id for n in names if n.kind == "manifest"}
    return {n.snapshot_id: n.compression for n in names
            if n.kind == "archive" and n.snapshot_id in manifests
            and belongs(dest, n.snapshot_id, job_id)}


def belongs(dest: Path, snapshot_id: str, job_id: str) -> bool:
    """Whether an archive is the job's; one damaged past its manifest's head is still
    listed, for verify and prune (see manifest.belongs_to_job)."""
    return belongs_to_job(manifest_file(dest, snapshot_id), job_id)


def archive_file(dest: Path, snapshot_id: str, compression: str,
                 partial: bool = False) -> Path:
    return dest / f"{snapshot_id}{EXTENSIONS[compression]}{PARTIAL if partial else ''}"


def manifest_file(dest: Path, snapshot_id: str) -> Path:
    return dest / f"{snapshot_id}{MANIFEST}"


def locate(spec: BackupSpec, snapshot_id: str) -> Stored:
    """The archive, its compression and its manifest for a complete snapshot."""
    dest = spec.destination
    compression = complete_snapshots(dest, spec.job_id).get(check_snapshot_id(snapshot_id))
    if compression is None:
        raise SnapshotNotFound(f"snapshot {snapshot_id} of this job is not in {dest}")
    return Stored(snapshot_id, archive_file(dest, snapshot_id, compression), compression,
                  manifest_file(dest, snapshot_id))


def time_from_id(snapshot_id: str) -> datetime:
    """When a snapshot started, read from its id (ids are UTC times)."""
    return datetime.strptime(snapshot_id[:18], "%Y-%m-%dT%H%M%SZ").replace(tzinfo=UTC)


def being_written(path: Path) -> bool:
    """Whether a run (of this job or another sharing the destination) is writing a partial."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False  # no locks there: as before, it goes
    finally:
        os.close(fd)
    return False


def remove_all(paths: Iterable[Path], dest: Path) -> None:
    """Best-effort removal of a failed run's files (the run's own error is what matters)."""
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        fsync_dir(dest)

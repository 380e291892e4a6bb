"""How the archive engine words what went wrong, for a person to read."""

from __future__ import annotations

import errno
from collections.abc import Sequence
from pathlib import Path

from engines.errors import DestinationNotWritable, DiskFull, EngineError
from engines.fsutil import is_disk_full


def destination_error(err: OSError, dest: Path) -> EngineError:
    """A person-readable error for a failed write to the destination."""
    reason = err.strerror or str(err)
    if is_disk_full(err):
        return DiskFull(f"destination {dest} is full ({reason}); the unfinished archive was "
                        "removed, free some space and run the backup again")
    if err.errno == errno.EFBIG:
        # The file system (or a size limit on this process) caps the archive's size:
        # the same remedy as a full disk, another place to write it.
        return DiskFull(f"destination {dest} is full for an archive this large ({reason}); "
                        "the unfinished archive was removed")
    return DestinationNotWritable(f"cannot write the archive in {dest}: {reason}")


def target_error(err: OSError, target: Path) -> EngineError:
    """A person-readable error for a failed write into a restore target."""
    reason = err.strerror or str(err)
    where = f"{target} ({err.filename})" if err.filename else str(target)
    if is_disk_full(err) or err.errno == errno.EFBIG:
        return DiskFull(f"restore target {where} is full ({reason})")
    return EngineError(f"cannot write into restore target {where}: {reason}")


class ArchiveDamaged(Exception):
    """The compressed stream could not be read (internal; becomes a problem or an error)."""


def counted(items: Sequence[object], one: str, many: str) -> str:
    return f"{len(items)} {one if len(items) == 1 else many}"


def some_paths(paths: Sequence[str], limit: int = 5) -> str:
    """A few paths for a message, and how many more there are."""
    shown = ", ".join(paths[:limit])
    return shown if len(paths) <= limit else f"{shown} and {len(paths) - limit} more"

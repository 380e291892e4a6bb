"""Atomic, durable file writes: temp file in the same directory, fsync, chmod, rename, fsync dir.

Below every layer (engines, storage, server use it), so it imports nothing of the project.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Flush a directory's entries so a rename or unlink in it survives a power cut."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temp(path: Path, data: bytes, mode: int) -> str:
    # mkstemp makes the file 0600, and chmod runs before the rename: a secret written
    # with mode 0o600 is never readable by anyone else, not even for a moment.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return tmp


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data` (permissions `mode`): a reader sees old or new, never half."""
    write_many_atomic([(path, data)], mode)


def write_many_atomic(files: Iterable[tuple[Path, bytes]], mode: int = 0o644) -> None:
    """Write several files atomically, each one whole, with one fsync per directory."""
    renamed_dirs: set[Path] = set()
    pending: list[tuple[str, Path]] = []
    try:
        for path, data in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            pending.append((_write_temp(path, data, mode), path))
        for tmp, path in pending:
            os.replace(tmp, path)
            renamed_dirs.add(path.parent)
        pending.clear()
    finally:
        for tmp, _ in pending:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    for directory in renamed_dirs:
        fsync_dir(directory)


def remove_durable(path: Path) -> None:
    """Remove a file (if present) and make the removal durable."""
    try:
        path.unlink()
    except FileNotFoundError:
        return
    fsync_dir(path.parent)

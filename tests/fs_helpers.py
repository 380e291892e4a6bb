"""Real small filesystems for tests: a tmpfs mounted for one test (root only)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="mounting a tmpfs needs root (CI runs as root)")


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "4m") -> Iterator[Path]:
    """Mount a tmpfs of `size` at `path` for the block, then unmount it (root only)."""
    if not IS_ROOT:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                    str(path)], check=True)
    try:
        yield path
    finally:
        # Lazy: a test that failed may still hold a file open in it.
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill_up(directory: Path, name: str = "filler") -> Path:
    """Write zeros into `directory` until its filesystem is full; return the file."""
    target = directory / name
    with open(target, "wb") as fh:
        block = b"\0" * (64 << 10)
        with contextlib.suppress(OSError):
            while True:
                fh.write(block)
                fh.flush()
    return target

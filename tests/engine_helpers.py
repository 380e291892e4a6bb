"""What every engine test needs: a generated source tree, ways to change it, and a
byte-for-byte comparison of two trees."""

from __future__ import annotations

import hashlib
import os
import random
import stat
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from engines.base import Progress
from engines.scan import Entry, walk

# Fixed times so that two generated trees (and their restores) compare equal.
BASE_MTIME = 1_700_000_000


def write(path: Path, data: bytes, mode: int = 0o644, mtime: int = BASE_MTIME) -> None:
    """Write a file with a given mode and mtime, creating parents."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)
    os.utime(path, (mtime, mtime))


def make_tree(root: Path, seed: int = 1, small_files: int = 120,
              large_bytes: int = 6 * 1024 * 1024) -> Path:
    """Generate a source tree: nested dirs, empty files, a large file, unicode names,
    symlinks (relative, absolute and dangling) and varied permissions."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(small_files):
        depth = rng.randint(0, 3)
        parts = [f"d{rng.randint(0, 4)}" for _ in range(depth)]
        size = rng.choice([0, 1, 17, 512, 4096, 70_000])
        write(root.joinpath(*parts, f"f{i:03d}.txt"), rng.randbytes(size),
              mtime=BASE_MTIME + i)
    write(root / "empty.txt", b"")
    write(root / "big.bin", rng.randbytes(large_bytes), mtime=BASE_MTIME + 7)
    write(root / "ünïcødé ✓" / "日本語 file.txt", "grüße\n".encode())
    write(root / "spaces and 'quotes'.txt", b"odd name\n")
    write(root / "run.sh", b"#!/bin/sh\necho hi\n", mode=0o755)
    write(root / "secret.txt", b"private\n", mode=0o600)
    write(root / "readonly.txt", b"do not touch\n", mode=0o444)
    (root / "empty-dir").mkdir(exist_ok=True)
    (root / "deep" / "er" / "est").mkdir(parents=True, exist_ok=True)
    write(root / "deep" / "er" / "est" / "leaf.txt", b"leaf\n")
    os.symlink("run.sh", root / "link-to-run")
    os.symlink("/etc/hostname", root / "absolute-link")
    os.symlink("does-not-exist", root / "dangling-link")
    os.symlink("deep/er", root / "dir-link")
    os.chmod(root / "deep", 0o750)
    return root


def mutate_tree(root: Path) -> None:
    """Change a tree the way a week of use does: add, modify, delete and rename."""
    write(root / "added" / "new.txt", b"brand new\n", mtime=BASE_MTIME + 5000)
    write(root / "empty.txt", b"not empty any more\n", mtime=BASE_MTIME + 5001)
    big = root / "big.bin"
    data = bytearray(big.read_bytes())
    data[1000:1010] = b"0123456789"
    write(big, bytes(data), mtime=BASE_MTIME + 5002)
    (root / "secret.txt").unlink()
    (root / "spaces and 'quotes'.txt").rename(root / "renamed.txt")
    (root / "link-to-run").unlink()
    os.symlink("renamed.txt", root / "link-to-run")


def tree_signature(root: Path, mtimes: bool = True) -> dict[str, tuple[Any, ...]]:
    """Everything a restore must reproduce, by relative path: type, mode, content hash
    or link target, and file mtimes."""
    sig: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            st = path.lstat()
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                sig[rel] = ("symlink", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                sig[rel] = ("dir", mode)
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                sig[rel] = ("file", mode, st.st_size, digest,
                            st.st_mtime_ns // 1_000_000_000 if mtimes else None)
    return sig


class RecordingReporter:
    """A reporter that keeps everything it is told, for assertions (thread-safe)."""

    def __init__(self) -> None:
        self.progress_updates: list[Progress] = []
        self.checkpoints: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self._lock = threading.Lock()
        self.seen_progress = threading.Event()

    def progress(self, progress: Progress) -> None:
        """Record a progress update."""
        with self._lock:
            self.progress_updates.append(progress)
        self.seen_progress.set()

    def checkpoint(self, state: Mapping[str, Any]) -> None:
        """Record a checkpoint."""
        with self._lock:
            self.checkpoints.append(dict(state))

    def warning(self, message: str) -> None:
        """Record a warning."""
        with self._lock:
            self.warnings.append(message)


def big_source(root: Path) -> Path:
    """A source that takes a couple of seconds at the job's bandwidth limit."""
    for i in range(4):
        write(root / f"large-{i}.bin", os.urandom(8 * 1024 * 1024))
    for i in range(200):
        write(root / "small" / f"s{i:03d}.txt", f"small {i}\n".encode())
    return root


def slow_source(root: Path) -> Path:
    """A source tree with a few small files and one 8 MiB file."""
    for i in range(5):
        write(root / "notes" / f"note-{i}.txt", f"note {i}\n".encode() * 50)
    write(root / "big.bin", bytes(range(256)) * (8 * 4096))
    return root


def walk_deleting_on_second_call(victim: Path) -> Callable[..., Iterator[Entry]]:
    """engines.scan.walk that deletes `victim` from the source as it is called a second
    time: the source changing between a first and a second walk of one run."""
    calls = 0

    def walk_then(*args: Any) -> Iterator[Entry]:
        nonlocal calls
        calls += 1
        if calls == 2:
            victim.unlink()
        return walk(*args)

    return walk_then

"""Describing what rsync wrote: the snapshot's manifest entries, with what the source was.

Entries say what is in the snapshot (type, size, mode, mtime, hash, "link": the first
name of a hard-linked file) and, from the source, who owned it (uid, gid), its kept
extended attributes and ACLs ("xattrs", as engines.fsmeta reads them) and, for files, the
inode and change time; the same keys as the mirror engine's, which restore reads.
The next run compares those with the source: rsync's quick check trusts size and mtime
only, so a file rewritten with both kept would otherwise stay stale (engines.rsync.engine).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from engines.manifest import HASH_CHUNK, sha256_file
from engines.scan import Entry

SECOND = 1_000_000_000


class SnapshotWalk:
    """Walks a partial snapshot, opening for the walk any directory its owner (this
    server, which wrote it) cannot read: rsync gives a copied directory the source's
    mode, and a non-root server owns its copy of a mode-000 directory."""

    def __init__(self) -> None:
        self.opened: list[tuple[Path, int]] = []

    def walk(self, root: Path, rel: str) -> Iterator[tuple[str, Path, os.stat_result]]:
        """Every entry at and under root, parents first, names sorted (the scan's order)."""
        st = root.lstat()
        yield rel, root, st
        if not stat.S_ISDIR(st.st_mode):
            return
        try:
            children = self._children(root)
        except PermissionError:
            if os.geteuid() == 0 or st.st_uid != os.geteuid():
                raise
            mode = stat.S_IMODE(st.st_mode)
            os.chmod(root, mode | stat.S_IRWXU)
            self.opened.append((root, mode))
            children = self._children(root)
        for name in children:
            yield from self.walk(root / name, f"{rel}/{name}")

    @staticmethod
    def _children(root: Path) -> list[str]:
        with os.scandir(root) as it:
            return sorted(e.name for e in it)

    def close(self) -> None:
        """Give every opened directory its mode back, deepest first."""
        while self.opened:
            path, mode = self.opened.pop()
            os.chmod(path, mode)


def describe(rel: str, path: Path, st: os.stat_result,
           source: Entry | None) -> dict[str, Any] | None:
    """A manifest entry for what is on disk (without the hash of a file)."""
    mode = stat.S_IMODE(st.st_mode)
    out: dict[str, Any]
    if stat.S_ISDIR(st.st_mode):
        out = {"path": rel, "type": "dir", "mode": mode, "mtime_ns": st.st_mtime_ns}
    elif stat.S_ISLNK(st.st_mode):
        out = {"path": rel, "type": "symlink", "target": os.readlink(path), "mode": mode,
               "mtime_ns": st.st_mtime_ns}
    elif stat.S_ISREG(st.st_mode):
        out = {"path": rel, "type": "file", "size": st.st_size, "mtime_ns": st.st_mtime_ns,
               "mode": mode}
    else:
        return None
    if source is not None:
        # The source's owner, whatever this server could set in the snapshot, so a
        # restore by root gives it back.
        out["uid"], out["gid"] = source.uid, source.gid
        if out["type"] == "file":
            out["ctime_ns"], out["ino"] = source.ctime_ns, source.ino
    return out


def is_suspect(entry: Entry, prev: Mapping[str, Any] | None) -> bool:
    """Whether rsync's quick check could wrongly keep a file: the previous snapshot has
    the path with the same size and mtime second, but the source's inode or change time
    is not what that snapshot recorded (or it recorded neither, as manifests before
    issue 12)."""
    if entry.kind != "file" or prev is None or prev.get("type") != "file" \
            or prev.get("size") != entry.size:
        return False  # new, or a size rsync sees differ: copied anyway
    mtime = prev.get("mtime_ns")
    if not isinstance(mtime, int) or mtime // SECOND != entry.mtime_ns // SECOND:
        return False  # a different mtime: rsync sees it too
    return (mtime, prev.get("ctime_ns"), prev.get("ino")) != \
        (entry.mtime_ns, entry.ctime_ns, entry.ino)


def linked_hash(st: os.stat_result, prev_root: Path | None, rel: str,
                prev: Mapping[str, Any] | None) -> str | None:
    """The previous manifest's hash if this file is the previous snapshot's file (a hard
    link made by --link-dest: same inode, so same content)."""
    if prev_root is None or prev is None or prev.get("type") != "file" \
            or prev.get("size") != st.st_size or not isinstance(prev.get("sha256"), str):
        return None
    try:
        old = (prev_root / rel).lstat()
    except OSError:
        return None
    if (old.st_dev, old.st_ino) != (st.st_dev, st.st_ino):
        return None
    return str(prev["sha256"])


def hash_readable(path: Path, mode: int, on_chunk: Callable[[int], None]) -> str:
    """Hash a file rsync wrote, even one whose mode gives its owner no read permission."""
    try:
        return _hash(path, on_chunk)
    except PermissionError:
        if os.geteuid() == 0 or mode & stat.S_IRUSR:
            raise
    # Not a hard link to an older snapshot (those are never hashed), so this changes no
    # other snapshot's file.
    os.chmod(path, mode | stat.S_IRUSR)
    try:
        return _hash(path, on_chunk)
    finally:
        os.chmod(path, mode)


def _hash(path: Path, on_chunk: Callable[[int], None]) -> str:
    st = path.stat()
    if st.st_blocks * 512 >= st.st_size:
        return sha256_file(path, on_chunk)
    with open(path, "rb") as fh:
        digest = sha256_sparse(fh.fileno(), st.st_size, on_chunk)
    return digest if digest is not None else sha256_file(path, on_chunk)


_ZEROS = memoryview(bytes(HASH_CHUNK))


def sha256_sparse(fd: int, size: int, on_chunk: Callable[[int], None]) -> str | None:
    """sha256 of a sparse file whose holes are hashed from memory instead of read: reading
    a hole still costs the kernel zero-filling every page (a 2 GiB file of 6 bytes: 8.1 s
    read and hashed, 1.3 s this way, measured here). None where the filesystem cannot
    tell holes (no SEEK_DATA)."""
    digest = hashlib.sha256()
    pos = 0
    while pos < size:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as err:
            if err.errno != errno.ENXIO:  # ENXIO: nothing but a hole up to the end
                return None
            data = size
        data = min(data, size)
        while pos < data:  # a hole: zeros
            n = min(HASH_CHUNK, data - pos)
            digest.update(_ZEROS[:n])
            pos += n
            on_chunk(n)
        if pos >= size:
            break
        end = min(os.lseek(fd, pos, os.SEEK_HOLE), size)
        while pos < end:
            chunk = os.pread(fd, min(HASH_CHUNK, end - pos), pos)
            if not chunk:
                return None  # shorter than it said: let the plain read decide
            digest.update(chunk)
            pos += len(chunk)
            on_chunk(len(chunk))
    return digest.hexdigest()

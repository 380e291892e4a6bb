"""Writing an archive's entries into a restore target, safely and completely.

- Never through a symlink: every directory on the way is opened with O_NOFOLLOW relative
  to its parent, and every new name is made relative to an open directory, so a symlink
  planted in the target (or earlier in the same archive) cannot redirect a write.
- Under short temporary names (".bm-" and 8 hex digits, never longer than the name they
  stand for, issue 12 item 4), renamed into place when complete. The name is derived
  from the final one, so what a killed restore left is removed by the next (item 13):
  each directory written into is first swept of the temporary names of the entries this
  restore writes there (and the old random ".restore-<16 hex>.tmp" names), never of
  other names that merely look like ours (a user's ".bm-0123abcd", or another restore's).
- Sparse: zero blocks are skipped with a seek and the file is cut to its size, so a file
  that was mostly holes stays mostly holes (item 6).
- With owner, group and kept extended attributes where the server may set them, and the
  later names of a hard-linked file as hard links again (item 10).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import os
import re
import stat
import tarfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from engines.archive.sink import SparseSink
from engines.errors import EngineError, RestoreConflict
from engines.fsmeta import kept_xattr, refused_message, shown
from engines.tmpnames import derived_tmp

# Without its owner restored, a file never gets setuid/setgid back: under an app running
# as root a user's harmless setuid-to-themselves file would come back setuid-root.
RESTORE_MODE_MASK = 0o1777
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# The random temporary names restores used before (secrets.token_hex(8)): they cannot be
# derived from a name, and no restore makes them any more, so the exact pattern (29
# characters, 16 hex digits) is what is swept. Today's names are derived (temp_name).
_LEGACY = re.compile(r"\.restore-[0-9a-f]{16}\.tmp")
_XATTR_REFUSED = (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EPERM, errno.EACCES,
                  errno.EINVAL, errno.E2BIG, errno.ENOSPC)
# Held open at once while writing: a folder is usually done before the next begins.
_OPEN_FOLDERS = 64
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

# Reads a member to its end through a sink; returns its size and content hash.
Consume = Callable[[Callable[[bytes], object]], tuple[int, str]]


# The temporary name `leaf` is written under: 12 bytes, the same on every restore (the
# one rule of engines.tmpnames, shared with the mirror and rsync restores).
temp_name = derived_tmp


class TargetWriter:
    """Writes entries under a target directory; see the module docstring."""

    def __init__(self, target: Path, overwrite: bool, warn: Callable[[str], None],
                 paths: Iterable[str] = ()) -> None:
        # `paths`: the entries this restore writes. Their folders are swept of exactly
        # their temporary names up front; without them each entry's own temporary name
        # is still removed just before it is written (_fresh_temp).
        self.target = target
        self.overwrite = overwrite
        self.warn = warn
        self.root_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._dirs: list[tuple[str, Mapping[str, Any]]] = []
        self._swept: set[str] = set()
        # Open folders by path ("" is the target), the most recently used last: files
        # come folder by folder, so each folder is opened once, not once per file.
        self._open: dict[str, int] = {}
        # Folders this restore made: nothing can be in them but what it writes there,
        # so they need no sweep and no look before each name.
        self._made: set[str] = set()
        self._leaves: dict[str, set[str]] = {}  # folder -> the names written into it
        for rel in paths:
            folder, _, leaf = rel.rpartition("/")
            self._leaves.setdefault(folder, set()).add(leaf)
        self._may_chown = True  # until the first EPERM: then the server is not allowed to

    def close(self) -> None:
        """Release the target directory and the folders held open."""
        for fd in self._open.values():
            if fd != self.root_fd:
                os.close(fd)
        self._open.clear()
        os.close(self.root_fd)

    def directory(self, member: tarfile.TarInfo, entry: Mapping[str, Any]) -> None:
        """Make a directory (or keep the one there); its metadata is set by finish()."""
        parent_fd, leaf = self._parent(entry["path"])
        # A folder this restore made already (on the way to a hard link's stand-in, whose
        # first name came earlier in the archive) is kept, not made again.
        if entry["path"] not in self._made and not self._clear(parent_fd, leaf, entry):
            os.mkdir(leaf, 0o700, dir_fd=parent_fd)
            self._made.add(entry["path"])
        self._dirs.append((entry["path"], entry))

    def symlink(self, member: tarfile.TarInfo, entry: Mapping[str, Any]) -> None:
        """Make a symlink, replacing what was there only through a rename."""
        parent_fd, leaf = self._parent(entry["path"])
        self._clear(parent_fd, leaf, entry)
        tmp = self._temp(parent_fd, leaf,
                         lambda tmp: os.symlink(member.linkname, tmp, dir_fd=parent_fd))
        try:
            self._chown(lambda u, g: os.chown(tmp, u, g, dir_fd=parent_fd,
                                              follow_symlinks=False), entry)
            os.utime(tmp, ns=(entry["mtime_ns"], entry["mtime_ns"]), dir_fd=parent_fd,
                     follow_symlinks=False)
            os.rename(tmp, leaf, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=parent_fd)
            raise

    def file(self, member: tarfile.TarInfo, entry: Mapping[str, Any],
             consume: Consume) -> tuple[int, str]:
        """Write a file under a temporary name, set its metadata, rename it into place."""
        parent_fd, leaf = self._parent(entry["path"])
        self._clear(parent_fd, leaf, entry)
        fd = -1

        def create(tmp: str) -> None:
            nonlocal fd
            fd = os.open(tmp, _NEW_FILE, 0o600, dir_fd=parent_fd)

        tmp = self._temp(parent_fd, leaf, create)
        try:
            sink = SparseSink(fd)
            size, digest = consume(sink)
            sink.finish()
            self._set_meta(fd, entry)
            os.close(fd)
            fd = -1
            os.rename(tmp, leaf, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=parent_fd)
            raise
        return size, digest

    def hardlink(self, member: tarfile.TarInfo, entry: Mapping[str, Any], leader: str) -> None:
        """Make a later name of a restored file a hard link to it (a copy where the
        filesystem allows no more links)."""
        src_folder, src_leaf = self._parent(leader)
        src_fd = os.dup(src_folder)  # opening the link's folder may close the other
        try:
            self._link(entry, src_fd, src_leaf)
        finally:
            os.close(src_fd)

    def _link(self, entry: Mapping[str, Any], src_fd: int, src_leaf: str) -> None:
        parent_fd, leaf = self._parent(entry["path"])
        self._clear(parent_fd, leaf, entry)

        def make(tmp: str) -> None:
            try:
                os.link(src_leaf, tmp, src_dir_fd=src_fd, dst_dir_fd=parent_fd,
                        follow_symlinks=False)
            except OSError as err:
                if err.errno not in (errno.EMLINK, errno.EPERM, errno.EXDEV):
                    raise
                self._copy_from(src_fd, src_leaf, parent_fd, tmp, entry)

        tmp = self._temp(parent_fd, leaf, make)
        try:
            os.rename(tmp, leaf, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=parent_fd)
            raise

    def finish(self) -> None:
        """Give directories their metadata, deepest first (writing inside changes mtimes)."""
        for rel, entry in reversed(self._dirs):
            parent_fd, leaf = self._parent(rel)
            fd = os.open(leaf, DIR_FLAGS, dir_fd=parent_fd)
            try:
                self._set_meta(fd, entry)
            finally:
                os.close(fd)

    # --- metadata -------------------------------------------------------------------------

    def _set_meta(self, fd: int, entry: Mapping[str, Any]) -> None:
        """Owner first (chown clears set-id bits), attributes (an ACL sets group bits),
        then mode and mtime."""
        owned = self._chown(lambda u, g: os.fchown(fd, u, g), entry)
        xattrs = entry.get("xattrs")
        if isinstance(xattrs, dict) and xattrs:
            refused = _set_xattrs(fd, xattrs)
            if refused:
                self.warn(refused_message(entry["path"], refused))
        os.fchmod(fd, entry["mode"] & (0o7777 if owned else RESTORE_MODE_MASK))
        os.utime(fd, ns=(entry["mtime_ns"], entry["mtime_ns"]))

    def _chown(self, chown: Callable[[int, int], None], entry: Mapping[str, Any]) -> bool:
        """Give the entry its recorded owner and group; False where that is not allowed."""
        uid, gid = entry.get("uid"), entry.get("gid")
        if not self._may_chown or not isinstance(uid, int) or not isinstance(gid, int):
            return False
        try:
            chown(uid, gid)
        except OSError as err:
            # Not root and no CAP_CHOWN: the files stay the server's (as the README says).
            if err.errno == errno.EPERM:
                self._may_chown = False
                return False
            if err.errno == errno.EINVAL:  # an id this filesystem cannot store
                return False
            raise
        return True

    def _copy_from(self, src_fd: int, src_leaf: str, parent_fd: int, tmp: str,
                   entry: Mapping[str, Any]) -> None:
        """Copy an already restored file to tmp (holes kept), with its metadata."""
        fin = os.open(src_leaf, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_fd)
        try:
            fout = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                           | os.O_CLOEXEC, 0o600, dir_fd=parent_fd)
            try:
                sink = SparseSink(fout)
                while chunk := os.read(fin, 1 << 20):
                    sink(chunk)
                sink.finish()
                self._set_meta(fout, entry)
            finally:
                os.close(fout)
        finally:
            os.close(fin)

    # --- where things go ----------------------------------------------------------------

    def _temp(self, parent_fd: int, leaf: str, make: Callable[[str], None]) -> str:
        """Make leaf's temporary name with `make`; what a killed restore left under that
        name (the sweep of its folder took it, unless it came since) goes first."""
        tmp = temp_name(leaf)
        try:
            make(tmp)
        except FileExistsError:
            os.unlink(tmp, dir_fd=parent_fd)
            make(tmp)
        return tmp

    def _parent(self, rel: str) -> tuple[int, str]:
        """The open folder that holds rel (missing ones are made) and the leaf. The fd
        stays the writer's, open until the next call may close it."""
        folder, _, leaf = rel.rpartition("/")
        return self._folder(folder), leaf

    def _folder(self, folder: str) -> int:
        """An open folder of the target ("" is the target itself), made if missing."""
        fd = self._open.pop(folder, None)
        if fd is None:
            fd = self._walk_to(folder)
        self._open[folder] = fd  # the most recently used go last
        if len(self._open) > _OPEN_FOLDERS:
            old = self._open.pop(next(iter(self._open)))
            if old != self.root_fd:
                os.close(old)
        return fd

    def _walk_to(self, folder: str) -> int:
        """Open a folder from its nearest open ancestor, each step without following a
        symlink; missing ones are made (and need no sweep), the others are swept once."""
        parts = folder.split("/") if folder else []
        start = max(len(parts) - 1, 0)
        while start > 0 and "/".join(parts[:start]) not in self._open:
            start -= 1
        fd = self._open["/".join(parts[:start])] if start > 0 else self.root_fd
        owned = False  # the folders on the way are closed again
        try:
            for depth in range(start, len(parts)):
                here = "/".join(parts[:depth + 1])
                part = parts[depth]
                try:
                    next_fd = os.open(part, DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    os.mkdir(part, 0o777, dir_fd=fd)  # umask applies, as for mkdir -p
                    self._made.add(here)
                    next_fd = os.open(part, DIR_FLAGS, dir_fd=fd)
                except OSError as err:
                    if err.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    raise EngineError(f"{shown(self.target / here)} is a symlink or a file, "
                                      "not a directory; restore will not write through "
                                      "it") from err
                if owned:
                    os.close(fd)
                fd, owned = next_fd, True
            if folder not in self._swept and folder not in self._made:
                self._swept.add(folder)
                _sweep(fd, {temp_name(leaf) for leaf in self._leaves.get(folder, ())})
        except BaseException:
            if owned:
                os.close(fd)
            raise
        return fd

    def _clear(self, parent_fd: int, leaf: str, entry: Mapping[str, Any]) -> bool:
        """Make way for an entry; return whether a directory it can reuse is already there."""
        if entry["path"].rpartition("/")[0] in self._made:
            return False  # a folder this restore made holds only what it wrote there
        try:
            st = os.stat(leaf, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        where = shown(self.target / entry["path"])
        if stat.S_ISDIR(st.st_mode):
            if entry["type"] == "dir":
                return True
            raise RestoreConflict(f"{where} is a directory; restore does not replace a "
                                  f"directory with a {entry['type']}")
        if not self.overwrite:
            raise RestoreConflict(f"{where} already exists")
        if entry["type"] == "dir" or stat.S_ISLNK(st.st_mode):
            # unlink removes a symlink itself, never what it points at. A regular file
            # stays until the new one is renamed over it, so it is never lost half way.
            os.unlink(leaf, dir_fd=parent_fd)
        return False


def _sweep(dir_fd: int, ours: set[str]) -> None:
    """Remove what a killed restore left in a directory: files named `ours` (the
    temporary names this restore uses there) or like the old random ones, nothing else
    (never a directory)."""
    with os.scandir(dir_fd) as it:
        leftovers = [e.name for e in it
                     if (e.name in ours or _LEGACY.fullmatch(e.name))
                     and not e.is_dir(follow_symlinks=False)]
    for name in leftovers:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)


def _set_xattrs(fd: int, xattrs: Mapping[str, Any]) -> list[str]:
    """Set kept extended attributes on an open file; return the names refused."""
    refused: list[str] = []
    for name, value in xattrs.items():
        if not kept_xattr(name) or not isinstance(value, str):
            continue  # a manifest names only these; anything else is not ours to set
        try:
            os.setxattr(fd, name, base64.b64decode(value))
        except OSError as err:
            if err.errno not in _XATTR_REFUSED:
                raise
            refused.append(name)
    return refused

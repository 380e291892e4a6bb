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
import hashlib
import os
import re
import stat
import tarfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from engines.errors import EngineError, RestoreConflict
from engines.filecopy import TMP_PREFIX
from engines.fsmeta import kept_xattr, refused_message, shown

# Without its owner restored, a file never gets setuid/setgid back: under an app running
# as root a user's harmless setuid-to-themselves file would come back setuid-root.
RESTORE_MODE_MASK = 0o1777
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Runs of zeros at least this long (and aligned to it within a chunk) become holes.
HOLE_BLOCK = 64 << 10
_ZERO_BLOCK = bytes(HOLE_BLOCK)
# The random temporary names restores used before (secrets.token_hex(8)): they cannot be
# derived from a name, and no restore makes them any more, so the exact pattern (29
# characters, 16 hex digits) is what is swept. Today's names are derived (temp_name).
_LEGACY = re.compile(r"\.restore-[0-9a-f]{16}\.tmp")
_XATTR_REFUSED = (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EPERM, errno.EACCES,
                  errno.EINVAL, errno.E2BIG, errno.ENOSPC)
# tarfile's own extraction filter (Python 3.11.4+) is a second opinion on top of the checks
# here, which do not depend on it.
_TAR_FILTER: Callable[[tarfile.TarInfo, str], tarfile.TarInfo] | None = getattr(
    tarfile, "tar_filter", None)

# Reads a member to its end through a sink; returns its size and content hash.
Consume = Callable[[Callable[[bytes], object]], tuple[int, str]]


def temp_name(leaf: str) -> str:
    """The temporary name `leaf` is written under: 12 bytes, the same on every restore."""
    return f"{TMP_PREFIX}{hashlib.sha256(os.fsencode(leaf)).hexdigest()[:8]}"


class SparseSink:
    """Writes a file's content at increasing offsets, seeking over blocks of zeros."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pos = 0

    def __call__(self, chunk: bytes) -> None:
        """Write the next piece of content (blocks of zeros are left as a hole)."""
        size = len(chunk)
        data_from = -1  # where the run of data blocks being gathered starts
        for start in range(0, size, HOLE_BLOCK):
            end = min(start + HOLE_BLOCK, size)
            # A first or last byte set settles it cheaply; a bytes slice compares as
            # memcmp (a memoryview compare was 60 times slower).
            zero = (not chunk[start] and not chunk[end - 1]
                    and chunk[start:end] == _ZERO_BLOCK[:end - start])
            if zero and data_from >= 0:
                self._write(chunk, data_from, start)
                data_from = -1
            elif not zero and data_from < 0:
                data_from = start
        if data_from >= 0:
            self._write(chunk, data_from, size)
        self.pos += size

    def _write(self, chunk: bytes, start: int, end: int) -> None:
        view = memoryview(chunk)[start:end]
        while view:
            view = view[os.pwrite(self.fd, view, self.pos + start):]
            start = end - len(view)

    def finish(self) -> None:
        """Give the file its full length (a trailing hole is a length, not data)."""
        os.ftruncate(self.fd, self.pos)


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
        self._leaves: dict[str, set[str]] = {}  # folder -> the names written into it
        for rel in paths:
            folder, _, leaf = rel.rpartition("/")
            self._leaves.setdefault(folder, set()).add(leaf)
        self._may_chown = True  # until the first EPERM: then the server is not allowed to

    def close(self) -> None:
        """Release the target directory."""
        os.close(self.root_fd)

    def directory(self, member: tarfile.TarInfo, entry: Mapping[str, Any]) -> None:
        """Make a directory (or keep the one there); its metadata is set by finish()."""
        parent_fd, leaf = self._parent(entry["path"])
        try:
            exists = self._clear(parent_fd, leaf, entry)
            self._second_opinion(member)
            if not exists:
                os.mkdir(leaf, 0o700, dir_fd=parent_fd)
        finally:
            os.close(parent_fd)
        self._dirs.append((entry["path"], entry))

    def symlink(self, member: tarfile.TarInfo, entry: Mapping[str, Any]) -> None:
        """Make a symlink, replacing what was there only through a rename."""
        parent_fd, leaf = self._parent(entry["path"])
        try:
            self._clear(parent_fd, leaf, entry)
            self._second_opinion(member)
            tmp = self._fresh_temp(parent_fd, leaf)
            os.symlink(member.linkname, tmp, dir_fd=parent_fd)
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
        finally:
            os.close(parent_fd)

    def file(self, member: tarfile.TarInfo, entry: Mapping[str, Any],
             consume: Consume) -> tuple[int, str]:
        """Write a file under a temporary name, set its metadata, rename it into place."""
        parent_fd, leaf = self._parent(entry["path"])
        try:
            self._clear(parent_fd, leaf, entry)
            self._second_opinion(member)
            tmp = self._fresh_temp(parent_fd, leaf)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=parent_fd)
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
        finally:
            os.close(parent_fd)
        return size, digest

    def hardlink(self, member: tarfile.TarInfo, entry: Mapping[str, Any], leader: str) -> None:
        """Make a later name of a restored file a hard link to it (a copy where the
        filesystem allows no more links)."""
        src_fd, src_leaf = self._parent(leader)
        try:
            parent_fd, leaf = self._parent(entry["path"])
            try:
                self._clear(parent_fd, leaf, entry)
                self._second_opinion(member)
                tmp = self._fresh_temp(parent_fd, leaf)
                try:
                    try:
                        os.link(src_leaf, tmp, src_dir_fd=src_fd, dst_dir_fd=parent_fd,
                                follow_symlinks=False)
                    except OSError as err:
                        if err.errno not in (errno.EMLINK, errno.EPERM, errno.EXDEV):
                            raise
                        self._copy_from(src_fd, src_leaf, parent_fd, tmp, entry)
                    os.rename(tmp, leaf, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp, dir_fd=parent_fd)
                    raise
            finally:
                os.close(parent_fd)
        finally:
            os.close(src_fd)

    def finish(self) -> None:
        """Give directories their metadata, deepest first (writing inside changes mtimes)."""
        for rel, entry in reversed(self._dirs):
            parent_fd, leaf = self._parent(rel)
            try:
                fd = os.open(leaf, DIR_FLAGS, dir_fd=parent_fd)
            finally:
                os.close(parent_fd)
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

    def _fresh_temp(self, parent_fd: int, leaf: str) -> str:
        """The temporary name for leaf, with whatever a killed restore left under it gone."""
        tmp = temp_name(leaf)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=parent_fd)
        return tmp

    def _parent(self, rel: str) -> tuple[int, str]:
        """Open the directory that holds rel (creating missing ones) and return it and the leaf."""
        *parents, leaf = rel.split("/")
        fd = os.dup(self.root_fd)
        try:
            for depth, part in enumerate(parents, 1):
                try:
                    next_fd = os.open(part, DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    os.mkdir(part, 0o777, dir_fd=fd)  # umask applies, as for mkdir -p
                    next_fd = os.open(part, DIR_FLAGS, dir_fd=fd)
                except OSError as err:
                    if err.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    where = self.target.joinpath(*parents[:depth])
                    raise EngineError(f"{shown(where)} is a symlink or a file, not a "
                                      "directory; restore will not write through it") from err
                os.close(fd)
                fd = next_fd
            folder = "/".join(parents)
            if folder not in self._swept:
                self._swept.add(folder)
                _sweep(fd, {temp_name(leaf) for leaf in self._leaves.get(folder, ())})
        except BaseException:
            os.close(fd)
            raise
        return fd, leaf

    def _clear(self, parent_fd: int, leaf: str, entry: Mapping[str, Any]) -> bool:
        """Make way for an entry; return whether a directory it can reuse is already there."""
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

    def _second_opinion(self, member: tarfile.TarInfo) -> None:
        """Ask tarfile's "tar" filter too; its changed modes are not used (it drops g+w)."""
        if _TAR_FILTER is None:
            return
        try:
            _TAR_FILTER(member, str(self.target))
        except tarfile.FilterError as err:
            raise EngineError(f"the archive member {shown(member.name)!r} was refused: {err}; "
                              "restore stopped") from err


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

"""The rsync command line: what a snapshot keeps (holes, owners, hard links, xattrs, ACLs)
and how files are compared, decided once per run from the server and the destination."""

from __future__ import annotations

import errno
import os
import shutil
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engines.errors import BinaryMissing, EngineError
from engines.fsmeta import ACL_NAMES, shown
from engines.hostenv import host_environ
from engines.rsync.output import ITEM_MARK

RSYNC_MISSING = "rsync is not installed; install it with apt-get install rsync"
# A POSIX access ACL equal to mode 0644 (version 2; user_obj, group_obj, other): the kernel
# takes it on any filesystem with ACLs and refuses it (EOPNOTSUPP) on one without.
_PROBE_ACL = struct.pack("<I", 2) + b"".join(
    struct.pack("<HHI", tag, perm, 0xFFFFFFFF) for tag, perm in ((1, 6), (4, 4), (0x20, 4)))
_UNSUPPORTED = (errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL)


def rsync_binary() -> str:
    """The rsync program on PATH, or BinaryMissing."""
    found = shutil.which("rsync")
    if found is None:
        raise BinaryMissing(RSYNC_MISSING)
    return found


def rsync_env() -> dict[str, str]:
    """rsync's environment: English messages, since stderr is classified by its text; and
    no RSYNC_* variables from the caller's environment changing what rsync does."""
    env = {k: v for k, v in host_environ().items() if not k.startswith("RSYNC_")}
    env["LC_ALL"] = "C"
    return env


def checksum_option(options: Mapping[str, Any]) -> bool:
    """The job's `checksum` option: compare file contents instead of size and times."""
    value = options.get("checksum", False)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on",
                                                            "0", "false", "no", "off", ""):
        return value.strip().lower() in ("1", "true", "yes", "on")
    raise EngineError(f"option checksum must be true or false, not {value!r}")


@dataclass(frozen=True)
class Keeps:
    """What this run's rsync keeps beyond contents, modes, times, owners and hard links."""

    xattrs: bool
    acls: bool


def probe_destination(directory: Path) -> Keeps:
    """What a file written in `directory` can carry, found by trying on a scratch file."""
    probe = directory / "probe"
    probe.write_bytes(b"")
    try:
        return Keeps(_takes(probe, "user.bm-probe", b"1"),
                     _takes(probe, ACL_NAMES[0], _PROBE_ACL))
    finally:
        probe.unlink()


def _takes(path: Path, name: str, value: bytes) -> bool:
    try:
        os.setxattr(path, name, value, follow_symlinks=False)
    except OSError as err:
        if err.errno in _UNSUPPORTED:
            return False
        raise
    return True


class LostExtras:
    """Notes the first source file with xattrs or ACLs the snapshot's filesystem cannot
    hold, for one warning per kind: the manifest keeps them (a restore puts them back),
    but the snapshot's own files lack them, which is said, not hidden."""

    def __init__(self, keeps: Keeps) -> None:
        self.keeps = keeps
        self.xattr_at: str | None = None
        self.acl_at: str | None = None

    def note(self, path: str, names: Iterable[str]) -> None:
        """Take the kept attribute names a source file has."""
        for name in names:
            if name in ACL_NAMES:
                if not self.keeps.acls and self.acl_at is None:
                    self.acl_at = path
            elif not self.keeps.xattrs and self.xattr_at is None:
                self.xattr_at = path

    def warnings(self) -> list[str]:
        """One warning per kind of attribute the snapshot's files lack."""
        out = []
        for what, at in (("extended attributes", self.xattr_at), ("ACLs", self.acl_at)):
            if at is not None:
                out.append(f"the destination's filesystem cannot hold {what}: the snapshot's "
                           f"copy of {shown(at)} (and of any other such file) lacks them; "
                           "the manifest keeps them and a restore puts them back")
        return out


@dataclass(frozen=True)
class CopyOptions:
    """How every rsync of one run copies: limits, comparison and what is kept."""

    keeps: Keeps
    bwlimit: int | None = None
    checksum: bool = False  # compare contents, not size and mtime


def rsync_command(rsync: str, source: str, target: str, files_from: Path, temp_dir: Path,
                  link_dest: Path | None, options: CopyOptions,
                  checksum: bool = False) -> list[str]:
    """The rsync command line for one source directory (both paths end with a slash).

    `checksum` compares contents for this pass even when the job does not ask for it.
    """
    argv = [
        rsync,
        # -a: recursion off (--files-from turns off the -r in -a), links as links,
        # permissions, times, group, owner. Owners only as root: otherwise rsync keeps
        # quiet and the copies are the server's (the manifest still records the owners,
        # for a restore by root). No --super for CAP_CHOWN alone: a file given away
        # could then not get its times and mode, nor a folder given away its files.
        # --numeric-ids: the ids as they are, not names mapped through the user list.
        "--archive", "--numeric-ids", "--no-devices", "--no-specials",
        # Hard links inside a source stay hard links in the snapshot. Holes in sparse
        # files stay holes: a 10 GiB file of 6 bytes takes a few KiB, not 10 GiB.
        "--hard-links", "--sparse",
        # Exactly the scanned paths, NUL-separated so any name survives.
        f"--files-from={files_from}", "--from0",
        # Temp files outside the snapshot tree: a killed rsync leaves no `.name.XXXXXX` in
        # it; rsync shortens a long name so its temp name fits in NAME_MAX. No
        # --partial/--partial-dir: a local copy is --whole-file, so a partial file would
        # not be used as a basis anyway; an interrupted file is copied again whole.
        f"--temp-dir={temp_dir}",
        "--info=progress2", "--no-human-readable", "--outbuf=N", "-8",
        # -ii: a line for every item, unchanged ones too, so linked bytes count as done.
        # %b makes rsync log a transferred file once it is finished, not when it starts.
        "--itemize-changes", "--itemize-changes", f"--out-format={ITEM_MARK}%l:%b:%i:%n",
    ]
    keeps = options.keeps
    if keeps.xattrs:
        argv.append("--xattrs")
    if keeps.acls:
        argv.append("--acls")
    if checksum or options.checksum:
        argv.append("--checksum")
    if link_dest is not None:
        argv.append(f"--link-dest={link_dest}")
    if options.bwlimit:
        argv.append(f"--bwlimit={options.bwlimit}")
    # Both paths are absolute, so rsync never reads `host:path` into them, and `--` ends
    # the options even for a name that starts with a dash.
    return [*argv, "--", source, target]

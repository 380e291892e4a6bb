"""What a file is beyond its content and mode: owner, extended attributes and ACLs.

Snapshots and restores of the tree engines keep these where they can (issue 12, item
10): owner and group when the server may set them (root, or CAP_CHOWN; anyone else gets
EPERM and the files stay the server's, without failing the run), and `user.*` extended
attributes plus POSIX ACLs (stored by the kernel as the `system.posix_acl_*` extended
attributes) where both filesystems have them. Manifests hold attribute values in base64.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import os
from collections.abc import Mapping
from typing import Any

ACL_NAMES = ("system.posix_acl_access", "system.posix_acl_default")
# The filesystem (or the kernel) has no extended attributes, or none of this kind.
_UNSUPPORTED = (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS)


def shown(path: str | os.PathLike[str]) -> str:
    """A path as text for messages and logs: undecodable bytes appear as \\xNN escapes."""
    return os.fspath(path).encode("utf-8", "surrogateescape").decode("utf-8",
                                                                     "backslashreplace")


def kept_xattr(name: str) -> bool:
    """Whether an extended attribute is one snapshots keep."""
    return name.startswith("user.") or name in ACL_NAMES


def read_xattrs(path: str) -> dict[str, str]:
    """The kept extended attributes of a file or directory, values in base64.

    Raises OSError only for what is not "this filesystem has none" (an unreadable file).
    """
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as err:
        if err.errno in _UNSUPPORTED:
            return {}
        raise
    out: dict[str, str] = {}
    for name in sorted(names):
        if not kept_xattr(name):
            continue
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError as err:
            if err.errno in (errno.ENODATA, *_UNSUPPORTED):
                continue  # removed since it was listed
            raise
        out[name] = base64.b64encode(value).decode("ascii")
    return out


def apply_owner(path: str | os.PathLike[str] | int, uid: int, gid: int) -> bool:
    """Give a path (not following a symlink) or an open file an owner and group; False
    if not allowed."""
    try:
        if isinstance(path, int):
            os.chown(path, uid, gid)
        else:
            os.lchown(path, uid, gid)
    except OSError as err:
        # Not root and no CAP_CHOWN (EPERM), or an id the filesystem cannot store
        # (EINVAL): the copy stays the server's, which the README says.
        if err.errno in (errno.EPERM, errno.EINVAL):
            return False
        raise
    return True


def apply_xattrs(path: str | os.PathLike[str] | int, xattrs: Mapping[str, str]) -> list[str]:
    """Set the given extended attributes; return the names the filesystem refused."""
    refused: list[str] = []
    for name, value in xattrs.items():
        if not kept_xattr(name):
            continue  # a manifest names only these; anything else is not ours to set
        try:
            os.setxattr(path, name, base64.b64decode(value),
                        follow_symlinks=isinstance(path, int))  # an fd follows nothing
        except OSError as err:
            if err.errno in (*_UNSUPPORTED, errno.EPERM, errno.EACCES, errno.EINVAL,
                             errno.E2BIG, errno.ENOSPC):
                refused.append(name)
                continue
            raise
    return refused


def owner_record(uid: int, gid: int, xattrs: Mapping[str, str]) -> dict[str, Any]:
    """The manifest keys for owner and attributes (attributes only when there are any)."""
    record: dict[str, Any] = {"uid": uid, "gid": gid}
    if xattrs:
        record["xattrs"] = dict(xattrs)
    return record


def apply_meta(path: str | os.PathLike[str] | int, entry: Mapping[str, Any]) -> list[str]:
    """Give a copied or restored entry (by path, or an open file) its owner, attributes,
    mode and mtime.

    Order matters: chown clears set-id bits, so it goes first; an ACL sets the group
    bits, so chmod comes after it; utime last. Returns the attribute names the
    filesystem refused.
    """
    refused: list[str] = []
    if isinstance(entry.get("uid"), int) and isinstance(entry.get("gid"), int):
        apply_owner(path, entry["uid"], entry["gid"])
    mtime = entry["mtime_ns"]
    if entry["type"] == "symlink":
        # A filesystem without symlink times: the link itself is what matters.
        with contextlib.suppress(OSError):
            os.utime(path, ns=(mtime, mtime), follow_symlinks=False)
        return refused
    xattrs = entry.get("xattrs")
    if isinstance(xattrs, dict) and xattrs:
        refused = apply_xattrs(path, xattrs)
    os.chmod(path, entry["mode"])
    os.utime(path, ns=(mtime, mtime))
    return refused


def refused_message(rel: str, refused: list[str]) -> str:
    """The warning for attributes a filesystem would not take."""
    return (f"{shown(rel)}: extended attribute(s) {', '.join(refused)} could not be kept "
            "(the filesystem does not support them)")

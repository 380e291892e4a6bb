"""What the archive keeps beyond content and mode: owner, extended attributes, hard links.

The tar holds them as GNU tar and bsdtar write them: uid and gid in every header,
`user.*` attributes and POSIX ACLs (the kernel's `system.posix_acl_*` attributes) as pax
`SCHILY.xattr.<name>` records, and the second and later names of a file hard-linked in
the source as hard-link members naming the first. The manifest holds the same (uid, gid,
xattrs in base64, and "link": the first name), which is what restore and verify use.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from engines.fsmeta import read_xattrs
from engines.scan import Entry

XATTR_PAX = "SCHILY.xattr."


def pax_records(xattrs: Mapping[str, str] | None) -> dict[str, str]:
    """The pax records of a member's kept attributes (manifest values are base64).

    Values are raw bytes; tarfile writes a str with surrogate escapes back as those bytes
    (and marks the header hdrcharset=BINARY, as GNU tar expects for binary values).
    """
    return {f"{XATTR_PAX}{name}": base64.b64decode(value).decode("utf-8", "surrogateescape")
            for name, value in sorted((xattrs or {}).items())}


def entry_xattrs(entry: Entry) -> dict[str, str]:
    """The kept attributes of a file or directory (none for a symlink); OSError if unreadable."""
    if entry.kind == "symlink":
        return {}  # Linux allows no user.* attributes on a symlink
    return read_xattrs(entry.path)


def owner_fields(entry: Entry, xattrs: Mapping[str, str]) -> dict[str, Any]:
    """The manifest keys for owner, group and attributes (attributes only when there are any)."""
    record: dict[str, Any] = {"uid": entry.uid, "gid": entry.gid}
    if xattrs:
        record["xattrs"] = dict(xattrs)
    return record


class LinkGroups:
    """Which files of the source are hard links to a file already in the archive.

    The first name of an inode written whole is its leader; the later names become
    hard-link members. A leader that was skipped (unreadable, vanished) is no leader, so
    the next name is written whole instead.
    """

    def __init__(self) -> None:
        self._leaders: dict[tuple[int, int], dict[str, Any]] = {}
        self._followers: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def leader_of(self, entry: Entry) -> dict[str, Any] | None:
        """The manifest record of the file this one is a hard link to, if any."""
        if entry.kind != "file" or entry.nlink < 2:
            return None
        return self._leaders.get((entry.dev, entry.ino))

    def written(self, entry: Entry, record: dict[str, Any]) -> None:
        """Note a file written whole (it may lead later names of the same inode)."""
        if entry.nlink > 1:
            self._leaders.setdefault((entry.dev, entry.ino), record)

    def follower(self, entry: Entry, leader: dict[str, Any]) -> dict[str, Any]:
        """The record of a later name: filled from its leader's by finish() (the leader's
        hash is set on the hashing thread, so it may not be there yet)."""
        record: dict[str, Any] = {"path": entry.rel, "link": leader["path"]}
        self._followers.append((record, leader))
        return record

    def finish(self) -> None:
        """Copy each leader's size, times, mode, owner and hash into its followers' records."""
        for record, leader in self._followers:
            for key, value in leader.items():
                if key != "path":
                    record[key] = value

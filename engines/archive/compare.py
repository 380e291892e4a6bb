"""How an archive member differs from its manifest entry (restore and verify both ask)."""

from __future__ import annotations

import tarfile
from collections.abc import Mapping
from typing import Any

from engines.manifest import content_hash


def metadata_problems(member: tarfile.TarInfo, entry: Mapping[str, Any]) -> list[str]:
    """How a member's mode, mtime or link target differ from its manifest entry."""
    problems = []
    if member.mode & 0o7777 != entry["mode"]:
        problems.append(f"{member.name}: mode {member.mode & 0o7777:o} in the archive, "
                        f"{entry['mode']:o} in the manifest")
    if int(member.mtime) != entry["mtime_ns"] // 1_000_000_000:
        problems.append(f"{member.name}: modification time differs from the manifest")
    if entry["type"] == "symlink" and member.linkname != entry["target"]:
        problems.append(f"{member.name}: link target {member.linkname!r} in the archive, "
                        f"{entry['target']!r} in the manifest")
    if member.islnk() and member.linkname != entry.get("link"):
        problems.append(f"{member.name}: a hard link to {member.linkname!r} in the archive, "
                        f"to {entry.get('link')!r} in the manifest")
    if (isinstance(entry.get("uid"), int) and isinstance(entry.get("gid"), int)
            and (member.uid, member.gid) != (entry["uid"], entry["gid"])):
        problems.append(f"{member.name}: owner {member.uid}:{member.gid} in the archive, "
                        f"{entry['uid']}:{entry['gid']} in the manifest")
    return problems


def content_problems(name: str, entry: Mapping[str, Any], size: int, digest: str) -> list[str]:
    """How a file's content differs from its manifest entry."""
    if size != entry["size"]:
        return [f"{name}: {size} bytes in the archive, {entry['size']} in the manifest"]
    algorithm, expected = content_hash(entry) or ("sha256", "")
    if digest != expected:
        return [f"{name}: content does not match the manifest ({algorithm} differs)"]
    return []


def expected_kind(entry: Mapping[str, Any]) -> str:
    """The tar member kind a manifest entry is written as: a later name of a hard-linked
    file is a hard-link member."""
    return "hardlink" if entry["type"] == "file" and entry.get("link") else str(entry["type"])

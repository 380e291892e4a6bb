"""A manifest's entries by path, checked before anything is restored from them."""

from __future__ import annotations

import sys
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engines.archive.compare import expected_kind
from engines.archive.read import member_kind
from engines.errors import EngineError
from engines.fsmeta import shown
from engines.manifest import Manifest, ManifestError, check_rel_path, content_hash
from engines.manifest_stream import StreamedManifest, is_streamed


def read_manifest(path: Path) -> Manifest:
    """A manifest with its entries held compactly: a format 2 one is parsed a line at a
    time, which shares no strings between entries, so each entry's keys and kind are
    interned (for 100,000 entries that is 50 MB less); format 1 is read as before."""
    if not is_streamed(path):
        return Manifest.read(path)
    streamed = StreamedManifest(path)
    intern = sys.intern
    entries = [{intern(k): intern(v) if k == "type" else v for k, v in e.items()}
               for e in streamed.entries()]
    return Manifest(streamed.snapshot_id, streamed.engine, streamed.created,
                    streamed.sources, entries, streamed.job_id)


def checked_index(manifest: Manifest) -> dict[str, dict[str, Any]]:
    """The manifest's entries by path, after checking each is well formed and safe to restore.

    A manifest is data from disk: a path that leaves the snapshot, or an entry under a
    symlink (`a -> /etc`, then `a/passwd`), is refused here, before anything is written.
    """
    index: dict[str, dict[str, Any]] = {}
    for entry in manifest.entries:
        path = check_entry(entry)
        if path in index:
            raise ManifestError(f"the manifest lists {path!r} twice")
        index[path] = entry
    check_links(index)
    for path in index:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            parent = index.get("/".join(parts[:depth]))
            if parent is not None and parent["type"] != "dir":
                raise ManifestError(f"the manifest lists {path!r} under a {parent['type']}; "
                                    "restoring it would write outside the target")
    return index


def check_entry(entry: Any) -> str:
    """Refuse an entry that is malformed or whose path is unsafe; return its path."""
    if not isinstance(entry, dict):
        raise ManifestError("the manifest has an entry that is not an object")
    path, kind = entry.get("path"), entry.get("type")
    if not isinstance(path, str) or not _is_snapshot_path(path):
        raise ManifestError(f"the manifest lists {path!r}, which is not a safe path "
                            "inside the snapshot")
    if kind not in ("file", "dir", "symlink"):
        raise ManifestError(f"the manifest gives {path!r} an unknown type {kind!r}")
    numbers = [entry.get(k) for k in ("size", "mtime_ns", "mode")]
    if any(isinstance(n, bool) or not isinstance(n, int) for n in numbers):
        raise ManifestError(f"the manifest entry for {path!r} lacks size, mtime or mode")
    if kind == "file" and content_hash(entry) is None:
        raise ManifestError(f"the manifest entry for {path!r} has no content hash")
    if kind == "symlink" and not isinstance(entry.get("target"), str):
        raise ManifestError(f"the manifest entry for {path!r} has no link target")
    return path


def _is_snapshot_path(path: str) -> bool:
    """Whether path is a plain, normalised path inside a snapshot (no '..', not absolute)."""
    try:
        return path != "" and check_rel_path(path) == path
    except EngineError:
        return False


def check_links(index: Mapping[str, Mapping[str, Any]]) -> None:
    """Refuse a manifest whose hard links name something other than a file it lists."""
    for path, entry in index.items():
        link = entry.get("link")
        if link is None:
            continue
        first = index.get(link) if isinstance(link, str) else None
        if entry["type"] != "file" or first is None or first["type"] != "file" \
                or first.get("link"):
            raise ManifestError(f"the manifest gives {shown(path)!r} a hard link to "
                                f"{link!r}, which is not a file it lists")


def entry_for_member(member: tarfile.TarInfo,
                     index: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """The manifest entry a member stands for; refuse a member that could escape the target."""
    name = check_member_name(member)
    entry = index.get(name)
    if entry is None:
        raise EngineError(f"the archive holds {name!r}, which its manifest does not list; "
                          "restore refused (the archive may have been tampered with)")
    check_member_kind(member, entry)
    return entry


def check_member_name(member: tarfile.TarInfo) -> str:
    """A member's name, refused if it could point outside the target."""
    name = member.name
    if name.startswith("/") or ".." in name.split("/") or "\x00" in name:
        raise EngineError(f"the archive holds {name!r}, which points outside the restore "
                          "target; restore refused (the archive may have been tampered with)")
    return name


def check_member_kind(member: tarfile.TarInfo, entry: Mapping[str, Any]) -> None:
    """Refuse a member of another kind than its manifest entry (a device, say)."""
    kind = member_kind(member)
    if kind != expected_kind(entry):
        raise EngineError(f"{member.name!r} is a {kind} in the archive but a "
                          f"{expected_kind(entry)} in the manifest; restore refused (the "
                          "archive may have been tampered with)")

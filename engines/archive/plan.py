"""A restore's plan, made in one pass over the manifest before anything is written.

The manifest is read twice, entry by entry, and never held: once here, where every entry
is checked (its shape and path, no path twice, nothing under a file or symlink, hard links
to files it lists) and the target is looked at for what the restore would replace; then
alongside the archive (restore.py). What this pass keeps grows with folders, symlinks and
hard links, not with files: paths of files and symlinks are kept as 64-bit hashes only.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.archive.errors import counted, some_paths
from engines.archive.index import (
    check_entry,
    check_member_kind,
    check_member_name,
    entry_for_member,
)
from engines.errors import EngineError, RestoreConflict
from engines.fsmeta import shown
from engines.manifest import ManifestError


@dataclass
class Plan:
    """What a restore writes: counts, the paths whose folders exist, and hard links."""

    prefix: str
    wanted: int = 0
    files: int = 0
    bytes: int = 0
    # Wanted paths whose folder may already exist in the target: their temporary names
    # are swept from it before writing (a folder the restore makes has none).
    sweep: list[str] = field(default_factory=list)
    # First names of hard links that wanted entries link to: where each went is kept.
    leaders: set[str] = field(default_factory=set)
    # A first name that is not wanted (a sub-path restore) -> the wanted later name of it
    # that takes its content when its member goes by.
    stand_in: dict[str, dict[str, Any]] = field(default_factory=dict)

    def wants(self, path: str) -> bool:
        """Whether a snapshot path is restored."""
        prefix = self.prefix
        return not prefix or path == prefix or path.startswith(prefix + "/")


def make_plan(entries: Iterable[dict[str, Any]], prefix: str, target: Path,
              overwrite: bool, snapshot_id: str) -> Plan:
    """Check every entry and the target; refuse a bad manifest or a conflict."""
    plan = Plan(prefix)
    checks = _EntryChecks()
    conflicts = _Conflicts(target, plan)
    for entry in entries:
        checks.add(entry)
        path = entry["path"]
        if not plan.wants(path):
            continue
        plan.wanted += 1
        if entry["type"] == "file":
            plan.files += 1
            plan.bytes += entry["size"]
            link = entry.get("link")
            if isinstance(link, str):
                if plan.wants(link):
                    plan.leaders.add(link)
                else:
                    plan.stand_in.setdefault(link, entry)
        conflicts.add(entry)
    checks.finish()
    if not plan.wanted:
        raise EngineError(f"{prefix!r} is not in snapshot {snapshot_id}")
    conflicts.finish(overwrite)
    return plan


class _EntryChecks:
    """Checks entries one at a time, in any order, holding little per file."""

    def __init__(self) -> None:
        self._dirs: set[str] = set()
        # hash() of str is 64-bit and seeded per process: a collision could only refuse
        # a good manifest ("twice"), never pass a bad one, and is vanishingly unlikely.
        self._plain: set[int] = set()  # files that are not a later hard-link name
        self._other: set[int] = set()  # later hard-link names
        self._symlinks: set[str] = set()
        self._folders: set[str] = set()  # every folder some listed path is under
        self._links: list[tuple[str, str]] = []  # (later name, first name)

    def add(self, entry: Any) -> None:
        """Check one entry against itself and those seen before it."""
        path = check_entry(entry)
        kind = entry["type"]
        key = hash(path)
        if (path in self._dirs or path in self._symlinks or key in self._plain
                or key in self._other):
            raise ManifestError(f"the manifest lists {path!r} twice")
        if kind == "dir":
            self._dirs.add(path)
        else:
            if path in self._folders:
                raise ManifestError(f"the manifest lists entries under {path!r}, a {kind}; "
                                    "restoring them would write outside the target")
            link = entry.get("link")
            if kind == "symlink":
                self._symlinks.add(path)
            elif link is not None:
                self._links.append((path, link))
                self._other.add(key)
            else:
                self._plain.add(key)
        folder = path.rpartition("/")[0]
        while folder and folder not in self._folders:
            fkey = hash(folder)
            if folder in self._symlinks or fkey in self._plain or fkey in self._other:
                kind = "symlink" if folder in self._symlinks else "file"
                raise ManifestError(f"the manifest lists {path!r} under a {kind} "
                                    f"({folder!r}); restoring it would write outside the "
                                    "target")
            self._folders.add(folder)
            folder = folder.rpartition("/")[0]

    def finish(self) -> None:
        """Refuse hard links that name something other than a file listed on its own."""
        for path, link in self._links:
            if not isinstance(link, str) or hash(link) not in self._plain:
                raise ManifestError(f"the manifest gives {shown(path)!r} a hard link to "
                                    f"{link!r}, which is not a file it lists")


class _Conflicts:
    """What a restore would replace in the target, looked up before anything is written.

    The manifest lists each folder before what it holds, so a folder found missing spares
    a look-up of everything under it: into an empty target, one look-up in all.
    """

    def __init__(self, target: Path, plan: Plan) -> None:
        self._target = target
        self._plan = plan
        self._missing: set[str] = set()
        self.clashes: list[str] = []
        self.blocked: list[str] = []

    def add(self, entry: Mapping[str, Any]) -> None:
        """Look up one wanted entry's path in the target."""
        path, kind = entry["path"], entry["type"]
        if path.rpartition("/")[0] in self._missing:
            if kind == "dir":
                self._missing.add(path)
            return
        self._plan.sweep.append(path)
        try:
            st = os.lstat(self._target / path)
        except (FileNotFoundError, NotADirectoryError):
            if kind == "dir":
                self._missing.add(path)
            return
        except OSError as err:
            raise EngineError(f"restore target {self._target / path} cannot be checked: "
                              f"{err.strerror or err}") from err
        if stat.S_ISDIR(st.st_mode):
            if kind != "dir":
                self.blocked.append(path)
        else:
            self.clashes.append(path)

    def finish(self, overwrite: bool) -> None:
        """Refuse a restore that would replace a directory, or anything without overwrite."""
        target, blocked, clashes = self._target, self.blocked, self.clashes
        if blocked:
            raise RestoreConflict(f"{counted(blocked, 'path', 'paths')} to restore already "
                                  f"exist in {target} as directories ({some_paths(blocked)});"
                                  " restore does not replace a directory with a file, remove "
                                  "them first")
        if clashes and not overwrite:
            raise RestoreConflict(f"{counted(clashes, 'path', 'paths')} to restore already "
                                  f"exist in {target} ({some_paths(clashes)}); choose "
                                  "overwrite or another target")


class Lockstep:
    """The manifest's entries matched to the archive's members one by one, in order (our
    writer writes both in scan order): nothing is looked up, nothing is held."""

    def __init__(self, entries: Iterator[dict[str, Any]]) -> None:
        self._entries = entries

    def entry(self, member: tarfile.TarInfo) -> dict[str, Any]:
        """The entry a member stands for: the manifest's next one, of the same kind."""
        name = check_member_name(member)
        entry = next(self._entries, None)
        if entry is None or entry["path"] != name:
            listed = "nothing more" if entry is None else repr(entry["path"])
            raise EngineError(f"the archive holds {name!r} where its manifest lists "
                              f"{listed}; restore refused (the archive may have been "
                              "tampered with)")
        check_member_kind(member, entry)
        return entry

    def unmatched(self) -> Iterator[dict[str, Any]]:
        """The entries no member came for (the archive ended first)."""
        return self._entries


class Indexed:
    """A format 1 manifest (read whole in any case): each member looked up by its name,
    so an archive from an older release restores whatever its members' order."""

    def __init__(self, entries: list[dict[str, Any]]) -> None:
        self._index = {e["path"]: e for e in entries}
        self._seen: set[str] = set()

    def entry(self, member: tarfile.TarInfo) -> dict[str, Any]:
        """The entry a member stands for, of the same kind; a second member of it is refused."""
        entry = entry_for_member(member, self._index)
        name = member.name
        if name in self._seen:
            raise EngineError(f"the archive holds {shown(name)!r} twice; restore refused")
        self._seen.add(name)
        return entry

    def unmatched(self) -> Iterator[dict[str, Any]]:
        """The entries no member came for."""
        return (e for p, e in self._index.items() if p not in self._seen)

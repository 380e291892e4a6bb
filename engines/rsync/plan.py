"""The rsync engine's scan, consumed as a stream: rsync's file lists and the sources'
details written to files in the run's scratch space, not held in memory.

One pass over engines.scan.walk writes, per source, the paths rsync copies by its quick
check and those it compares by content (engines.rsync.manifest.is_suspect), and every
entry's owner, inode and change time (SourceDetails) for the manifest, read back in the
same order as the snapshot is walked. Only files hard-linked in the source (nlink > 1)
are kept in memory: a hard-link group goes to one rsync pass whole, and names linked
across sources are linked again after the copy (engines.rsync.links).
"""

from __future__ import annotations

import marshal
import os
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from engines.previndex import PreviousFiles
from engines.rsync.manifest import is_suspect
from engines.scan import Entry

# What the manifest needs of a source entry: rel, kind, path, uid, gid, ino, dev, ctime,
# nlink.
Details = tuple[str, str, str, int, int, int, int, int, int]


class ListPlan:
    """rsync's lists and the sources' details, written as the scan yields entries."""

    def __init__(self, work: Path, names: Iterable[str], previous: PreviousFiles,
                 checksum: bool) -> None:
        self.work, self.previous, self.checksum = work, previous, checksum
        self.index = {name: i for i, name in enumerate(names)}
        self.tops: dict[str, Entry] = {}  # each source's own entry
        self.linked: list[Entry] = []  # files hard-linked in the source
        self.counts: dict[tuple[int, int], int] = {}  # (source, pass) -> paths listed
        self.files = self.bytes = 0
        self._lists: dict[tuple[int, int], IO[bytes]] = {}
        self.details_path = work / "sources"
        self._details: IO[bytes] = open(self.details_path, "wb")  # noqa: SIM115

    def list_path(self, source: int, number: int) -> Path:
        """The --files-from list of one source's pass (0: quick check, 1: by content)."""
        return self.work / f"files-{source}-{number}"

    def add(self, entry: Entry) -> None:
        """Take one scanned entry."""
        name = entry.rel.split("/", 1)[0]
        marshal.dump((entry.rel, entry.kind, entry.path, entry.uid, entry.gid, entry.ino,
                      entry.dev, entry.ctime_ns, entry.nlink), self._details)
        if entry.kind == "file":
            self.files += 1
            self.bytes += entry.size
            if entry.nlink > 1:
                self.linked.append(entry)  # its pass is known once its group is
                return
        if name not in self.tops:
            self.tops[name] = entry
            if entry.kind == "dir":
                return  # its contents are listed, not the folder itself
        self._list(entry, entry.kind == "file" and not self.checksum
                   and is_suspect(entry, self.previous.get(entry.rel)))

    def finish(self) -> None:
        """List the hard-linked files (a group whole in one pass) and close the lists."""
        suspects: set[tuple[int, int]] = set()
        if not self.checksum:
            for entry in self.linked:
                if is_suspect(entry, self.previous.get(entry.rel)):
                    suspects.add((entry.dev, entry.ino))
        for entry in self.linked:
            if entry.rel.split("/", 1)[0] not in self.tops:
                self.tops[entry.rel.split("/", 1)[0]] = entry
            self._list(entry, (entry.dev, entry.ino) in suspects)
        self.close()

    def close(self) -> None:
        """Close every list and the details file."""
        for fh in self._lists.values():
            fh.close()
        self._lists.clear()
        self._details.close()

    def _list(self, entry: Entry, by_content: bool) -> None:
        name, _, inner = entry.rel.partition("/")
        top = self.tops[name]
        path = inner if top.kind == "dir" else os.path.basename(top.path)
        key = (self.index[name], 1 if by_content else 0)
        fh = self._lists.get(key)
        if fh is None:
            fh = self._lists[key] = open(self.list_path(*key), "wb")  # noqa: SIM115
        fh.write(os.fsencode(path) + b"\0")
        self.counts[key] = self.counts.get(key, 0) + 1


class SourceDetails:
    """The details ListPlan wrote, looked up in the order the snapshot is walked (sources
    in order, each tree depth-first with names sorted: the scan's order), one at a time."""

    def __init__(self, path: Path, names: Iterable[str]) -> None:
        self.index = {name: i for i, name in enumerate(names)}
        self._fh: IO[bytes] = open(path, "rb")  # noqa: SIM115
        self._next: Details | None = None
        self._advance()

    def _advance(self) -> None:
        try:
            self._next = marshal.load(self._fh)
        except EOFError:
            self._next = None

    def _key(self, rel: str) -> tuple[int, list[str]]:
        parts = rel.split("/")
        return self.index.get(parts[0], -1), parts

    def get(self, rel: str) -> Details | None:
        """The details of the source entry at rel, or None if the scan had none; rels
        must be asked for in walk order."""
        want = self._key(rel)
        while self._next is not None:
            have = self._key(self._next[0])
            if have == want:
                found = self._next
                self._advance()
                return found
            if have > want:
                return None
            self._advance()
        return None

    def close(self) -> None:
        """Close the details file."""
        self._fh.close()

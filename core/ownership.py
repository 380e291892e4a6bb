"""A destination belongs to exactly one job: find another job's destination that overlaps.

Two jobs writing into one folder (or one inside the other) prune and list each other's
snapshots, so a job is refused when its destination equals, lies inside or contains
another job's. What a destination is comes from its engine (engines.registry): local
paths are compared as written (normalised) and, where they exist, with symlinks resolved,
so /backup and a symlink to it are the same place; a remote restic repository (s3:,
sftp:, rest:, ...) is compared by its normalised URL, the engine's destination key.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import stat
import threading
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

from engines.registry import destination_key, local_destination

# Names wanted in one folder from which a listing of it beats an lstat of each, and the
# entries read at least before the rest are looked at one by one (a huge folder).
LIST_AT = 32
LIST_MAX = 4096


@dataclass(frozen=True)
class Owner:
    """Another job's destination: who owns it, where it is, and which engine reads it."""

    job_id: str
    name: str
    destination: str
    engine: str = ""  # unknown: the destination is read the widest way (see registry)

    @classmethod
    def of(cls, job_id: str, spec: Mapping[str, Any]) -> Owner:
        """The owner of a job's destination, from its spec."""
        return cls(job_id, str(spec.get("name")), str(spec.get("destination")),
                   str(spec.get("engine") or ""))

    @cached_property
    def local(self) -> str | None:
        """The local path of the destination, or None for a remote repository (kept:
        Owners hands out the same Owner until the job changes)."""
        return local_path(self.destination, self.engine)


def owners_except(jobs: Iterable[tuple[str, Mapping[str, Any]]], job_id: str | None
                  ) -> list[Owner]:
    """The owners of every job's destination but `job_id`'s (jobs as (id, spec) pairs)."""
    return [Owner.of(other, spec) for other, spec in jobs if other != job_id]


class Owners:
    """owners_except with each job's Owner kept until its spec changes (on the loop).

    A save or a run start compares against every other job; making a thousand Owners
    each time showed in profiles. A spec is replaced, never changed in place, when a job
    changes (core.state), so the spec object tells whether the kept Owner still holds.
    """

    def __init__(self) -> None:
        self._made: dict[str, tuple[Mapping[str, Any], Owner]] = {}
        # Lists are made on the loop and on check threads (off the loop, for 1,000 jobs).
        self._lock = threading.Lock()

    def except_(self, jobs: Iterable[tuple[str, Mapping[str, Any]]], job_id: str | None
                ) -> list[Owner]:
        """The owners of every job's destination but `job_id`'s (jobs as (id, spec))."""
        with self._lock:
            return self._except(jobs, job_id)

    def _except(self, jobs: Iterable[tuple[str, Mapping[str, Any]]], job_id: str | None
                ) -> list[Owner]:
        made, out, seen = self._made, [], 0
        for other, spec in jobs:
            seen += 1
            kept = made.get(other)
            if kept is None or kept[0] is not spec:
                kept = made[other] = (spec, Owner.of(other, spec))
            if other != job_id:
                out.append(kept[1])
        if len(made) > 2 * seen + 64:  # deleted jobs piled up: keep those still listed
            live = {owner.job_id for owner in out} | {job_id}
            self._made = {k: v for k, v in made.items() if k in live}
        return out


@lru_cache(maxsize=8192)
def local_path(destination: str, engine: str = "") -> str | None:
    """The local path a destination names (restic's "local:/x" too), or None for a URL."""
    # Cached: text in, text out, no I/O; a save compares against every other job's.
    path = local_destination(engine, destination)
    return str(path) if path is not None else None


class Resolver:
    """os.path.realpath for many paths at once, each folder looked at once (does I/O).

    A save compares its destination with every other job's, and those mostly share
    their parent folders: the real form of a folder is kept for the resolver's life
    (one check), so a thousand destinations in one folder cost a thousand lstat calls,
    not a thousand walks from /. Results are those of os.path.realpath: the part that
    exists is resolved, the rest kept as written.
    """

    def __init__(self) -> None:
        self._real: dict[str, str] = {}

    def real(self, path: str) -> str:
        """The path with symlinks resolved, as os.path.realpath gives it."""
        known = self._real.get(path)
        if known is not None:
            return known
        # The common case, a plain absolute path whose folder was resolved already.
        head, _, name = path.rpartition("/")
        real_head = self._real.get(head or "/")
        if real_head is not None and name not in ("", ".", "..") and not head.endswith("/"):
            found = self._real[path] = _step(real_head, name)
            return found
        todo: list[tuple[str, str, str]] = []
        current = path
        while current not in self._real:  # up to the nearest folder already resolved
            parent, name = posixpath.split(current)
            if parent == current or name in ("", ".", ".."):
                self._real[current] = os.path.realpath(current)
                break
            todo.append((current, parent, name))
            current = parent
        for current, parent, name in reversed(todo):
            self._real[current] = _step(self._real[parent], name)
        return self._real[path]

    def prime(self, paths: Iterable[str]) -> None:
        """Resolve many paths ahead, one folder listing for the names of a shared folder.

        A thousand destinations in one folder cost one listing, not a thousand lstat
        calls (each a trip through the interpreter lock, which stalls the event loop
        beside it). The answers are real()'s: a listed entry's type is the lstat
        type; a name the listing lacks (missing, or spelt in another case on a
        case-insensitive disk) or a folder that cannot be listed is looked at alone.
        """
        by_parent: dict[str, list[str]] = {}
        for path in paths:
            head, _, name = path.rpartition("/")
            if (path not in self._real and head and not head.endswith("/")
                    and name not in ("", ".", "..")):
                by_parent.setdefault(head, []).append(name)
        for head, names in by_parent.items():
            if len(names) >= LIST_AT:
                self._list(head, names)

    def _list(self, head: str, names: list[str]) -> None:
        real_head = self.real(head)
        base = real_head if real_head.endswith("/") else real_head + "/"
        kinds, absent = _listing(real_head, set(names))
        for name in names:
            link = kinds.get(name)
            if link is not None:
                found = os.path.realpath(base + name) if link else base + name
            elif absent(name):
                found = base + name  # missing: kept as written, as realpath does
            else:
                found = _step(real_head, name)
            self._real[f"{head}/{name}"] = found

    def forms(self, path: str) -> tuple[str, ...]:
        """The ways a local path may be written: as given, and with symlinks resolved."""
        # realpath resolves the part that exists and keeps the rest as written: a
        # destination that does not exist yet still compares by its real parent.
        real = self.real(path)
        return (path,) if real == path else (path, real)


def _listing(folder: str, wanted: set[str]
             ) -> tuple[dict[str, bool], Callable[[str], bool]]:
    """Which wanted names a folder holds (name -> is a symlink), and a test that a name
    is surely not there (a whole listing lacks it in any case or Unicode form)."""
    kinds: dict[str, bool] = {}
    seen: list[str] = []
    budget = max(4 * len(wanted), LIST_MAX)  # a huge folder: the rest one by one
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                budget -= 1
                if budget < 0:
                    return kinds, _never
                seen.append(entry.name)
                if entry.name in wanted:
                    with contextlib.suppress(OSError):  # gone meanwhile: looked at alone
                        kinds[entry.name] = entry.is_symlink()
                    if len(kinds) == len(wanted):
                        return kinds, _never  # every name found: none is missing
    except (FileNotFoundError, NotADirectoryError):
        return kinds, _always  # no such folder: nothing is in it
    except OSError:
        return kinds, _never  # not listable: each name is looked at alone
    # A case-insensitive disk finds "Backup" under "backup": only a name that no entry
    # matches when folded is surely missing.
    folded = {_fold(name) for name in seen}
    return kinds, lambda name: _fold(name) not in folded


def _fold(name: str) -> str:
    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", name).casefold())


def _always(name: str) -> bool:
    return True


def _never(name: str) -> bool:
    return False


def _step(real_parent: str, name: str) -> str:
    """The real form of real_parent/name (real_parent has no symlinks left)."""
    full = f"{real_parent}{name}" if real_parent.endswith("/") else f"{real_parent}/{name}"
    try:
        info = os.lstat(full)
    except OSError:
        return full  # missing (or unreadable): kept as written, as realpath does
    return os.path.realpath(full) if stat.S_ISLNK(info.st_mode) else full


def relation(a: str, b: str) -> str | None:
    """"equal", "inside" (a is in b), "contains" (b is in a), or None: plain path logic."""
    if a == b:
        return "equal"
    if a.startswith(b.rstrip("/") + "/"):
        return "inside"
    if b.startswith(a.rstrip("/") + "/"):
        return "contains"
    return None


def local_relation(a: str, b: str, resolver: Resolver | None = None) -> str | None:
    """How local path a lies against local path b, comparing written and real forms."""
    resolver = resolver or Resolver()
    return _forms_relation(resolver.forms(a), resolver.forms(b))


def _forms_relation(mine: tuple[str, ...], theirs: tuple[str, ...]) -> str | None:
    for x in mine:
        for y in theirs:
            found = relation(x, y)
            if found is not None:
                return found
    return None


def overlap(destination: str, other: str, engine: str = "",
            other_engine: str = "", resolver: Resolver | None = None) -> str | None:
    """How destination lies against another destination (equal, inside, contains) or None."""
    mine, theirs = local_path(destination, engine), local_path(other, other_engine)
    if mine is not None and theirs is not None:
        return local_relation(mine, theirs, resolver)
    if mine is None and theirs is None:
        return relation(destination_key(engine, destination),
                        destination_key(other_engine, other))
    return None  # a local folder and a remote repository never overlap


def owner_conflict(destination: str, others: Iterable[Owner],
                   engine: str = "") -> str | None:
    """A message naming the job whose destination overlaps this one, or None (does I/O)."""
    resolver = Resolver()  # one check: each folder is resolved once, not once per owner
    mine = local_path(destination, engine)
    mine_forms = resolver.forms(mine) if mine is not None else ()
    key = destination_key(engine, destination) if mine is None else ""
    others = list(others)
    theirs_all = [o.local for o in others]
    if mine is not None:
        resolver.prime(p for p in theirs_all if p is not None)
    near = _Near(mine_forms)
    for owner, theirs in zip(others, theirs_all, strict=True):
        # overlap(), with this destination's side worked out once
        if mine is not None and theirs is not None:
            forms = resolver.forms(theirs)
            found = _forms_relation(mine_forms, forms) if near.any(forms) else None
        elif mine is None and theirs is None:
            found = relation(key, destination_key(owner.engine, owner.destination))
        else:
            found = None  # a local folder and a remote repository never overlap
        if found is None:
            continue
        who = f"job {owner.name} (id {owner.job_id})"
        if found == "equal":
            return f"destination {destination} is used by {who}; each job needs its own"
        if found == "inside":
            return (f"destination {destination} is inside {owner.destination}, the "
                    f"destination of {who}; each job needs its own folder")
        return (f"destination {destination} contains {owner.destination}, the destination "
                f"of {who}; each job needs its own folder")
    return None


class _Near:
    """Whether relation(x, y) finds anything for some x of `mine`, in a few C calls.

    Exactly relation()'s three cases: y equals x; x starts with y (slashes stripped) and
    a slash, so y is one of x's prefixes that end before a slash; y starts with x
    (slashes stripped) and a slash. Most of a thousand owners are none of these.
    """

    def __init__(self, mine: tuple[str, ...]) -> None:
        self.equal = frozenset(mine)
        self.above = frozenset(x[:i] for x in mine for i, c in enumerate(x) if c == "/")
        self.below = tuple(x.rstrip("/") + "/" for x in mine)

    def any(self, theirs: tuple[str, ...]) -> bool:
        """Whether some y of `theirs` lies against some x of mine (equal, in, around)."""
        return any(y in self.equal or y.rstrip("/") in self.above or y.startswith(self.below)
                   for y in theirs)

"""A destination belongs to exactly one job: find another job's destination that overlaps.

Two jobs writing into one folder (or one inside the other) prune and list each other's
snapshots, so a job is refused when its destination equals, lies inside or contains
another job's. What a destination is comes from its engine (engines.registry): local
paths are compared as written (normalised) and, where they exist, with symlinks resolved,
so /backup and a symlink to it are the same place; a remote restic repository (s3:,
sftp:, rest:, ...) is compared by its normalised URL, the engine's destination key.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from engines.registry import destination_key, local_destination


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


def owners_except(jobs: Iterable[tuple[str, Mapping[str, Any]]], job_id: str | None
                  ) -> list[Owner]:
    """The owners of every job's destination but `job_id`'s (jobs as (id, spec) pairs)."""
    return [Owner.of(other, spec) for other, spec in jobs if other != job_id]


def local_path(destination: str, engine: str = "") -> str | None:
    """The local path a destination names (restic's "local:/x" too), or None for a URL."""
    path = local_destination(engine, destination)
    return str(path) if path is not None else None


def _forms(path: str) -> set[str]:
    """The ways a local path may be written: as given, and with symlinks resolved."""
    # realpath resolves the part that exists and keeps the rest as written: a
    # destination that does not exist yet still compares by its real parent.
    return {path, os.path.realpath(path)}


def relation(a: str, b: str) -> str | None:
    """"equal", "inside" (a is in b), "contains" (b is in a), or None: plain path logic."""
    if a == b:
        return "equal"
    if a.startswith(b.rstrip("/") + "/"):
        return "inside"
    if b.startswith(a.rstrip("/") + "/"):
        return "contains"
    return None


def local_relation(a: str, b: str) -> str | None:
    """How local path a lies against local path b, comparing written and real forms."""
    for x in _forms(a):
        for y in _forms(b):
            found = relation(x, y)
            if found is not None:
                return found
    return None


def overlap(destination: str, other: str, engine: str = "",
            other_engine: str = "") -> str | None:
    """How destination lies against another destination (equal, inside, contains) or None."""
    mine, theirs = local_path(destination, engine), local_path(other, other_engine)
    if mine is not None and theirs is not None:
        return local_relation(mine, theirs)
    if mine is None and theirs is None:
        return relation(destination_key(engine, destination),
                        destination_key(other_engine, other))
    return None  # a local folder and a remote repository never overlap


def owner_conflict(destination: str, others: Iterable[Owner],
                   engine: str = "") -> str | None:
    """A message naming the job whose destination overlaps this one, or None (does I/O)."""
    for owner in others:
        found = overlap(destination, owner.destination, engine, owner.engine)
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

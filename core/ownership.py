"""A destination belongs to exactly one job: find another job's destination that overlaps.

Two jobs writing into one folder (or one inside the other) prune and list each other's
snapshots, so a job is refused when its destination equals, lies inside or contains
another job's. Local paths are compared as written (normalised) and, where they exist,
with symlinks resolved, so /backup and a symlink to it are the same place. A remote
restic repository (s3:, sftp:, rest:, ...) is compared by its normalised URL.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Owner:
    """Another job's destination: who owns it, and where it is."""

    job_id: str
    name: str
    destination: str


def local_path(destination: str) -> str | None:
    """The local path a destination names (restic's "local:/x" too), or None for a URL."""
    text = destination.strip()
    if text.startswith("local:"):
        text = text[len("local:"):]
    return posixpath.normpath(text) if text.startswith("/") else None


def _url_key(destination: str) -> str:
    """A remote repository URL, normalised: scheme in lower case, no trailing slash."""
    scheme, _, rest = destination.strip().partition(":")
    return f"{scheme.lower()}:{rest.rstrip('/')}"


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


def overlap(destination: str, other: str) -> str | None:
    """How destination lies against another destination (equal, inside, contains) or None."""
    mine, theirs = local_path(destination), local_path(other)
    if mine is not None and theirs is not None:
        return local_relation(mine, theirs)
    if mine is None and theirs is None:
        return relation(_url_key(destination), _url_key(other))
    return None  # a local folder and a remote repository never overlap


def owner_conflict(destination: str, others: Iterable[Owner]) -> str | None:
    """A message naming the job whose destination overlaps this one, or None (does I/O)."""
    for owner in others:
        found = overlap(destination, owner.destination)
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

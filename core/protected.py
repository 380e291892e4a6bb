"""The server's own data directory: no job's destination and no restore may write into it.

The data directory holds the event log, the job files and the secret key. A restore that
replaces events.db (or merges a folder into jobs/) loses every job at the next start; a
destination there would prune or overwrite them. Paths are compared as written and with
symlinks resolved (core.ownership.local_relation). Every function here touches the file
system: call them off the event loop.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable

from core.ownership import local_path, local_relation

WHAT = "the server's data directory (its event log, job files and key)"
_WHERE = {"equal": "is", "inside": "is inside"}


def written_relation(target: str, place: str, written: Iterable[str]) -> str | None:
    """How a restore into target touches place, given the names it writes, or None.

    A target equal to or inside place writes into it; a target around it only when one
    of the written names (target/<name>, symlinks followed) leads to or into it.
    """
    found = local_relation(target, place)
    if found == "contains" or found is None:
        found = next((f"contains (through {name})" for name in sorted(written)
                      if local_relation(posixpath.join(target, name), place)), None)
    return found


def restore_refusal(target: str, written: Iterable[str], protected: Iterable[str]
                    ) -> str | None:
    """Why a restore writing `written` into target would change a protected folder."""
    names = list(written)
    for place in protected:
        found = written_relation(target, place, names)
        if found is not None:
            return (f"restore target {target} {_WHERE.get(found, found)} {place}, {WHAT}; "
                    "restoring there would change them: choose a folder outside it")
    return None


def destination_refusal(destination: str, protected: Iterable[str]) -> str | None:
    """Why a job's destination may not be where it is (in or around the data dir)."""
    local = local_path(destination)
    if local is None:
        return None  # a remote repository cannot touch a local folder
    for place in protected:
        found = local_relation(local, place)
        if found is not None:
            where = _WHERE.get(found, "contains")
            return (f"destination {destination} {where} {place}, {WHAT}; backups there "
                    "would change them: choose a folder outside it")
    return None

"""Moved to engines.child and engines.leftovers; kept until every importer is moved."""

from engines.child import (
    OWNER_ENV,
    GroupGuard,
    die_with_parent,
    orphans,
    owner_mark,
    process_alive,
    stop_leftover,
    stop_orphans,
    stop_orphans_on,
)

__all__ = ["OWNER_ENV", "GroupGuard", "die_with_parent", "orphans", "owner_mark",
           "process_alive", "stop_leftover", "stop_orphans", "stop_orphans_on"]

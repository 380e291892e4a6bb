"""Rebuild the YAML projections from the log into a directory (the `events replay` tool)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from events.audit import iter_events
from storage.projection import Projection

# Flush files every this many events so a huge log does not hold every change in memory
# before the first write; each flush writes each changed file once.
REPLAY_CHUNK = 200_000


def replay_into(conn: sqlite3.Connection, out_dir: Path) -> Projection:
    """Fold every event of the log into fresh projection files under out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    projection = Projection(out_dir)
    pending = 0
    for ev in iter_events(conn):
        projection.apply((ev,))
        pending += 1
        if pending >= REPLAY_CHUNK:
            projection.flush()
            pending = 0
    projection.flush()
    return projection

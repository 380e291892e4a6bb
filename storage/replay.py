"""Rebuild the YAML projections from the log into a directory (the `events replay` tool)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from events.audit import iter_events
from storage.projection import Projection


def replay_into(conn: sqlite3.Connection, out_dir: Path) -> Projection:
    """Fold every event of the log into fresh projection files under out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    projection = Projection(out_dir)
    # One flush at the end: memory grows with the number of jobs, not of events, and
    # each file is rendered and written exactly once.
    projection.apply(iter_events(conn))
    projection.flush()
    return projection

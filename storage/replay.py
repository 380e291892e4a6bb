"""Rebuild the YAML projections from the log into a directory (the `events replay` tool)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from events.types import AnyEvent, event_from_payload
from storage.projection import Projection

# The columns a fold reads (not the hash), a page at a time in seq order, as iter_events.
_SELECT = ("SELECT seq, stream, version, time, type, payload FROM events "
           "WHERE seq > ? ORDER BY seq LIMIT ?")
PAGE = 10_000
# Stored payloads are canonical JSON, decoded as StoredEvent.payload decodes them.
_decode = json.JSONDecoder().raw_decode


class _Row:
    """The fields of one row that a fold reads.

    A replay sets them again for every row instead of building a StoredEvent per row
    (a fifth of a replay's time went to that): a fold keeps values it reads, never the
    row itself, so one instance serves the whole replay.
    """

    __slots__ = ("event", "seq", "stream", "time", "version")

    def __init__(self) -> None:
        self.seq, self.stream, self.version, self.time = 0, "", 0, ""
        self.event: AnyEvent


def fold_log(conn: sqlite3.Connection, projection: Projection) -> None:
    """Fold every event of the log after projection.seq into the projection, in memory."""
    row = _Row()
    apply = projection.apply_to_stream
    since = projection.seq
    while True:
        rows = conn.execute(_SELECT, (since, PAGE)).fetchall()
        if not rows:
            return
        for seq, stream, version, time, type_name, payload in rows:
            row.seq, row.stream, row.version, row.time = seq, stream, version, time
            row.event = event_from_payload(type_name, _decode(payload)[0])
            apply(row)
        since = projection.seq = rows[-1][0]


def replay_into(conn: sqlite3.Connection, out_dir: Path) -> Projection:
    """Fold every event of the log into fresh projection files under out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    projection = Projection(out_dir)
    # Folded in memory, then each file written once at its final state (temp file,
    # fsync, rename) and the position last: memory grows with the number of jobs, not of
    # events, and a replay cut short leaves whole files and no position ahead of them.
    fold_log(conn, projection)
    projection.flush()
    return projection

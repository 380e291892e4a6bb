"""The writer's work per group commit: rows built and hashed, then one trip to SQLite's thread.

Each await on an aiosqlite connection is a round trip to its thread and back through
the event loop; BEGIN, the inserts, COMMIT and the acknowledged mark as four trips cost
more than the rows themselves, and each return can wait on the GIL behind the appenders.
`commit_rows` does all of it in one call on the connection's own thread.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Sequence

from events import sql
from events.chain import row_hash
from events.record import Row
from events.types import Event
from events.watermark import MarkWriter

# The same text as events.types.canonical_json (same encoder options), without building
# a new JSONEncoder for every event as json.dumps does with non-default options.
_canonical = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                              allow_nan=False).encode


def canonical_text(value: object) -> str:
    """Serialise as canonical_json does: sorted keys, no spaces, no NaN."""
    return _canonical(value)


def build_rows(stream: str, events: Sequence[Event], seq: int, version: int, now: str,
               prev_hash: str) -> list[Row]:
    """Rows for one append call after (seq, version), each hashed onto the one before.

    Raises TypeError or ValueError for an event that cannot be stored; a lone surrogate
    in the stream or a payload fails here too, as row_hash encodes both as UTF-8.
    """
    rows: list[Row] = []
    for ev in events:
        seq += 1
        version += 1
        payload = _canonical(ev.payload())
        type_name = ev.type_name
        prev_hash = row_hash(prev_hash, seq, stream, version, now, type_name, payload)
        rows.append((seq, stream, version, now, type_name, payload, prev_hash))
    return rows


def commit_rows(conn: sqlite3.Connection, rows: list[Row],
                mark: MarkWriter | None) -> str | None:
    """Insert rows in one transaction, then record the mark; run on the connection's thread.

    Returns why the mark could not be written (the rows are committed then), or None.
    A failed transaction is rolled back and its error raised.
    """
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(sql.INSERT_EVENT, rows)
        conn.execute("COMMIT")
    except BaseException:  # whatever failed, leave no transaction open behind it
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # the first error is the one to report
                conn.execute("ROLLBACK")
        raise
    if mark is None:
        return None
    # After the commit and before any caller hears of it: the mark never trails an ack.
    last = rows[-1]
    try:
        mark.write(last[0], last[6])
    except OSError as err:
        return str(err)
    return None

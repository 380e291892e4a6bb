"""The writer's work per group commit: rows built and hashed, then one trip to SQLite's thread.

Each await on an aiosqlite connection is a round trip to its thread and back through
the event loop; BEGIN, the inserts, COMMIT and the acknowledged mark as four trips cost
more than the rows themselves, and each return can wait on the GIL behind the appenders.
`commit_rows` does all of it in one call on the connection's own thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field

from events import sql
from events.chain import row_hash
from events.errors import ConcurrencyError, StoreError
from events.record import Row, StoredEvent
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


@dataclass
class AppendCall:
    """One caller's append, waiting in the writer's queue."""

    stream: str
    expected_version: int | None
    events: Sequence[Event]
    future: asyncio.Future[list[StoredEvent]] = field(repr=False)


# An accepted call with the events it will have stored once the batch commits.
Accepted = tuple[AppendCall, list[StoredEvent]]


def prepare(batch: list[AppendCall], last_seq: int, last_hash: str,
            committed_versions: dict[str, int], now: str) -> tuple[list[Row], list[Accepted]]:
    """Check each call's expected version and build the batch's rows after the head, every
    event of the batch stamped `now` (they are committed at once).

    A call that conflicts, or whose events cannot be stored, fails here (its future is
    given the error) and takes no seq; the others are returned with their stored events.
    """
    rows: list[Row] = []
    accepted: list[Accepted] = []
    seq, prev_hash = last_seq, last_hash
    versions: dict[str, int] = {}
    for call in batch:
        current = versions.get(call.stream)
        if current is None:
            current = committed_versions.get(call.stream, 0)
        if call.expected_version is not None and call.expected_version != current:
            call.future.set_exception(ConcurrencyError(
                f"stream {call.stream!r} is at version {current}, "
                f"expected {call.expected_version}; nothing was written"))
            continue
        try:
            # Lone surrogates survive json but not UTF-8; build_rows refuses them so
            # one bad call fails alone instead of failing the whole group.
            call_rows = build_rows(call.stream, call.events, seq, current, now, prev_hash)
        except (TypeError, ValueError) as err:
            call.future.set_exception(StoreError(f"event cannot be stored: {err}"))
            continue
        rows += call_rows
        seq, prev_hash = call_rows[-1][0], call_rows[-1][6]
        versions[call.stream] = current + len(call_rows)
        accepted.append((call, [StoredEvent.from_row(row) for row in call_rows]))
    return rows, accepted


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

"""The writer's work per group commit: rows built and hashed, then one trip to SQLite's thread.

Each await on an aiosqlite connection is a round trip to its thread and back through
the event loop; BEGIN, the inserts, COMMIT and the acknowledged mark as four trips cost
more than the rows themselves, and each return can wait on the GIL behind the appenders.
`commit_rows` does all of it in one call on the connection's own thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sqlite3
from _json import encode_basestring, make_encoder
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

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


# The C encoder behind _canonical, made once instead of on every call, and without the
# table of containers seen (a payload is a tree: a cycle ends in RecursionError, below).
_encode_chunks = make_encoder(None, json.JSONEncoder().default, encode_basestring, None, ":",
                              ",", True, False, False)

# Per event class: its field names when the instance's __dict__ is its payload (the
# inherited payload(), no __post_init__ to add attributes), else an empty set.
_PLAIN_FIELDS: dict[type[Event], frozenset[str]] = {}


def _plain_fields(cls: type[Event]) -> frozenset[str]:
    if (cls.payload is not Event.payload or hasattr(cls, "__post_init__")
            or hasattr(cls, "__slots__")):
        return frozenset()
    return frozenset(f.name for f in dataclasses.fields(cls))


# An event ready to store: its type name and its payload as canonical JSON.
Encoded = tuple[str, str]


def encode_events(events: Sequence[Event]) -> list[Encoded]:
    """Each event's type name and canonical payload text, the same text as canonical_text
    of its payload() (TypeError, ValueError: an event that cannot be stored, such as one
    holding NaN, an object json does not know, or a cycle)."""
    encoded: list[Encoded] = []
    for ev in events:
        cls = type(ev)
        names = _PLAIN_FIELDS.get(cls)
        if names is None:
            names = _PLAIN_FIELDS[cls] = _plain_fields(cls)
        # The fields read in place (payload() would copy them into a new dict first).
        fields: dict[str, Any] = ev.__dict__ if names and ev.__dict__.keys() == names \
            else ev.payload()
        try:
            text = "".join(_encode_chunks(fields, 0))
        except RecursionError as err:
            raise ValueError(f"circular reference or nesting too deep: {err}") from err
        encoded.append((ev.type_name, text))
    return encoded


def build_rows(stream: str, events: Sequence[Encoded], seq: int, version: int, now: str,
               prev_hash: str) -> list[Row]:
    """Rows for one append call after (seq, version), each hashed onto the one before.

    Raises ValueError (UnicodeEncodeError) for a lone surrogate in the stream or a
    payload: json lets it through, but row_hash encodes both as UTF-8.
    """
    rows: list[Row] = []
    for type_name, payload in events:
        seq += 1
        version += 1
        prev_hash = row_hash(prev_hash, seq, stream, version, now, type_name, payload)
        rows.append((seq, stream, version, now, type_name, payload, prev_hash))
    return rows


@dataclass(slots=True)
class AppendCall:
    """One caller's append, waiting in the writer's queue."""

    stream: str
    expected_version: int | None
    events: list[Encoded]
    future: asyncio.Future[list[StoredEvent]] = field(repr=False)


# An accepted call with the rows it will have stored once the batch commits.
Accepted = tuple[AppendCall, list[Row]]


def prepare(batch: list[AppendCall], last_seq: int, last_hash: str,
            committed_versions: dict[str, int], now: str) -> tuple[list[Row], list[Accepted]]:
    """Check each call's expected version and build the batch's rows after the head, every
    event of the batch stamped `now` (they are committed at once).

    A call that conflicts, or whose events cannot be stored, fails here (its future is
    given the error, unless its caller stopped waiting) and takes no seq; the others are
    returned with their rows.
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
            if not call.future.done():
                call.future.set_exception(ConcurrencyError(
                    f"stream {call.stream!r} is at version {current}, "
                    f"expected {call.expected_version}; nothing was written"))
            continue
        try:
            # Lone surrogates survive json but not UTF-8; build_rows refuses them so
            # one bad call fails alone instead of failing the whole group.
            call_rows = build_rows(call.stream, call.events, seq, current, now, prev_hash)
        except (TypeError, ValueError) as err:
            if not call.future.done():
                call.future.set_exception(StoreError(f"event cannot be stored: {err}"))
            continue
        rows += call_rows
        seq, prev_hash = call_rows[-1][0], call_rows[-1][6]
        versions[call.stream] = current + len(call_rows)
        accepted.append((call, call_rows))
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

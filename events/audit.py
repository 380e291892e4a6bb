"""The audit tool's reading side: verify the chain, export, tail and count, read-only."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.request import pathname2url

from events import sql
from events.chain import CHECK_PAGE, ChainFault, ChainVerifier
from events.errors import ChainBroken, LogUnreadable
from events.record import GENESIS_HASH, StoredEvent
from events.watermark import missing_events, read_mark


class LogMissing(FileNotFoundError):
    """There is no event log where one was expected."""


class LogTooNew(ValueError):
    """The log was written by a newer release than this one."""


def open_readonly(db_path: Path) -> sqlite3.Connection:
    """Open the log read-only; safe while the server is writing to it (WAL).

    A file that is not a readable SQLite database raises LogUnreadable naming it.
    """
    if not db_path.is_file():
        raise LogMissing(f"no event log at {db_path} (is --data the right directory?)")
    uri = f"file:{pathname2url(str(db_path.resolve()))}?mode=ro"
    conn = sqlite3.connect(uri, uri=True)
    try:
        conn.execute("PRAGMA busy_timeout=5000")
        found = conn.execute(sql.READ_FORMAT).fetchone()[0]
        conn.execute(sql.SELECT_HEAD).fetchone()  # the table is there and readable
    except sqlite3.DatabaseError as err:
        conn.close()
        raise LogUnreadable(db_path, err) from err
    problem = sql.format_problem(found)
    if problem is not None:
        conn.close()
        raise LogTooNew(problem)
    return conn


def iter_events(conn: sqlite3.Connection, since: int = 0,
                page: int = 10_000) -> Iterator[StoredEvent]:
    """Yield every event after `since`, oldest first, a page at a time."""
    while True:
        rows = conn.execute(sql.SELECT_SINCE, (since, page)).fetchall()
        if not rows:
            return
        for row in rows:
            yield StoredEvent.from_row(row)
        since = rows[-1][0]


@dataclass(frozen=True)
class VerifyResult:
    """What verify found: how many events were good, and the first bad one if any."""

    checked: int
    head_hash: str
    bad_seq: int | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        """Whether the whole log is intact."""
        return self.bad_seq is None


def verify(conn: sqlite3.Connection) -> VerifyResult:
    """Check seq continuity, stream versions and the hash chain; stop at the first bad row.

    sqlite3.DatabaseError (a damaged file) is left to the caller, who knows its name.
    """
    verifier = ChainVerifier(versions={})
    while True:
        rows = conn.execute(sql.SELECT_SINCE, (verifier.seq, CHECK_PAGE)).fetchall()
        if not rows:
            return VerifyResult(verifier.checked, verifier.hash)
        fault = verifier.feed(rows)
        if fault is not None:
            return VerifyResult(verifier.checked, verifier.hash, fault.seq, fault.reason)


def stats(conn: sqlite3.Connection) -> dict[str, Any]:
    """Count events by type, with the first and last time of each and of the whole log."""
    rows = conn.execute(sql.SELECT_STATS).fetchall()
    by_type = {t: {"count": n, "first": first, "last": last} for t, n, first, last in rows}
    head = conn.execute(sql.SELECT_HEAD).fetchone()
    return {
        "events": sum(v["count"] for v in by_type.values()),
        "last_seq": head[0] if head else 0,
        "first_time": min((v["first"] for v in by_type.values()), default=None),
        "last_time": max((v["last"] for v in by_type.values()), default=None),
        "by_type": by_type,
    }


def last_seq(conn: sqlite3.Connection) -> int:
    """The newest seq in the log (0 when empty)."""
    head = conn.execute(sql.SELECT_HEAD).fetchone()
    return int(head[0]) if head else 0


def chain_from(conn: sqlite3.Connection, db_path: Path, since: int) -> ChainVerifier:
    """A verifier positioned at row `since` (at most the head), its hash read from the log."""
    since = max(0, min(since, last_seq(conn)))
    verifier = ChainVerifier(since, GENESIS_HASH)
    if since > 0:
        row = conn.execute(sql.SELECT_HASH_AT, (since,)).fetchone()
        if row is None:
            raise ChainBroken(db_path, ChainFault(since, f"seq {since} is missing"))
        verifier.hash = row[0]
    return verifier


def iter_checked(conn: sqlite3.Connection, db_path: Path, verifier: ChainVerifier,
                 page: int = 10_000) -> Iterator[StoredEvent]:
    """Yield the events after the verifier's position, each checked against the row
    before it (as the server checks what it reads); ChainBroken at the first that does
    not hold. The verifier moves on with them, so a later call goes on from there."""
    while True:
        rows = conn.execute(sql.SELECT_SINCE, (verifier.seq, page)).fetchall()
        if not rows:
            return
        start = verifier.seq
        fault = verifier.feed(rows)
        for row in rows[:verifier.seq - start]:
            yield StoredEvent.from_row(row)
        if fault is not None:
            raise ChainBroken(db_path, fault)


def tail(conn: sqlite3.Connection, db_path: Path, since: int) -> Iterator[StoredEvent]:
    """The checked events after `since`."""
    for ev in iter_checked(conn, db_path, chain_from(conn, db_path, since)):
        if ev.seq > since:
            yield ev


def follow(db_path: Path, since: int, poll: float = 0.25,
           stop_after: float | None = None) -> Iterator[StoredEvent]:
    """Yield events after `since`, each checked against the chain, and keep polling for
    new ones (a separate process cannot use the server's notifier, so it polls the
    read-only log)."""
    deadline = None if stop_after is None else time.monotonic() + stop_after
    with closing(open_readonly(db_path)) as conn:
        verifier = chain_from(conn, db_path, since)
        while deadline is None or time.monotonic() < deadline:
            before = verifier.seq
            for ev in iter_checked(conn, db_path, verifier):
                if ev.seq > since:
                    yield ev
            if verifier.seq == before:
                time.sleep(poll)


def acknowledged_problem(conn: sqlite3.Connection, db_path: Path) -> str | None:
    """Whether the log lacks events it once acknowledged (see events/watermark.py)."""
    mark = read_mark(db_path)
    if mark is None:
        return None
    head = conn.execute(sql.SELECT_HEAD).fetchone()
    row = conn.execute(sql.SELECT_HASH_AT, (mark.seq,)).fetchone()
    return missing_events(mark, head[0] if head else 0, row[0] if row else None)

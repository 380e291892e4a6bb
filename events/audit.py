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
from events.record import GENESIS_HASH, StoredEvent
from events.watermark import missing_events, read_mark


class LogMissing(FileNotFoundError):
    """There is no event log where one was expected."""


class LogTooNew(ValueError):
    """The log was written by a newer release than this one."""


def open_readonly(db_path: Path) -> sqlite3.Connection:
    """Open the log read-only; safe while the server is writing to it (WAL)."""
    if not db_path.is_file():
        raise LogMissing(f"no event log at {db_path} (is --data the right directory?)")
    uri = f"file:{pathname2url(str(db_path.resolve()))}?mode=ro"
    conn = sqlite3.connect(uri, uri=True)
    conn.execute("PRAGMA busy_timeout=5000")
    problem = sql.format_problem(conn.execute(sql.READ_FORMAT).fetchone()[0])
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
    """Check seq continuity, stream versions and the hash chain; stop at the first bad row."""
    prev_hash, expected_seq, checked = GENESIS_HASH, 1, 0
    versions: dict[str, int] = {}
    for ev in iter_events(conn):
        if ev.seq != expected_seq:
            return VerifyResult(checked, prev_hash, expected_seq,
                                f"seq {expected_seq} is missing (next row is seq {ev.seq})")
        want_version = versions.get(ev.stream, 0) + 1
        if ev.version != want_version:
            return VerifyResult(checked, prev_hash, ev.seq,
                                f"stream {ev.stream!r} version {ev.version}, expected "
                                f"{want_version}")
        if ev.expected_hash(prev_hash) != ev.hash:
            return VerifyResult(checked, prev_hash, ev.seq,
                                "hash does not match its content and the chain before it")
        versions[ev.stream] = ev.version
        prev_hash, expected_seq, checked = ev.hash, ev.seq + 1, checked + 1
    return VerifyResult(checked, prev_hash)


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


def follow(db_path: Path, since: int, poll: float = 0.25,
           stop_after: float | None = None) -> Iterator[StoredEvent]:
    """Yield events after `since` and keep polling for new ones (a separate process
    cannot use the server's notifier, so it polls the read-only log)."""
    deadline = None if stop_after is None else time.monotonic() + stop_after
    with closing(open_readonly(db_path)) as conn:
        while deadline is None or time.monotonic() < deadline:
            got = False
            for ev in iter_events(conn, since):
                yield ev
                since, got = ev.seq, True
            if not got:
                time.sleep(poll)


def acknowledged_problem(conn: sqlite3.Connection, db_path: Path) -> str | None:
    """Whether the log lacks events it once acknowledged (see events/watermark.py)."""
    mark = read_mark(db_path)
    if mark is None:
        return None
    head = conn.execute(sql.SELECT_HEAD).fetchone()
    row = conn.execute(sql.SELECT_HASH_AT, (mark.seq,)).fetchone()
    return missing_events(mark, head[0] if head else 0, row[0] if row else None)

"""The acknowledged mark: the last seq (and hash) the log has confirmed to any caller.

SQLite already makes a commit durable before the store acknowledges it. This small file
next to events.db is written after each commit (not fsynced: it only has to survive the
process, and it can only lag behind the database, never run ahead of it). On open, a
log that ends before the mark lost acknowledged events: a truncated -wal file, an older
copy of events.db put back. That is refused loudly instead of served as if complete.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Mark:
    """The last acknowledged seq and its hash."""

    seq: int
    hash: str


def mark_path(db_path: Path) -> Path:
    """Where the mark of a log lives (events.db -> events.db-acked)."""
    return db_path.with_name(db_path.name + "-acked")


def read_mark(db_path: Path) -> Mark | None:
    """The mark, or None when there is none (a new log) or it cannot be read."""
    try:
        seq, digest = mark_path(db_path).read_text().split()
        return Mark(int(seq), digest)
    except (OSError, ValueError):
        return None


def missing_events(mark: Mark | None, last_seq: int, hash_at_mark: str | None) -> str | None:
    """Why the log does not hold what was acknowledged, or None when it does."""
    if mark is None or mark.seq == 0:
        return None
    if last_seq < mark.seq:
        first = last_seq + 1
        span = f"seq {first} is" if first == mark.seq else f"seqs {first} to {mark.seq} are"
        return (f"the event log ends at seq {last_seq} but events up to seq {mark.seq} were "
                f"acknowledged: {span} missing (lost from a truncated events.db-wal, or "
                "an older copy of events.db was put back)")
    if hash_at_mark is not None and hash_at_mark != mark.hash:
        return (f"the event at seq {mark.seq} is not the one that was acknowledged: the "
                "log was replaced by a different history")
    return None


class MarkWriter:
    """Keeps the mark file current after each commit (a pwrite, no fsync)."""

    def __init__(self, db_path: Path) -> None:
        self._fd = os.open(mark_path(db_path), os.O_WRONLY | os.O_CREAT, 0o600)

    def write(self, seq: int, digest: str) -> None:
        """Record the last acknowledged event (fixed width, so one write replaces it)."""
        os.pwrite(self._fd, f"{seq:020d} {digest}\n".encode(), 0)

    def close(self) -> None:
        """Close the file."""
        os.close(self._fd)

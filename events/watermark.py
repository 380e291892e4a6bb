"""The acknowledged mark: the last seq (and hash) the log has confirmed to any caller.

SQLite already makes a commit durable before the store acknowledges it. This small file
next to events.db is written after each commit (not fsynced: it only has to survive the
process, and it can only lag behind the database, never run ahead of it). On open, a
log that ends before the mark lost acknowledged events: a truncated -wal file, an older
copy of events.db put back. That is refused loudly instead of served as if complete.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from events.errors import MarkUnreadable

# What MarkWriter writes: a zero-padded seq, a space, a sha256 in hex, a newline.
_MARK_RE = re.compile(rb"([0-9]{1,20}) ([0-9a-f]{64})\n?")


@dataclass(frozen=True)
class Mark:
    """The last acknowledged seq and its hash."""

    seq: int
    hash: str


def mark_path(db_path: Path) -> Path:
    """Where the mark of a log lives (events.db -> events.db-acked)."""
    return db_path.with_name(db_path.name + "-acked")


def read_mark(db_path: Path) -> Mark | None:
    """The mark, or None when there is none yet; MarkUnreadable when it cannot be trusted.

    An empty (or all-zero) file is "none yet": the file is created when the log opens and
    first written after a commit, and it is not fsynced, so a crash or a power cut can
    leave it so; SQLite, which is fsynced, still holds every acknowledged event then.
    Anything else that is not a mark (a directory in its place, no permission, garbage)
    is refused: ignoring it would switch off the check it exists for.
    """
    path = mark_path(db_path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise MarkUnreadable(path, err.strerror or str(err)) from err
    if not raw.strip(b"\0"):
        return None
    match = _MARK_RE.fullmatch(raw)
    if match is None:
        shown = raw[:40].decode("ascii", "backslashreplace")
        raise MarkUnreadable(path, f"it holds {shown!r}, not a seq and a hash")
    return Mark(int(match[1]), match[2].decode())


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
        data = f"{seq:020d} {digest}\n".encode()
        if os.pwrite(self._fd, data, 0) != len(data):
            raise OSError(f"short write to {self._fd}")

    def close(self) -> None:
        """Close the file."""
        os.close(self._fd)

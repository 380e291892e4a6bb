"""What the event log can refuse or fail at, each with a message a person can act on.

events/store.py re-exports these; server/errors.py maps StoreClosed (and so everything
that cannot take writes now) to 503 and ConcurrencyError to 409.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # chain.py raises LogUnreadable from here
    from events.chain import ChainFault


class StoreError(Exception):
    """The event log could not do what was asked."""


class ConcurrencyError(StoreError):
    """A stream was not at the version the caller expected; nothing was written."""


class EventsMissing(StoreError):
    """The log lacks events it acknowledged earlier; it is not opened as if complete."""


class LogTooNew(StoreError):
    """The log was written by a newer release; it is not opened."""


class StoreClosed(StoreError):
    """The store is closed (the server is shutting down); nothing was written."""


class StoreUnavailable(StoreClosed):
    """The log takes no writes right now; nothing was written (HTTP 503).

    A subclass of StoreClosed so that every caller that already treats a closed log as
    "try again later" (the API answers 503) treats these the same way.
    """


class WriteFailed(StoreUnavailable):
    """SQLite could not write the batch (disk full, I/O error); nothing of it was kept."""


class ChainBroken(StoreUnavailable):
    """A row of the log does not match its hash chain: the log was altered or damaged."""

    def __init__(self, db_path: Path, fault: ChainFault) -> None:
        self.seq = fault.seq
        self.reason = fault.reason
        super().__init__(chain_broken_message(db_path, fault))


def chain_broken_message(db_path: Path, fault: ChainFault) -> str:
    """Name the seq, say what is wrong with it and what to do."""
    return (f"the event log {db_path} is damaged at seq {fault.seq}: {fault.reason}. "
            "Nothing more is recorded in a log that cannot be trusted. Stop the server, run "
            "`backup-manager events verify` to see the damage, and put back events.db "
            "(with its -wal file) from a backup taken before it (`backup-manager events "
            "backup`); events before that seq are intact and can be exported with "
            "`backup-manager events export`")


class LogUnreadable(StoreError):
    """The file is not a readable SQLite event log (garbage bytes, truncated, not SQLite)."""

    def __init__(self, db_path: Path, err: BaseException) -> None:
        super().__init__(
            f"the event log {db_path} cannot be read: {err}. It is damaged or not an "
            "event log. Stop here and put back a copy (from `backup-manager events "
            "backup`, or your backup of the data directory); to start with an empty log "
            "instead, move the file (with its -wal and -shm files) out of the way")


class MarkUnreadable(StoreError):
    """The acknowledged mark (events.db-acked) exists but cannot be read or trusted."""

    def __init__(self, mark: Path, why: str) -> None:
        super().__init__(
            f"{mark} (the mark of the last acknowledged event) cannot be read: {why}. "
            "Without it a log that lost acknowledged events would look complete, so it is "
            "not ignored. If events.db is known to be good (`backup-manager events "
            f"verify`), move {mark.name} out of the way and start again; a new mark is "
            "written with the next event")

"""The SQLite event store: one serialized writer with group commit, and lock-free readers."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import time
from pathlib import Path
from typing import NoReturn

import aiosqlite

from events import sql
from events.chain import (
    ChainCheck,
    ChainFault,
    readonly_connection,
)
from events.errors import (
    ChainBroken,
    ConcurrencyError,
    EventsMissing,
    LogTooNew,
    LogUnreadable,
    MarkUnreadable,
    StoreClosed,
    StoreError,
    StoreUnavailable,
    WriteFailed,
)
from events.notifier import Notifier
from events.reading import LogReading
from events.record import GENESIS_HASH, utc_now_iso
from events.watermark import MarkWriter, mark_path, missing_events, read_mark
from events.writer import MAX_BATCH_CALLS, LogWriting

__all__ = ["MAX_BATCH_CALLS", "ChainBroken", "ConcurrencyError", "EventStore", "EventsMissing",
           "LogTooNew", "LogUnreadable", "MarkUnreadable", "StoreClosed", "StoreError",
           "StoreUnavailable", "WriteFailed"]

log = logging.getLogger(__name__)

# The newest this many events have their chain checked before the store opens (10,000
# rows: about 0.05 s), so a break in the tail refuses the start; a longer log's whole chain
# is checked in the background, and /healthz says "checking" until it has passed.
FOREGROUND_CHECK_MAX = 10_000


class EventStore(LogReading, LogWriting):
    """Append-only event log in SQLite (WAL, synchronous=FULL) with a hash chain."""

    def __init__(self, path: Path, writer: aiosqlite.Connection,
                 reader: aiosqlite.Connection) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader
        self.notifier = Notifier()
        self._init_writing()
        self._versions: dict[str, int] = {}
        self._last_seq = 0
        self._last_hash = GENESIS_HASH
        self._closed = False
        self._writer_task: asyncio.Task[None] | None = None
        self._check_task: asyncio.Task[None] | None = None
        self._mark: MarkWriter | None = None
        self.commits = 0
        # The check of the whole chain at open, and the first fault found by it or by a
        # read since: once set, the log is not trusted and every append is refused.
        self.chain = ChainCheck()
        self.chain_fault: ChainFault | None = None
        # Why the last write failed (disk full...) and since when; None once a commit
        # succeeds again. The runner retries what it must record while this is set.
        self.write_error: str | None = None
        self.write_error_since: str | None = None

    # --- life cycle -------------------------------------------------------------

    @classmethod
    async def open(cls, path: Path, foreground_check_max: int = FOREGROUND_CHECK_MAX,
                   check_later: bool = False) -> EventStore:
        """Open (creating if needed) the log at `path`, check it, and start its writer.

        The newest `foreground_check_max` events have their chain checked here (else
        ChainBroken), a longer log's whole chain in the background (`chain`), from now or
        (`check_later`) start_chain_check(); LogUnreadable, MarkUnreadable: unreadable."""
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return await cls._open(path, foreground_check_max, check_later)
        except sqlite3.DatabaseError as err:
            # Garbage bytes, a truncated file, a directory: say which file, not a traceback.
            raise LogUnreadable(path, err) from err

    @classmethod
    async def _open(cls, path: Path, foreground_check_max: int, check_later: bool
                    ) -> EventStore:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a batch is exactly
        # one transaction and nothing is committed behind our back.
        writer = await aiosqlite.connect(path, isolation_level=None)
        try:
            async with writer.execute(sql.READ_FORMAT) as cur:
                row = await cur.fetchone()
            problem = sql.format_problem(row[0] if row else 0)
            if problem is not None:
                raise LogTooNew(problem)
            for pragma in sql.PRAGMAS_WRITER:
                await writer.execute(pragma)
            await writer.executescript(sql.SCHEMA + sql.WRITE_FORMAT + ";")
            reader = await aiosqlite.connect(path, isolation_level=None)
        except BaseException:
            await writer.close()
            raise
        store = cls(path, writer, reader)
        try:
            for pragma in sql.PRAGMAS_READER:
                await reader.execute(pragma)
            await store._load_heads()
            await store._check_mark()
            store.chain = ChainCheck(upto=store._last_seq)
            if store._last_seq <= foreground_check_max:
                await store._check_chain()
            elif foreground_check_max > 0:  # the newest rows now, all of them below
                store.chain_fault = await asyncio.to_thread(store.chain.run_tail, path,
                                                            foreground_check_max)
            if store.chain_fault is not None:
                raise ChainBroken(path, store.chain_fault)
            try:
                store._mark = await asyncio.to_thread(MarkWriter, path)
            except OSError as err:
                raise MarkUnreadable(mark_path(path),
                                     f"it cannot be written: {err.strerror or err}") from err
        except BaseException:
            await reader.close()
            await writer.close()
            raise
        store.notifier.last_seq = store._last_seq
        store._writer_task = asyncio.create_task(store._write_loop(), name="event-writer")
        if not check_later:
            store.start_chain_check()
        return store

    def start_chain_check(self) -> None:
        """Start the background walk of the whole chain, if it is still to be done."""
        if self.chain.state == "pending" and self._check_task is None and not self._closed:
            self.chain.pause = 1.0  # rest as long as it checks: the server stays responsive
            self._check_task = asyncio.create_task(self._check_chain(), name="chain-check")

    async def _check_chain(self) -> None:
        """Check the chain up to the head at open, on a connection of its own (a thread)."""
        try:
            fault = await asyncio.to_thread(self.chain.run,
                                            functools.partial(readonly_connection, self.path),
                                            self.path, time.perf_counter)
        except LogUnreadable as err:
            if self._writer_task is None:
                raise  # still opening: refuse to open
            log.error("%s", err)
            fault = self.chain.fault
        except Exception:
            if self._writer_task is None:
                raise
            log.exception("the check of the event log's hash chain failed")
            self.chain.state = "error"
            return
        if fault is not None:
            self._chain_failed(fault)
        elif self.chain.state == "passed":
            log.info("event log %s: hash chain of %d events intact (checked in %.2f s)",
                     self.path, self.chain.checked, self.chain.seconds)

    async def wait_chain_check(self) -> None:
        """Wait until the start-up check of the chain has finished (see `chain.state`)."""
        self.start_chain_check()
        if self._check_task is not None:
            await asyncio.shield(self._check_task)

    def _chain_failed(self, fault: ChainFault) -> None:
        """Stop trusting the log: appends are refused from now on; say it once."""
        if self.chain_fault is None:
            self.chain_fault = fault
            if self._writer_task is not None:  # running: nobody else will say it
                log.error("%s", ChainBroken(self.path, fault))

    async def close(self) -> None:
        """Write every append already accepted, then close the database."""
        if self._closed:
            return
        self._closed = True
        self.chain.stop()
        if self._check_task is not None:
            await self._check_task
        self._stop_writing()
        if self._writer_task is not None:
            await self._writer_task
        self.notifier.close_all()
        await self._reader.close()
        # A final checkpoint folds the WAL into the main file so a copy of events.db
        # alone (a backup of the backup manager) holds every event.
        with contextlib.suppress(sqlite3.Error):
            await self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        await self._writer.close()
        if self._mark is not None:
            self._mark.close()

    async def _check_mark(self) -> None:
        """Refuse a log that ends before what it acknowledged (see events/watermark.py)."""
        mark = await asyncio.to_thread(read_mark, self.path)
        if mark is None:
            return
        hash_at_mark = None
        if mark.seq <= self._last_seq:
            async with self._writer.execute(sql.SELECT_HASH_AT, (mark.seq,)) as cur:
                row = await cur.fetchone()
            hash_at_mark = row[0] if row else None
        problem = missing_events(mark, self._last_seq, hash_at_mark)
        if problem is not None:
            raise EventsMissing(f"{problem}. Put back the events.db (with its -wal file) "
                                "from a backup, or, to accept the loss, move "
                                f"{self.path.name}-acked out of the way and start again.")

    async def _load_heads(self) -> None:
        async with self._writer.execute(sql.SELECT_HEAD) as cur:
            row = await cur.fetchone()
        self._last_seq, self._last_hash = (row[0], row[1]) if row else (0, GENESIS_HASH)
        async with self._writer.execute(sql.SELECT_STREAM_VERSIONS) as cur:
            self._versions = {stream: version for stream, version in await cur.fetchall()}

    # --- writing (events/writer.py) ----------------------------------------------

    def _now(self) -> str:
        # One clock reading per group commit, read here: tests fake this module's clock.
        return utc_now_iso()

    def _refuse_read(self, fault: ChainFault) -> NoReturn:
        self._chain_failed(fault)
        raise ChainBroken(self.path, fault)

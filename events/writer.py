"""The event store's writing side: appends queue up, one writer commits them in groups.

The writer keeps SQLite's thread busy: while one group's commit (and its fsync) runs
there, the appends that arrive are gathered on the event loop, and the moment it ends the
next group is built on the committed head and sent, before the finished group's callers
are answered. A group is built only on a committed head, so a failed commit never leaves
a later group chained to rows that are not there.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import aiosqlite

from events.batch import Accepted, AppendCall, commit_rows, encode_events, prepare
from events.chain import ChainFault
from events.errors import (
    ChainBroken,
    ConcurrencyError,
    StoreClosed,
    StoreError,
    WriteFailed,
)
from events.notifier import Notifier
from events.record import Row, StoredEvent, utc_now_iso
from events.types import Event
from events.watermark import MarkWriter

log = logging.getLogger("events.store")

T = TypeVar("T")

# How many append calls one transaction may carry. Large enough that 100 concurrent
# appenders share one fsync, small enough that one commit stays short.
MAX_BATCH_CALLS = 512


@dataclass
class Flight:
    """A group whose commit was sent to SQLite's thread, with what it will store."""

    commit: asyncio.Future[str | None]
    rows: list[Row]
    accepted: list[Accepted]


class LogWriting(ABC):
    """Appends for EventStore (mixed in): it gives the connection, the heads and the mark."""

    path: Path
    notifier: Notifier
    commits: int
    chain_fault: ChainFault | None
    write_error: str | None
    write_error_since: str | None
    _writer: aiosqlite.Connection
    _mark: MarkWriter | None
    _versions: dict[str, int]
    _last_seq: int
    _last_hash: str
    _closed: bool

    def _init_writing(self) -> None:
        """Set up the queue of calls waiting for the writer."""
        self._pending: deque[AppendCall] = deque()
        # Set when the writer waits for a call (None while it works).
        self._idle: asyncio.Future[None] | None = None
        self._stopping = False

    @abstractmethod
    def _now(self) -> str:
        """The time every event of the next group is stamped with."""

    @abstractmethod
    async def _load_heads(self) -> None:
        """Read the head and each stream's version from the database again."""

    async def append(self, stream: str, expected_version: int | None,
                     events: Sequence[Event]) -> list[StoredEvent]:
        """Append events to a stream atomically and return them as stored.

        `expected_version` is the stream's current version as the caller saw it (0 for
        a new stream), or None to append whatever the version is. A mismatch raises
        ConcurrencyError and writes nothing.
        """
        if self._closed:
            raise StoreClosed("the event log is closed")
        if self.chain_fault is not None:
            raise ChainBroken(self.path, self.chain_fault)
        if not events:
            return []
        try:
            # Encoded here, in the caller's turn, while an earlier group's commit runs:
            # the writer's own work between two commits is then only the hashing.
            encoded = encode_events(events)
        except (TypeError, ValueError) as err:
            raise StoreError(f"event cannot be stored: {err}") from err
        future: asyncio.Future[list[StoredEvent]] = asyncio.get_running_loop().create_future()
        self._pending.append(AppendCall(stream, expected_version, encoded, future))
        self._wake()
        # A caller cancelled now cancels only its wait: the call stays queued and is
        # written (or fails) as one; the writer answers only futures still waiting.
        return await future

    def stream_version(self, stream: str) -> int:
        """Return a stream's current version as committed (0 if it has no events)."""
        return self._versions.get(stream, 0)

    @property
    def last_seq(self) -> int:
        """The seq of the newest committed event (0 for an empty log)."""
        return self._last_seq

    def _wake(self) -> None:
        idle = self._idle
        if idle is not None and not idle.done():
            idle.set_result(None)

    def _stop_writing(self) -> None:
        """Let the writer end once every call already queued is written."""
        self._stopping = True
        self._wake()

    async def _write_loop(self) -> None:
        flight: Flight | None = None
        while True:
            if flight is None:
                if not self._pending:
                    if self._stopping:
                        break
                    self._idle = asyncio.get_running_loop().create_future()
                    await self._idle
                    self._idle = None
                    continue
                flight = self._take_off(self._take())
                continue
            landed = await self._land(flight)
            # The next group goes to SQLite's thread before this one's callers are
            # answered: their wake-ups, and the next appends, run beside its commit.
            nxt = self._take_off(self._take()) if self._pending else None
            if landed:
                self._acknowledge(flight)
            flight = nxt
        # Fail whatever arrived after close was asked for.
        while self._pending:
            _fail(self._pending.popleft(), StoreClosed("the event log is closed"))

    def _take(self) -> list[AppendCall]:
        pending = self._pending
        count = min(len(pending), MAX_BATCH_CALLS)
        return [pending.popleft() for _ in range(count)]

    def _take_off(self, batch: list[AppendCall]) -> Flight | None:
        """Build a group's rows on the committed head and send its commit (None: every
        call in it failed here: a version conflict, an event that cannot be stored)."""
        try:
            if self.chain_fault is not None:  # found broken after these were queued
                raise ChainBroken(self.path, self.chain_fault)
            rows, accepted = prepare(batch, self._last_seq, self._last_hash, self._versions,
                                     self._now())
            if not rows:
                return None
            commit = self._on_writer_thread(
                functools.partial(commit_rows, rows=rows, mark=self._mark))
        except ChainBroken as err:
            for call in batch:
                _fail(call, err)
            return None
        except Exception as err:  # keep the writer alive: fail the calls, not the log
            self._batch_failed(batch, err)
            return None
        return Flight(commit, rows, accepted)

    async def _land(self, flight: Flight) -> bool:
        """Wait for a group's commit; True when it is committed (heads moved on).

        A commit the database refused is retried call by call before this returns."""
        try:
            mark_error = await flight.commit
        except sqlite3.Error as err:
            try:
                await self._commit_refused(flight.accepted, err)
            except Exception as reload_err:  # the heads cannot be read back (a damaged
                # file, a failing disk): fail the calls, and keep the writer alive for
                # the appends after them, which fail or succeed on their own.
                self._batch_failed([call for call, _ in flight.accepted], reload_err)
            return False
        except Exception as err:
            self._batch_failed([call for call, _ in flight.accepted], err)
            return False
        self.commits += 1
        if self.write_error is not None:
            log.info("event log %s writable again (failing since %s)", self.path,
                     self.write_error_since)
            self.write_error = self.write_error_since = None
        if mark_error is not None:  # the events are committed; only the check is weaker
            log.warning("cannot record the acknowledged seq: %s", mark_error)
        versions = self._versions
        for call, call_rows in flight.accepted:
            versions[call.stream] = call_rows[-1][2]
        last = flight.rows[-1]
        self._last_seq, self._last_hash = last[0], last[6]
        return True

    def _acknowledge(self, flight: Flight) -> None:
        """Answer a committed group's callers, then tell the notifier, in seq order."""
        committed: list[StoredEvent] = []
        for call, call_rows in flight.accepted:
            stored = [StoredEvent(*row) for row in call_rows]
            committed += stored
            if not call.future.done():
                call.future.set_result(stored)
        self.notifier.publish(committed)

    async def _write_batch(self, batch: list[AppendCall]) -> None:
        """Write one group and wait for it (the path of a retry, one call at a time)."""
        flight = self._take_off(batch)
        if flight is not None and await self._land(flight):
            self._acknowledge(flight)

    async def _commit_refused(self, accepted: list[Accepted], err: sqlite3.Error) -> None:
        # Someone else wrote to the file (another process), or the disk failed: our
        # cached heads may be stale. Reload them, then give each call its own
        # transaction so one bad call cannot take the others down with it.
        await self._load_heads()
        if len(accepted) == 1:
            call = accepted[0][0]
            message = f"append to {call.stream!r} failed, nothing was written: {err}"
            if isinstance(err, sqlite3.IntegrityError):
                _fail(call, ConcurrencyError(message))
            else:
                self._write_failed(err)
                _fail(call, WriteFailed(message))
            return
        for call, _ in accepted:
            await self._write_batch([call])

    def _batch_failed(self, batch: list[AppendCall], err: Exception) -> None:
        log.error("event log write failed", exc_info=err)
        self._write_failed(err)
        for call in batch:
            _fail(call, WriteFailed(f"event log write failed, nothing was written: {err}"))

    def _on_writer_thread(self, work: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Queue `work` with the writer's connection to its own thread now: one round trip."""
        # aiosqlite has no public way to run several statements in one trip. Its _execute
        # puts (future, function) on the thread's queue only once a task first runs it (two
        # more turns of the loop per commit); the same pair is put here at once.
        writer = self._writer
        conn = writer._connection
        if not writer._running or conn is None:
            raise ValueError("Connection closed")  # as aiosqlite's _execute says
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        writer._tx.put_nowait((future, lambda: work(conn)))
        return future

    def _write_failed(self, err: BaseException) -> None:
        """Remember that the log cannot be written, and since when (for /healthz)."""
        if self.write_error is None:
            self.write_error_since = utc_now_iso()
            log.error("cannot write to the event log %s: %s", self.path, err)
        self.write_error = f"cannot write to the event log {self.path}: {err}"


def _fail(call: AppendCall, err: BaseException) -> None:
    """Give a call its error, unless its caller stopped waiting (cancelled)."""
    if not call.future.done():
        call.future.set_exception(err)

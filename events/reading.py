"""The event store's reading side: rows are checked against the chain as they are read."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from typing import NoReturn

import aiosqlite

from events import sql
from events.chain import ChainFault, check_linked, check_page
from events.record import Row, StoredEvent


class LogReading(ABC):
    """Reads for EventStore (mixed in): it gives the reader connection, the head, and
    what to do when a row does not hold (stop trusting the log, raise ChainBroken)."""

    _reader: aiosqlite.Connection
    _last_seq: int

    @abstractmethod
    def _refuse_read(self, fault: ChainFault) -> NoReturn:
        """Stop trusting the log and raise ChainBroken (EventStore decides how)."""

    async def read(self, since: int = 0, limit: int = 1000, until: int | None = None,
                   verify: bool = True) -> list[StoredEvent]:
        """Return up to `limit` events with seq > since (and <= until), in order.

        Each row is checked against the row before it (seq and hash chain), so a row
        changed in the file while the server runs is refused (ChainBroken), never served.
        verify=False is for a reader of rows the start-up check covers (the replay).
        """
        if not verify:
            rows = await self._select(since, limit, until)
            return [StoredEvent.from_row(r) for r in rows]
        since = max(since, 0)  # a position below 0 (a damaged position file) is the start
        # The row at `since` comes along as the first link of the chain.
        rows = await self._select(since - 1, limit + 1, until) if since > 0 else \
            await self._select(0, limit, until)
        rows, fault = check_page(since, rows, self._last_seq)
        if fault is not None:
            self._refuse_read(fault)
        return [StoredEvent.from_row(r) for r in rows]

    async def _select(self, after: int, limit: int, until: int | None) -> list[Row]:
        params: tuple[int, ...] = (after, limit) if until is None else (after, until, limit)
        query = sql.SELECT_SINCE if until is None else sql.SELECT_SINCE_UNTIL
        async with self._reader.execute(query, params) as cur:
            return [tuple(r) for r in await cur.fetchall()]

    async def iterate(self, since: int = 0, until: int | None = None, page: int = 5000,
                      verify: bool = True) -> AsyncIterator[list[StoredEvent]]:
        """Yield pages of events after `since` (up to `until`), oldest first."""
        while True:
            events = await self.read(since, page, until, verify)
            if not events:
                return
            yield events
            since = events[-1].seq

    async def read_stream(self, stream: str, since_version: int = 0) -> list[StoredEvent]:
        """Return every event of one stream after a version, in order, each row checked
        against the hash of the row before it in the log."""
        async with self._reader.execute(sql.SELECT_STREAM_WITH_PREV,
                                        (stream, since_version)) as cur:
            rows = await cur.fetchall()
        checked, fault = check_linked(rows)
        if fault is not None:
            self._refuse_read(fault)
        return [StoredEvent.from_row(r) for r in checked]

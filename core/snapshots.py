"""Loads the state at start (a matching snapshot, then the log's tail) and keeps the
snapshot fresh: every SNAPSHOT_EVERY events or SNAPSHOT_SECONDS, and at a clean stop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from core import snapshot
from core.state import State
from core.waits import wait_a_while
from events.errors import StoreError
from events.record import StoredEvent
from events.store import EventStore

log = logging.getLogger(__name__)

T = TypeVar("T")

SNAPSHOT_EVERY = 100_000  # events folded since the last snapshot that call for a new one
SNAPSHOT_SECONDS = 600.0  # and at most this long between two, if anything happened
# Events folded on the loop between two chances for it to serve a stop signal (about
# 50-100 ms of decoding and folding each).
FOLD_PAGE = 2_000
# A state this large is moved out of the collector's way once loaded (gc.freeze): it
# lives as long as the process, and each full collection would walk it again.
FREEZE_RUNS = 10_000


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector (as it was before, after)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class StateSnapshots:
    """The state's snapshot file for one core: read at load, written as the log grows."""

    def __init__(self, store: EventStore, state: State, path: Path,
                 every_events: int = SNAPSHOT_EVERY,
                 every_seconds: float = SNAPSHOT_SECONDS) -> None:
        self.store, self.state, self.path = store, state, path
        self.every_events, self.every_seconds = every_events, every_seconds
        self.written_seq = 0  # the seq of the snapshot on disk (0: none usable)
        self.folded = 0  # events folded from the log at the last load
        self._stop = threading.Event()
        self._due: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._writing: asyncio.Future[int] | None = None

    async def _in_thread(self, func: Callable[..., T], *args: object) -> T:
        """Run blocking work in a thread that gives up (the stop flag) if we are cancelled."""
        try:
            return await asyncio.to_thread(func, *args)
        except asyncio.CancelledError:
            self._stop.set()
            raise

    # --- load -------------------------------------------------------------------------

    async def load(self) -> None:
        """Fold the state: from the snapshot if the log holds its event, then the tail."""
        # The collector paused meanwhile: building a million objects otherwise sets off
        # full collections over all of them again and again (4x the time).
        with collector_paused():
            await self._load()
        if len(self.state.runs) >= FREEZE_RUNS:
            gc.freeze()

    async def _load(self) -> None:
        started = time.perf_counter()
        loaded: snapshot.Loaded | None = None
        try:
            loaded = await self._in_thread(snapshot.read, self.path, self._stop)
        except snapshot.SnapshotUnusable as err:
            log.warning("state snapshot %s not used (%s); replaying the whole log",
                        self.path, err)
        except snapshot.SnapshotStopped:
            raise asyncio.CancelledError() from None
        if loaded is not None and await self._matches(loaded):
            self.state.take_over(loaded.state)
            self.written_seq = loaded.seq
        self.folded = 0
        # Nothing appends before start, so the tail read here is all there is.
        async for page in self.store.iterate(since=self.state.seq, page=FOLD_PAGE,
                                             verify=False):
            self.state.apply_all(page)
            self.folded += len(page)
            await asyncio.sleep(0)  # a stop signal is served between two pages
        log.info("state at seq %d: %s, %d events folded from the log, in %.2f s",
                 self.state.seq, f"snapshot of seq {self.written_seq}" if self.written_seq
                 else "no snapshot", self.folded, time.perf_counter() - started)

    async def _matches(self, loaded: snapshot.Loaded) -> bool:
        """Whether the log holds the very event the snapshot was taken at."""
        if loaded.seq > self.store.last_seq:
            why = f"it is of seq {loaded.seq}, the log ends at {self.store.last_seq}"
        else:
            rows = await self.store.read(since=loaded.seq - 1, limit=1, verify=False)
            if rows and rows[0].seq == loaded.seq and rows[0].hash == loaded.hash:
                return True
            why = f"the log holds another event at seq {loaded.seq}"
        log.warning("state snapshot %s not used (%s); replaying the whole log", self.path,
                    why)
        return False

    # --- keep -------------------------------------------------------------------------

    def start(self) -> None:
        """Write snapshots from now on (at once if the load folded many events)."""
        self._due = asyncio.Event()
        if self.folded >= self.every_events or (self.folded and not self.written_seq):
            self._due.set()
        self.store.notifier.add_listener(self._on_events)
        self._task = asyncio.create_task(self._keep(), name="state-snapshots")

    def _on_events(self, events: Sequence[StoredEvent]) -> None:
        # The notifier keeps its listeners to the end: after stop this does nothing.
        if self._due is not None and not self._stop.is_set() and \
                self.state.seq - self.written_seq >= self.every_events:
            self._due.set()

    async def _keep(self) -> None:
        assert self._due is not None
        while True:
            await wait_a_while(self._due, self.every_seconds)
            self._due.clear()
            await self.write()

    async def write(self) -> bool:
        """Write a snapshot of the state now, unless nothing changed since the last one."""
        await self._wait_writing()
        seq = self.state.seq
        if seq <= self.written_seq or self.store.chain_fault is not None:
            return False
        with collector_paused():  # a copy of every run: no full collection half-way
            captured = snapshot.capture(self.state)  # on the loop, in one go: consistent
        try:
            # A checked read: the hash recorded is one the chain vouches for.
            rows = await self.store.read(since=seq - 1, limit=1)
            if not rows or rows[0].seq != seq:
                return False
            # Shielded, and kept: a keeper cancelled meanwhile leaves the write going,
            # and stop() waits for it before writing its own.
            self._writing = writing = asyncio.ensure_future(asyncio.to_thread(
                snapshot.write, self.path, captured, rows[0].hash))
            size = await asyncio.shield(writing)
        except (OSError, StoreError) as err:
            log.warning("cannot write the state snapshot %s: %s", self.path, err)
            return False
        self._writing = None
        self.written_seq = seq
        log.info("state snapshot at seq %d written (%.1f MB)", seq, size / 1e6)
        return True

    async def stop(self, final: bool) -> None:
        """Stop writing; with `final`, write one last snapshot of the state as it is."""
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._wait_writing()
        if final:
            await self.write()

    async def _wait_writing(self) -> None:
        """Let a write under way finish (it is atomic; its outcome is logged by write)."""
        if self._writing is not None:
            with contextlib.suppress(Exception):
                await self._writing
            self._writing = None

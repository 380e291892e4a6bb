"""Keeps the YAML projections up to date with the log: catch up on start, then follow."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from pathlib import Path

from events.notifier import Subscription
from events.record import StoredEvent
from events.store import EventStore
from storage.projection import Projection

log = logging.getLogger(__name__)

# Events folded between two flushes while catching up; files are written once per chunk,
# not once per event, which is what makes a rebuild of a large log fast.
CATCH_UP_CHUNK = 500_000
# Events folded between two looks at the stop flag: a stop asked during a catch-up of a
# million events is seen within milliseconds.
STOP_CHECK_EVERY = 1_000
# Backoff between attempts when the files cannot be written (seconds).
RETRY_FIRST, RETRY_MAX = 0.25, 30.0


class Projector:
    """Folds committed events into YAML files off the event loop and records its position."""

    def __init__(self, store: EventStore, root: Path, repair_interval: float = 30.0) -> None:
        self.store = store
        self.repair_interval = repair_interval
        self.root = root
        self.projection = Projection(root)
        self._task: asyncio.Task[None] | None = None
        self._sub: Subscription | None = None
        self.error: BaseException | None = None
        # Set by stop(): the folding thread looks at it every STOP_CHECK_EVERY events.
        self._stopping = threading.Event()
        self._starting: asyncio.Event | None = None
        # Whether a stop cut the start-up catch-up short (the files then stay at their
        # old position, consistent, and the next start catches up from there).
        self.interrupted = False

    @property
    def seq(self) -> int:
        """The last seq whose effects are in the files."""
        return self.projection.flushed_seq

    @property
    def lag(self) -> int:
        """How many committed events are not in the files yet."""
        return max(0, self.store.last_seq - self.projection.flushed_seq)

    @property
    def catching_up(self) -> bool:
        """Whether start() is still loading the files and catching up (the server serves
        meanwhile; the files trail the log until it is done)."""
        return self._starting is not None and not self._starting.is_set()

    @property
    def healthy(self) -> bool:
        """Whether the projector is catching up or following, and its last write succeeded."""
        if self.error is not None:
            return False
        return self.catching_up or (self._task is not None and not self._task.done())

    async def start(self) -> None:
        """Load the files, rebuild any that were damaged, catch up, then follow the log.

        A stop() while this runs ends the catch-up within milliseconds: start() then
        returns without following (see `interrupted`), leaving the files as they were.
        """
        if self._stopping.is_set():  # stopped before it started
            return
        self._starting = asyncio.Event()
        try:
            await self._start()
        finally:
            self._starting.set()

    async def _start(self) -> None:
        projection, broken = await asyncio.to_thread(Projection.load, self.root,
                                                     self._stopping.is_set)
        if self._stopping.is_set():  # the load may have ended early: use none of it
            self.interrupted = True
            return
        if projection.seq > self.store.last_seq:
            # Files written from events this log does not have (a position file edited,
            # or a log put back from an older copy): trust none of them, rebuild all.
            log.warning("projections under %s claim seq %d but the event log ends at %d; "
                        "rebuilding every file from the log", self.root, projection.seq,
                        self.store.last_seq)
            projection, broken = Projection(self.root), set()
            await asyncio.to_thread(projection.mark_all_dirty)
        self.projection = projection
        for stream in sorted(broken):
            projection.reset_stream(stream)
            events = [e for e in await self.store.read_stream(stream) if e.seq <= projection.seq]
            for ev in events:
                projection.apply_to_stream(ev)
        # Subscribe before catching up so nothing committed meanwhile is missed.
        self._sub = self.store.notifier.subscribe(limit=1)
        try:
            await self._catch_up(stoppable=True)
        except OSError as err:
            # The server still starts (the log is the source of truth); the follow loop
            # retries, and /healthz says what is wrong meanwhile.
            log.error("cannot write projections under %s: %s; will retry", self.root, err)
            self.error = err
        if self._stopping.is_set():
            self.interrupted = True
            self._sub.close()
            log.info("projector stopped during its catch-up at seq %d; the files stay at "
                     "seq %d", self.projection.seq, self.projection.flushed_seq)
            return
        self._task = asyncio.create_task(self._follow(self._sub), name="projector")

    def _fold(self, events: list[StoredEvent], stoppable: bool) -> bool:
        """Fold a page (in a thread), looking at the stop flag often; False once stopped."""
        for start in range(0, len(events), STOP_CHECK_EVERY):
            if stoppable and self._stopping.is_set():
                return False
            self.projection.apply(events[start:start + STOP_CHECK_EVERY])
        return True

    async def _catch_up(self, stoppable: bool = False) -> None:
        """Fold what the files lack and write them; `stoppable`: give up when stop() is
        called (the files are left at their last flush, never half-written)."""
        pending = 0
        try:
            async for page in self.store.iterate(since=self.projection.seq):
                # Folded off the event loop: a page of a long catch-up takes tens of ms.
                if not await asyncio.to_thread(self._fold, page, stoppable):
                    return
                pending += len(page)
                if pending >= CATCH_UP_CHUNK:
                    await asyncio.to_thread(self.projection.flush)
                    pending = 0
                if stoppable and self._stopping.is_set():
                    return
        except asyncio.CancelledError:
            self._stopping.set()  # the folding thread stops at its next look
            raise
        if self.projection.dirty or self.projection.seq != self.projection.flushed_seq:
            await asyncio.to_thread(self.projection.flush)

    async def _follow(self, sub: Subscription) -> None:
        delay = RETRY_FIRST
        with sub:
            while not sub.closed:
                # The subscription only wakes us; the log itself is read, so a burst of
                # commits costs one read and one flush, and nothing can be dropped.
                try:
                    if self.error is None:
                        try:
                            async with asyncio.timeout(self.repair_interval):
                                await sub.wait_for_news()
                        except TimeoutError:
                            # Quiet for a while: check that nobody edited or removed a
                            # file meanwhile, and put back what the log says.
                            await asyncio.to_thread(self.projection.repair)
                            continue
                    await self._catch_up()
                except Exception as err:
                    # Disk full or a permission problem: the log is intact, so report
                    # unhealthy and retry with backoff instead of giving up for good.
                    if self.error is None:
                        log.exception("projector cannot write %s; retrying", self.root)
                    self.error = err
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await sub.wait_for_news()  # returns early on stop
                    delay = min(delay * 2, RETRY_MAX)
                else:
                    if self.error is not None:
                        log.warning("projector recovered; files under %s are current",
                                    self.root)
                    self.error, delay = None, RETRY_FIRST

    async def stop(self) -> None:
        """Stop following and flush everything committed so far.

        Called while start() is still catching up, it ends that catch-up at once (the
        folding thread sees the flag within STOP_CHECK_EVERY events) and waits for
        start() to return; the files then stay at their last flush, with nothing more.
        Called before start(), it does nothing, and a later start() returns at once.
        """
        self._stopping.set()
        if self._starting is None:
            self.interrupted = True  # never started: nothing to flush, and none to start
            return
        if not self._starting.is_set():
            await self._starting.wait()
        if self.interrupted:
            return
        # Closing the subscription (rather than cancelling the task) lets a flush that is
        # under way in its thread finish before the final catch-up starts.
        if self._sub is not None:
            self._sub.close()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
        if self.error is None:
            await self._catch_up()

"""Build the core on an open event log and run it, with or without a web server in front.

The server (server/app.py) only adapts what is built here: it opens the log, calls
build_core, points its application keys at the Core's parts, and calls start and stop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.commands import Commands
from core.live import LiveFeed
from core.livelog import install_log_broadcast
from core.queries import Queries
from core.recovery import recover_runs, stop_leftover_programs
from core.runlog import RunLogs
from core.runner import Runner
from core.scheduler import Scheduler
from core.snapshot import SNAPSHOT_FILE
from core.snapshots import StateSnapshots
from core.state import State
from core.webhooks import WebhookSender
from events.store import EventStore
from storage.projector import Projector

log = logging.getLogger(__name__)

# How long load() waits for the YAML projector to catch up before going on without it,
# for a log of at most PROJECTOR_WAIT_EVENTS events. A larger one's files take seconds to
# load (never done within the wait): the wait would only hold back serving.
PROJECTOR_START_WAIT = 0.5
PROJECTOR_WAIT_EVENTS = 10_000


@dataclass(frozen=True)
class CoreConfig:
    """What the core needs to know: where its files live."""

    data_dir: Path

    @property
    def logs_dir(self) -> Path:
        """Where the application log and the run logs go."""
        return self.data_dir / "logs"


class Core:
    """The state, commands, queries, runner, scheduler, projector, run logs, webhooks and
    the live feed."""

    def __init__(self, store: EventStore, config: CoreConfig) -> None:
        self.store, self.config = store, config
        self.state = State()
        self.commands = Commands(store, self.state, str(config.data_dir))
        self.projector = Projector(store, config.data_dir)
        self.logs = RunLogs(config.logs_dir)
        # Progress ticks and log lines, shown live and never stored.
        self.live = LiveFeed()
        self.webhooks = WebhookSender(self.state)
        self.runner = Runner(store, self.state, self.logs, self.webhooks, self.live)
        self.commands.runner = self.runner  # delete_job(stop_runs=True) waits through it
        self.scheduler = Scheduler(self.state, self.commands)
        self.queries = Queries(self.state, self.scheduler)
        self.snapshots = StateSnapshots(store, self.state, config.data_dir / SNAPSHOT_FILE)
        self._projecting = self._loaded = self._started = False
        self._projector_start: asyncio.Task[None] | None = None
        self._stop_log_broadcast: Callable[[], None] | None = None

    async def load(self) -> None:
        """Fold the log into the state and follow it; a small log's YAML projections are
        caught up too (a large log's start behind, at the end of start()).

        Runs nothing: start() does that. A caller that must read the loaded state (the
        settings) before runs start calls this first; start() calls it otherwise.
        """
        if self._loaded:
            return
        # Nothing appends before start (no command is served yet), so the fold and the
        # listener below neither miss nor repeat an event. From a snapshot whose event
        # the log holds, then the tail, in pages that let a stop signal through. Not
        # checked row by row: the start-up check of the whole chain covers these rows
        # (and, for a large log checked in the background, stops commands and shows a
        # banner if it fails).
        await self.snapshots.load()
        self.store.notifier.add_listener(self.state.apply_all)
        self.store.notifier.add_listener(self.scheduler.on_events)
        # The YAML files after the state: with a large data directory, loading them
        # takes seconds to minutes, and the log (not they) is what serving needs. The
        # projector reads what it lacks from the log whenever it starts, so it goes on
        # behind. A small log's is done within the wait, as before; a large one's starts
        # at the end of start(), as its load holds the interpreter lock for seconds and
        # would slow every step of the start-up it ran beside.
        small = self.store.last_seq <= PROJECTOR_WAIT_EVENTS
        if small:
            self._start_projector()
        # Every job's next time on a worker thread before the first page asks for it
        # (the dashboard reads them all; worked out one by one they hold the loop).
        await self.scheduler.plan()
        if small and self._projector_start is not None:
            await asyncio.wait({self._projector_start}, timeout=PROJECTOR_START_WAIT)
        self._loaded = True

    def _start_projector(self) -> None:
        """Start the projector's load and catch-up behind (once)."""
        if self._projecting:
            return
        self._projector_start = asyncio.create_task(self.projector.start(),
                                                    name="projector-start")
        self._projector_start.add_done_callback(self._projector_started)
        self._projecting = True

    async def start(self) -> None:
        """Load, stop programs and recover runs a crash cut off, then run and schedule."""
        await self.load()
        await stop_leftover_programs(self.state)
        await recover_runs(self.store, self.state)
        self._stop_log_broadcast = install_log_broadcast(self.live, self.state, self.logs)
        self.runner.start()
        self.scheduler.start()
        self.snapshots.start()
        self._start_projector()  # a large log's, now that the state is served
        self._started = True

    async def stop(self) -> None:
        """Stop scheduling and running (runs are interrupted at a safe point), then close."""
        if self._started:
            await self.scheduler.stop()
            await self.runner.stop()
        await self.webhooks.close()  # after the runner: runs ending at shutdown still notify
        if self._stop_log_broadcast is not None:
            self._stop_log_broadcast()
            self._stop_log_broadcast = None
        # The last snapshot after the runs stopped: the next start folds nothing. Only of
        # a state loaded whole (a stop during the load leaves the old snapshot alone).
        await self.snapshots.stop(final=self._loaded)
        self.logs.close()
        self.live.close_all()
        if self._projecting:
            await self._stop_projector()
        self._projecting = self._loaded = self._started = False

    async def _stop_projector(self) -> None:
        """Stop the projector; one still loading its files or catching up ends within
        milliseconds (its thread looks at the stop flag between files and every 1,000
        events), its files stay as last flushed, and the next start goes on from there."""
        starting = self._projector_start
        if starting is not None and starting.done() and (
                starting.cancelled() or starting.exception()):
            return  # said when it ended (_projector_started)
        await self.projector.stop()

    @staticmethod
    def _projector_started(task: asyncio.Task[None]) -> None:
        """Say at once if the projector could not start (the server goes on: the log is
        the source of truth, and /healthz says the projector is not running)."""
        if not task.cancelled() and task.exception() is not None:
            log.error("the YAML projector did not start: %s", task.exception(),
                      exc_info=task.exception())


def build_core(store: EventStore, config: CoreConfig) -> Core:
    """The core on an open event log; nothing runs until `await core.start()`."""
    return Core(store, config)

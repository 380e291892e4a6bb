"""A run this process executes, and the reporter that carries its engine's reports from
the worker thread to the event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from core.runlog import RunLogs
from core.state import RunView
from engines.base import Progress, RunControl
from events.types import Event, RunCheckpointed

PROGRESS_EVERY = 0.25  # seconds between progress broadcasts per run


class RunnerSide(Protocol):
    """What a reporter needs of the runner."""

    logs: RunLogs

    def broadcast(self, message: dict[str, Any]) -> None:
        """Send a transient message to every live subscriber."""

    def append_soon(self, stream: str, event: Event) -> None:
        """Append an event in the background."""


@dataclass
class ActiveRun:
    """A run this process is executing."""

    run: RunView
    destination: str
    control: RunControl = field(default_factory=RunControl)
    task: asyncio.Task[None] | None = None
    progress: dict[str, Any] | None = None  # the latest progress broadcast, for page renders
    # Set on each of the run's events: what a run held at its end (paused) waits on.
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class RunReporter:
    """Carries an engine's reports from its worker thread to the event loop."""

    def __init__(self, runner: RunnerSide, run: RunView, loop: asyncio.AbstractEventLoop) -> None:
        self.runner, self.run, self.loop = runner, run, loop
        self._last = 0.0

    def progress(self, progress: Progress) -> None:
        """Broadcast progress at most every PROGRESS_EVERY seconds (and the last one)."""
        now = time.monotonic()
        if now - self._last < PROGRESS_EVERY and progress.phase != "done":
            return
        self._last = now
        message = {"kind": "progress", "job_id": self.run.job_id, "run_id": self.run.run_id,
                   **progress.as_dict()}
        self.loop.call_soon_threadsafe(self.runner.broadcast, message)

    def checkpoint(self, state: Mapping[str, Any]) -> None:
        """Store a checkpoint so a crashed run can resume from it."""
        event = RunCheckpointed(job_id=self.run.job_id, run_id=self.run.run_id,
                                checkpoint=dict(state))
        self.loop.call_soon_threadsafe(self.runner.append_soon, self.run.job_id, event)

    def warning(self, message: str) -> None:
        """Keep a warning in the run's log."""
        self.runner.logs.write(self.run.run_id, f"WARNING {message}")

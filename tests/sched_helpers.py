"""Helpers for scheduler tests: the real pieces on a hand-set clock, and jobs in bulk."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest

from core.commands import Commands, validate_job
from core.scheduler import Scheduler
from core.state import State
from events.store import EventStore
from events.types import JobCreated


class Clock(Protocol):
    """A UTC clock a test sets by hand, which also gives the time as the log stamps it."""

    def __call__(self) -> datetime:
        """The time now."""

    def iso(self) -> str:
        """The time as the log stamps it."""


@dataclass
class SchedEnv:
    """The real pieces, with the scheduler listening to the log as the server's does."""

    clock: Clock
    store: EventStore
    state: State
    commands: Commands
    scheduler: Scheduler
    tmp: Path


E = TypeVar("E", bound=SchedEnv)


@contextlib.asynccontextmanager
async def sched_env(make: Callable[..., E], clock: Clock, tmp_path: Path,
                    monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[E]:
    """A fresh log, state, commands and a listening scheduler, all on `clock`."""
    monkeypatch.setattr("events.store.utc_now_iso", clock.iso)
    store = await EventStore.open(tmp_path / "events.db")
    state = State()
    store.notifier.add_listener(state.apply_all)
    commands = Commands(store, state)
    scheduler = Scheduler(state, commands, clock=clock)
    store.notifier.add_listener(scheduler.on_events)
    try:
        yield make(clock, store, state, commands, scheduler, tmp_path)
    finally:
        await scheduler.stop()
        await store.close()


class SetClock:
    """A UTC clock set by hand, shared by the scheduler and the log's time stamps."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def iso(self) -> str:
        """The time as the log stamps it."""
        return self.now.isoformat(timespec="microseconds").replace("+00:00", "Z")


def cron_of(i: int) -> str:
    """A daily cron expression, different for most jobs (minute and hour vary)."""
    return f"{i % 60} {(i // 60) % 24} * * *"


async def write_jobs(store: EventStore, root: Path, schedules: list[Any],
                     prefix: str = "bulk") -> list[str]:
    """Create one job per schedule straight in the log, 250 appends at a time.

    One spec is validated as the API validates it; each job is that spec with its own
    name, paths and schedule (the paths are not touched: these jobs never run here).
    """
    template = validate_job({"name": prefix, "engine": "mirror", "sources": [str(root / "src")],
                             "destination": str(root / "dest"), "schedule": None}).to_dict()
    ids: list[str] = []
    for first in range(0, len(schedules), 250):
        calls = []
        for i in range(first, min(first + 250, len(schedules))):
            job_id = f"{prefix}-{i:05d}"
            spec = {**template, "name": job_id, "sources": [str(root / "src" / job_id)],
                    "destination": str(root / "dest" / job_id), "schedule": schedules[i]}
            calls.append(store.append(job_id, 0, [JobCreated(job_id=job_id, spec=spec)]))
            ids.append(job_id)
        await asyncio.gather(*calls)
    return ids

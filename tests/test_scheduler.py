"""Scheduler tests: cron and interval jobs start on time, once, and never when they must not.

The real event log, state and commands are used; no runner, so a started run stays
queued. One fake clock drives both the scheduler and the times the log stamps on events,
so minutes and days pass without waiting for them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from core.scheduler import Scheduler
from core.state import JobView, RunView
from events.types import JobUpdated, RunQueued, RunStarted, RunSucceeded
from tests.sched_helpers import SchedEnv, sched_env

T0 = datetime(2025, 3, 10, 9, 17, tzinfo=UTC)  # a Monday morning, not on any slot


class FakeClock:
    """A UTC clock set by hand; once `moving`, it also advances with real time."""

    def __init__(self, now: datetime) -> None:
        self._now = now
        self._moving_since: float | None = None

    def __call__(self) -> datetime:
        if self._moving_since is None:
            return self._now
        return self._now + timedelta(seconds=time.monotonic() - self._moving_since)

    def set(self, now: datetime, moving: bool = False) -> None:
        """Jump to a time, then stand still or move on with real time."""
        self._now = now
        self._moving_since = time.monotonic() if moving else None

    def iso(self) -> str:
        """The time as the log stamps it."""
        return self().isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass
class Env(SchedEnv):
    """The real pieces the scheduler works with, and steps a test takes with them."""

    clock: FakeClock

    async def job(self, name: str, schedule: str | None, **extra: Any) -> JobView:
        """Create a job through the command, as the API would (its source exists)."""
        src = self.tmp / "src" / name
        src.mkdir(parents=True, exist_ok=True)
        return await self.commands.create_job(
            {"name": name, "engine": "mirror", "sources": [str(src)],
             "destination": str(self.tmp / "backups" / name), "schedule": schedule, **extra})

    async def finish(self, run: RunView) -> None:
        """Record a run as started and succeeded, as the runner would."""
        await self.store.append(run.job_id, None, [
            RunStarted(job_id=run.job_id, run_id=run.run_id),
            RunSucceeded(job_id=run.job_id, run_id=run.run_id, snapshot_id=f"s-{run.run_id}")])

    def runs(self, job: JobView) -> list[RunView]:
        """The job's runs, oldest first."""
        return list(reversed(self.state.job_runs(job.job_id)))

    async def wait_for_runs(self, job: JobView, count: int, within: float = 1.0) -> None:
        """Wait until the job has `count` runs, failing after `within` seconds."""
        start = time.monotonic()
        while len(self.runs(job)) < count:
            if time.monotonic() - start > within:
                pytest.fail(f"{job.job_id} has {len(self.runs(job))} runs after {within}s, "
                            f"expected {count}")
            await asyncio.sleep(0.01)


@pytest.fixture
async def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Env]:
    """A fresh log, state and commands, with a scheduler on a fake clock at T0."""
    async with sched_env(Env, FakeClock(T0), tmp_path, monkeypatch) as made:
        yield made


# --- ticks -----------------------------------------------------------------------------


async def test_cron_job_runs_at_its_time_and_not_before(env: Env) -> None:
    job = await env.job("hourly", "0 * * * *")

    env.clock.set(datetime(2025, 3, 10, 9, 59, 59, tzinfo=UTC))
    assert await env.scheduler.tick() == []
    assert env.runs(job) == []

    env.clock.set(datetime(2025, 3, 10, 10, 0, tzinfo=UTC))
    started = await env.scheduler.tick()
    [run] = env.runs(job)
    assert started == [run.run_id]
    assert (run.trigger, run.state) == ("schedule", "queued")
    # Ticking again in the same minute does not queue the slot a second time.
    assert await env.scheduler.tick() == []
    assert len(env.runs(job)) == 1
    assert env.scheduler.next_run(job) == datetime(2025, 3, 10, 11, 0, tzinfo=UTC)


async def test_interval_job_runs_every_interval_counted_from_its_last_run(env: Env) -> None:
    job = await env.job("often", "every 2 hours")

    env.clock.set(T0 + timedelta(hours=2, seconds=-1))
    assert await env.scheduler.tick() == []
    env.clock.set(T0 + timedelta(hours=2))
    assert len(await env.scheduler.tick()) == 1
    await env.finish(env.runs(job)[0])
    # Finished, but the next one is two hours after it was queued, not now.
    assert await env.scheduler.tick() == []
    assert env.scheduler.next_run(job) == T0 + timedelta(hours=4)

    env.clock.set(T0 + timedelta(hours=4, minutes=5))
    assert len(await env.scheduler.tick()) == 1
    assert [r.trigger for r in env.runs(job)] == ["schedule", "schedule"]


async def test_slots_missed_while_down_run_once_on_start(env: Env) -> None:
    job = await env.job("hourly", "0 * * * *")

    # The server was down from T0 until 14:30: the 10:00 ... 14:00 slots were missed.
    env.clock.set(datetime(2025, 3, 10, 14, 30, tzinfo=UTC))
    restarted = Scheduler(env.state, env.commands, clock=env.clock)
    assert len(await restarted.tick()) == 1
    await env.finish(env.runs(job)[0])
    assert await restarted.tick() == []
    assert len(env.runs(job)) == 1
    assert restarted.next_run(job) == datetime(2025, 3, 10, 15, 0, tzinfo=UTC)


async def test_due_job_with_an_unfinished_run_waits_for_it(
        env: Env, caplog: pytest.LogCaptureFixture) -> None:
    job = await env.job("hourly", "0 * * * *")
    manual = await env.commands.start_run(job.job_id)  # still queued: nothing runs it

    env.clock.set(datetime(2025, 3, 10, 10, 0, 30, tzinfo=UTC))
    with caplog.at_level(logging.INFO, logger="core.scheduler"):
        assert await env.scheduler.tick() == []
        assert await env.scheduler.tick() == []
    waiting = [r for r in caplog.records if manual.run_id in r.getMessage()]
    assert len(waiting) == 1, "the wait is logged once, not on every tick"

    await env.finish(manual)
    assert len(await env.scheduler.tick()) == 1
    assert [r.trigger for r in env.runs(job)] == ["manual", "schedule"]


async def test_a_restore_run_neither_pushes_the_schedule_back_nor_holds_it(env: Env) -> None:
    """Restores and verifies are runs of the job, but only backups count for its schedule."""
    job = await env.job("often", "every 2 hours")
    env.clock.set(T0 + timedelta(hours=1))
    await env.store.append(job.job_id, None, [RunQueued(
        job_id=job.job_id, run_id="r-restore", trigger="manual", kind="restore",
        params={"snapshot_id": "s-1", "target": str(env.tmp / "back")})])
    assert env.scheduler.next_run(job) == T0 + timedelta(hours=2)

    env.clock.set(T0 + timedelta(hours=2))  # the restore still waits: the backup queues
    started = await env.scheduler.tick()
    assert len(started) == 1
    assert [(r.kind, r.trigger) for r in env.runs(job)] == [("restore", "manual"),
                                                             ("backup", "schedule")]


async def test_disabled_job_never_runs_and_counts_from_being_enabled(env: Env) -> None:
    job = await env.job("paused", "every 1 hour")
    await env.commands.set_enabled(job.job_id, False)

    env.clock.set(T0 + timedelta(days=3))
    assert await env.scheduler.tick() == []
    assert env.scheduler.next_run(job) is None
    assert env.scheduler.due_soon() == []

    # Switching it back on does not catch up three days at once.
    await env.commands.set_enabled(job.job_id, True)
    assert await env.scheduler.tick() == []
    assert env.scheduler.next_run(env.state.jobs[job.job_id]) == T0 + timedelta(days=3, hours=1)
    assert env.runs(job) == []


async def test_manual_only_job_never_runs(env: Env) -> None:
    job = await env.job("by-hand", None)

    env.clock.set(T0 + timedelta(days=30))
    assert await env.scheduler.tick() == []
    assert env.scheduler.next_run(job) is None
    assert env.runs(job) == []


async def test_next_run_and_due_soon_show_the_next_scheduled_runs(env: Env) -> None:
    nightly = await env.job("nightly", "30 2 * * *")
    quarter = await env.job("quarter", "every 15 minutes")
    await env.job("by-hand", None)
    off = await env.job("off", "every 1 minute", enabled=False)

    assert env.scheduler.next_run(nightly) == datetime(2025, 3, 11, 2, 30, tzinfo=UTC)
    assert env.scheduler.next_run(off) is None
    assert env.scheduler.due_soon() == [
        (quarter.job_id, datetime(2025, 3, 10, 9, 32, tzinfo=UTC)),
        (nightly.job_id, datetime(2025, 3, 11, 2, 30, tzinfo=UTC)),
    ]

    # A run of any kind moves the base: a manual run at 09:25 puts the next at 09:40.
    env.clock.set(datetime(2025, 3, 10, 9, 25, tzinfo=UTC))
    await env.commands.start_run(quarter.job_id)
    assert env.scheduler.next_run(quarter) == datetime(2025, 3, 10, 9, 40, tzinfo=UTC)

    # A changed schedule counts from the change.
    env.clock.set(datetime(2025, 3, 10, 9, 50, tzinfo=UTC))
    changed = await env.commands.update_job(nightly.job_id, {"schedule": "every 6 hours"})
    assert env.scheduler.next_run(changed) == datetime(2025, 3, 10, 15, 50, tzinfo=UTC)


@pytest.mark.parametrize("bad", ["61 * * * *", "every 0 minutes", "0 0 31 2 *",
                                 "0 0 * * * *", "whenever", 42])
async def test_invalid_schedule_in_state_is_skipped_and_logged(
        env: Env, caplog: pytest.LogCaptureFixture, bad: object) -> None:
    good = await env.job("good", "0 * * * *")
    broken = await env.job("broken", "0 * * * *")
    # Written past validation, as an old or hand-edited log could hold it.
    bad_spec = {**broken.spec, "schedule": bad}
    await env.store.append(broken.job_id, None, [JobUpdated(job_id=broken.job_id, spec=bad_spec)])

    env.clock.set(T0 + timedelta(hours=2))
    with caplog.at_level(logging.WARNING, logger="core.scheduler"):
        started = await env.scheduler.tick()
        await env.scheduler.tick()
        due = env.scheduler.due_soon()
    assert started == [env.runs(good)[0].run_id]
    assert env.runs(broken) == []
    assert [job_id for job_id, _ in due] == [good.job_id]
    warnings = [r for r in caplog.records if broken.job_id in r.getMessage()]
    assert len(warnings) == 1 and "unusable schedule" in warnings[0].getMessage()


# --- the background loop -------------------------------------------------------------------


async def test_loop_starts_a_job_when_its_time_comes(env: Env) -> None:
    job = await env.job("hourly", "0 * * * *")
    env.clock.set(datetime(2025, 3, 10, 9, 59, 59, 700_000, tzinfo=UTC), moving=True)

    env.scheduler.start()
    await asyncio.sleep(0.1)
    assert env.runs(job) == [], "started before its time"
    # Due 0.3 s after the start: the loop sleeps until then, not for its 30 s maximum.
    await env.wait_for_runs(job, 1, within=1.0)
    assert env.runs(job)[0].trigger == "schedule"
    assert env.runs(job)[0].queued >= "2025-03-10T10:00:00"


async def test_loop_follows_a_schedule_changed_while_it_sleeps(env: Env) -> None:
    job = await env.job("daily", "0 3 * * *")
    env.clock.set(datetime(2025, 3, 10, 9, 59, 59, 500_000, tzinfo=UTC), moving=True)
    env.scheduler.start()
    await asyncio.sleep(0.05)  # the loop now sleeps 30 s: nothing is due before 03:00

    await env.commands.update_job(job.job_id, {"schedule": "0 10 * * *"})
    await env.wait_for_runs(job, 1, within=1.0)  # due at 10:00, about 0.45 s from now
    assert env.runs(job)[0].queued >= "2025-03-10T10:00:00"


async def test_loop_wakes_when_the_run_in_the_way_finishes(env: Env) -> None:
    job = await env.job("hourly", "0 * * * *")
    manual = await env.commands.start_run(job.job_id)
    env.scheduler.start()
    env.clock.set(datetime(2025, 3, 10, 10, 0, 1, tzinfo=UTC))
    await asyncio.sleep(0.1)
    assert len(env.runs(job)) == 1

    # The loop planned to sleep 30 s (nothing it could start); the run's end wakes it.
    await env.finish(manual)
    await env.wait_for_runs(job, 2)
    assert env.runs(job)[1].trigger == "schedule"


async def test_loop_survives_a_failing_tick_and_stops_cleanly(
        env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    job = await env.job("hourly", "0 * * * *")
    env.clock.set(datetime(2025, 3, 10, 10, 0, tzinfo=UTC))
    real_tick = env.scheduler.tick
    calls = 0

    async def failing_once() -> list[str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("disk on fire")
        return await real_tick()

    monkeypatch.setattr(env.scheduler, "tick", failing_once)
    with caplog.at_level(logging.ERROR, logger="core.scheduler"):
        env.scheduler.start()
        await env.wait_for_runs(job, 1)
    assert any("tick failed" in r.getMessage() for r in caplog.records)

    await asyncio.wait_for(env.scheduler.stop(), timeout=1)
    # Stopped means stopped: the next slot comes and goes without a run.
    await env.finish(env.runs(job)[0])
    env.clock.set(datetime(2025, 3, 10, 11, 0, tzinfo=UTC))
    await asyncio.sleep(0.2)
    assert len(env.runs(job)) == 1


async def test_a_stop_that_meets_a_wake_still_stops_the_loop(env: Env) -> None:
    # A run's event can wake the sleeping loop in the very step that stop() cancels it
    # (runs end while the server shuts down). Python 3.11's wait_for then returned the
    # wake and dropped the cancel: the loop went on and the server's stop hung for good.
    await env.job("hourly", "0 * * * *")
    await env.scheduler.plan()
    env.scheduler.start()
    await asyncio.sleep(0.2)  # asleep until the job's slot
    loop_task = env.scheduler._task
    env.scheduler._wake.set()  # what a committed run event does (on_events)
    stopping = asyncio.ensure_future(env.scheduler.stop())
    try:
        # asyncio.wait, not wait_for: a timeout must not cancel the loop on stop's behalf.
        done, _ = await asyncio.wait({stopping}, timeout=2)
        assert stopping in done, "the scheduler's loop did not stop"
    finally:
        if loop_task is not None:  # (without the fix) end the loop that kept going
            loop_task.cancel()
        await asyncio.wait({stopping}, timeout=1)


async def test_a_run_started_by_hand_before_the_time_keeps_it_without_cron(env: Env) -> None:
    job = await env.job("daily", "30 10 * * *")
    slot = datetime(2025, 3, 10, 10, 30, tzinfo=UTC)
    assert await env.scheduler.tick() == []
    assert env.scheduler.next_run(env.state.jobs[job.job_id]) == slot

    async def start_and_finish_at(when: datetime) -> datetime | None:
        env.clock.set(when)
        await env.finish(await env.commands.start_run(job.job_id))
        await env.scheduler.tick()
        current = env.state.jobs[job.job_id]
        fresh = Scheduler(env.state, env.commands, clock=env.clock).next_run(current)
        kept = env.scheduler.next_run(current)
        assert kept == fresh, "the kept time is the one worked out from scratch"
        return kept

    before = env.scheduler.evaluations
    # Before the slot: the next slot after the new base is the same one, no cron needed.
    assert await start_and_finish_at(datetime(2025, 3, 10, 9, 50, tzinfo=UTC)) == slot
    assert await start_and_finish_at(datetime(2025, 3, 10, 10, 29, tzinfo=UTC)) == slot
    assert env.scheduler.evaluations == before
    # At the slot, and after the clock went back: worked out again.
    assert await start_and_finish_at(slot) == slot + timedelta(days=1)
    assert await start_and_finish_at(datetime(2025, 3, 10, 8, 0, tzinfo=UTC)) == slot
    assert env.scheduler.evaluations == before + 2

"""The scheduler among 1,000 jobs: work follows what changed, not how many jobs there are.

A real event log, state and commands; one hand-set clock drives the scheduler and the
times the log stamps. `Scheduler.evaluations` counts every next time worked out (a cron
or interval evaluation), so these tests see how much work a tick, a new job or a change
costs without timing anything.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.ownership import LIST_AT, Owner, Resolver, _forms_relation, _Near, owner_conflict
from core.scheduler import Scheduler
from tests.sched_helpers import SchedEnv, SetClock, cron_of, sched_env, write_jobs

T0 = datetime(2025, 3, 10, 9, 17, tzinfo=UTC)  # a Monday morning, on no job's slot here
MANY = 1_000


@dataclass
class Env(SchedEnv):
    """The real pieces, on a clock set by hand."""

    clock: SetClock


@pytest.fixture
async def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Env]:
    """A fresh log, state, commands and a listening scheduler on a clock at T0."""
    async with sched_env(Env, SetClock(T0), tmp_path, monkeypatch) as made:
        yield made


def _runs(env: Env, job_id: str) -> list[str]:
    return list(env.state.jobs[job_id].run_ids)


async def test_a_tick_among_1000_jobs_looks_only_at_the_due_ones(env: Env) -> None:
    ids = await write_jobs(env.store, env.tmp, [cron_of(i) for i in range(MANY)])
    assert await env.scheduler.tick() == []  # the first plan: every job once
    assert env.scheduler.evaluations == MANY
    assert env.scheduler.evaluations_off_loop == MANY, "the first plan is made off the loop"

    # 09:18 and 09:19 are the slots of jobs 558 and 559 ("18 9 * * *", "19 9 * * *").
    env.clock.now = datetime(2025, 3, 10, 9, 19, tzinfo=UTC)
    before = env.scheduler.evaluations
    started = await env.scheduler.tick()
    assert len(started) == 2
    assert [job_id for job_id in ids if _runs(env, job_id)] == [ids[558], ids[559]]
    # Only the two that ran were worked out again (their base moved to their run).
    assert env.scheduler.evaluations - before == 2

    before = env.scheduler.evaluations
    assert await env.scheduler.tick() == []
    assert env.scheduler._seconds_to_sleep() > 0
    assert [env.scheduler.next_run(env.state.jobs[j]) for j in ids[:3]] == [
        datetime(2025, 3, 11, 0, 0, tzinfo=UTC), datetime(2025, 3, 11, 0, 1, tzinfo=UTC),
        datetime(2025, 3, 11, 0, 2, tzinfo=UTC)]
    assert env.scheduler.evaluations == before, "nothing changed: no cron is worked out"


async def test_a_job_created_among_1000_gets_its_own_time_alone(env: Env) -> None:
    ids = await write_jobs(env.store, env.tmp, [cron_of(i) for i in range(MANY)])
    await env.scheduler.tick()
    before = env.scheduler.evaluations

    src = env.tmp / "src" / "new"
    src.mkdir(parents=True)
    job = await env.commands.create_job({
        "name": "new", "engine": "mirror", "sources": [str(src)],
        "destination": str(env.tmp / "dest" / "new"), "schedule": "every 2 hours"})
    assert env.scheduler.next_run(job) == T0 + timedelta(hours=2)
    await env.scheduler.tick()
    assert env.scheduler.evaluations - before == 1
    # The others' times are read from their plans.
    assert env.scheduler.next_run(env.state.jobs[ids[5]]) == \
        datetime(2025, 3, 11, 0, 5, tzinfo=UTC)
    assert env.scheduler.evaluations - before == 1


async def test_1000_jobs_missed_while_down_each_run_once(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = await write_jobs(env.store, env.tmp, ["every 1 hour"] * MANY)
    # The server was down for a day: every job missed 23 slots. A new scheduler, as a
    # start makes, plans them off the loop and queues one run each, no more.
    env.clock.now = T0 + timedelta(days=1)
    restarted = Scheduler(env.state, env.commands, clock=env.clock)
    env.store.notifier.add_listener(restarted.on_events)
    started = await restarted.tick()
    assert len(started) == MANY
    assert all(len(_runs(env, job_id)) == 1 for job_id in ids)
    assert await restarted.tick() == []
    assert restarted.next_run(env.state.jobs[ids[0]]) == T0 + timedelta(days=1, hours=1)


async def test_a_changed_schedule_takes_effect_at_once(env: Env) -> None:
    await write_jobs(env.store, env.tmp, [cron_of(i) for i in range(100)])
    job = await env.commands.create_job(_spec(env, "nightly", "0 3 * * *"))
    await env.scheduler.tick()
    assert env.scheduler.next_run(job) == datetime(2025, 3, 11, 3, 0, tzinfo=UTC)

    env.clock.now = datetime(2025, 3, 10, 9, 30, tzinfo=UTC)
    await env.commands.update_job(job.job_id, {"schedule": "45 9 * * *"})
    changed = env.state.jobs[job.job_id]
    assert env.scheduler.next_run(changed) == datetime(2025, 3, 10, 9, 45, tzinfo=UTC)
    assert env.scheduler._seconds_to_sleep() == pytest.approx(0.05)  # planned at once

    await env.scheduler.tick()
    env.clock.now = datetime(2025, 3, 10, 9, 45, tzinfo=UTC)
    [run_id] = await env.scheduler.tick()
    assert _runs(env, job.job_id) == [run_id]


async def test_a_deleted_job_never_runs(env: Env) -> None:
    job = await env.commands.create_job(_spec(env, "doomed", "every 1 hour"))
    keeper = await env.commands.create_job(_spec(env, "keeper", "every 1 hour"))
    await env.scheduler.tick()  # both are in the heap now
    await env.commands.delete_job(job.job_id)

    env.clock.now = T0 + timedelta(hours=5)
    started = await env.scheduler.tick()
    assert len(started) == 1 and _runs(env, keeper.job_id) == started
    assert job.job_id not in env.state.jobs
    assert [job_id for job_id, _ in env.scheduler.due_soon()] == [keeper.job_id]


async def test_a_disabled_job_leaves_the_heap_and_comes_back_enabled(env: Env) -> None:
    job = await env.commands.create_job(_spec(env, "paused", "every 1 hour"))
    await env.scheduler.tick()
    await env.commands.set_enabled(job.job_id, False)
    env.clock.now = T0 + timedelta(hours=3)
    assert await env.scheduler.tick() == []
    assert env.scheduler._seconds_to_sleep() == 30.0  # nothing planned: the longest sleep

    await env.commands.set_enabled(job.job_id, True)
    assert await env.scheduler.tick() == []  # counted from being enabled, not caught up
    assert env.scheduler.next_run(env.state.jobs[job.job_id]) == T0 + timedelta(hours=4)


def _spec(env: Env, name: str, schedule: str) -> dict[str, object]:
    src = env.tmp / "src" / name
    src.mkdir(parents=True, exist_ok=True)
    return {"name": name, "engine": "mirror", "sources": [str(src)],
            "destination": str(env.tmp / "dest" / name), "schedule": schedule}


def test_the_owner_check_resolves_like_realpath(tmp_path: Path) -> None:
    """Each folder resolved once must still see through every symlink, as realpath does."""
    (tmp_path / "disk" / "backups").mkdir(parents=True)
    (tmp_path / "file").write_text("x")
    os.symlink(tmp_path / "disk", tmp_path / "link")
    os.symlink("backups", tmp_path / "disk" / "rel")
    os.symlink(tmp_path / "loop-b", tmp_path / "loop-a")
    os.symlink(tmp_path / "loop-a", tmp_path / "loop-b")
    names = ["disk", "backups", "link", "rel", "file", "loop-a", "missing"]
    paths = [str(tmp_path / a / b / c) for a in names for b in names for c in names]
    resolver = Resolver()
    assert [resolver.real(p) for p in paths] == [os.path.realpath(p) for p in paths]

    # Among 1,000 owners, the one whose folder is ours through a symlink is found.
    others = [Owner(f"job-{i}", f"job {i}", str(tmp_path / "dest" / f"d{i}"), "mirror")
              for i in range(MANY)]
    others.insert(700, Owner("twin", "twin", str(tmp_path / "link" / "backups"), "mirror"))
    found = owner_conflict(str(tmp_path / "disk" / "rel"), others, "mirror")
    assert found is not None and "twin" in found
    assert owner_conflict(str(tmp_path / "disk" / "own"), others, "mirror") is None


def test_the_quick_overlap_screen_agrees_with_relation() -> None:
    """owner_conflict skips an owner only when relation() finds nothing for any pair."""
    parts = ["", "a", "b", "ab", "a/b", "a/", "b/a", "a//b"]
    paths = sorted({"/" + p for p in parts} | {"/" + p + "/" + q for p in parts for q in parts})
    for mine in itertools.combinations(paths, 2):
        near = _Near(mine)
        for theirs in itertools.combinations(paths, 2):
            assert near.any(theirs) == (_forms_relation(mine, theirs) is not None), (
                mine, theirs)


def test_one_listing_resolves_a_folder_of_destinations_like_realpath(tmp_path: Path) -> None:
    """The folder listing gives the answers of realpath: symlinks, missing names, loops."""
    (tmp_path / "dest").mkdir()
    (tmp_path / "elsewhere").mkdir()
    names = [f"d{i}" for i in range(2 * LIST_AT)]
    for i, name in enumerate(names):
        if i % 3 == 0:
            (tmp_path / "dest" / name).mkdir()
        elif i % 3 == 1:
            os.symlink(tmp_path / "elsewhere", tmp_path / "dest" / name)
    os.symlink("loop", tmp_path / "dest" / "loop")
    names += ["loop", "missing", "D0"]
    paths = [str(tmp_path / "dest" / name) for name in names]
    resolver = Resolver()
    resolver.prime(paths)
    assert [resolver.real(p) for p in paths] == [os.path.realpath(p) for p in paths]
    # A folder not made yet, and a file where a folder was expected.
    (tmp_path / "file").write_text("x")
    for folder in ("not-yet", "file"):
        paths = [str(tmp_path / folder / name) for name in names]
        resolver = Resolver()
        resolver.prime(paths)
        assert [resolver.real(p) for p in paths] == [os.path.realpath(p) for p in paths]
    # A symlinked folder of destinations: listed where it really is.
    os.symlink(tmp_path / "dest", tmp_path / "via")
    via = [str(tmp_path / "via" / name) for name in names]
    resolver = Resolver()
    resolver.prime(via)
    assert [resolver.real(p) for p in via] == [os.path.realpath(p) for p in via]

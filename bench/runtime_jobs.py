"""Start and create latency among 1,000 scheduled jobs, and the drain after downtime.

Latency: one server on 127.0.0.1 in this process holds BENCH_RUNTIME_JOBS cron jobs
(none due while the bench runs). Each repeat sends BENCH_RUNTIME_PER_ROUND starts
(POST /api/jobs/{id}/start), each beside a GET of one job (/api/jobs/{id}) and a plain
SQLite commit on the same disk (the least a durable start can cost here), then as many
creates (POST /api/jobs) beside a GET and a commit; the one going first takes turns. A
repeat's p99 of each is one sample. The started runs end at "cannot start" in the
background (their sources are removed after the jobs are made).

Drain: a log of BENCH_RUNTIME_DRAIN_JOBS hourly jobs whose last change was two hours
ago (the server was down: every one is due at once) against as many manual jobs with a
run already queued each. The time from opening the server until every run has ended is
ours (the scheduler queues them, the runner runs them) and the peer's (the runner
alone), taken in turns on fresh copies.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

import events.store
from bench.compare import Comparison
from bench.eventlog import TMP_ROOT, env_int, percentile
from bench.serving import call, serve
from core.commands import validate_job
from events.store import EventStore
from events.types import JobCreated, RunQueued, SettingsChanged
from models.ids import SETTINGS_STREAM
from server.app import create_app
from server.config import Config
from server.keys import RUNNER, SCHEDULER, STATE

PEER = "GET /api/jobs/{id}"
COMMIT_PEER = "one SQLite commit (WAL, synchronous=FULL)"
CONCURRENT = 32  # max_concurrent_runs: the highest the settings accept
PATIENCE = 60.0  # seconds for any one API answer
STALL = 120.0  # seconds without a run queued or ended before a drain is given up


def far_cron(i: int, now: datetime) -> str:
    """A cron expression, varied per job, whose slots are months away from now."""
    month = (now.month + 5 + i % 3) % 12 + 1  # 6 to 8 months ahead: never due here
    return f"{i % 60} {i % 24} {1 + i % 28} {month} *"



async def _timed(call: Awaitable[Any]) -> float:
    started = time.perf_counter()
    await call
    return (time.perf_counter() - started) * 1000.0


async def _turns(calls: list[Callable[[], Awaitable[Any]]], count: int) -> list[float]:
    """p99 (ms) of `count` rounds of each call, the one going first taking turns."""
    times: list[list[float]] = [[] for _ in calls]
    for index in range(count):
        for step in range(len(calls)):
            which = (index + step) % len(calls)
            times[which].append(await _timed(calls[which]()))
    return [percentile(samples, 99) for samples in times]


def _commit_peer(path: Path) -> tuple[Callable[[], Awaitable[Any]], sqlite3.Connection]:
    """One row committed to a plain SQLite log (WAL, synchronous=FULL) beside ours, as
    our store commits: the least a durable start can cost on this disk."""
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, body TEXT)")

    def commit() -> None:
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO events (body) VALUES (?)", ('{"type": "RunQueued"}',))
        db.execute("COMMIT")
    return (lambda: asyncio.to_thread(commit)), db


def _job_body(root: Path, name: str, now: datetime, i: int) -> dict[str, Any]:
    return {"name": name, "engine": "mirror", "sources": [str(root / "src" / name)],
            "destination": str(root / "dest" / name), "schedule": far_cron(i, now)}


async def latency(jobs: int, per_round: int, repeats: int
                  ) -> tuple[list[Comparison], float]:
    """Start and create p99 against a GET of one job; also the seconds to make the jobs."""
    now = datetime.now(UTC)
    starts: tuple[list[float], list[float]] = ([], [])
    creates: tuple[list[float], list[float]] = ([], [])
    commits: tuple[list[float], list[float]] = ([], [])  # beside the starts, the creates
    with tempfile.TemporaryDirectory(prefix="bench-sched-", dir=TMP_ROOT) as tmp:
        root = Path(tmp)
        extra = per_round * repeats
        for i in range(jobs + extra):
            (root / "src" / f"job-{i:05d}").mkdir(parents=True)
        async with serve(root / "data", PATIENCE) as session:
            await call(session, "PUT", "/api/settings",
                        {"max_concurrent_runs": CONCURRENT}, 200)
            made = time.perf_counter()
            ids = [str((await call(session, "POST", "/api/jobs", _job_body(
                root, f"job-{i:05d}", now, i), 201))["id"]) for i in range(jobs)]
            made_seconds = time.perf_counter() - made
            for i in range(jobs):  # their runs now end at "cannot start", at once
                shutil.rmtree(root / "src" / f"job-{i:05d}")
            started = iter(ids[i * jobs // extra] for i in range(extra))
            fresh = iter(range(jobs, jobs + extra))
            peers = iter(ids[(i * 7919) % jobs] for i in range(10 * extra))

            def start() -> Awaitable[Any]:
                return call(session, "POST", f"/api/jobs/{next(started)}/start", {}, 202)

            def create() -> Awaitable[Any]:
                i = next(fresh)
                return call(session, "POST", "/api/jobs",
                             _job_body(root, f"job-{i:05d}", now, i), 201)

            def get() -> Awaitable[Any]:
                return call(session, "GET", f"/api/jobs/{next(peers)}", None, 200)

            commit, plain_db = _commit_peer(root / "plain.db")
            for _ in range(repeats):
                mine, theirs, plain = await _turns([start, get, commit], per_round)
                starts[0].append(mine)
                starts[1].append(theirs)
                commits[0].append(plain)
                mine, theirs, plain = await _turns([create, get, commit], per_round)
                creates[0].append(mine)
                creates[1].append(theirs)
                commits[1].append(plain)
            plain_db.close()
    label = f"{jobs:,} scheduled jobs"
    return [Comparison(f"start API p99, {label}", "ms", starts[0], starts[1], PEER,
                       target_value=10.0, note=f"{per_round} calls per repeat"),
            Comparison(f"start API p99 vs a plain commit, {label}", "ms", starts[0],
                       commits[0], COMMIT_PEER, target_value=10.0,
                       note="the durable append a start must make, on the same disk"),
            Comparison(f"create API p99, {label}", "ms", creates[0], creates[1], PEER,
                       target_value=20.0, note=f"{per_round} calls per repeat"),
            Comparison(f"create API p99 vs a plain commit, {label}", "ms", creates[0],
                       commits[1], COMMIT_PEER, target_value=20.0,
                       note="the durable append a create must make, on the same disk")
            ], made_seconds


@contextlib.contextmanager
def _stamped(when: str) -> Iterator[None]:
    """Events appended meanwhile carry this time (the log of a server that was down)."""
    names = vars(events.store)  # the store stamps each batch with its utc_now_iso()
    real = names["utc_now_iso"]
    names["utc_now_iso"] = lambda: when
    try:
        yield
    finally:
        names["utc_now_iso"] = real


async def _build_log(data_dir: Path, jobs: int, queued: bool) -> None:
    """Hourly jobs last changed two hours ago; with `queued`, manual jobs with a run each."""
    await asyncio.to_thread(data_dir.mkdir, parents=True)
    ago = (datetime.now(UTC) - timedelta(hours=2)).isoformat(timespec="microseconds")
    store = await EventStore.open(data_dir / "events.db")
    try:
        with _stamped(ago.replace("+00:00", "Z")):
            await store.append(SETTINGS_STREAM, None, [SettingsChanged(
                changes={"max_concurrent_runs": CONCURRENT})])
            for first in range(0, jobs, 250):  # concurrent appends: a few group commits
                calls = []
                for i in range(first, min(first + 250, jobs)):
                    name = f"drain-{i:05d}"
                    spec = validate_job({
                        "name": name, "engine": "mirror",
                        "sources": [str(data_dir.parent / "missing" / name)],
                        "destination": str(data_dir.parent / "dest" / name),
                        # The peer's jobs are manual: only its queued runs run.
                        "schedule": None if queued else "every 1 hour"}).to_dict()
                    job_events: list[Any] = [JobCreated(job_id=name, spec=spec)]
                    if queued:
                        job_events.append(RunQueued(job_id=name, run_id=f"r-{i:012x}"))
                    calls.append(store.append(name, 0, job_events))
                await asyncio.gather(*calls)
    finally:
        await store.close()


async def _drain_seconds(data_dir: Path, jobs: int) -> float:
    """Seconds from opening the server until `jobs` runs exist and every one has ended
    (NaN, with what was seen, if nothing moves for STALL seconds)."""
    app = create_app(Config(data_dir=data_dir, log_to_file=False, log_level="WARNING"))
    runner = web.AppRunner(app, access_log=None)
    started = time.perf_counter()
    await runner.setup()
    try:
        state = app[STATE]
        seen, moved = (-1, -1), time.perf_counter()
        while len(state.runs) < jobs or state.active_runs():
            now = (len(state.runs), len(state.active_runs()))
            if now != seen:
                seen, moved = now, time.perf_counter()
            elif time.perf_counter() - moved > STALL:
                print(f"  stalled: {now[0]} runs, {now[1]} not ended, "
                      f"{len(app[RUNNER].active)} executing, scheduler evaluations "
                      f"{app[SCHEDULER].evaluations}; sample left out", flush=True)
                return math.nan
            await asyncio.sleep(0.02)
        return time.perf_counter() - started
    finally:
        await runner.cleanup()


async def drain(jobs: int, repeats: int) -> Comparison:
    """Runs ended per second after downtime: scheduler and runner against the runner."""
    ours: list[float] = []
    peer: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-drain-", dir=TMP_ROOT) as tmp:
        for index in range(repeats):
            order = [(ours, False), (peer, True)]
            for samples, queued in order if index % 2 == 0 else reversed(order):
                data_dir = Path(tmp) / f"{index}-{queued}" / "data"
                await _build_log(data_dir, jobs, queued)
                samples.append(jobs / await _drain_seconds(data_dir, jobs))
                await asyncio.to_thread(shutil.rmtree, data_dir.parent)
    return Comparison(f"drain after downtime, {jobs:,} jobs due at once", "runs/s", ours,
                      peer, "runner alone (runs already queued)", target_ratio=0.8,
                      lower_is_better=False,
                      note="runs end at 'cannot start' (sources missing)")


async def run_jobs_comparisons() -> list[Comparison]:
    """Every comparison of this module, printed as they come."""
    jobs = env_int("BENCH_RUNTIME_JOBS", 1_000)
    per_round = env_int("BENCH_RUNTIME_PER_ROUND", 40)
    repeats = max(env_int("BENCH_RUNTIME_REPEATS", 5), 1)
    print(f"\n== start and create latency with {jobs:,} scheduled (cron) jobs: "
          f"{repeats} repeats of {per_round} calls, each beside a {PEER} ==", flush=True)
    found, made = await latency(jobs, per_round, repeats)
    print(f"  created the {jobs:,} jobs through the API in {made:.1f} s "
          f"({jobs / made:,.0f} jobs/s)")
    for comparison in found:
        print("  " + comparison.line(), flush=True)
    drain_jobs = env_int("BENCH_RUNTIME_DRAIN_JOBS", 1_000)
    if drain_jobs > 0:
        print(f"\n== drain after downtime: {drain_jobs:,} hourly jobs all due at once, "
              f"{repeats} repeats ==", flush=True)
        comparison = await drain(drain_jobs, repeats)
        print("  " + comparison.line(), flush=True)
        found.append(comparison)
    return found

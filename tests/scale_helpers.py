"""A data directory at scale (1,000 jobs, 100,000 events) built in seconds, and the app on it.

The log is written the way the app writes it, through EventStore.append (hash chain,
versions, fsync), one append per job stream with all of that job's events, many appends
in flight so the store groups them into a few commits. Jobs are specs as the API takes
them (JobSpec.from_input); runs were queued, started, checkpointed and ended (succeeded,
failed, cancelled), a few were interrupted, and about 900 stay queued, one per job, as
after a downtime when every missed schedule runs once. Nothing under the data
directory's `missing/` folder exists: a run that starts fails at once.

Use (one build per test session, one copy per module, a few seconds in all):

    from tests.scale_helpers import scale_data  # a module-scoped fixture: a private copy

    pytestmark = pytest.mark.asyncio(loop_scope="module")

    @pytest_asyncio.fixture(scope="module", loop_scope="module")
    async def client(scale_data: ScaleData) -> AsyncIterator[Client]:
        async with serve_scale(scale_data.data_dir) as c:   # an aiohttp TestClient
            yield c

`serve_scale(..., run=False)` (the default) folds the log and serves it without the YAML
projector, the runner, the scheduler or crash recovery, so the queued runs stay queued and
the data stays as built while pages are read; `run=True` starts everything as the real
server does (its first start writes the YAML projections of 1,000 jobs: slow).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import random
import shutil
from collections import Counter
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from core.build import CoreConfig, build_core
from events.store import MAX_BATCH_CALLS, EventStore
from events.types import (
    Event,
    JobCreated,
    RestoreFinished,
    RestoreStarted,
    RunCancelled,
    RunCheckpointed,
    RunFailed,
    RunInterrupted,
    RunQueued,
    RunStarted,
    RunSucceeded,
    VerifyFinished,
)
from models.job import JobSpec
from server import app as app_module
from server.config import Config
from server.keys import COMMANDS, CONFIG, LIVE, PROJECTOR, QUERIES, RUNNER, SCHEDULER, STATE, STORE

JOBS = 1_000
EVENTS = 100_000
QUEUED = 900  # runs left queued, one per job (a job never has two waiting)
INTERRUPTED = 20  # runs cut off while paused: they wait for a person
HEAVY_RUNS = 2_000  # one job with a long history: its page must still be bounded
SEED = 14_000

HOSTS = ("nas", "laptop-anna", "laptop-ben", "web-01", "web-02", "db-01", "mail", "build")
WHATS = ("Documents", "Photos", "Home", "Mail", "Postgres dumps", "Projects", "Config")
ENGINES = ("mirror",) * 4 + ("archive",) * 3 + ("rsync",) * 2 + ("restic",)
SCHEDULES = (None, None, None, "0 3 * * *", "30 2 * * 6", "every 6 hours", "15 4 * * *")
ERRORS = ("destination full: No space left on device",
          "rsync exited with code 23 (partial transfer due to error)",
          "source /srv/data is not readable: Permission denied")

Client = TestClient[web.Request, web.Application]
T = TypeVar("T")


@dataclass
class ScaleData:
    """What was built: where, and the ids and counts tests check pages against."""

    data_dir: Path
    job_ids: list[str]  # in creation order
    heavy_job_id: str  # the job with HEAVY_RUNS finished runs
    queued_run_ids: list[str]
    interrupted_run_ids: list[str]
    events: int
    runs: Counter[str] = field(default_factory=Counter)  # runs by final state

    @property
    def events_db(self) -> Path:
        """The event log inside the data directory."""
        return self.data_dir / "events.db"


def _spec(index: int, root: Path, rng: random.Random) -> dict[str, Any]:
    """A job spec as a person would send it to POST /api/jobs, checked by JobSpec."""
    host, what = rng.choice(HOSTS), rng.choice(WHATS)
    engine = rng.choice(ENGINES)
    options: dict[str, Any] = {}
    if engine == "restic":
        options = {"password_file": f"{root}/missing/secrets/{index}.pass"}
    data = {"name": f"{what} on {host} #{index:04d}", "engine": engine,
            "sources": [f"{root}/missing/src/{host}/{what.lower().replace(' ', '-')}"],
            "destination": f"{root}/missing/dest/{index:04d}",
            "exclude": ["*.tmp"] if rng.random() < 0.5 else [],
            "schedule": rng.choice(SCHEDULES), "retention": {"keep_last": 7},
            "options": options, "enabled": rng.random() > 0.05}
    return JobSpec.from_input(data).to_dict()


def _finished_run(job_id: str, run_id: str, rng: random.Random) -> list[Event]:
    """A backup run from queued to its end: 4 to 6 events."""
    events: list[Event] = [RunQueued(job_id=job_id, run_id=run_id, trigger="schedule"),
                           RunStarted(job_id=job_id, run_id=run_id)]
    files = rng.randint(10, 200_000)
    for step in range(rng.randint(1, 3)):
        events.append(RunCheckpointed(job_id=job_id, run_id=run_id, checkpoint={
            "files_done": files * (step + 1) // 4, "bytes_done": files * 1000 * (step + 1)}))
    roll = rng.random()
    if roll < 0.06:
        events.append(RunFailed(job_id=job_id, run_id=run_id, error=rng.choice(ERRORS)))
    elif roll < 0.07:
        events.append(RunCancelled(job_id=job_id, run_id=run_id))
    else:
        events.append(RunSucceeded(job_id=job_id, run_id=run_id,
                                   snapshot_id=f"s{rng.getrandbits(48):012x}", files=files,
                                   bytes=files * 40_000, duration=rng.uniform(1, 900)))
    return events


def _activity(job_id: str, rng: random.Random) -> list[Event]:
    """A restore and a verify of one of the job's snapshots, as the job page lists them."""
    snapshot = f"s{rng.getrandbits(48):012x}"
    return [RestoreStarted(job_id=job_id, snapshot_id=snapshot, target="/tmp/restore"),
            RestoreFinished(job_id=job_id, snapshot_id=snapshot, target="/tmp/restore",
                            files=10, bytes=10_000),
            VerifyFinished(job_id=job_id, snapshot_id=snapshot, ok=True)]


def plan(root: Path, jobs: int = JOBS, events: int = EVENTS, queued: int = QUEUED,
         seed: int = SEED) -> tuple[dict[str, list[Event]], ScaleData]:
    """Every job's events in order (exactly `events` in all), and what they hold."""
    rng = random.Random(seed)
    streams: dict[str, list[Event]] = {}
    data = ScaleData(root, [], "", [], [], events)
    for index in range(jobs):
        job_id = f"job-{index:04d}-{rng.getrandbits(24):06x}"
        streams[job_id] = [JobCreated(job_id=job_id, spec=_spec(index, root, rng))]
        data.job_ids.append(job_id)
    data.heavy_job_id = data.job_ids[0]
    tails: dict[str, list[Event]] = {}
    for index, job_id in enumerate(data.job_ids):  # what each job ends with
        if index < queued:
            run_id = f"r-q{index:010x}"
            tails[job_id] = [RunQueued(job_id=job_id, run_id=run_id, trigger="schedule")]
            data.queued_run_ids.append(run_id)
        elif index < queued + INTERRUPTED:
            run_id = f"r-i{index:010x}"
            tails[job_id] = [RunQueued(job_id=job_id, run_id=run_id, trigger="manual"),
                             RunStarted(job_id=job_id, run_id=run_id),
                             RunInterrupted(job_id=job_id, run_id=run_id,
                                            reason="crash_while_paused")]
            data.interrupted_run_ids.append(run_id)
        if index % 50 == 1:
            streams[job_id] += _activity(job_id, rng)
    budget = events - sum(len(s) for s in streams.values()) - sum(len(t) for t in tails.values())
    counter = 0

    def add_run(job_id: str) -> int:
        nonlocal counter
        counter += 1
        run = _finished_run(job_id, f"r-f{counter:010x}", rng)
        streams[job_id] += run
        data.runs[type(run[-1]).__name__] += 1
        return len(run)

    for _ in range(HEAVY_RUNS):
        if budget <= 6:
            break
        budget -= add_run(data.heavy_job_id)
    while budget > 6:
        budget -= add_run(rng.choice(data.job_ids))
    for job_id, tail in tails.items():
        streams[job_id] += tail
    # Pad with checkpoints of the last finished run to land on `events` exactly.
    last = next(e for e in reversed(streams[data.heavy_job_id]) if isinstance(e, RunQueued))
    for _ in range(budget):
        streams[data.heavy_job_id].append(RunCheckpointed(
            job_id=data.heavy_job_id, run_id=last.run_id, checkpoint={}))
    data.runs["RunQueued"] = len(data.queued_run_ids)
    data.runs["RunInterrupted"] = len(data.interrupted_run_ids)
    assert sum(len(s) for s in streams.values()) == events
    return streams, data


async def write(db: Path, streams: dict[str, list[Event]]) -> None:
    """Append each stream in one call, many calls in flight (group commit), then close."""
    store = await EventStore.open(db)
    try:
        items = list(streams.items())
        for at in range(0, len(items), MAX_BATCH_CALLS):
            await asyncio.gather(*(store.append(stream, 0, evs)
                                   for stream, evs in items[at:at + MAX_BATCH_CALLS]))
    finally:
        await store.close()


async def build(data_dir: Path, jobs: int = JOBS, events: int = EVENTS,
                queued: int = QUEUED) -> ScaleData:
    """Write the scale log into a fresh data directory (no YAML projections yet)."""
    await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
    streams, data = plan(data_dir, jobs, events, queued)
    await write(data_dir / "events.db", streams)
    return data


def run_in_thread(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on its own loop in another thread (safe from inside a test's loop)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def build_sync(data_dir: Path, **sizes: int) -> ScaleData:
    """build() for sync (session- or module-scoped) fixtures."""
    return run_in_thread(build(data_dir, **sizes))


_TEMPLATES: dict[tuple[int, int, int], ScaleData] = {}


def shared_template(base: Path, jobs: int = JOBS, events: int = EVENTS,
                    queued: int = QUEUED) -> ScaleData:
    """The data built once per test process under `base` (read it only: copy_scale it)."""
    key = (jobs, events, queued)
    if key not in _TEMPLATES:
        _TEMPLATES[key] = build_sync(base / f"scale-{jobs}-{events}-{queued}", jobs=jobs,
                                     events=events, queued=queued)
    return _TEMPLATES[key]


@pytest.fixture(scope="module")
def scale_data(tmp_path_factory: pytest.TempPathFactory) -> ScaleData:
    """A private copy of the 1,000 jobs / 100,000 events data directory, for one module."""
    template = shared_template(tmp_path_factory.getbasetemp())
    return copy_scale(template, tmp_path_factory.mktemp("scale"))


def copy_scale(template: ScaleData, data_dir: Path) -> ScaleData:
    """A private copy of a built data directory (its event log and nothing else)."""
    shutil.copytree(template.data_dir, data_dir, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("*.lock", "logs"))
    return replace(template, data_dir=data_dir, runs=Counter(template.runs))


@contextlib.asynccontextmanager
async def _loaded_core(app: web.Application) -> AsyncIterator[None]:
    """server.app's core_ctx with the state folded and followed, and nothing else.

    Core.load without the YAML projector (writing 1,000 job files is not what page tests
    read) and without Core.start: no run starts, no schedule fires, no recovery appends.
    """
    store = app[STORE]
    core = build_core(store, CoreConfig(app[CONFIG].data_dir))
    app[PROJECTOR], app[STATE], app[COMMANDS] = core.projector, core.state, core.commands
    app[RUNNER], app[SCHEDULER], app[QUERIES] = core.runner, core.scheduler, core.queries
    app[LIVE] = core.live
    try:
        async for page in store.iterate(since=0, verify=False):
            core.state.apply_all(page)
        store.notifier.add_listener(core.state.apply_all)
        store.notifier.add_listener(core.scheduler.on_events)
        yield
    finally:
        await core.stop()


def scale_app(data_dir: Path, run: bool = False) -> web.Application:
    """The real app on a data directory; with run=False its runs and schedules stay put."""
    app = app_module.create_app(Config(data_dir=data_dir, log_to_file=False,
                                       log_level="WARNING"))
    if not run:
        app.cleanup_ctx[app.cleanup_ctx.index(app_module.core_ctx)] = _loaded_core_ctx
    return app


async def _loaded_core_ctx(app: web.Application) -> AsyncIterator[None]:
    """_loaded_core as the async generator aiohttp's cleanup_ctx expects."""
    async with _loaded_core(app):
        yield


@contextlib.asynccontextmanager
async def serve_scale(data_dir: Path, run: bool = False) -> AsyncIterator[Client]:
    """A test client on the app serving `data_dir` (see scale_app), closed on exit."""
    client: Client = TestClient(TestServer(scale_app(data_dir, run)))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()

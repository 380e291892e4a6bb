"""Page benchmarks: server time per page, bytes per page gzipped, DOMContentLoaded in Chromium.

Issue: "Server time for each page with 1,000 jobs and 100,000 events (target p50 under
10 ms), bytes per page gzipped, and time to DOMContentLoaded in headless Chromium on
loopback." A fresh data directory is filled with a realistic log (specs as the API takes
them, runs spread over the last 30 days), the app is served on 127.0.0.1 in this process,
and each page is measured three ways. Nothing asserts; the temporary data lives in
tempfile.TemporaryDirectory under /tmp and is removed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import math
import random
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import aiohttp
from aiohttp import web
from croniter import croniter

from bench.compare import Comparison
from bench.eventlog import TMP_ROOT, Figure, env_int, percentile
from core.queries import iso
from events import batch as batch_module
from events import store as store_module
from events.audit import open_readonly, verify
from events.record import utc_now_iso
from events.store import MAX_BATCH_CALLS, EventStore
from events.types import (
    Event,
    JobCreated,
    RunCancelled,
    RunCheckpointed,
    RunFailed,
    RunQueued,
    RunStarted,
    RunSucceeded,
)
from models.job import JobSpec, interval_seconds
from server.app import create_app
from server.config import Config
from server.errors import Handler
from server.keys import STORE

PATIENCE = 30.0  # seconds for any one request or navigation
WARMUP = 5  # untimed requests per page before the timed ones (the first is shown apart)
NAVIGATIONS = 10  # per page in one browser context: the first cold, the rest warm
PAGE_BUDGET_KB = 60.0  # issue 5: a page with its CSS and JS under 60 KB (1 KB = 1024 B)
SERVER_TARGET_MS = 10.0
HISTORY_DAYS = 30
DAY = 86_400.0
EVENTS_PER_RUN = 5  # queued, started, ~2 checkpoints, an ending: sets how many runs fit
APP_LOG_LINES = 5_000  # lines of scheduler log written to logs/app.log for the Logs page
# Appends in flight at once while writing the log: about one group commit, all stamped
# with the chunk's latest planned time (a few hours' span over 30 days of runs).
APPEND_CHUNK = MAX_BATCH_CALLS // 2
SEED = 20_251_124

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage"]
DCL_SCRIPT = "performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd"
STATIC_RE = re.compile(r'(?:href|src)="(/static/[^"]+)"')

# Kinds of job (share of all jobs; the rest are run by hand only).
SCHEDULE_MIX = (("hourly", 0.002), ("six-hourly", 0.03), ("daily", 0.42), ("weekly", 0.15))
ENGINE_MIX = ("mirror",) * 8 + ("archive",) * 5 + ("rsync",) * 4 + ("restic",) * 3
HOSTS = ("nas", "laptop-anna", "laptop-ben", "web-01", "web-02", "db-01", "mail", "build",
         "office-pc", "media")
WHATS = (("Documents", ("Documents",)), ("Photos", ("Pictures", "Camera")),
         ("Home", ("home",)), ("Mail", ("Maildir",)), ("Postgres dumps", ("pg_dumps",)),
         ("Projects", ("src", "notes", "papers")), ("Config", ("etc",)), ("Music", ("Music",)),
         ("Web root", ("www",)), ("VM images", ("vms",)))
RETENTIONS = ({"keep_last": 7}, {"keep_daily": 7, "keep_weekly": 4, "keep_monthly": 6},
              {"keep_last": 3, "keep_daily": 14}, {"keep_last": 24, "keep_daily": 30},
              {"keep_weekly": 8, "keep_monthly": 12})
ERRORS = ("destination full: No space left on device",
          "source /srv/data is not readable: Permission denied",
          "rsync exited with code 23 (partial transfer due to error)",
          "restic: repository is already locked exclusively by PID 4242",
          "cannot start: source /mnt/usb/photos does not exist")


CLOCK_MODULES = (store_module, batch_module)  # where the store reads its clock


def _ms(seconds: float) -> float:
    return seconds * 1000.0


# --- 1: the data ---------------------------------------------------------------------------


@dataclass
class PlannedJob:
    """One job of the generated log, with the queue times of its runs (oldest first)."""

    index: int
    job_id: str
    spec: dict[str, Any]
    kind: str
    created: float
    runs: list[tuple[float, str]] = field(default_factory=list)  # (queued, trigger)


@dataclass(frozen=True)
class PlannedEvent:
    """One append: the time the log will stamp on it, its stream and the event."""

    time: float
    order: int
    stream: str
    event: Event


@dataclass
class LogPlan:
    """The whole generated log, in time order, and what the report says about it."""

    events: list[PlannedEvent]
    jobs: list[PlannedJob]
    runs: Counter[str]  # runs by outcome
    heavy: PlannedJob  # the job with the most runs
    log_lines: list[str]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40].strip("-")


def _plan_jobs(count: int, root: Path, now: float, rng: random.Random) -> list[PlannedJob]:
    """Job specs as a person would create them through the API, checked by JobSpec."""
    kinds = [kind for kind, share in SCHEDULE_MIX for _ in range(round(share * count))]
    kinds = (kinds + ["manual"] * count)[:count]
    rng.shuffle(kinds)
    names: Counter[str] = Counter()
    taken: set[str] = set()
    jobs = []
    for index, kind in enumerate(kinds):
        host = rng.choice(HOSTS)
        what, folders = rng.choice(WHATS)
        name = f"{what} on {host}"
        names[name] += 1
        if names[name] > 1:
            name += f" #{names[name]}"
        job_id = f"{_slug(name)}-{rng.getrandbits(24):06x}"
        while job_id in taken:
            job_id = f"{_slug(name)}-{rng.getrandbits(24):06x}"
        taken.add(job_id)
        engine = rng.choice(ENGINE_MIX)
        schedule = {"hourly": "every 1 hour", "six-hourly": "every 6 hours",
                    "daily": "0 3 * * *" if rng.random() < 0.5
                    else f"{rng.choice((0, 15, 30, 45))} {rng.randint(0, 5)} * * *",
                    "weekly": rng.choice(("0 4 * * 0", "30 2 * * 6")),
                    "manual": None}[kind]
        # Nothing below `root` exists: a job page lists snapshots from the destination
        # and answers at once for a missing one, and a run that starts fails at once.
        options: dict[str, Any] = {}
        if engine == "archive":
            options = {"compression": rng.choice(("zstd", "gzip"))}
        elif engine == "restic":
            options = {"password_file": f"{root}/missing-secrets/{job_id}.pass"}
        data = {
            "name": name, "engine": engine,
            "sources": [f"{root}/missing-src/{host}/{folder}" for folder in folders],
            "destination": f"{root}/missing-dest/{job_id}",
            "exclude": ["*.tmp", ".cache/"] if rng.random() < 0.6 else [],
            "schedule": schedule,
            "retention": rng.choice(RETENTIONS),
            "options": options,
            "enabled": kind == "manual" or rng.random() > 0.03,
        }
        created = now - HISTORY_DAYS * DAY - rng.uniform(1, 60) * DAY
        jobs.append(PlannedJob(index, job_id, JobSpec.from_input(data).to_dict(), kind,
                               created))
    return jobs


def _natural_runs(job: PlannedJob, now: float, rng: random.Random) -> list[float]:
    """When the job's runs were queued over the last 30 days, as its schedule had them."""
    start = now - HISTORY_DAYS * DAY
    schedule = job.spec.get("schedule")
    if schedule is None:
        return sorted(rng.uniform(start, now - 600) for _ in range(rng.randint(0, 12)))
    step = interval_seconds(schedule)
    if step is not None:
        # The latest run well inside one interval, so none is due when the app starts.
        last = now - rng.uniform(0.05, 0.7) * step
        return sorted(last - k * step for k in range(int((last - start) // step) + 1))
    times = []
    slots = croniter(schedule, datetime.fromtimestamp(start, UTC))
    while (slot := slots.get_next(datetime).timestamp()) <= now:
        times.append(min(slot + rng.uniform(0.001, 0.5), now - 1))
    return times


def _fit_runs(jobs: list[PlannedJob], wanted: int, now: float, rng: random.Random) -> None:
    """Thin or top up the runs to `wanted` in all, keeping each scheduled job's latest.

    The latest run is what the scheduler counts the next one from: keeping it means no
    job is due when the app starts, so nothing runs while pages are measured.
    """
    start = now - HISTORY_DAYS * DAY
    for job in jobs:
        job.runs = [(t, "manual" if job.kind == "manual" else "schedule")
                    for t in _natural_runs(job, now, rng)]
    slots = [(j, i) for j in jobs for i in range(len(j.runs))]
    if len(slots) > wanted:
        keep_last = {(j.index, len(j.runs) - 1) for j in jobs if j.kind != "manual" and j.runs}
        droppable = [s for s in slots if (s[0].index, s[1]) not in keep_last]
        rng.shuffle(droppable)
        drop = droppable[:len(slots) - wanted]
        if len(drop) < len(slots) - wanted:  # fewer runs than scheduled jobs: drop those too
            rest = [s for s in slots if (s[0].index, s[1]) in keep_last]
            rng.shuffle(rest)
            drop += rest[:len(slots) - wanted - len(drop)]
        gone = {(j.index, i) for j, i in drop}
        for job in jobs:
            job.runs = [r for i, r in enumerate(job.runs) if (job.index, i) not in gone]
    else:
        for _ in range(wanted - len(slots)):
            job = rng.choice(jobs)
            job.runs.append((rng.uniform(start, now - 600), "manual"))
        for job in jobs:
            job.runs.sort()


def _checkpoint_counts(runs: int, spare: int, rng: random.Random) -> list[int]:
    """Spread `spare` checkpoints over `runs` runs: exactly that many, unevenly."""
    if runs == 0:
        return []
    counts = [spare // runs + (1 if i < spare % runs else 0) for i in range(runs)]
    for _ in range(runs):
        a, b = rng.randrange(runs), rng.randrange(runs)
        if counts[a] > 0:
            counts[a] -= 1
            counts[b] += 1
    return counts


def _log_time(moment: float) -> str:
    """A time as server/logs.py FORMAT writes it (logging's asctime: local time)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(moment)) + \
        f",{int(moment * 1000) % 1000:03d}"


def plan_log(root: Path, job_count: int, total: int, now: float) -> LogPlan:
    """Plan a log of exactly `total` events: every JobCreated, then runs over 30 days."""
    rng = random.Random(SEED)
    jobs = _plan_jobs(max(1, min(job_count, total)), root, now, rng)
    spare_events = total - len(jobs)
    _fit_runs(jobs, spare_events // EVENTS_PER_RUN, now, rng)
    run_total = sum(len(j.runs) for j in jobs)
    checkpoints = iter(_checkpoint_counts(run_total, spare_events - 3 * run_total, rng))
    planned: list[PlannedEvent] = []
    outcomes: Counter[str] = Counter()
    scheduled_lines: list[tuple[float, str]] = []
    latest = now - 1.0

    def add(moment: float, stream: str, event: Event) -> None:
        planned.append(PlannedEvent(moment, len(planned), stream, event))

    for job in jobs:
        jid, engine = job.job_id, str(job.spec["engine"])
        add(job.created, jid, JobCreated(job_id=jid, spec=job.spec))
        files_base = int(min(2_000_000, max(20, rng.lognormvariate(8.5, 1.6))))
        file_size = min(50e6, max(2_000, rng.lognormvariate(11.5, 1.4)))
        cap = 1_200.0 if job.kind == "hourly" else 4 * 3_600.0
        for number, (queued, trigger) in enumerate(job.runs, start=1):
            rid = f"r-{job.index:05x}{number:07x}"
            queued = min(queued, latest)
            started = min(queued + rng.uniform(0.05, 2.0), latest)
            files = files_base + rng.randint(0, max(1, files_base // 50))
            size = int(files * file_size)
            ended = min(started + min(cap, 2.0 + size / rng.uniform(40e6, 250e6)), latest)
            roll = rng.random()
            outcome = "failed" if roll < 0.06 else "cancelled" if roll < 0.07 else "succeeded"
            if outcome != "succeeded":
                ended = started + (ended - started) * rng.uniform(0.05, 0.9)
            snapshot_id = (f"{rng.getrandbits(32):08x}" if engine == "restic" else
                           datetime.fromtimestamp(started, UTC).strftime("%Y-%m-%dT%H%M%SZ"))
            add(queued, jid, RunQueued(job_id=jid, run_id=rid, trigger=trigger))
            add(started, jid, RunStarted(job_id=jid, run_id=rid))
            steps = next(checkpoints)
            for step in range(1, steps + 1):
                share = step / (steps + 1)
                add(started + (ended - started) * share, jid, RunCheckpointed(
                    job_id=jid, run_id=rid, checkpoint={
                        "engine": engine, "snapshot_id": snapshot_id,
                        "files_done": int(files * share), "bytes_done": int(size * share)}))
            if outcome == "succeeded":
                add(ended, jid, RunSucceeded(job_id=jid, run_id=rid, snapshot_id=snapshot_id,
                                             files=files, bytes=size,
                                             duration=round(ended - started, 3)))
            elif outcome == "failed":
                add(ended, jid, RunFailed(job_id=jid, run_id=rid, error=rng.choice(ERRORS)))
            else:
                add(ended, jid, RunCancelled(job_id=jid, run_id=rid))
            outcomes[outcome] += 1
            if trigger == "schedule":
                scheduled_lines.append((queued, (
                    f"{_log_time(queued)} INFO core.scheduler: job {jid} ({job.spec['name']}) "
                    f"due at {iso(datetime.fromtimestamp(queued, UTC))}: queued run {rid}")))
    planned.sort(key=lambda p: (p.time, p.order))
    scheduled_lines.sort()
    heavy = max(jobs, key=lambda j: (len(j.runs), -j.index))
    return LogPlan(planned, jobs, outcomes, heavy,
                   [line for _, line in scheduled_lines[-APP_LOG_LINES:]])


@dataclass
class WrittenLog:
    """What writing the planned log took and what the store made of it."""

    seconds: float
    commits: int
    restamped: int  # events whose stored time is not the planned one
    drift: float  # the most seconds an event was stamped after its planned time
    chain_ok: bool
    chain_note: str


async def write_log(db_path: Path, plan: Sequence[PlannedEvent]) -> WrittenLog:
    """Append the plan through EventStore, many streams per group commit, in time order.

    The store stamps each group commit with one reading of `utc_now_iso()` (in whichever
    of events.store and events.batch reads it). To spread the runs over 30 days that
    function is replaced, in this process and only while the log is written, by a clock
    that stands at the latest planned time of the chunk of appends in flight: each event
    is stamped at most a chunk's span after its planned time (`drift`), in order. The
    store still writes every row itself and the hash chain covers the stamped times.
    """
    stamp = [utc_now_iso()]

    def planned_clock() -> str:
        return stamp[0]

    restamped, drift = 0, 0.0
    started = time.perf_counter()
    with contextlib.ExitStack() as patches:
        for module in CLOCK_MODULES:
            if hasattr(module, "utc_now_iso"):
                patches.enter_context(mock.patch.object(module, "utc_now_iso",
                                                        planned_clock))
        store = await EventStore.open(db_path)
        try:
            for at in range(0, len(plan), APPEND_CHUNK):
                chunk = plan[at:at + APPEND_CHUNK]
                stamp[0] = iso(datetime.fromtimestamp(chunk[-1].time, UTC))
                stored = await asyncio.gather(*(store.append(p.stream, None, [p.event])
                                                for p in chunk))
                restamped += sum(1 for p, got in zip(chunk, stored, strict=True)
                                 if got[0].time != iso(datetime.fromtimestamp(p.time, UTC)))
                drift = max(drift, chunk[-1].time - chunk[0].time)
            commits = store.commits
        finally:
            await store.close()
    seconds = time.perf_counter() - started

    def check() -> tuple[bool, str]:
        conn = open_readonly(db_path)
        try:
            result = verify(conn)
        finally:
            conn.close()
        if result.ok:
            return True, f"hash chain intact over {result.checked:,} events"
        return False, f"hash chain broken at seq {result.bad_seq}: {result.reason}"

    ok, note = await asyncio.to_thread(check)
    return WrittenLog(seconds, commits, restamped, drift, ok, note)


# --- 2: serving, with a clock around the handlers ------------------------------------------


def _timing_middleware(record: list[float]) -> Any:
    """Outermost middleware: seconds spent in every middleware, handler and render."""
    @web.middleware
    async def handler_clock(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            return await handler(request)
        finally:
            record.append(time.perf_counter() - started)
    return handler_clock


@contextlib.asynccontextmanager
async def _serve(data_dir: Path, record: list[float]) -> AsyncIterator[tuple[str,
                                                                            web.Application]]:
    """Serve the app on a free loopback port, timing handlers; yield (base URL, app)."""
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    app = create_app(Config(data_dir=data_dir, log_to_file=False, log_level="WARNING"))
    app.middlewares.insert(0, _timing_middleware(record))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{int(runner.addresses[0][1])}", app
    finally:
        await runner.cleanup()


# --- 3: server time per page ----------------------------------------------------------------


@dataclass
class PageTimes:
    """One page's request times (seconds): wall time at the client, and in the server."""

    first: float = math.nan  # the first request after start (memos still cold)
    wall: list[float] = field(default_factory=list)
    handler: list[float] = field(default_factory=list)
    bad: Counter[int] = field(default_factory=Counter)  # statuses other than 200


async def time_page(session: aiohttp.ClientSession, path: str, record: list[float],
                    requests: int) -> PageTimes:
    """WARMUP untimed GETs, then `requests` timed ones, one after another."""
    out = PageTimes()
    for i in range(WARMUP + requests):
        before = len(record)
        started = time.perf_counter()
        async with session.get(path, allow_redirects=False) as resp:
            await resp.read()
            status = resp.status
        wall = time.perf_counter() - started
        handler = record[-1] if len(record) > before else math.nan
        if status != 200:
            out.bad[status] += 1
        if i == 0:
            out.first = wall
        if i >= WARMUP:
            out.wall.append(wall)
            out.handler.append(handler)
    return out


# --- 4: bytes per page, gzipped ------------------------------------------------------------


@dataclass
class PageBytes:
    """A page's gzipped HTML and the CSS and JS it links, as the server sends them."""

    html: int
    html_gzipped: bool
    assets: dict[str, int]  # CSS and JS, bytes on the wire (gzipped when the server does)
    other: dict[str, int]  # other static files it links (the icon), not in the total

    @property
    def total(self) -> int:
        """HTML plus CSS and JS."""
        return self.html + sum(self.assets.values())


async def page_bytes(session: aiohttp.ClientSession, path: str,
                     cache: dict[str, tuple[int, bool]]) -> PageBytes:
    """Fetch a page and its static files with Accept-Encoding: gzip; count wire bytes."""
    gz = {"Accept-Encoding": "gzip"}

    async def fetch(url: str) -> tuple[bytes, bool]:
        async with session.get(url, headers=gz, allow_redirects=False) as resp:
            return await resp.read(), resp.headers.get("Content-Encoding") == "gzip"

    body, gzipped = await fetch(path)
    html = gzip.decompress(body) if gzipped else body
    assets: dict[str, int] = {}
    other: dict[str, int] = {}
    for url in dict.fromkeys(STATIC_RE.findall(html.decode("utf-8", "replace"))):
        if url not in cache:
            data, packed = await fetch(url)
            cache[url] = (len(data), packed)
        name = url.rsplit("/", 1)[-1]
        (assets if name.endswith((".css", ".js")) else other)[name] = cache[url][0]
    return PageBytes(len(body), gzipped, assets, other)


# --- 5: DOMContentLoaded in headless Chromium ---------------------------------------------


async def dom_content_loaded(base: str, paths: Sequence[tuple[str, str]]
                             ) -> tuple[dict[str, list[float]], str | None]:
    """NAVIGATIONS per page in a fresh context: domContentLoadedEventEnd (ms) of each.

    Returns (samples by label, None), or ({}, why) when the figure cannot be taken.
    """
    chromium = shutil.which("chromium")
    if chromium is None:
        return {}, "no `chromium` on PATH"
    try:
        from playwright.async_api import Error as PlaywrightError
        from playwright.async_api import async_playwright
    except ImportError as err:
        return {}, f"playwright is not installed ({err})"
    samples: dict[str, list[float]] = {}
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=chromium, headless=True,
                                               args=CHROMIUM_ARGS)
            try:
                # Untimed: the browser's own first navigation (process and GPU-less
                # compositor start) should not land on whichever page comes first.
                context = await browser.new_context()
                await (await context.new_page()).goto(f"{base}/healthz")
                await context.close()
                for label, path in paths:
                    context = await browser.new_context()
                    try:
                        page = await context.new_page()
                        page.set_default_timeout(PATIENCE * 1000)
                        got = samples.setdefault(label, [])
                        for _ in range(NAVIGATIONS):
                            await page.goto(base + path, wait_until="load")
                            got.append(float(await page.evaluate(DCL_SCRIPT)))
                    finally:
                        await context.close()
            finally:
                await browser.close()
    except PlaywrightError as err:
        return samples, f"Chromium failed: {str(err).splitlines()[0]}"
    return samples, None


# --- the run -------------------------------------------------------------------------------


def _pages(job_id: str) -> list[tuple[str, str]]:
    """(label, path) of every page measured."""
    return [("/dashboard", "/dashboard"),
            ("/dashboard?fragment=stats", "/dashboard?fragment=stats"),
            ("/jobs", "/jobs"), ("/jobs?page=10", "/jobs?page=10"),
            ("/jobs/new", "/jobs/new"), ("/jobs/{id}", f"/jobs/{job_id}"),
            ("/jobs/{id}/edit", f"/jobs/{job_id}/edit"), ("/settings", "/settings"),
            ("/logs", "/logs")]


def _p(values: Sequence[float], pct: float) -> str:
    return f"{_ms(percentile(values, pct)):.2f}"


async def run_pages() -> list[Figure | Comparison]:
    """Every page's figures, then the lists at scale against a same-size static file."""
    from bench.page_lists import run_page_lists  # it reuses this module's log writer

    figures: list[Figure | Comparison] = list(await run_page_figures())
    return figures + await run_page_lists()


async def run_page_figures() -> list[Figure]:
    """Build the data, serve it, measure every page; print as it goes; return the figures."""
    job_count = env_int("BENCH_PAGES_JOBS", 1_000)
    total = env_int("BENCH_PAGES_EVENTS", 100_000)
    requests = env_int("BENCH_PAGES_REQUESTS", 200)
    figures: list[Figure] = []
    print(f"\n== pages with {job_count:,} jobs and {total:,} events: server time, "
          "bytes gzipped, DOMContentLoaded ==", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-pages-", dir=TMP_ROOT) as tmp:
        root = Path(tmp)
        data_dir = root / "data"
        now = time.time()
        planned_at = time.perf_counter()
        plan = await asyncio.to_thread(plan_log, root, job_count, total, now)
        plan_seconds = time.perf_counter() - planned_at
        written = await write_log(data_dir / "events.db", plan.events)
        (data_dir / "logs").mkdir(parents=True, exist_ok=True)
        (data_dir / "logs" / "app.log").write_text("\n".join(plan.log_lines) + "\n")
        outcomes = ", ".join(f"{n:,} {k}" for k, n in sorted(plan.runs.items()))
        print(f"  log: {len(plan.events):,} events = {len(plan.jobs):,} JobCreated + "
              f"{sum(plan.runs.values()):,} runs\n  ({outcomes}), each queued, "
              "started, 0+ checkpoints and an ending;\n  planned in "
              f"{plan_seconds:.1f} s, appended through EventStore in {written.seconds:.1f} s "
              f"({written.commits:,} group commits);\n  {written.chain_note}")
        print(f"  event times: runs spread over the last {HISTORY_DAYS} days. The store stamps "
              "each group commit\n  with its clock (utc_now_iso); it was replaced while the "
              "log was written so that it\n  stamps the planned times, a chunk of "
              f"{APPEND_CHUNK} appends at a time: {written.restamped:,} events were\n  "
              f"stamped up to {written.drift / 3600:.1f} h after their planned time."
              + "\n  Sources and destinations do not exist; logs/app.log holds "
              f"{len(plan.log_lines):,} scheduler lines.", flush=True)
        heavy = plan.heavy
        record: list[float] = []
        started = time.perf_counter()
        async with _serve(data_dir, record) as (base, app):
            start_seconds = time.perf_counter() - started
            store = app[STORE]
            seq_before = store.last_seq
            print(f"  app start (replay into memory, YAML projections of {len(plan.jobs):,} "
                  f"jobs): {start_seconds:.1f} s\n  /jobs/{{id}} is {heavy.job_id}: "
                  f"{len(heavy.runs)} runs, {heavy.spec['engine']}, "
                  f"schedule {heavy.spec['schedule']!r}", flush=True)
            pages = _pages(heavy.job_id)
            timeout = aiohttp.ClientTimeout(total=PATIENCE)

            print(f"\n  -- server time: {WARMUP} warm-up then {requests} sequential GETs per "
                  "page (aiohttp client, gzip accepted) --")
            print("  'request' = client wall time from sending the GET to the body read "
                  "(HTTP over loopback, gzip,\n  client parsing; client and server share this "
                  "event loop). 'handler' = time inside the app's\n  middleware chain, "
                  "handler and template render, from a middleware put outermost in this "
                  "app;\n  it leaves out HTTP parsing, gzip and socket writes. 'first' = the "
                  "first request after start\n  (request time: its template is compiled and "
                  "the page's memos are still empty).")
            print(f"  {'page':<28} {'first':>8} {'req p50':>8} {'req p99':>8} "
                  f"{'hdl p50':>8} {'hdl p99':>8}  (ms)")
            times: dict[str, PageTimes] = {}
            async with aiohttp.ClientSession(base, timeout=timeout) as session:
                for label, path in pages:
                    result = await time_page(session, path, record, requests)
                    times[label] = result
                    bad = (f"  NOT 200: {dict(result.bad)}" if result.bad else "")
                    print(f"  {label:<28} {_ms(result.first):>8.2f} {_p(result.wall, 50):>8} "
                          f"{_p(result.wall, 99):>8} {_p(result.handler, 50):>8} "
                          f"{_p(result.handler, 99):>8}{bad}", flush=True)

            print("\n  -- bytes per page on the wire (Accept-Encoding: gzip): the HTML plus "
                  f"the CSS and JS it\n  links; budget {PAGE_BUDGET_KB:.0f} KB "
                  "(1 KB = 1024 B) --")
            sizes: dict[str, PageBytes] = {}
            cache: dict[str, tuple[int, bool]] = {}
            async with aiohttp.ClientSession(base, timeout=timeout,
                                             auto_decompress=False) as raw:
                for label, path in pages:
                    size = await page_bytes(raw, path, cache)
                    sizes[label] = size
                    parts = " + ".join(f"{n} {b / 1024:.1f}" for n, b in size.assets.items())
                    print(f"  {label:<28} HTML {size.html / 1024:5.1f}"
                          f"{'' if size.html_gzipped else ' (not gzipped)'}"
                          f"{' + ' + parts if parts else ''} = {size.total / 1024:.1f} KB",
                          flush=True)
            others = {n: b for s in sizes.values() for n, b in s.other.items()}
            if others:
                print("  not counted (neither CSS nor JS): "
                      + ", ".join(f"{n} {b:,} B" for n, b in others.items()))
            print("  static files gzipped as served: "
                  + ", ".join(f"{u.rsplit('/', 1)[-1]} {'gzip' if g else 'plain'}"
                              for u, (_, g) in cache.items()))

            print("\n  -- time to DOMContentLoaded in headless Chromium over loopback: "
                  f"{NAVIGATIONS} navigations per\n  page in a fresh context (the first "
                  "with an empty cache, the rest with CSS and JS cached);\n  the value is "
                  "performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd --",
                  flush=True)
            dcl, skipped = await dom_content_loaded(base, pages)
            if skipped:
                print(f"  skipped: {skipped}" + ("; figures below are partial" if dcl else ""))
            for label, values in dcl.items():
                print(f"  {label:<28} cold {values[0]:7.1f} ms, warm p50 "
                      f"{percentile(values[1:], 50):6.1f} ms, warm max "
                      f"{max(values[1:], default=math.nan):6.1f} ms", flush=True)
            grew = store.last_seq - seq_before
            print(f"  the log grew by {grew} event(s) while pages were measured"
                  + (" (the scheduler or recovery ran something: figures may be disturbed)"
                     if grew else ""), flush=True)

        for label, _ in pages:
            shown = f"{label} ({len(heavy.runs)} runs)" if label == "/jobs/{id}" else label
            t = times[label]
            figures.append(Figure(f"{shown}: request p50", _ms(percentile(t.wall, 50)), "ms",
                                  target=SERVER_TARGET_MS, higher_is_better=False))
            figures.append(Figure(f"{shown}: request p99", _ms(percentile(t.wall, 99)), "ms"))
            figures.append(Figure(f"{shown}: handler p50", _ms(percentile(t.handler, 50)),
                                  "ms", target=SERVER_TARGET_MS, higher_is_better=False))
            figures.append(Figure(f"{shown}: gzipped with CSS+JS", sizes[label].total / 1024,
                                  "KB", target=PAGE_BUDGET_KB, higher_is_better=False))
            values = dcl.get(label, [])
            figures.append(Figure(f"{shown}: DOMContentLoaded cold",
                                  values[0] if values else math.nan, "ms"))
            figures.append(Figure(f"{shown}: DOMContentLoaded warm p50",
                                  percentile(values[1:], 50), "ms"))
    return figures

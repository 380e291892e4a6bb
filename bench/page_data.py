"""The log the page benchmarks serve: 1,000 jobs as the API takes them and their runs
over the last 30 days, planned (plan_log) and written through EventStore with the planned
times (write_log). Used by bench/pages.py and bench/page_lists.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

from croniter import croniter

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

HISTORY_DAYS = 30
DAY = 86_400.0
EVENTS_PER_RUN = 5  # queued, started, ~2 checkpoints, an ending: sets how many runs fit
APP_LOG_LINES = 5_000  # lines of scheduler log written to logs/app.log for the Logs page
# Appends in flight at once while writing the log: about one group commit, all stamped
# with the chunk's latest planned time (a few hours' span over 30 days of runs).
APPEND_CHUNK = MAX_BATCH_CALLS // 2
SEED = 20_251_124

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

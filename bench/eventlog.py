"""Event log benchmarks: append throughput, replay, WebSocket fan-out (and the chain check).

Each figure is a Comparison against a peer run interleaved with it (bench/logfigures.py);
the measuring code is here (append, replay) and in bench/wsfanout.py. Temporary data
lives in tempfile.TemporaryDirectory under /tmp and is removed when each benchmark ends.
"""

from __future__ import annotations

import asyncio
import math
import os
import resource
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.compare import Comparison, format_value
from events.store import EventStore
from events.types import (
    Event,
    JobCreated,
    RunCheckpointed,
    RunFailed,
    RunQueued,
    RunStarted,
    RunSucceeded,
    SettingsChanged,
)

TMP_ROOT = "/tmp"
REPO_ROOT = Path(__file__).resolve().parent.parent

# Replay log shape: each job is created once, then runs of
# RunQueued, RunStarted, CHECKPOINTS_PER_RUN x RunCheckpointed, RunSucceeded/RunFailed.
REPLAY_JOBS = 1_000
CHECKPOINTS_PER_RUN = 5
FAIL_EVERY = 20  # one run in this many fails instead of succeeding
GEN_CHUNK = 250  # events per append call while generating the replay log


# --- small helpers -----------------------------------------------------------------------


def env_int(name: str, default: int) -> int:
    """Read a positive whole number from the environment, else the default."""
    raw = os.environ.get(name, "").replace("_", "").replace(",", "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else default


def env_float(name: str, default: float) -> float:
    """Read a positive number from the environment, else the default."""
    try:
        value = float(os.environ.get(name, ""))
    except ValueError:
        return default
    return value if value > 0 else default


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of values (pct from 0 to 100); NaN when there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def job_id(index: int) -> str:
    """A job id (stream name) that matches models/ids.py JOB_ID_RE."""
    return f"job-{index:06d}"


def run_id(job_index: int, run_index: int) -> str:
    """A run id that matches models/ids.py RUN_ID_RE (r- and 12 hex digits)."""
    return f"r-{job_index:06x}{run_index:06x}"


def job_spec(index: int) -> dict[str, Any]:
    """A realistic job spec, as a person would create it."""
    return {
        "name": f"Nightly backup {index}",
        "engine": ("mirror", "archive", "rsync", "restic")[index % 4],
        "sources": [f"/home/user{index % 50}/documents", f"/home/user{index % 50}/photos"],
        "destination": f"/mnt/backup/job-{index:06d}",
        "include": [],
        "exclude": ["*.tmp", ".cache/"],
        "schedule": f"{index % 60} 3 * * *",
        "retention": {"keep_last": 7, "keep_daily": 14, "keep_weekly": 8, "keep_monthly": 12},
        "options": {"compression": "zstd", "one_file_system": True},
    }


def checkpoint(step: int) -> dict[str, Any]:
    """A realistic checkpoint payload (what a run needs to resume)."""
    return {"phase": "copy", "files_done": 1_000 * step, "bytes_done": 4_096_000 * step,
            "last_path": f"/home/user/documents/projects/report-{step:04d}.odt"}


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft open-files limit towards `wanted` (bounded by the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


# --- figures -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    """One result line: a value with its unit, and the target it is held against (if any)."""

    name: str
    value: float
    unit: str
    target: float | None = None
    higher_is_better: bool = True

    @property
    def value_text(self) -> str:
        """The value with its unit."""
        return format_value(self.value, self.unit)

    @property
    def target_text(self) -> str:
        """The target as text ('-' when there is none)."""
        if self.target is None:
            return "-"
        sign = ">=" if self.higher_is_better else "<"
        return f"{sign} {format_value(self.target, self.unit)}"

    @property
    def verdict(self) -> str:
        """OK, MISS, or blank when there is no target."""
        if self.target is None:
            return ""
        if math.isnan(self.value) or math.isinf(self.value):
            return "MISS"
        met = self.value >= self.target if self.higher_is_better else self.value < self.target
        return "OK" if met else "MISS"


def format_table(figures: Sequence[Figure]) -> str:
    """Render figures as an aligned text table with targets and verdicts."""
    header = ("figure", "value", "target", "")
    rows = [header] + [(f.name, f.value_text, f.target_text, f.verdict) for f in figures]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = []
    for i, (name, value, target, verdict) in enumerate(rows):
        lines.append(f"  {name:<{widths[0]}}  {value:>{widths[1]}}  {target:<{widths[2]}}  "
                     f"{verdict}".rstrip())
        if i == 0:
            lines.append("  " + "-" * (sum(widths) + 10))
    return "\n".join(lines)


# --- 1 and 2: append throughput and single-append latency ----------------------------------


@dataclass
class AppendResult:
    """What one append-throughput configuration measured."""

    appenders: int
    events: int
    seconds: float
    commits: int
    latencies: list[float] = field(repr=False)

    @property
    def rate(self) -> float:
        """Durable events per second."""
        return self.events / self.seconds if self.seconds > 0 else math.nan

    @property
    def per_commit(self) -> float:
        """Events carried by each transaction (group commit factor)."""
        return self.events / self.commits if self.commits else math.nan


async def _appender(store: EventStore, stream: str, deadline: float,
                    latencies: list[float]) -> int:
    """Append single-event calls to one stream, tracking its version, until the deadline."""
    version = store.stream_version(stream)
    count = 0
    rid = run_id(0, 1)  # a run knows its id: worked out once, not per checkpoint
    while time.perf_counter() < deadline:
        ev = RunCheckpointed(job_id=stream, run_id=rid, checkpoint=checkpoint(count))
        started = time.perf_counter()
        await store.append(stream, version, [ev])
        latencies.append(time.perf_counter() - started)
        version += 1
        count += 1
    return count


async def bench_append(appenders: int, seconds: float) -> AppendResult:
    """Run `appenders` concurrent appenders on a fresh log for `seconds`."""
    with tempfile.TemporaryDirectory(prefix="bench-append-", dir=TMP_ROOT) as tmp:
        store = await EventStore.open(Path(tmp) / "events.db")
        try:
            streams = [job_id(i) for i in range(appenders)]
            # Each stream starts with its JobCreated, as in real use (not timed).
            await asyncio.gather(*(store.append(s, 0, [JobCreated(job_id=s, spec=job_spec(i))])
                                   for i, s in enumerate(streams)))
            latencies: list[float] = []
            commits_before = store.commits
            started = time.perf_counter()
            counts = await asyncio.gather(*(_appender(store, s, started + seconds, latencies)
                                            for s in streams))
            elapsed = time.perf_counter() - started
            commits = store.commits - commits_before
        finally:
            await store.close()
    return AppendResult(appenders, sum(counts), elapsed, commits, latencies)


# --- 3: replay of a large log --------------------------------------------------------------


def job_events(job_index: int, count: int) -> Iterator[Event]:
    """Yield exactly `count` events of one job: created, then run after run."""
    jid = job_id(job_index)
    if count <= 0:
        return
    yield JobCreated(job_id=jid, spec=job_spec(job_index))
    emitted, run = 1, 0
    while True:
        run += 1
        rid = run_id(job_index, run)
        steps: list[Event] = [RunQueued(job_id=jid, run_id=rid, trigger="schedule"),
                              RunStarted(job_id=jid, run_id=rid)]
        steps += [RunCheckpointed(job_id=jid, run_id=rid, checkpoint=checkpoint(step))
                  for step in range(1, CHECKPOINTS_PER_RUN + 1)]
        if run % FAIL_EVERY == 0:
            steps.append(RunFailed(job_id=jid, run_id=rid,
                                   error="destination full: No space left on device"))
        else:
            steps.append(RunSucceeded(job_id=jid, run_id=rid,
                                      snapshot_id=f"{job_index:06d}-{run:06d}",
                                      files=12_345 + run, bytes=987_654_321 + run,
                                      duration=42.5))
        for ev in steps:
            if emitted >= count:
                return
            yield ev
            emitted += 1


async def generate_log(db_path: Path, total: int) -> tuple[int, int]:
    """Append `total` events of REPLAY_JOBS jobs through the store; return (events, commits)."""
    jobs = max(1, min(REPLAY_JOBS, total))
    settings_events = min(10, total - jobs)
    job_total = total - settings_events
    per_job, extra = divmod(job_total, jobs)
    store = await EventStore.open(db_path)
    try:
        async def feed(index: int, count: int) -> None:
            batch: list[Event] = []
            for ev in job_events(index, count):
                batch.append(ev)
                if len(batch) >= GEN_CHUNK:
                    await store.append(job_id(index), None, batch)
                    batch = []
            if batch:
                await store.append(job_id(index), None, batch)

        await asyncio.gather(*(feed(i, per_job + (1 if i < extra else 0)) for i in range(jobs)))
        for i in range(settings_events):
            await store.append("settings", None,
                               [SettingsChanged(changes={"max_concurrent_runs": 2 + i % 3})])
        return store.last_seq, store.commits
    finally:
        await store.close()


# --- running everything --------------------------------------------------------------------


async def run(selected: Sequence[str]) -> list[Figure | Comparison]:
    """Run the selected benchmarks (append, replay and chain, ws), print as they go; return
    their Comparisons (and the chain check's figures)."""
    from bench import logfigures  # it imports this module's helpers

    results: list[Figure | Comparison] = []
    # Each side of a comparison runs its own event loop (asyncio.run), so both are run
    # from a thread here, the same way for ours and the peer.
    if "append" in selected:
        results += await asyncio.to_thread(logfigures.append_comparisons)
    if "replay" in selected:
        results += await asyncio.to_thread(logfigures.replay_comparisons)
    if "chain" in selected or "replay" in selected:
        from bench.chaincheck import run_chain  # it imports this module's helpers

        results += await run_chain()
    if "ws" in selected:
        results += await asyncio.to_thread(logfigures.ws_comparisons)
    return results

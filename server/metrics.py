"""The /metrics endpoint: Prometheus figures derived from the in-memory state at scrape time.

Nothing counts twice: every figure is read from what already exists (the state folded
from the log, the store, the projector, the open WebSockets) when Prometheus asks, through
one collector in a registry of this app's own (not the process-wide default registry,
so two apps in one process, as in the tests, never mix their figures).

Figures over finished runs are memoised per job on the job's stream version and only
looked at again when the state's `finished_seq` moved, so a scrape with 1,000 jobs and
100,000 runs walks only the jobs whose runs changed since the last one.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import importlib.metadata
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from core.queries import parse_time
from core.state import JobView, RunView, State
from models.runs import TERMINAL_STATES
from server.keys import PROJECTOR, STATE, STORE, WEBSOCKETS

METRICS_PATH = "/metrics"
# Upper bounds (seconds) of the run duration histogram: one second to one day.
DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0,
                    3600.0, 7200.0, 14400.0, 28800.0, 43200.0, 86400.0)
BUCKET_LABELS = (*(repr(b) for b in DURATION_BUCKETS), "+Inf")  # "1.0", ... as Go writes
OUTCOMES = tuple(sorted(TERMINAL_STATES))  # cancelled, discarded, failed, succeeded
# Outcomes with a duration worth a histogram: a discarded run was cut off and given up,
# the time between its start and the discard is not time spent backing up.
TIMED_OUTCOMES = ("cancelled", "failed", "succeeded")
ACTIVE_SHOWN = ("queued", "running", "paused", "interrupted")
# Prometheus puts its own `job` label (the scrape job) on every series, and renames one
# the target sends to `exported_job`; the job's name is sent under this label instead.
JOB_LABELS = ("job_id", "job_name")


@dataclass
class Durations:
    """Run durations: how many fell in each bucket (not cumulative, +Inf last) and their sum."""

    counts: list[int] = field(default_factory=lambda: [0] * len(BUCKET_LABELS))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        """Count one run that took `seconds`."""
        self.counts[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        self.total += seconds

    def add(self, other: Durations, sign: int = 1) -> None:
        """Add (or with sign -1 take away) another set of durations."""
        for i, count in enumerate(other.counts):
            self.counts[i] += sign * count
        self.total += sign * other.total

    def cumulative(self) -> list[tuple[str, float]]:
        """The buckets as Prometheus wants them: cumulative counts, +Inf last."""
        out, running = [], 0
        for label, count in zip(BUCKET_LABELS, self.counts, strict=True):
            running += count
            out.append((label, float(running)))
        return out


@dataclass
class JobFigures:
    """What a job's finished runs add up to, as of one version of its stream."""

    version: int
    outcomes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    bytes: int = 0
    files: int = 0
    last_success: float = 0.0  # unix seconds; 0 when it never succeeded
    last_duration: float | None = None
    durations: dict[str, Durations] = field(
        default_factory=lambda: {o: Durations() for o in TIMED_OUTCOMES})


def run_seconds(run: RunView) -> float | None:
    """How long a finished run took, or None when it never ran (or was discarded)."""
    if run.state == "succeeded":
        return run.duration  # what the engine measured, without time spent queued
    if run.state in TIMED_OUTCOMES and run.started and run.finished:
        return max(0.0, (parse_time(run.finished) - parse_time(run.started)).total_seconds())
    return None


def fold_runs(runs: Iterable[RunView], version: int) -> JobFigures:
    """Add up finished runs (in queue order, so the last one seen is the latest)."""
    figures = JobFigures(version)
    last_success: RunView | None = None
    for run in runs:
        # Restores, verifies and prunes are runs too, but back nothing up.
        if run.state not in TERMINAL_STATES or run.kind != "backup":
            continue
        figures.outcomes[run.state] += 1
        if run.state == "succeeded":
            figures.bytes += run.bytes
            figures.files += run.files
            last_success = run
        seconds = run_seconds(run)
        if seconds is not None:
            figures.durations[run.state].observe(seconds)
            figures.last_duration = seconds
    if last_success is not None and last_success.finished:
        figures.last_success = parse_time(last_success.finished).timestamp()
    return figures


def event_log_bytes(db_path: Path) -> int:
    """The event log's size on disk: events.db and its write-ahead log."""
    total = 0
    for path in (db_path, db_path.with_name(db_path.name + "-wal")):
        with contextlib.suppress(FileNotFoundError):
            total += os.stat(path).st_size
    return total


def build_version() -> str:
    """The installed backup-manager version, or 'unknown' when run from a bare checkout."""
    try:
        return importlib.metadata.version("backup-manager")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class AppCollector(Collector):
    """Builds every backup_manager_* family from the app's state when a scrape asks."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self.version = build_version()
        # Refreshed by the handler off the event loop just before each scrape.
        self.log_bytes = 0
        self._jobs: dict[str, JobFigures] = {}
        self._finished_seq: int | None = None
        # Durations of every run counted so far, deleted jobs' included: the histogram has
        # no job label, so dropping a deleted job's runs would look like a counter reset.
        # (A job made, run and deleted between two scrapes is only counted after a restart.)
        self._durations = {o: Durations() for o in TIMED_OUTCOMES}

    def _refresh(self, state: State) -> None:
        """Bring the per-job figures up to date with the state."""
        changed = state.finished_seq != self._finished_seq
        if not changed and len(self._jobs) == len(state.jobs):
            return  # no run finished, no job came or went: nothing to add up again
        if self._finished_seq is None:
            # First scrape: runs of jobs deleted before this start still count in the
            # histogram, as they did in the process that saw them.
            gone = [r for r in state.runs.values() if r.job_id not in state.jobs]
            retired = fold_runs(gone, 0)
            for outcome, durations in retired.durations.items():
                self._durations[outcome].add(durations)
        for job_id in [j for j in self._jobs if j not in state.jobs]:
            del self._jobs[job_id]  # deleted: its series end, its durations stay counted
        for job_id, job in state.jobs.items():
            cached = self._jobs.get(job_id)
            # A changed version alone (a checkpoint, a rename) changes nothing finished;
            # only when finished_seq moved can a job's finished runs differ.
            if cached is not None and (cached.version == job.version or not changed):
                continue
            figures = fold_runs(self._job_runs(state, job), job.version)
            for outcome, durations in figures.durations.items():
                if cached is not None:
                    self._durations[outcome].add(cached.durations[outcome], -1)
                self._durations[outcome].add(durations)
            self._jobs[job_id] = figures
        self._finished_seq = state.finished_seq

    @staticmethod
    def _job_runs(state: State, job: JobView) -> Iterator[RunView]:
        for run_id in job.run_ids:
            run = state.runs.get(run_id)
            if run is not None:
                yield run

    def collect(self) -> Iterator[Metric]:
        """Every family, built from the state as it is now."""
        app = self.app
        state = app[STATE]
        self._refresh(state)
        yield self._build_info()
        yield from self._job_families(state)
        yield from self._run_families(state)
        store, projector = app[STORE], app[PROJECTOR]
        yield GaugeMetricFamily("backup_manager_event_log_seq",
                                "The seq of the last event committed to the event log.",
                                value=store.last_seq)
        yield GaugeMetricFamily("backup_manager_event_log_bytes",
                                "Size on disk of events.db plus its events.db-wal file.",
                                value=self.log_bytes)
        yield GaugeMetricFamily("backup_manager_projector_lag_events",
                                "Committed events not yet written to the YAML projections.",
                                value=projector.lag)
        yield GaugeMetricFamily("backup_manager_websocket_clients",
                                "WebSocket clients connected to /ws now.",
                                value=len(app[WEBSOCKETS]))

    def _build_info(self) -> GaugeMetricFamily:
        family = GaugeMetricFamily("backup_manager_build_info",
                                   "Always 1; the version label says which build is running.",
                                   labels=["version"])
        family.add_metric([self.version], 1)
        return family

    def _job_families(self, state: State) -> Iterator[Metric]:
        """The per-job series, for jobs that exist (a deleted job's series end)."""
        runs = CounterMetricFamily(
            "backup_manager_runs_total",
            "Finished runs by outcome (succeeded, failed, cancelled, discarded). A run that "
            "could not start (source or destination missing) counts as failed.",
            labels=[*JOB_LABELS, "outcome"])
        backed_up = CounterMetricFamily(
            "backup_manager_backed_up_bytes_total",
            "Bytes in the snapshots of succeeded runs, summed over runs.", labels=JOB_LABELS)
        files = CounterMetricFamily(
            "backup_manager_backed_up_files_total",
            "Files in the snapshots of succeeded runs, summed over runs.", labels=JOB_LABELS)
        last_success = GaugeMetricFamily(
            "backup_manager_last_success_timestamp_seconds",
            "Unix time the job's latest succeeded run finished; 0 when it never succeeded, "
            "so an alert on time() - this > 86400 also fires for a job never backed up.",
            labels=JOB_LABELS)
        last_duration = GaugeMetricFamily(
            "backup_manager_last_run_duration_seconds",
            "How long the job's latest finished run took (absent before the first one).",
            labels=JOB_LABELS)
        for job_id, figures in self._jobs.items():
            job = state.jobs.get(job_id)
            if job is None:
                continue
            labels = [job_id, str(job.spec.get("name", job_id))]
            for outcome, count in figures.outcomes.items():
                runs.add_metric([*labels, outcome], count)
            backed_up.add_metric(labels, figures.bytes)
            files.add_metric(labels, figures.files)
            last_success.add_metric(labels, figures.last_success)
            if figures.last_duration is not None:
                last_duration.add_metric(labels, figures.last_duration)
        yield from (runs, backed_up, files, last_success, last_duration)

    def _run_families(self, state: State) -> Iterator[Metric]:
        """Runs not finished yet, and the duration histogram of finished ones."""
        active = GaugeMetricFamily(
            "backup_manager_active_runs",
            "Runs not finished now, by state (interrupted: waiting to be resumed or discarded).",
            labels=["state"])
        counts = dict.fromkeys(ACTIVE_SHOWN, 0)
        for run in state.active_runs():
            if run.job_id in state.jobs and run.state in counts:
                counts[run.state] += 1
        for run_state, count in counts.items():
            active.add_metric([run_state], count)
        yield active
        durations = HistogramMetricFamily(
            "backup_manager_run_duration_seconds",
            "How long finished runs took, by outcome: the engine's own time for succeeded "
            "runs, start to end for failed and cancelled ones. Deleted jobs' runs included.",
            labels=["outcome"])
        for outcome, observed in self._durations.items():
            durations.add_metric([outcome], observed.cumulative(), observed.total)
        yield durations


class Collected(Collector):
    """Families already collected, to be written out away from the state they came from."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        """The families as collected."""
        return self.families


METRICS = web.AppKey("metrics", AppCollector)


async def metrics(request: web.Request) -> web.Response:
    """Answer a Prometheus scrape in the text exposition format."""
    collector = request.app[METRICS]
    # A stat is quick on a local disk, but not on every disk: never on the event loop.
    collector.log_bytes = await asyncio.to_thread(event_log_bytes, request.app[STORE].path)
    # Reading the state must happen on the loop (it changes there); writing ~8,000
    # samples out for 1,000 jobs takes tens of milliseconds, so that happens in a thread.
    families = list(collector.registry.collect())
    body = await asyncio.to_thread(generate_latest, Collected(families))
    response = web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST,
                                                "Cache-Control": "no-store"})
    response.enable_compression()  # gzip when the scraper accepts it (Prometheus does)
    return response


def setup_metrics_routes(app: web.Application) -> None:
    """Declare /metrics and its registry (auth_middleware answers 401 without a token)."""
    app[METRICS] = AppCollector(app)
    app.router.add_get(METRICS_PATH, metrics, name="metrics")

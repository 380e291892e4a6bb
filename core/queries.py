"""Read models for the pages: dashboard figures, the 30-day chart, job rows.

Everything here only reads the in-memory state. Page renders must stay fast with
thousands of jobs and runs, so the costly parts (next run times, the chart) are
memoised on what they depend on instead of recomputed on every request.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from core.paging import JobIndex, queue
from core.scheduler import Scheduler
from core.state import JobView, RunView, State

CHART_DAYS = 30


def parse_time(value: str) -> datetime:
    """An event time (ISO 8601, Z suffix) as an aware datetime."""
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def iso(value: datetime) -> str:
    """A datetime as the log writes times (UTC, Z suffix)."""
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass
class DashboardStats:
    """The figures on the dashboard cards."""

    jobs: int = 0
    enabled: int = 0
    running: int = 0
    queued: int = 0
    paused: int = 0
    interrupted: int = 0
    succeeded_24h: int = 0
    failed_24h: int = 0
    backup_bytes: int = 0
    next_run: datetime | None = None
    next_run_job: JobView | None = None


@dataclass
class ChartDay:
    """One day of the 30-day chart."""

    day: str
    succeeded: int = 0
    failed: int = 0
    bytes: int = 0


@dataclass
class JobRow:
    """One line of the jobs list."""

    job: JobView
    active: RunView | None
    last_run: RunView | None
    last_success: RunView | None
    next_run: datetime | None


@dataclass
class Queries:
    """Page read models over the state, with memos keyed on what each depends on."""

    state: State
    scheduler: Scheduler
    _next: dict[str, tuple[tuple[Any, ...], datetime | None]] = field(default_factory=dict)
    _chart: tuple[tuple[int, str], list[ChartDay]] | None = None
    _jobs: tuple[int, DashboardStats] | None = None
    _index: JobIndex | None = None
    _day: tuple[tuple[int, datetime], tuple[int, int]] | None = None
    _active: tuple[int, dict[str, list[RunView]]] | None = None
    _by_name: tuple[int, list[JobView]] | None = None

    @property
    def job_index(self) -> JobIndex:
        """Job ids in order, for lists read a page at a time (core/paging.py)."""
        if self._index is None:
            self._index = JobIndex(self.state)
        return self._index

    def next_run(self, job: JobView) -> datetime | None:
        """The job's next scheduled run, memoised on what the schedule counts from."""
        key = (job.spec.get("schedule"), job.enabled, job.updated,
               job.run_ids[-1] if job.run_ids else None)
        memo = self._next.get(job.job_id)
        if memo is not None and memo[0] == key:
            return memo[1]
        when = self.scheduler.next_run(job)
        self._next[job.job_id] = (key, when)
        return when

    def runs_newest_first(self) -> Iterator[RunView]:
        """Every run of an existing job, newest queued first (no copy of the run table)."""
        for run in reversed(self.state.runs.values()):
            if run.job_id in self.state.jobs:
                yield run

    def recent_runs(self, limit: int = 10) -> list[RunView]:
        """The latest runs across all jobs."""
        out = []
        for run in self.runs_newest_first():
            out.append(run)
            if len(out) >= limit:
                break
        return out

    def last_success(self, job: JobView) -> RunView | None:
        """The job's latest run that succeeded (not the same as its latest run)."""
        for run_id in reversed(job.run_ids):
            run = self.state.runs.get(run_id)
            if run is not None and run.state == "succeeded" and run.kind == "backup":
                return run
        return None

    def last_backup(self, job: JobView) -> RunView | None:
        """The job's latest backup run (restores, verifies and prunes are runs too)."""
        for run_id in reversed(job.run_ids):
            run = self.state.runs.get(run_id)
            if run is not None and run.kind == "backup":
                return run
        return None

    def job_row(self, job: JobView) -> JobRow:
        """What the jobs list shows for a job."""
        last = self.last_backup(job)
        # The state keeps unfinished runs apart: no walk through the job's whole history.
        active = next(iter(self.active_by_job().get(job.job_id, ())), None)
        return JobRow(job, active, last, self.last_success(job), self.next_run(job))

    def jobs_by_name(self) -> list[JobView]:
        """Every job by name (then id), sorted once per log position, not per request."""
        if self._by_name is None or self._by_name[0] != self.state.seq:
            jobs = sorted(self.state.jobs.values(),
                          key=lambda j: (str(j.spec.get("name", "")).lower(), j.job_id))
            self._by_name = (self.state.seq, jobs)
        return self._by_name[1]

    def active_by_job(self) -> dict[str, list[RunView]]:
        """Unfinished runs by job, in queue order, memoised on the log position (a page of
        50 job rows reads it once, not a sort of the whole queue per row)."""
        if self._active is None or self._active[0] != self.state.seq:
            by_job: dict[str, list[RunView]] = {}
            for run in queue(self.state):
                by_job.setdefault(run.job_id, []).append(run)
            self._active = (self.state.seq, by_job)
        return self._active[1]

    def dashboard(self, now: datetime | None = None) -> DashboardStats:
        """The dashboard card figures."""
        now = now or datetime.now(UTC)
        stats = replace(self._job_figures())
        for run in queue(self.state):  # sorted once per log position
            if run.job_id in self.state.jobs and run.state in ("running", "queued", "paused",
                                                                "interrupted"):
                setattr(stats, run.state, getattr(stats, run.state) + 1)
        stats.succeeded_24h, stats.failed_24h = self._last_24h(now)
        return stats

    def _last_24h(self, now: datetime) -> tuple[int, int]:
        """Backups succeeded and failed in the 24 hours before `now`, memoised until a run
        ends or the minute turns (not a walk through a day of runs on every request)."""
        key = (self.state.finished_seq, now.replace(second=0, microsecond=0))
        if self._day is not None and self._day[0] == key:
            return self._day[1]
        since = iso(key[1] - timedelta(hours=24))
        succeeded = failed = 0
        for run in self._finished_since(iso(key[1] - timedelta(hours=48))):
            if run.finished is not None and run.finished >= since and run.kind == "backup":
                if run.state == "succeeded":
                    succeeded += 1
                elif run.state == "failed":
                    failed += 1
        self._day = (key, (succeeded, failed))
        return succeeded, failed

    def _job_figures(self) -> DashboardStats:
        """Job counts, backup size and the next run, memoised on the log position."""
        if self._jobs is not None and self._jobs[0] == self.state.seq:
            return self._jobs[1]
        stats = DashboardStats(jobs=len(self.state.jobs))
        for job in self.state.jobs.values():
            if job.enabled:
                stats.enabled += 1
            success = self.last_success(job)
            if success is not None:
                stats.backup_bytes += success.bytes
            when = self.next_run(job)
            if when is not None and (stats.next_run is None or when < stats.next_run):
                stats.next_run, stats.next_run_job = when, job
        self._jobs = (self.state.seq, stats)
        return stats

    def chart(self, now: datetime | None = None) -> list[ChartDay]:
        """Runs and bytes per day for the last 30 days, oldest first."""
        now = now or datetime.now(UTC)
        today = now.date()
        key = (self.state.finished_seq, today.isoformat())
        if self._chart is not None and self._chart[0] == key:
            return self._chart[1]
        first = today - timedelta(days=CHART_DAYS - 1)
        days = {(first + timedelta(days=i)).isoformat(): ChartDay((first + timedelta(days=i))
                                                                 .isoformat())
                for i in range(CHART_DAYS)}
        for run in self._finished_since(first.isoformat()):
            day = days.get((run.finished or "")[:10])
            if day is None or run.kind != "backup":  # the chart shows backups
                continue
            if run.state == "succeeded":
                day.succeeded += 1
                day.bytes += run.bytes
            elif run.state == "failed":
                day.failed += 1
        result = list(days.values())
        self._chart = (key, result)
        return result

    def _finished_since(self, cutoff: str) -> Iterator[RunView]:
        """Finished runs queued after a day before `cutoff` (runs rarely last a day)."""
        margin = iso(parse_time(cutoff + ("T00:00:00Z" if len(cutoff) == 10 else ""))
                     - timedelta(days=1))
        for run in self.runs_newest_first():
            if run.queued < margin:
                break
            if run.finished is not None and run.finished >= cutoff:
                yield run

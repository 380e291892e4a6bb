"""The scheduler: queues a run of each enabled, scheduled job when its next time comes.

A job's next time is counted from its latest run (whatever started it) or, when it
never ran or was changed since, from its last change. So a schedule missed while the
server was down runs once on start, not once per missed slot: one run moves the base
to now. A job whose run is still going is not started again; its missed slot runs
once that run finishes. Cron expressions are read in UTC by croniter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from croniter import CroniterError, croniter

from core.commands import Commands
from core.errors import Conflict
from core.state import JobView, State
from events.record import StoredEvent
from events.store import ConcurrencyError
from events.types import Event, event_classes
from models.job import interval_seconds

log = logging.getLogger(__name__)

MAX_SLEEP = 30.0  # seconds; bounds how late a wall-clock jump (suspend, NTP) is noticed
MIN_SLEEP = 0.05  # seconds; a floor so a due job that cannot start never spins the loop
MIN_INTERVAL = 60  # seconds; what models.job accepts, checked again for state read as is

# Events that can move a job's next time or unblock it (Event.wakes_scheduler): the
# sleeping loop re-plans. Run endings matter because a job with a run going is left out
# of the plan.
WAKE_EVENTS: frozenset[type[Event]] = frozenset(
    cls for cls in event_classes() if cls.wakes_scheduler)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _parse_time(text: str) -> datetime:
    """An ISO time from the log (Z suffix) as an aware UTC datetime."""
    return datetime.fromisoformat(text).astimezone(UTC)


class Scheduler:
    """Starts scheduled runs on time, from a background loop or one tick at a time."""

    def __init__(self, state: State, commands: Commands,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.state = state
        self.commands = commands
        # Aware UTC, and the clock the log stamps events with: next runs are counted
        # from those stamps (the wall clock, unless a test replaces both).
        self.clock = clock or _utc_now
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._reported_invalid: set[tuple[str, str]] = set()
        self._reported_blocked: dict[str, str] = {}  # job id -> the run it waits for

    # --- when ---------------------------------------------------------------------

    def next_run(self, job: JobView) -> datetime | None:
        """When the job should run next (maybe already past), or None if never by schedule."""
        schedule = job.spec.get("schedule")
        if not job.enabled or schedule is None:
            return None
        if not isinstance(schedule, str):
            self._report_invalid(job, repr(schedule))
            return None
        base = self._base_time(job)
        seconds = interval_seconds(schedule)
        if seconds is not None:
            if seconds < MIN_INTERVAL:  # "every 0 minutes" would start a run every tick
                self._report_invalid(job, schedule)
                return None
            return base + timedelta(seconds=seconds)
        # Same rule as models.job: five fields only (croniter also takes seconds/years).
        if len(schedule.split()) != 5 or not croniter.is_valid(schedule):
            self._report_invalid(job, schedule)
            return None
        try:
            return croniter(schedule, base).get_next(datetime).astimezone(UTC)
        except CroniterError:  # a valid-looking date that never comes, like "0 0 31 2 *"
            self._report_invalid(job, schedule)
            return None

    def due_soon(self) -> list[tuple[str, datetime]]:
        """Scheduled jobs with their next run time, soonest first."""
        planned = []
        for job in list(self.state.jobs.values()):
            when = self._next_run_logged(job)
            if when is not None:
                planned.append((job.job_id, when))
        return sorted(planned, key=lambda item: (item[1], item[0]))

    def _base_time(self, job: JobView) -> datetime:
        """The time the next run is counted from: the latest run or change of the job."""
        # `updated` too, so a changed (or re-enabled) schedule counts from the change and
        # slots that passed before it are not caught up.
        base = max(_parse_time(job.created), _parse_time(job.updated))
        for run_id in reversed(job.run_ids):  # newest last, so the first found is the latest
            run = self.state.runs.get(run_id)
            # Only backups: a restore or verify of the job must not push its schedule back.
            if run is not None and run.kind == "backup":
                return max(base, _parse_time(run.queued))
        return base

    def _next_run_logged(self, job: JobView) -> datetime | None:
        """next_run, but a job whose state cannot be read is logged and left out."""
        try:
            return self.next_run(job)
        except Exception:  # one damaged job must not stop the others from running
            log.exception("cannot work out the next run of job %s", job.job_id)
            return None

    def _report_invalid(self, job: JobView, schedule: str) -> None:
        # Once per job and schedule: the loop asks every few seconds and the log would
        # otherwise fill with the same line.
        key = (job.job_id, schedule)
        if key not in self._reported_invalid:
            self._reported_invalid.add(key)
            log.warning("job %s (%s) has an unusable schedule %s; it will not run on a "
                        "schedule until it is fixed", job.job_id, job.spec.get("name"),
                        schedule[:80])

    # --- starting runs ----------------------------------------------------------------

    async def tick(self) -> list[str]:
        """Queue a run of every job that is due now; return the run ids started."""
        now = self.clock()
        started: list[str] = []
        for gone in [j for j in self._reported_blocked if j not in self.state.jobs]:
            del self._reported_blocked[gone]
        for job in list(self.state.jobs.values()):
            when = self._next_run_logged(job)
            if when is None or when > now:
                continue
            if self._blocked(job):
                continue
            try:
                run = await self.commands.start_run(job.job_id, trigger="schedule")
            except (Conflict, ConcurrencyError) as err:
                # Lost a race with another start (a person, a script); it runs anyway.
                log.info("scheduled run of job %s skipped: %s", job.job_id, err)
                continue
            except Exception:
                log.exception("could not start the scheduled run of job %s", job.job_id)
                continue
            started.append(run.run_id)
            log.info("job %s (%s) due at %s: queued run %s", job.job_id,
                     job.spec.get("name"), when.isoformat(), run.run_id)
        return started

    def _blocked(self, job: JobView) -> bool:
        """Whether a due job must wait for its unfinished run (logged once per run)."""
        # A restore or verify in the way does not hold the backup back: the runner queues
        # it behind them (one run per destination).
        active = [r for r in self.state.active_runs(job.job_id) if r.kind == "backup"]
        if not active:
            self._reported_blocked.pop(job.job_id, None)
            return False
        if self._reported_blocked.get(job.job_id) != active[0].run_id:
            self._reported_blocked[job.job_id] = active[0].run_id
            log.info("job %s is due but run %s is still %s; it runs once that finishes",
                     job.job_id, active[0].run_id, active[0].state)
        return True

    # --- background loop ------------------------------------------------------------------

    def on_events(self, events: Sequence[StoredEvent]) -> None:
        """Wake the loop when a committed batch can change what runs when (a listener)."""
        if any(ev.event.wakes_scheduler for ev in events):
            self._wake.set()

    def start(self) -> None:
        """Start the background loop (call from a running event loop)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop(), name="scheduler")

    async def stop(self) -> None:
        """Stop the background loop and wait for it to end."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # a bad tick is logged; the schedule keeps running
                log.exception("scheduler tick failed")
            # Cleared after the tick, before planning: whatever changed before this
            # point is already in the state the plan reads; anything later wakes us.
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._seconds_to_sleep())

    def _seconds_to_sleep(self) -> float:
        """Seconds until the earliest job that can start, within MIN_SLEEP..MAX_SLEEP."""
        try:
            now = self.clock()
            # A job with a run going is left out, or a due one would spin the loop;
            # the run's end wakes us (its event's wakes_scheduler).
            busy = {run.job_id for run in self.state.active_runs() if run.kind == "backup"}
            times = [when for job_id, when in self.due_soon() if job_id not in busy]
        except Exception:
            log.exception("scheduler could not plan its next tick")
            return MAX_SLEEP
        if not times:
            return MAX_SLEEP
        return min(max((min(times) - now).total_seconds(), MIN_SLEEP), MAX_SLEEP)

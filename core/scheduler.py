"""The scheduler: queues a run of each enabled, scheduled job when its next time comes.

A job's next time is counted from its latest run (whatever started it) or, when it
never ran or was changed since, from its last change. So a schedule missed while the
server was down runs once on start, not once per missed slot: one run moves the base
to now. A job whose run is still going is not started again; its missed slot runs
once that run finishes. Cron expressions are read in UTC by croniter.

The work grows with what changes, not with the number of jobs: each job's next time is
kept with the inputs it was worked out from (its plan), and the times wait in a heap
keyed by time. A job's time is worked out again only when that job changes or a
backup of it is queued (its events say so, or its inputs no longer match when it is
read); a tick looks at the due head of the heap only. The first plan of every job, and
any large batch of changes, is worked out on a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from core.commands import Commands
from core.errors import Conflict
from core.schedule_inputs import plan_input, plan_key
from core.schedule_times import PlanInput, PlanOutput, carried, plan_many, plan_one
from core.state import JobView, State
from core.waits import wait_a_while
from events.record import StoredEvent
from events.store import ConcurrencyError
from events.types import Event, event_classes

log = logging.getLogger(__name__)

MAX_SLEEP = 30.0  # seconds; bounds how late a wall-clock jump (suspend, NTP) is noticed
MIN_SLEEP = 0.05  # seconds; a floor so a due job that cannot start never spins the loop
# Changed jobs worked out on the loop at once; more go to a worker thread (an import of
# many jobs, the first plan) so the loop never parses cron in bulk.
INLINE_PLANS = 16
START_BATCH = 64  # due jobs started together (their RunQueued share a commit)

# Events that can move a job's next time or unblock it (Event.wakes_scheduler): the
# sleeping loop re-plans. Run endings matter because a due job with a run going waits
# for that run (it is parked, out of the heap, until one of its runs ends).
WAKE_EVENTS: frozenset[type[Event]] = frozenset(
    cls for cls in event_classes() if cls.wakes_scheduler)


Timed = tuple[datetime | None, datetime | None]  # a next time and the base it counts from


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class _Plan:
    """A job's next time, the inputs and base it was worked out from, its heap generation."""

    key: tuple[Any, ...]
    when: datetime | None
    gen: int
    base: datetime | None = None


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
        # Next times worked out (cron or interval): a real count, so tests can tell that
        # a tick or a new job does not work out every job's time again.
        self.evaluations = 0
        self.evaluations_off_loop = 0  # of those, worked out on a worker thread in bulk
        self._plans: dict[str, _Plan] = {}
        # (time, job id, generation); an entry whose generation is not its job's plan's
        # any more is stale and dropped when it reaches the head (lazy invalidation).
        self._heap: list[tuple[datetime, str, int]] = []
        self._gens = itertools.count(1)
        self._dirty: set[str] = set()  # jobs whose events came since the last tick
        self._parked: set[str] = set()  # due jobs waiting for their unfinished backup
        self._planned = False  # whether every job of the state has been planned once
        self._settling = asyncio.Lock()

    # --- when ---------------------------------------------------------------------

    def next_run(self, job: JobView) -> datetime | None:
        """When the job should run next (maybe already past), or None if never by schedule.

        From the job's plan when its inputs did not change (no cron is parsed); else
        worked out for this one job, and kept if it is the job the state holds.
        """
        key = plan_key(job)
        plan = self._plans.get(job.job_id)
        if plan is not None and plan.key == key:
            return plan.when
        when, base = self._work_out(job, key)
        if self.state.jobs.get(job.job_id) is job:
            self._keep(job.job_id, key, when, base)
        return when

    def due_soon(self) -> list[tuple[str, datetime]]:
        """Scheduled jobs with their next run time, soonest first (from their plans)."""
        planned = []
        for job in list(self.state.jobs.values()):
            when = self.next_run(job)
            if when is not None:
                planned.append((job.job_id, when))
        return sorted(planned, key=lambda item: (item[1], item[0]))

    def _work_out(self, job: JobView, key: tuple[Any, ...]) -> Timed:
        """One job's next time and its base, worked out now (on the caller's thread)."""
        try:
            item = plan_input(self.state, job, key)
        except Exception:  # one damaged job must not stop the others from running
            log.exception("cannot work out the next run of job %s", job.job_id)
            return None, None
        if item is None:
            return None, None
        plan = self._plans.get(job.job_id)  # a run queued before its time: kept (no cron)
        if plan is not None and plan.when and plan.base and plan.key[:4] == key[:4]:
            base = carried(item, plan.base, plan.when)
            if base is not None:
                return plan.when, base
        self.evaluations += 1
        return self._outcome(job, plan_one(item))

    def _outcome(self, job: JobView, result: PlanOutput) -> Timed:
        """The time and base of a worked-out plan; an unusable schedule or error is logged."""
        _, _, when, unusable, error, base = result
        if unusable is not None:
            self._report_invalid(job, unusable)
        if error is not None:
            log.error("cannot work out the next run of job %s: %s", job.job_id, error)
        return when, base

    def _keep(self, job_id: str, key: tuple[Any, ...], when: datetime | None,
              base: datetime | None = None) -> None:
        """Hold a job's new plan and put its time in the heap (older entries go stale)."""
        plan = _Plan(key, when, next(self._gens), base)
        self._plans[job_id] = plan
        self._parked.discard(job_id)
        if when is not None:
            heapq.heappush(self._heap, (when, job_id, plan.gen))
        if len(self._heap) > 2 * len(self._plans) + 64:
            self._compact()

    def _compact(self) -> None:
        """Drop stale heap entries (many changes to jobs whose times are far off)."""
        self._heap = [(p.when, job_id, p.gen) for job_id, p in self._plans.items()
                      if p.when is not None and job_id not in self._parked]
        heapq.heapify(self._heap)

    def _forget(self, job_id: str) -> None:
        """A deleted job: its heap entries go stale and nothing of it is kept."""
        self._plans.pop(job_id, None)
        self._parked.discard(job_id)
        self._reported_blocked.pop(job_id, None)

    def _report_invalid(self, job: JobView, schedule: str) -> None:
        # Once per job and schedule: the plan is kept, but a restart or a change of the
        # job works it out again, and the log would otherwise repeat the same line.
        key = (job.job_id, schedule)
        if key not in self._reported_invalid:
            self._reported_invalid.add(key)
            log.warning("job %s (%s) has an unusable schedule %s; it will not run on a "
                        "schedule until it is fixed", job.job_id, job.spec.get("name"),
                        schedule[:80])

    # --- keeping the plans current ----------------------------------------------------

    async def plan(self) -> None:
        """Work out every job's next time now, off the loop (pages then read plans)."""
        await self._settle()

    async def _settle(self) -> None:
        """Plan every job once (off the loop), then the jobs whose events came since."""
        async with self._settling:
            if not self._planned:
                self._dirty.clear()  # every job is planned below, as the state is now
                await self._plan_off_loop(list(self.state.jobs))
                self._planned = True
            while self._dirty:
                dirty, self._dirty = self._dirty, set()
                if len(dirty) > INLINE_PLANS:
                    await self._plan_off_loop(dirty)
                else:
                    for job_id in dirty:
                        self._refresh(job_id)

    def _refresh(self, job_id: str) -> None:
        """Bring one job's plan up to date after its events (no cron if its inputs held)."""
        job = self.state.jobs.get(job_id)
        if job is None:
            self._forget(job_id)
            return
        plan = self._plans.get(job_id)
        key = plan_key(job)
        if plan is not None and plan.key == key:
            if job_id in self._parked and not self._blocked(job):
                self._keep(job_id, key, plan.when, plan.base)  # its run ended: back in heap
            return
        self._keep(job_id, key, *self._work_out(job, key))

    async def _plan_off_loop(self, job_ids: Iterable[str]) -> None:
        """Work out many jobs' times on a worker thread, from plain values taken here."""
        items: list[PlanInput] = []
        for job_id in job_ids:
            job = self.state.jobs.get(job_id)
            if job is None:
                self._forget(job_id)
                continue
            key = plan_key(job)
            plan = self._plans.get(job_id)
            if plan is not None and plan.key == key and job_id not in self._parked:
                continue  # already current (next_run worked it out meanwhile)
            try:
                item = plan_input(self.state, job, key)
            except Exception:
                log.exception("cannot work out the next run of job %s", job_id)
                item = None
            if item is None:
                self._keep(job_id, key, None)
            else:
                items.append(item)
        if not items:
            return
        results = await asyncio.to_thread(plan_many, items)
        self.evaluations += len(results)
        self.evaluations_off_loop += len(results)
        for result in results:
            job_id, key = result[0], result[1]
            job = self.state.jobs.get(job_id)
            if job is None:
                self._forget(job_id)
            elif plan_key(job) != key:
                self._dirty.add(job_id)  # changed while the thread worked: next settle
            else:
                self._keep(job_id, key, *self._outcome(job, result))

    # --- starting runs ----------------------------------------------------------------

    async def tick(self) -> list[str]:
        """Queue a run of every job that is due now; return the run ids started."""
        await self._settle()
        now = self.clock()
        started: list[str] = []
        retry: list[tuple[datetime, str, int]] = []
        while self._heap and self._heap[0][0] <= now:
            due: list[tuple[tuple[datetime, str, int], JobView]] = []
            while self._heap and self._heap[0][0] <= now and len(due) < START_BATCH:
                entry = heapq.heappop(self._heap)
                job = self._startable(entry)
                # A compaction while a batch was out may have put its job back: once.
                if job is not None and all(job is not other for _, other in due):
                    due.append((entry, job))
            # Started together: their appends share a commit, so a thousand jobs due at
            # once after downtime queue at the log's speed, not one fsync after another.
            outcomes = await asyncio.gather(
                *(self.commands.start_run(job.job_id, trigger="schedule") for _, job in due),
                return_exceptions=True)
            for (entry, job), outcome in zip(due, outcomes, strict=True):
                if isinstance(outcome, (Conflict, ConcurrencyError)):
                    # Lost a race with another start (a person, a script); it runs anyway,
                    # and its RunQueued moves this job's time (seen on the next tick).
                    log.info("scheduled run of job %s skipped: %s", job.job_id, outcome)
                    retry.append(entry)
                elif isinstance(outcome, BaseException):
                    if not isinstance(outcome, Exception):
                        raise outcome  # cancelled: the loop is stopping
                    log.error("could not start the scheduled run of job %s", job.job_id,
                              exc_info=outcome)
                    retry.append(entry)
                else:
                    started.append(outcome.run_id)
                    log.info("job %s (%s) due at %s: queued run %s", job.job_id,
                             job.spec.get("name"), entry[0].isoformat(), outcome.run_id)
                    self._refresh(job.job_id)  # its new base is the run just queued
        for entry in retry:
            heapq.heappush(self._heap, entry)
        return started

    def _startable(self, entry: tuple[datetime, str, int]) -> JobView | None:
        """The job of a due heap entry if it may start now; else None (dropped or parked)."""
        _, job_id, gen = entry
        plan = self._plans.get(job_id)
        if plan is None or plan.gen != gen:
            return None  # stale: the job changed or was deleted since
        job = self.state.jobs.get(job_id)
        if job is None:
            self._forget(job_id)
            return None
        key = plan_key(job)
        if plan.key != key:  # changed without an event seen here: its new time
            self._keep(job_id, key, *self._work_out(job, key))  # may be due: next batch
            return None
        if self._blocked(job):
            self._parked.add(job_id)  # back in the heap when one of its runs ends
            return None
        return job

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
        """Note the jobs a committed batch changes and wake the loop (a listener)."""
        wake = False
        for e in (ev.event for ev in events):
            if e.wakes_scheduler:
                wake = True
                job_id = getattr(e, "job_id", None)
                if isinstance(job_id, str):
                    self._dirty.add(job_id)
        if wake:
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
            # point is already in the plans, or in the dirty set the sleep looks at.
            self._wake.clear()
            await wait_a_while(self._wake, self._seconds_to_sleep())

    def _seconds_to_sleep(self) -> float:
        """Seconds until the head of the heap, within MIN_SLEEP..MAX_SLEEP."""
        try:
            if self._dirty:
                return MIN_SLEEP  # events came during the tick: plan them now
            # Stale entries first, so a deleted or changed job does not wake us early.
            while self._heap and self._stale(self._heap[0]):
                heapq.heappop(self._heap)
            if not self._heap:
                return MAX_SLEEP
            seconds = (self._heap[0][0] - self.clock()).total_seconds()
        except Exception:
            log.exception("scheduler could not plan its next tick")
            return MAX_SLEEP
        return min(max(seconds, MIN_SLEEP), MAX_SLEEP)

    def _stale(self, entry: tuple[datetime, str, int]) -> bool:
        return (plan := self._plans.get(entry[1])) is None or plan.gen != entry[2]


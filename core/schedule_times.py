"""When a job runs next: pure functions of its schedule and the time it counts from.

Nothing here reads the state or logs: the scheduler hands in plain values (a job's
schedule and the ISO times its base is taken from), so a whole plan of a thousand jobs
can be worked out on a worker thread while the event loop keeps serving.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from croniter import CroniterError, croniter

from models.job import interval_seconds

MIN_INTERVAL = 60  # seconds; what models.job accepts, checked again for state read as is

# (job_id, key, schedule, created, updated, queued time of the latest backup run or None)
PlanInput = tuple[str, tuple[Any, ...], object, str, str, str | None]
# (job_id, key, next time or None, the unusable schedule as text or None, an error or
# None, the time it was counted from or None)
PlanOutput = tuple[str, tuple[Any, ...], datetime | None, str | None, str | None,
                   datetime | None]


class Unusable(Exception):
    """A schedule that can never run (the message is the schedule as text)."""


def parse_time(text: str) -> datetime:
    """An ISO time from the log (Z suffix) as an aware UTC datetime."""
    return datetime.fromisoformat(text).astimezone(UTC)


def base_time(created: str, updated: str, last_backup_queued: str | None) -> datetime:
    """The time the next run counts from: the latest backup queued, change or creation."""
    # `updated` too, so a changed (or re-enabled) schedule counts from the change and
    # slots that passed before it are not caught up.
    base = max(parse_time(created), parse_time(updated))
    if last_backup_queued is not None:
        base = max(base, parse_time(last_backup_queued))
    return base


def next_time(schedule: object, base: datetime) -> datetime:
    """The first slot of `schedule` after `base`; Unusable if it has none."""
    if not isinstance(schedule, str):
        raise Unusable(repr(schedule))
    seconds = interval_seconds(schedule)
    if seconds is not None:
        if seconds < MIN_INTERVAL:  # "every 0 minutes" would start a run every tick
            raise Unusable(schedule)
        return base + timedelta(seconds=seconds)
    # Same rule as models.job: five fields only (croniter also takes seconds/years).
    if len(schedule.split()) != 5 or not croniter.is_valid(schedule):
        raise Unusable(schedule)
    try:
        return croniter(schedule, base).get_next(datetime).astimezone(UTC)
    except CroniterError as err:  # a valid-looking date that never comes: "0 0 31 2 *"
        raise Unusable(schedule) from err


def plan_one(item: PlanInput) -> PlanOutput:
    """The next time of one job from plain values (safe on any thread)."""
    job_id, key, schedule, created, updated, queued = item
    base = None
    try:
        base = base_time(created, updated, queued)
        when = next_time(schedule, base)
    except Unusable as err:
        return job_id, key, None, str(err), None, base
    except Exception as err:  # one damaged job must not stop the others from being planned
        return job_id, key, None, None, f"{type(err).__name__}: {err}", base
    return job_id, key, when, None, None, base


def carried(item: PlanInput, old_base: datetime, old_when: datetime) -> datetime | None:
    """The new base if a cron job's time counted from old_base still holds, else None.

    No slot lies between old_base and old_when (the first one after it), so from any base
    in between the first slot is old_when too: a run started by hand before the job's
    time moves its base but not its time, and no cron needs working out for it.
    """
    _, _, schedule, created, updated, queued = item
    if not isinstance(schedule, str) or interval_seconds(schedule) is not None:
        return None  # an interval counts from the base itself
    try:
        base = base_time(created, updated, queued)
    except ValueError:
        return None  # damaged: worked out (and reported) the long way
    return base if old_base <= base < old_when else None


def plan_many(items: Sequence[PlanInput]) -> list[PlanOutput]:
    """plan_one of each item: the bulk plan the scheduler computes off the event loop."""
    return [plan_one(item) for item in items]


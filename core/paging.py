"""Lists read one page at a time: jobs, a job's runs, the active runs, snapshots.

Every list the pages and the API show is read through here with a limit, so an answer
costs the page it returns, not the thousands of jobs or runs behind it. A page says
where the next one starts (`after`, a plain key the server wraps in an opaque cursor),
keyed on something that never changes for an item (a job id, a run's place in its job's
history, a run's place in the queue): a walk sees every item that stayed there exactly
once, whatever is created, started or ended meanwhile.
"""

from __future__ import annotations

import bisect
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from core.state import JobView, RunView, State

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """Up to `limit` items, the key to continue after (None: this is the last page), the
    number of items in the whole list, the key of the page before (None: first) and, for
    a list read by position, where the page starts in it."""

    items: list[T]
    after: str | None
    total: int
    before: str | None = None
    first: int = 0


@dataclass
class JobIndex:
    """Job ids in order, rebuilt only when the set of jobs changed (not on every event)."""

    state: State
    _ids: list[str] = field(default_factory=list)
    _seen: set[str] = field(default_factory=set)

    def ids(self) -> list[str]:
        """Every job id, sorted."""
        jobs = self.state.jobs
        # One C-speed comparison of the key sets: O(jobs), no sort unless one was added
        # or deleted. A run event (nearly all of them) leaves the index as it is.
        if len(jobs) != len(self._ids) or jobs.keys() != self._seen:
            self._ids = sorted(jobs)
            self._seen = set(self._ids)
        return self._ids

    def page(self, after: str | None, limit: int) -> Page[JobView]:
        """The jobs whose id sorts after `after`, by id."""
        ids = self.ids()
        start = 0 if after is None else bisect.bisect_right(ids, after)
        chosen = ids[start:start + limit]
        more = start + limit < len(ids)
        return Page([self.state.jobs[i] for i in chosen],
                    chosen[-1] if more and chosen else None, len(ids))


def job_runs(state: State, job: JobView, before: int | None, limit: int) -> Page[RunView]:
    """A job's runs, newest first, from just before its `before`-th run (None: newest).

    A job's run ids only ever grow at the end, so a run's place in them never changes:
    the key is that place, and a page is a slice of them.
    """
    ids = job.run_ids
    end = len(ids) if before is None else max(0, min(before, len(ids)))
    start = max(0, end - limit)
    items = [state.runs[i] for i in reversed(ids[start:end]) if i in state.runs]
    newer = None if end >= len(ids) else str(min(len(ids), end + limit))
    return Page(items, str(start) if start > 0 else None, len(ids), newer)


_QUEUES: weakref.WeakKeyDictionary[State, tuple[int, list[RunView]]] = \
    weakref.WeakKeyDictionary()


def queue(state: State) -> list[RunView]:
    """Every unfinished run in queue order, sorted once per log position (the banner on
    every page, the dashboard and the jobs list all read it; do not change the list)."""
    cached = _QUEUES.get(state)
    if cached is None or cached[0] != state.seq:
        cached = state.seq, state.active_runs()
        _QUEUES[state] = cached
    return cached[1]


def active_runs(state: State, states: Iterable[str], after: tuple[int, str] | None,
                limit: int) -> Page[RunView]:
    """Unfinished runs in one of `states` of existing jobs, in queue order, after a place
    in the queue (queued_seq, run id)."""
    wanted = frozenset(states)
    runs = [r for r in queue(state) if r.state in wanted and r.job_id in state.jobs]
    keys = [(r.queued_seq, r.run_id) for r in runs]
    start = 0 if after is None else bisect.bisect_right(keys, after)
    chosen = runs[start:start + limit]
    more = start + limit < len(runs)
    last = chosen[-1] if chosen else None
    return Page(chosen, f"{last.queued_seq}:{last.run_id}" if more and last else None,
                len(runs))


def slice_page(items: Sequence[T], start: int, limit: int) -> Page[T]:
    """A page of a list held whole anyway (a destination's snapshots), by position."""
    start = max(0, min(start, len(items)))
    end = start + limit
    return Page(list(items[start:end]), str(end) if end < len(items) else None, len(items),
                str(max(0, start - limit)) if start > 0 else None, start)

"""A large data directory for the start-up benchmark: a log of N events and its YAML.

Built through EventStore.append in big batches (a job's events per call, many calls per
transaction) with bench/eventlog.py's generators, then the YAML projections replayed to
the head, as a server that ran and stopped cleanly leaves them.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import closing
from pathlib import Path

from bench.eventlog import REPLAY_JOBS, job_events, job_id
from events.audit import open_readonly
from events.store import EventStore
from events.types import Event, SettingsChanged
from storage.replay import replay_into

# Jobs appended concurrently: their calls share a transaction (the store groups them).
JOBS_AT_ONCE = 64


# Events of one job: created, then 125 whole runs (queued, started, 5 checkpoints, the
# end), so no run is left going (a start would resume each one).
PER_JOB = 1 + 8 * 125


async def build_log(db: Path, total: int, jobs: int = REPLAY_JOBS) -> int:
    """Append `total` events: jobs of PER_JOB events (at most `jobs` of them; fewer, each
    with fewer runs, for a small total), the rest settings changes; return the head."""
    per_job = min(PER_JOB, max(9, (total // max(1, jobs)) // 8 * 8 + 1))
    jobs = max(1, min(jobs, total // per_job))
    settings = total - jobs * per_job
    store = await EventStore.open(db, foreground_check_max=0)
    try:
        async def feed(index: int) -> None:
            events: list[Event] = list(job_events(index, per_job))
            for start in range(0, len(events), 5_000):
                await store.append(job_id(index), None, events[start:start + 5_000])

        for first in range(0, jobs, JOBS_AT_ONCE):
            await asyncio.gather(*(feed(i) for i in range(first, min(jobs, first + JOBS_AT_ONCE))))
        if settings > 0:
            await store.append("settings", None, [
                SettingsChanged(changes={"max_concurrent_runs": 2 + i % 3})
                for i in range(settings)])
        await store.wait_chain_check()
        return store.last_seq
    finally:
        await store.close()


def build_data_dir(data: Path, total: int, jobs: int = REPLAY_JOBS) -> int:
    """A data directory with a log of `total` events and its projections at the head."""
    data.mkdir(parents=True, exist_ok=True)
    head = asyncio.run(build_log(data / "events.db", total, jobs))
    with closing(open_readonly(data / "events.db")) as conn:
        replay_into(conn, data)
    return head


if __name__ == "__main__":
    import sys

    started = time.perf_counter()
    n = build_data_dir(Path(sys.argv[1]), int(sys.argv[2]))
    print(f"built {n} events in {time.perf_counter() - started:.1f} s")

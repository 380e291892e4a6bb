"""The YAML projections as files, and a job history appended the way the runner would."""

from __future__ import annotations

from pathlib import Path

from events.store import EventStore
from events.types import (
    Event,
    RunCheckpointed,
    RunFailed,
    RunQueued,
    RunStarted,
    RunSucceeded,
)
from tests.conftest import created


def projection_files(root: Path) -> dict[str, bytes]:
    """Every projection file under root (jobs/*.yaml and settings.yaml), by relative path."""
    files = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.glob("jobs/*.yaml")}
    if (root / "settings.yaml").exists():
        files["settings.yaml"] = (root / "settings.yaml").read_bytes()
    return files


async def history(store: EventStore, job: str, runs: int) -> None:
    """Append a job with a few runs, the way the runner would."""
    await store.append(job, 0, [created(job, name=job.upper())])
    for i in range(runs):
        run = f"r-{i:012x}"
        await store.append(job, None, [RunQueued(job_id=job, run_id=run),
                                       RunStarted(job_id=job, run_id=run),
                                       RunCheckpointed(job_id=job, run_id=run,
                                                       checkpoint={"files_done": i})])
        end: Event = (RunSucceeded(job_id=job, run_id=run, snapshot_id=f"snap-{i}", files=3,
                                   bytes=1000 * i, duration=1.5)
                      if i % 3 else RunFailed(job_id=job, run_id=run, error="disk full"))
        await store.append(job, None, [end])

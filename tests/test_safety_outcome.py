"""A run's outcome is recorded whatever follows it (issue 12, found in review).

An error naming a file whose name is not UTF-8 could not be stored and was retried for
ever (the run stayed "running"); a retention failure after the success turned the run
"failed"; two jobs left on one destination by an older version kept pruning each other.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient

from core.outcome import append_until_stored, error_text, storable
from core.waits import wait_a_while
from events.store import EventStore
from events.types import JobCreated, RunFailed
from models.ids import new_job_id
from server.keys import STORE
from tests.api_helpers import job_by_hand, make_job, start, wait_run
from tests.engine_helpers import write

Client = TestClient[web.Request, web.Application]


async def test_an_error_naming_a_non_utf8_file_is_stored_and_never_retried_for_ever(
        tmp_path: Path) -> None:
    store = await EventStore.open(tmp_path / "events.db")
    try:
        raw = "backup failed: Permission denied (/src/caf\udce9.txt)"
        refused = RunFailed(job_id="j-1", run_id="r-1", error=raw)
        assert not storable(refused)
        # Refused as it is: given up at once instead of retried every 5 s for ever.
        done = await asyncio.wait_for(append_until_stored(
            store, "j-1", [refused], lambda: False, asyncio.Event()), 5)
        assert done is False
        cleaned = RunFailed(job_id="j-1", run_id="r-1", error=error_text(raw))
        assert await append_until_stored(store, "j-1", [cleaned], lambda: False,
                                         asyncio.Event())
        stored = (await store.read(since=0))[-1]
        assert "caf\\xe9.txt" in stored.payload["error"]
    finally:
        await store.close()


async def test_a_retention_failure_after_success_leaves_the_run_succeeded(
        app_client: Client, tmp_path: Path) -> None:
    """A job saved before retention was bounded (keep_last 200000) still backs up."""
    src = tmp_path / "src"
    write(src / "a.txt", os.urandom(64))
    spec = {"name": "old", "engine": "mirror", "sources": [str(src)],
            "destination": str(tmp_path / "dest"), "include": [], "exclude": [],
            "schedule": None, "retention": {"keep_last": 200_000}, "options": {},
            "enabled": True}
    job_id = new_job_id("old")
    await app_client.app[STORE].append(job_id, 0, [JobCreated(job_id=job_id, spec=spec)])
    run_id = await start(app_client, job_id)
    run = await wait_run(app_client, run_id, {"succeeded", "failed"})
    assert run["state"] == "succeeded", run
    await asyncio.sleep(0.5)  # retention runs after the success is recorded
    again = await (await app_client.get(f"/api/runs/{run_id}")).json()
    assert again["state"] == "succeeded", again
    log_file = tmp_path / "data" / "logs" / "runs" / f"{run_id}.log"
    for _ in range(100):
        if log_file.exists() and "retention could not prune" in log_file.read_text():
            break
        await asyncio.sleep(0.05)
    assert "retention could not prune" in log_file.read_text()


async def test_two_jobs_left_on_one_destination_refuse_to_run(app_client: Client,
                                                              tmp_path: Path) -> None:
    owner = await make_job(app_client, tmp_path, "first", "shared")
    first = await wait_run(app_client, await start(app_client, owner), {"succeeded"})
    intruder = await job_by_hand(app_client, tmp_path, "second", "shared")
    for job_id, other in ((intruder, "first"), (owner, "second")):
        run = await wait_run(app_client, await start(app_client, job_id),
                             {"succeeded", "failed"})
        assert run["state"] == "failed", run
        assert f"is used by job {other}" in run["error"], run
    # Nothing of the first job's backup was pruned or mixed up meanwhile.
    snaps = (await (await app_client.get(f"/api/jobs/{owner}/snapshots")).json())["snapshots"]
    assert [s["id"] for s in snaps] == [first["snapshot_id"]]


async def test_retention_waits_until_the_event_logs_check_has_passed(
        app_client: Client, tmp_path: Path) -> None:
    """Nothing is deleted on the word of a log whose hash chain is still being checked."""
    src = tmp_path / "src"
    write(src / "a.txt", b"a")
    resp = await app_client.post("/api/jobs", json={
        "name": "kept", "engine": "mirror", "sources": [str(src)],
        "destination": str(tmp_path / "dest"), "retention": {"keep_last": 1}})
    job_id = str((await resp.json())["id"])
    store = app_client.app[STORE]
    # As for a large log whose check runs in the background after the start.
    store.chain.state = "running"
    for _ in range(2):
        await wait_run(app_client, await start(app_client, job_id), {"succeeded"})
    snaps = (await (await app_client.get(f"/api/jobs/{job_id}/snapshots")).json())["snapshots"]
    assert len(snaps) == 2  # keep_last 1, but nothing pruned yet
    store.chain.state = "passed"
    await wait_run(app_client, await start(app_client, job_id), {"succeeded"})
    for _ in range(100):
        snaps = (await (await app_client.get(f"/api/jobs/{job_id}/snapshots")).json()
                 )["snapshots"]
        if len(snaps) == 1:
            break
        await asyncio.sleep(0.05)
    assert len(snaps) == 1


async def test_a_retry_wait_cancelled_as_it_is_woken_ends_cancelled() -> None:
    # The server's stop wakes the retry waits and cancels their tasks in the same step.
    # Python 3.11's wait_for returned the wake and dropped the cancel, so the task went
    # on retrying an append past the stop instead of ending.
    wake = asyncio.Event()
    waiting = asyncio.ensure_future(wait_a_while(wake, 10))
    await asyncio.sleep(0.05)
    wake.set()
    waiting.cancel()
    done, _ = await asyncio.wait({waiting}, timeout=2)
    assert waiting in done and waiting.cancelled()

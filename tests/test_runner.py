"""The runner's limits: concurrent runs, one run per destination, queue order."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.api_helpers import job_by_hand, make_job, start, wait_run
from tests.engine_helpers import write

Client = TestClient[web.Request, web.Application]


async def state_of(client: Client, run_id: str) -> str:
    """A run's current state."""
    return str((await (await client.get(f"/api/runs/{run_id}")).json())["state"])


async def test_global_limit_holds_runs_in_queue_order(app_client: Client,
                                                      tmp_path: Path) -> None:
    await app_client.put("/api/settings", json={"max_concurrent_runs": 1})
    blocker = await start(app_client, await make_job(app_client, tmp_path, "blocker", "d0",
                                                     slow=True))
    await wait_run(app_client, blocker, {"running"})
    waiting = [await start(app_client, await make_job(app_client, tmp_path, f"j{i}", f"d{i + 1}"))
               for i in range(3)]
    await asyncio.sleep(0.3)
    assert [await state_of(app_client, r) for r in waiting] == ["queued"] * 3
    await app_client.post(f"/api/runs/{blocker}/cancel", json={})
    for run_id in waiting:
        assert (await wait_run(app_client, run_id, {"succeeded", "failed"}))["state"] == \
            "succeeded"
    events = (await (await app_client.get("/api/events?since=0&limit=1000")).json())["events"]
    started = [e["data"]["run_id"] for e in events if e["type"] == "RunStarted"]
    assert started == [blocker, *waiting]  # first come, first served


async def test_one_run_per_destination(app_client: Client, tmp_path: Path) -> None:
    await app_client.put("/api/settings", json={"max_concurrent_runs": 4})
    first = await start(app_client, await make_job(app_client, tmp_path, "a", "shared",
                                                   slow=True))
    await wait_run(app_client, first, {"running"})
    # Two jobs on one destination are refused when saved; one put there by hand (in the
    # log) still never runs beside the owner.
    same = await start(app_client, await job_by_hand(app_client, tmp_path, "b", "shared"))
    other = await start(app_client, await make_job(app_client, tmp_path, "c", "elsewhere"))
    assert (await wait_run(app_client, other, {"succeeded"}))["state"] == "succeeded"
    assert await state_of(app_client, same) == "queued"
    await app_client.post(f"/api/runs/{first}/cancel", json={})
    # Once free, it still does not run: its destination is another job's (issue 12).
    ended = await wait_run(app_client, same, {"succeeded", "failed"})
    assert ended["state"] == "failed" and "is used by job a" in ended["error"], ended


async def test_a_run_that_cannot_start_fails_with_a_clear_message(app_client: Client,
                                                                  tmp_path: Path) -> None:
    (tmp_path / "missing").mkdir()  # refused when saved if missing: it goes away after
    resp = await app_client.post("/api/jobs", json={
        "name": "gone", "engine": "mirror", "sources": [str(tmp_path / "missing")],
        "destination": str(tmp_path / "dest")})
    (tmp_path / "missing").rmdir()
    run_id = await start(app_client, str((await resp.json())["id"]))
    run = await wait_run(app_client, run_id, {"failed", "succeeded"})
    assert run["state"] == "failed" and "does not exist" in run["error"]
    log_file = tmp_path / "data" / "logs" / "runs" / f"{run_id}.log"
    for _ in range(100):  # written by the run-log thread, a moment later
        if log_file.exists() and "FAILED" in log_file.read_text():
            break
        await asyncio.sleep(0.02)
    assert "does not exist" in log_file.read_text()


async def test_retention_prunes_after_success_and_records_it(app_client: Client,
                                                              tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "a.txt", b"a")
    resp = await app_client.post("/api/jobs", json={
        "name": "kept", "engine": "mirror", "sources": [str(src)],
        "destination": str(tmp_path / "dest"), "retention": {"keep_last": 2}})
    job_id = str((await resp.json())["id"])
    snapshot_ids = []
    for i in range(3):
        write(src / "a.txt", f"v{i}".encode(), mtime=1_700_000_000 + i)
        run = await wait_run(app_client, await start(app_client, job_id), {"succeeded"})
        snapshot_ids.append(run["snapshot_id"])
        await asyncio.sleep(1.05)  # snapshot ids have one-second resolution
    snaps = (await (await app_client.get(f"/api/jobs/{job_id}/snapshots")).json())["snapshots"]
    assert [s["id"] for s in snaps] == snapshot_ids[1:]
    events = (await (await app_client.get("/api/events?since=0")).json())["events"]
    pruned = [e["data"]["snapshot_id"] for e in events if e["type"] == "SnapshotPruned"]
    assert pruned == snapshot_ids[:1]


async def test_webhook_hears_of_success_and_of_a_run_that_cannot_start(
        app_client: Client, tmp_path: Path) -> None:
    received: list[dict[str, Any]] = []
    two_arrived = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        if len(received) >= 2:
            two_arrived.set()
        return web.Response(text="ok")

    hook_app = web.Application()
    hook_app.router.add_post("/hook", hook)
    runner = web.AppRunner(hook_app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        await app_client.put("/api/settings", json={"webhook_url": f"http://127.0.0.1:{port}/hook"})
        src = tmp_path / "src"
        write(src / "a.txt", b"a")
        good = await make_job(app_client, tmp_path, "good", "d-good")
        (tmp_path / "missing").mkdir()  # refused when saved if missing: it goes after
        bad = (await (await app_client.post("/api/jobs", json={
            "name": "bad", "engine": "mirror", "sources": [str(tmp_path / "missing")],
            "destination": str(tmp_path / "d-bad")})).json())["id"]
        (tmp_path / "missing").rmdir()
        good_run = await start(app_client, good)
        bad_run = await start(app_client, bad)
        async with asyncio.timeout(20):
            await two_arrived.wait()
        by_run = {m["run_id"]: m for m in received}
        assert by_run[good_run]["event"] == "run.succeeded" and by_run[good_run]["snapshot_id"]
        assert by_run[bad_run]["event"] == "run.cannot_start"
        assert "does not exist" in by_run[bad_run]["error"]
        assert by_run[bad_run]["job_name"] == "bad"
    finally:
        await runner.cleanup()

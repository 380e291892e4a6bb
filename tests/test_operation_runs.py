"""Restore, verify and prune are runs: queued, limited, paused, cancelled, logged, swept."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from core.restore_leftovers import MARGIN
from server.keys import RUNNER, STATE, STORE
from tests.api_helpers import start, wait_run
from tests.engine_helpers import make_tree, tree_signature, write
from tests.operation_helpers import HoldAt, hold_at, operation

Client = TestClient[web.Request, web.Application]


async def backed_up(client: Client, src: Path, dest: Path,
                    **extra: Any) -> tuple[str, str]:
    """A mirror job over src with one snapshot; its id and the snapshot's."""
    resp = await client.post("/api/jobs", json={"name": "Ops", "engine": "mirror",
                                                "sources": [str(src)],
                                                "destination": str(dest), **extra})
    assert resp.status == 201, await resp.text()
    job_id = (await resp.json())["id"]
    run = await wait_run(client, await start(client, job_id), {"succeeded", "failed"})
    assert run["state"] == "succeeded", run
    return job_id, run["snapshot_id"]


async def queue(client: Client, url: str, body: Any = None) -> str:
    """POST an operation; assert the 202 answer; return the run id."""
    resp = await client.post(url, json={} if body is None else body)
    assert resp.status == 202, await resp.text()
    answer = await resp.json()
    assert answer == {"run_id": answer["run_id"], "state": "queued",
                      "url": f"/api/runs/{answer['run_id']}"}
    return str(answer["run_id"])


async def held(holds: list[HoldAt]) -> HoldAt:
    """The first hold, once its engine reached the phase."""
    for _ in range(1500):
        if holds and holds[0].reached.is_set():
            return holds[0]
        await asyncio.sleep(0.02)
    raise AssertionError("no run reached the phase within 30 s")


async def event_types(client: Client, since: int) -> list[tuple[str, dict[str, Any]]]:
    """(type, data) of every event after `since`."""
    events = (await (await client.get(f"/api/events?since={since}")).json())["events"]
    return [(e["type"], e["data"]) for e in events]


@pytest.mark.timeout(60)
async def test_a_restore_run_shows_pauses_resumes_and_logs_like_a_backup(
        app_client: Client, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", small_files=40, large_bytes=2048)
    job_id, snap = await backed_up(app_client, src, tmp_path / "dest")
    holds = hold_at(app_client, "restoring")
    target = tmp_path / "restored"
    run_id = await queue(app_client, f"/api/jobs/{job_id}/snapshots/{snap}/restore",
                         {"target": str(target)})
    hold = await held(holds)
    page = await (await app_client.get(f"/jobs/{job_id}")).text()
    assert f'data-run="{run_id}"' in page and 'data-run-kind="restore"' in page
    assert "Restore of <code" in page and snap in page and f"pause-{run_id}" in page
    paused = await app_client.post(f"/api/runs/{run_id}/pause", json={})
    assert paused.status == 200 and (await paused.json())["state"] == "paused"
    hold.release.set()  # the engine goes on to its next safe point and holds there
    await asyncio.sleep(0.3)
    assert (await wait_run(app_client, run_id, {"paused"}))["state"] == "paused"
    await app_client.post(f"/api/runs/{run_id}/resume", json={})
    run = await wait_run(app_client, run_id, {"succeeded", "failed"})
    assert run["state"] == "succeeded" and run["kind"] == "restore", run
    listed = (await (await app_client.get(f"/api/jobs/{job_id}/snapshots")).json())["snapshots"]
    files = listed[0]["files"]  # what the snapshot holds is what the restore wrote
    assert run["snapshot_id"] == snap and run["files"] == files
    assert run["params"] == {"snapshot_id": snap, "target": str(target), "path": None,
                             "overwrite": False}
    assert tree_signature(target / "src") == tree_signature(src)
    log = (tmp_path / "data" / "logs" / "runs" / f"{run_id}.log").read_text()
    assert "started: restore of" in log and "paused" in log and "resumed" in log
    assert f"restored {files} files" in log
    dashboard = await (await app_client.get("/dashboard")).text()
    assert 'data-run-kind="restore"' in dashboard  # recent runs say what each run was
    # Not the job's last backup: the job still shows its backup as its last run.
    job = await (await app_client.get(f"/api/jobs/{job_id}")).json()
    assert job["last_run"]["kind"] == "backup" and job["last_success"]["snapshot_id"] == snap
    assert app_client.app[STATE].jobs[job_id].snapshots == [snap]


@pytest.mark.timeout(60)
async def test_a_cancelled_restore_run_ends_cancelled_and_says_so_in_the_activity(
        app_client: Client, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", small_files=20, large_bytes=2048)
    job_id, snap = await backed_up(app_client, src, tmp_path / "dest")
    holds = hold_at(app_client, "restoring")
    before = app_client.app[STORE].last_seq
    run_id = await queue(app_client, f"/api/jobs/{job_id}/snapshots/{snap}/restore",
                         {"target": str(tmp_path / "restored")})
    hold = await held(holds)
    await app_client.post(f"/api/runs/{run_id}/cancel", json={})
    hold.release.set()
    run = await wait_run(app_client, run_id, {"cancelled"})
    await asyncio.sleep(0.2)  # the run's own end is recorded after the cancel
    assert (await wait_run(app_client, run_id, {"cancelled"}))["state"] == "cancelled"
    types = await event_types(app_client, before)
    finished = [d for t, d in types if t == "RestoreFinished"]
    assert len(finished) == 1 and "cancelled" in finished[0]["error"], types
    assert [t for t, _ in types if t.startswith("Run")] == [
        "RunQueued", "RunStarted", "RunCheckpointed", "RunCancelled"], types
    assert run["kind"] == "restore"


@pytest.mark.timeout(60)
async def test_a_verify_that_finds_damage_fails_naming_it(app_client: Client,
                                                         tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", small_files=5, large_bytes=4096)
    dest = tmp_path / "dest"
    job_id, snap = await backed_up(app_client, src, dest)
    url = f"/api/jobs/{job_id}/snapshots/{snap}/verify"
    ok = await operation(app_client, url)
    assert ok["state"] == "succeeded" and ok["snapshot_id"] == snap and ok["files"] > 5, ok
    victim = next(p for p in sorted((dest / snap).rglob("*"))
                  if p.is_file() and not p.is_symlink() and p.stat().st_size)
    victim.write_bytes(b"x" + victim.read_bytes()[1:])
    before = app_client.app[STORE].last_seq
    bad = await operation(app_client, url)
    name = victim.relative_to(dest / snap).as_posix()
    assert bad["state"] == "failed" and "1 problem(s)" in bad["error"], bad
    assert name in bad["error"], bad
    verdicts = [d for t, d in await event_types(app_client, before) if t == "VerifyFinished"]
    assert len(verdicts) == 1 and verdicts[0]["ok"] is False
    assert any(name in p for p in verdicts[0]["problems"])


@pytest.mark.timeout(90)
async def test_a_prune_run_applies_the_retention_now(app_client: Client,
                                                     tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "a.txt", b"one")
    job_id, first = await backed_up(app_client, src, tmp_path / "dest")
    snaps = [first]
    for n in range(2):
        await asyncio.sleep(1.1)  # snapshot ids are made of the second they start in
        write(src / "a.txt", f"run {n}".encode())
        run = await wait_run(app_client, await start(app_client, job_id), {"succeeded"})
        snaps.append(run["snapshot_id"])
    nothing = await operation(app_client, f"/api/jobs/{job_id}/prune")
    assert nothing["state"] == "succeeded" and nothing["files"] == 0, nothing
    await app_client.put(f"/api/jobs/{job_id}", json={"retention": {"keep_last": 1}})
    pruned = await operation(app_client, f"/api/jobs/{job_id}/prune")
    assert pruned["state"] == "succeeded" and pruned["kind"] == "prune", pruned
    assert pruned["files"] == 2, pruned
    listed = (await (await app_client.get(f"/api/jobs/{job_id}/snapshots")).json())["snapshots"]
    assert [s["id"] for s in listed] == [snaps[-1]]
    assert app_client.app[STATE].jobs[job_id].snapshots == [snaps[-1]]


@pytest.mark.timeout(90)
async def test_an_operation_waits_while_the_jobs_backup_holds_the_destination(
        app_client: Client, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "a.txt", b"small")
    job_id, snap = await backed_up(app_client, src, tmp_path / "dest")
    write(src / "big.bin", os.urandom(4 * 1024 * 1024))
    await app_client.put(f"/api/jobs/{job_id}", json={"options": {"bwlimit": 1024}})
    backup = await start(app_client, job_id)
    await wait_run(app_client, backup, {"running"})
    verify = await queue(app_client, f"/api/jobs/{job_id}/snapshots/{snap}/verify")
    await asyncio.sleep(0.5)
    assert (await wait_run(app_client, verify, {"queued"}))["state"] == "queued"
    # A verify waiting does not refuse a second start's message about the backup.
    again = await app_client.post(f"/api/jobs/{job_id}/start", json={})
    assert again.status == 409 and backup in (await again.json())["error"]
    await app_client.post(f"/api/runs/{backup}/cancel", json={})
    run = await wait_run(app_client, verify, {"succeeded", "failed"})
    assert run["state"] == "succeeded", run


@pytest.mark.timeout(60)
async def test_a_refused_restore_or_verify_queues_nothing(app_client: Client,
                                                          tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", small_files=3, large_bytes=100)
    job_id, snap = await backed_up(app_client, src, tmp_path / "dest")
    store = app_client.app[STORE]
    before = store.last_seq
    base = f"/api/jobs/{job_id}/snapshots"
    for url, body, status in [
            (f"{base}/{snap}/restore", {"target": "relative"}, 400),
            (f"{base}/{snap}/restore", {"target": str(tmp_path / "t"), "path": "nope"}, 404),
            (f"{base}/{snap}/restore", {"target": str(tmp_path / "t"), "overwrite": 1}, 400),
            (f"{base}/2020-01-01T000000Z/restore", {"target": str(tmp_path / "t")}, 404),
            (f"{base}/2020-01-01T000000Z/verify", {}, 404),
            ("/api/jobs/nope-000000/prune", {}, 404)]:
        resp = await app_client.post(url, json=body)
        assert resp.status == status, (url, body, await resp.text())
        assert (await resp.json())["error"]
    assert store.last_seq == before
    assert not (tmp_path / "t").exists()  # the engine's own checks left nothing behind


@pytest.mark.timeout(60)
async def test_a_discarded_restore_sweeps_its_temporary_names_only(
        app_client: Client, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", small_files=10, large_bytes=2048)
    job_id, snap = await backed_up(app_client, src, tmp_path / "dest")
    target = tmp_path / "restored"
    mine = target / "src" / ".bm-0123abcd"  # a person's own file, from before
    write(mine, b"keep me")
    await asyncio.sleep(MARGIN + 0.2)
    holds = hold_at(app_client, "restoring")
    run_id = await queue(app_client, f"/api/jobs/{job_id}/snapshots/{snap}/restore",
                         {"target": str(target), "overwrite": True})
    hold = await held(holds)
    # What a kill in the middle of writing leaves: a file under its temporary name, and
    # restic's staging folder.
    write(target / "src" / "dir0" / ".bm-deadbeef", b"half a file")
    write(target / ".restic-restore-x1y2z3" / "src" / "a", b"staged")
    stopping = asyncio.create_task(app_client.app[RUNNER].stop())
    # Released only once the stop has asked the run to interrupt (before the stop's first
    # await): released earlier, a quick restore could finish in between and never be
    # interrupted.
    await asyncio.sleep(0)
    hold.release.set()
    await stopping
    run = await wait_run(app_client, run_id, {"interrupted"})
    assert run["interrupted_reason"] == "shutdown" and run["checkpoint"]["writing"] is True
    resp = await app_client.post(f"/api/runs/{run_id}/discard", json={})
    assert resp.status == 200, await resp.text()
    log = tmp_path / "data" / "logs" / "runs" / f"{run_id}.log"
    for _ in range(200):
        if "discarded" in (log.read_text() if log.exists() else ""):
            break
        await asyncio.sleep(0.05)
    assert "2 temporary name(s)" in log.read_text()
    assert not (target / "src" / "dir0" / ".bm-deadbeef").exists()
    assert not (target / ".restic-restore-x1y2z3").exists()
    assert mine.read_bytes() == b"keep me"


@pytest.mark.timeout(60)
async def test_deleting_a_job_with_stop_runs_cancels_and_waits_for_its_runs(
        app_client: Client, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", small_files=10, large_bytes=2048)
    job_id, snap = await backed_up(app_client, src, tmp_path / "dest")
    holds = hold_at(app_client, "restoring")
    run_id = await queue(app_client, f"/api/jobs/{job_id}/snapshots/{snap}/restore",
                         {"target": str(tmp_path / "restored")})
    hold = await held(holds)
    refused = await app_client.delete(f"/api/jobs/{job_id}")
    assert refused.status == 409
    threading.Timer(0.3, hold.release.set).start()
    began = time.monotonic()
    deleted = await app_client.delete(f"/api/jobs/{job_id}?cancel=true")
    assert deleted.status == 200, await deleted.text()
    assert time.monotonic() - began >= 0.25  # it waited for the engine to stop
    assert job_id not in app_client.app[STATE].jobs
    assert run_id not in app_client.app[RUNNER].active

"""Crash recovery and graceful restarts, with a real server process and a real engine."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.cli_helpers import (
    Api,
    cli,
    free_port,
    running_server,
    spawn_server,
    start_paused_run,
    wait_healthy,
)
from tests.engine_helpers import big_source, tree_signature, write
from tests.operation_helpers import api_operation
from tests.projection_helpers import projection_files
from tests.torture_helpers import Watcher


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client session."""
    async with aiohttp.ClientSession() as s:
        yield s


async def killed_mid_backup(session: aiohttp.ClientSession, src: Path, dest: Path, data: Path,
                            port: int, settings: dict[str, Any] | None = None
                            ) -> tuple[str, str]:
    """Serve, start a backup, pause it half-way, then SIGKILL the server; return the ids."""
    proc = spawn_server(data, port)  # stopped by the test itself
    try:
        await wait_healthy(session, port)
        api = Api(session, port)
        if settings:
            await api.call("PUT", "/api/settings", settings)
        job_id, run_id = await start_paused_run(api, src, dest)
        assert any(n.endswith(".partial") for n in os.listdir(dest))
        # Running again when the crash comes: a paused run would stay paused (issue 12).
        await api.call("POST", f"/api/runs/{run_id}/resume", {})
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    return job_id, run_id


async def check_after(api: Api, job_id: str, run_id: str, src: Path, data: Path,
                      tmp_path: Path) -> list[str]:
    """The resumed run succeeded with a snapshot equal to the source; return event types."""
    run = await api.wait_state(run_id, {"succeeded", "failed"}, within=120)
    assert run["state"] == "succeeded", run
    target = tmp_path / "restored"
    restored = await api_operation(api, f"/api/jobs/{job_id}/snapshots/{run['snapshot_id']}"
                                         "/restore", {"target": str(target)})
    assert restored["state"] == "succeeded", restored
    assert tree_signature(target / src.name) == tree_signature(src)
    snaps = (await api.call("GET", f"/api/jobs/{job_id}/snapshots"))["snapshots"]
    assert [s["id"] for s in snaps] == [run["snapshot_id"]]
    events = (await api.call("GET", "/api/events?since=0&limit=1000"))["events"]
    return [f"{e['type']}:{e['data'].get('reason', '')}".rstrip(":") for e in events
            if e["data"].get("run_id") == run_id and e["type"] != "RunCheckpointed"]


async def test_sigkill_mid_backup_then_restart_resumes(session: aiohttp.ClientSession,
                                                       tmp_path: Path) -> None:
    src, dest, data = big_source(tmp_path / "src"), tmp_path / "dest", tmp_path / "data"
    port = free_port()
    job_id, run_id = await killed_mid_backup(session, src, dest, data, port)
    with running_server(data, port):
        types = await check_after(Api(session, port), job_id, run_id, src, data, tmp_path)
    assert types == ["RunQueued", "RunStarted", "RunPaused", "RunResumed",
                     "RunInterrupted:crash", "RunResumed", "RunStarted", "RunSucceeded"]
    assert cli("events", "verify", "--data", str(data)).returncode == 0
    assert cli("events", "replay", "--out", str(tmp_path / "rebuilt"),
               "--data", str(data)).returncode == 0
    assert projection_files(tmp_path / "rebuilt") == projection_files(data)


async def test_sigterm_interrupts_cleanly_and_the_next_start_resumes(
        session: aiohttp.ClientSession, tmp_path: Path) -> None:
    src, dest, data = big_source(tmp_path / "src"), tmp_path / "dest", tmp_path / "data"
    port = free_port()
    with running_server(data, port) as (proc, _):
        api = Api(session, port)
        job_id, run_id = await start_paused_run(api, src, dest)
        await api.call("POST", f"/api/runs/{run_id}/resume", {})  # paused would stay paused
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert "interrupted by shutdown" in (data / "logs" / "runs" / f"{run_id}.log").read_text()
    with running_server(data, port):
        types = await check_after(Api(session, port), job_id, run_id, src, data, tmp_path)
    assert types == ["RunQueued", "RunStarted", "RunPaused", "RunResumed",
                     "RunInterrupted:shutdown", "RunResumed", "RunStarted", "RunSucceeded"]


async def test_a_second_stop_signal_does_not_cut_the_clean_stop_short(
        session: aiohttp.ClientSession, tmp_path: Path) -> None:
    src, dest, data = big_source(tmp_path / "src"), tmp_path / "dest", tmp_path / "data"
    with running_server(data) as (proc, port):
        api = Api(session, port)
        job = await api.call("POST", "/api/jobs", {"name": "Big", "engine": "mirror",
                                                   "sources": [str(src)],
                                                   "destination": str(dest),
                                                   "options": {"bwlimit": 8192}})
        run_id = (await api.call("POST", f"/api/jobs/{job['id']}/start", {}))["run_id"]
        await api.wait_state(run_id, {"running"})
        # An impatient person (or a script) sends the stop twice.
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    app_log = (data / "logs" / "app.log").read_text()
    assert "event log closed at seq" in app_log and "CleanupError" not in app_log
    assert "interrupted by shutdown" in (data / "logs" / "runs" / f"{run_id}.log").read_text()
    with running_server(data) as (_, port):
        run = await Api(session, port).wait_state(run_id, {"succeeded", "failed"}, within=120)
        assert run["state"] == "succeeded", run


async def test_without_auto_resume_a_cut_off_run_waits_and_discard_cleans_up(
        session: aiohttp.ClientSession, tmp_path: Path) -> None:
    src, dest, data = big_source(tmp_path / "src"), tmp_path / "dest", tmp_path / "data"
    port = free_port()
    _, run_id = await killed_mid_backup(session, src, dest, data, port,
                                        settings={"auto_resume": False})
    with running_server(data, port):
        api = Api(session, port)
        run = await api.call("GET", f"/api/runs/{run_id}")
        assert run["state"] == "interrupted" and run["interrupted_reason"] == "crash"
        await asyncio.sleep(0.5)
        assert (await api.call("GET", f"/api/runs/{run_id}"))["state"] == "interrupted"
        assert any(n.endswith(".partial") for n in os.listdir(dest))
        discarded = await api.call("POST", f"/api/runs/{run_id}/discard", {})
        assert discarded["state"] == "discarded"
        async with asyncio.timeout(10):  # the runner removes it in the background
            while True:
                if not any(n.endswith(".partial") for n in os.listdir(dest)):
                    break
                await asyncio.sleep(0.05)


def restore_source(root: Path) -> Path:
    """A source whose restore passes a landmark half-way: many small files under a/, then
    the folder m/, then a larger file under z/ (the order a restore writes them in)."""
    for i in range(800):
        write(root / "a" / f"f{i:04d}.txt", os.urandom(512))
    write(root / "m" / "landmark.txt", b"half-way\n")
    write(root / "z" / "big.bin", os.urandom(8 * 1024 * 1024))
    return root


async def _never() -> bool:
    """A watch that only ends with its name or its time limit."""
    return False


@pytest.mark.timeout(180)
async def test_sigkill_mid_restore_then_restart_restores_it_again(
        session: aiohttp.ClientSession, tmp_path: Path) -> None:
    src, dest, data = restore_source(tmp_path / "src"), tmp_path / "dest", tmp_path / "data"
    target = tmp_path / "restored"
    port = free_port()
    proc = spawn_server(data, port)  # killed by the watcher, stopped by the test otherwise
    try:
        await wait_healthy(session, port)
        api = Api(session, port)
        job = await api.call("POST", "/api/jobs", {"name": "Restore me", "engine": "mirror",
                                                   "sources": [str(src)],
                                                   "destination": str(dest)})
        backup = (await api.call("POST", f"/api/jobs/{job['id']}/start", {}))["run_id"]
        snap = (await api.wait_state(backup, {"succeeded"}, within=120))["snapshot_id"]
        watcher = Watcher(target / src.name, lambda name: name == "m",
                          lambda: proc.send_signal(signal.SIGKILL), within=60)
        queued = await api.call("POST", f"/api/jobs/{job['id']}/snapshots/{snap}/restore",
                                {"target": str(target)})
        assert await watcher.wait(_never) == "m", "the restore never reached m/"
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (target / src.name / "z" / "big.bin").exists()  # cut off half-way
    with running_server(data, port):
        api = Api(session, port)
        run = await api.wait_state(queued["run_id"], {"succeeded", "failed"}, within=120)
        assert run["state"] == "succeeded" and run["resumes"] == 1, run
        # Started again over what the first attempt wrote: whole, no temporary names.
        assert tree_signature(target / src.name) == tree_signature(src)
        events = (await api.call("GET", "/api/events?since=0&limit=1000"))["events"]
    mine = [f"{e['type']}:{e['data'].get('reason', '')}".rstrip(":") for e in events
            if e["data"].get("run_id") == queued["run_id"] and e["type"] != "RunCheckpointed"]
    assert mine == ["RunQueued", "RunStarted", "RunInterrupted:crash", "RunResumed",
                    "RunStarted", "RunSucceeded"], mine
    ends = [e["data"].get("error") for e in events if e["type"] == "RestoreFinished"]
    assert len(ends) == 2 and "cut off" in ends[0] and ends[1] is None, ends
    log = (data / "logs" / "runs" / f"{queued['run_id']}.log").read_text()
    assert "a first attempt was cut off; restoring again" in log
    doc = yaml.safe_load((data / "jobs" / f"{job['id']}.yaml").read_text())
    assert doc["last_restore"]["state"] == "succeeded", doc["last_restore"]
    assert cli("events", "verify", "--data", str(data)).returncode == 0

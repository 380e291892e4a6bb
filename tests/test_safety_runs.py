"""Issue 12, the run life cycle: an outcome survives a full data directory (item 2), a
run succeeds only with a snapshot that can be listed (item 3), skipped files are shown
(item 9), and a pause is never lost (item 11)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient

from core.active import RunReporter
from core.state import RunView
from engines.base import (
    BackupSpec,
    Cancelled,
    NullReporter,
    Progress,
    Reporter,
    RunControl,
)
from engines.mirror import MirrorEngine
from engines.ratelimit import RateLimiter
from server.app import create_app
from server.config import Config
from server.keys import COMMANDS, RUNNER
from tests.api_helpers import wait_run
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
from tests.fs_helpers import IS_ROOT, fill_up, small_tmpfs
from tests.operation_helpers import api_operation

Client = TestClient[web.Request, web.Application]
AppClient = Callable[..., Any]
MiB = 1 << 20


async def create_job(client: Client, src: Path, dest: Path, **extra: Any) -> str:
    """A mirror job; return its id."""
    resp = await client.post("/api/jobs", json={"name": extra.pop("name", "Photos"),
                                                "engine": "mirror", "sources": [str(src)],
                                                "destination": str(dest), **extra})
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["id"])


async def start(client: Client, job_id: str) -> str:
    """Start a job; return the run id."""
    resp = await client.post(f"/api/jobs/{job_id}/start", json={})
    assert resp.status == 202, await resp.text()
    return str((await resp.json())["run_id"])


def snapshot_dirs(dest: Path) -> list[str]:
    """Complete mirror snapshots in a destination (directories without a suffix)."""
    return sorted(n for n in os.listdir(dest) if "." not in n) if dest.is_dir() else []


async def until(condition: Callable[[], bool], within: float = 10) -> None:
    """Wait until a condition on the file system or a list holds."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - polling what no event signals
            await asyncio.sleep(0.05)


class ActAt:
    """The runner's reporter for a run, which also calls `act` (on the engine's thread)
    when the engine reports `phase`: to change the world at an exact moment of a run."""

    def __init__(self, inner: Reporter, phase: str, act: Callable[[], object]) -> None:
        self.inner, self.phase, self.act = inner, phase, act
        self.acted = threading.Event()

    def progress(self, progress: Progress) -> None:
        """Act once at the phase, then pass the report on."""
        if progress.phase == self.phase and not self.acted.is_set():
            self.act()
            self.acted.set()
        self.inner.progress(progress)

    def checkpoint(self, state: Mapping[str, Any]) -> None:
        """Pass a checkpoint on."""
        self.inner.checkpoint(state)

    def warning(self, message: str) -> None:
        """Pass a warning on."""
        self.inner.warning(message)


def act_at(client: Client, phase: str, act: Callable[[RunView], object]) -> list[ActAt]:
    """Make the app's runner give every run an ActAt reporter; return them as made."""
    runner = client.app[RUNNER]
    made: list[ActAt] = []

    def reporter(run: RunView) -> Reporter:
        wrapped = ActAt(RunReporter(runner, run, asyncio.get_running_loop()), phase,
                        lambda: act(run))
        made.append(wrapped)
        return wrapped
    setattr(runner, "_reporter", reporter)  # noqa: B010 - the runner's hook for a moment
    return made


# --- item 2: a full data directory -------------------------------------------------------


@pytest.mark.timeout(120)
async def test_a_full_data_directory_records_the_outcome_once_space_is_back(
        aiohttp_client: AppClient, tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "small", "8m") as small:
        client: Client = await aiohttp_client(create_app(Config(data_dir=small / "data",
                                                                log_to_file=False)))
        src, dest = tmp_path / "src", tmp_path / "dest"
        write(src / "big.bin", os.urandom(3 * MiB))
        job_id = await create_job(client, src, dest, options={"bwlimit": 2048})
        run_id = await start(client, job_id)
        await wait_run(client, run_id, {"running"})
        filler = await asyncio.to_thread(fill_up, small / "data")
        await until(lambda: bool(snapshot_dirs(dest)), 30)  # on another disk: it ends
        await asyncio.sleep(1.0)
        run = await (await client.get(f"/api/runs/{run_id}")).json()
        assert run["state"] == "running", run  # its success cannot be written yet
        filler.unlink()  # space is back: no restart
        run = await wait_run(client, run_id, {"succeeded", "failed"}, within=30)
        assert run["state"] == "succeeded", run
        assert run["snapshot_id"] == snapshot_dirs(dest)[0]
        again = await start(client, job_id)  # the job can start again without a restart
        assert (await wait_run(client, again, {"succeeded", "failed"}))["state"] == \
            "succeeded"
        await client.close()


# --- item 3: success only with a snapshot that can be listed -------------------------------


async def test_a_snapshot_gone_when_the_backup_returns_fails_the_run(
        app_client: Client, tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    write(src / "a.txt", b"precious")
    job_id = await create_job(app_client, src, dest)

    def damage(_: RunView) -> None:
        # The snapshot is in place and the engine is about to return: its manifest goes
        # (a person tidying up, a failing disk), so nothing of it can be restored.
        for name in os.listdir(dest):
            if name.endswith("manifest.json"):
                os.unlink(dest / name)
    reporters = act_at(app_client, "done", damage)
    run = await wait_run(app_client, await start(app_client, job_id), {"succeeded", "failed"})
    assert reporters[0].acted.is_set()
    assert run["state"] == "failed", run
    assert "is not in the destination" in run["error"] and run["snapshot_id"] is None
    snaps = await (await app_client.get(f"/api/jobs/{job_id}/snapshots")).json()
    assert snaps["snapshots"] == []


# --- item 9: warnings --------------------------------------------------------------------


async def test_skipped_files_show_as_warnings_in_api_pages_yaml_and_webhook(
        app_client: Client, tmp_path: Path) -> None:
    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(text="ok")
    hook_app = web.Application()
    hook_app.router.add_post("/hook", hook)
    hook_runner = web.AppRunner(hook_app)
    await hook_runner.setup()
    site = web.TCPSite(hook_runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        src, dest = tmp_path / "src", tmp_path / "dest"
        write(src / "kept.txt", b"kept")
        os.mkfifo(src / "a-pipe")
        skipped = 1
        if not IS_ROOT:  # as root every file can be read; a FIFO is skipped either way
            write(src / "secret.txt", b"x")
            (src / "secret.txt").chmod(0)
            skipped = 2
        job_id = await create_job(app_client, src, dest,
                                  webhook_url=f"http://127.0.0.1:{port}/hook")
        run = await wait_run(app_client, await start(app_client, job_id),
                             {"succeeded", "failed"})
        assert run["state"] == "succeeded", run
        assert run["warnings"] == skipped, run
        assert any("a-pipe" in w for w in run["warning_samples"]), run
        shown = f"succeeded with {skipped} warning{'s' if skipped > 1 else ''}"
        page = await (await app_client.get(f"/jobs/{job_id}")).text()
        assert shown in page and "a-pipe" in page
        assert shown in await (await app_client.get("/dashboard")).text()
        assert f"with {skipped} warning" in await (await app_client.get("/jobs")).text()
        await until(lambda: bool(received))
        assert received[0]["event"] == "run.succeeded"
        assert received[0]["warnings"] == skipped
        assert any("a-pipe" in w for w in received[0]["warning_samples"])
    finally:
        await hook_runner.cleanup()
    doc = await projected_job(tmp_path / "data", job_id)
    assert doc["runs"][0]["warnings"] == skipped
    assert any("a-pipe" in w for w in doc["runs"][0]["warning_samples"])


async def projected_job(data: Path, job_id: str) -> dict[str, Any]:
    """The job's YAML projection once it shows a finished run."""
    async with asyncio.timeout(10):
        while True:
            try:
                doc = yaml.safe_load((data / "jobs" / f"{job_id}.yaml").read_text())
                if doc["runs"] and doc["runs"][0]["state"] == "succeeded":
                    return doc  # type: ignore[no-any-return]
            except (OSError, KeyError, TypeError):
                pass
            await asyncio.sleep(0.05)


# --- item 11: pause ------------------------------------------------------------------------


async def test_a_pause_after_the_last_safe_point_holds_until_resumed(
        app_client: Client, tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    write(src / "a.txt", b"a")
    job_id = await create_job(app_client, src, dest)
    loop = asyncio.get_running_loop()
    commands = app_client.app[COMMANDS]

    def pause(run: RunView) -> None:
        # Answered "paused" while the engine has nothing left to pause at.
        asyncio.run_coroutine_threadsafe(commands.pause_run(run.run_id), loop).result(10)
    act_at(app_client, "done", pause)
    run_id = await start(app_client, job_id)
    await wait_run(app_client, run_id, {"paused", "succeeded"})
    await asyncio.sleep(1.0)
    run = await (await app_client.get(f"/api/runs/{run_id}")).json()
    assert run["state"] == "paused", run  # not succeeded on its own
    resp = await app_client.post(f"/api/runs/{run_id}/resume", json={})
    assert resp.status == 200, await resp.text()
    run = await wait_run(app_client, run_id, {"succeeded", "failed"})
    assert run["state"] == "succeeded" and run["snapshot_id"] == snapshot_dirs(dest)[0]
    events = (await (await app_client.get("/api/events?since=0&limit=1000")).json())["events"]
    types = [e["type"] for e in events if e["data"].get("run_id") == run_id
             and e["type"] != "RunCheckpointed"]
    assert types == ["RunQueued", "RunStarted", "RunPaused", "RunResumed", "RunSucceeded"]


async def test_a_run_cancelled_while_held_at_its_end_leaves_no_snapshot(
        app_client: Client, tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    write(src / "a.txt", b"a")
    job_id = await create_job(app_client, src, dest)
    loop = asyncio.get_running_loop()
    commands = app_client.app[COMMANDS]
    act_at(app_client, "done", lambda run: asyncio.run_coroutine_threadsafe(
        commands.pause_run(run.run_id), loop).result(10))
    run_id = await start(app_client, job_id)
    await wait_run(app_client, run_id, {"paused"})
    await app_client.post(f"/api/runs/{run_id}/cancel", json={})
    await until(lambda: not snapshot_dirs(dest))
    await asyncio.sleep(0.3)
    run = await (await app_client.get(f"/api/runs/{run_id}")).json()
    assert run["state"] == "cancelled", run
    assert (await (await app_client.get(f"/api/jobs/{job_id}/snapshots")).json()
            )["snapshots"] == []


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client session."""
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.mark.timeout(180)
async def test_a_paused_run_cut_off_by_a_crash_stays_paused_until_resumed(
        session: aiohttp.ClientSession, tmp_path: Path) -> None:
    src, dest, data = big_source(tmp_path / "src"), tmp_path / "dest", tmp_path / "data"
    port = free_port()
    proc = spawn_server(data, port)
    try:
        await wait_healthy(session, port)
        job_id, run_id = await start_paused_run(Api(session, port), src, dest)
        proc.send_signal(signal.SIGKILL)  # a crash while the run is paused
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    with running_server(data, port):
        api = Api(session, port)
        run = await api.call("GET", f"/api/runs/{run_id}")
        assert run["state"] == "interrupted", run
        assert run["interrupted_reason"] == "crash_while_paused"
        await asyncio.sleep(1.0)  # auto_resume is on, and still it waits
        assert (await api.call("GET", f"/api/runs/{run_id}"))["state"] == "interrupted"
        async with session.get(f"http://127.0.0.1:{port}/jobs/{job_id}") as resp:
            page = await resp.text()
        assert "paused, then cut off by a crash" in page and "hdr-resume" in page
        await api.call("POST", f"/api/runs/{run_id}/resume", {})
        run = await api.wait_state(run_id, {"succeeded", "failed"}, within=120)
        assert run["state"] == "succeeded", run
        target = tmp_path / "restored"
        restored = await api_operation(
            api, f"/api/jobs/{job_id}/snapshots/{run['snapshot_id']}/restore",
            {"target": str(target)})
        assert restored["state"] == "succeeded", restored
        assert tree_signature(target / src.name) == tree_signature(src)
    assert cli("events", "verify", "--data", str(data)).returncode == 0


@pytest.mark.timeout(180)
async def test_a_paused_run_stopped_by_sigterm_stays_paused_until_resumed(
        session: aiohttp.ClientSession, tmp_path: Path) -> None:
    src, dest, data = big_source(tmp_path / "src"), tmp_path / "dest", tmp_path / "data"
    with running_server(data) as (proc, port):
        api = Api(session, port)
        job = await api.call("POST", "/api/jobs", {
            "name": "Big", "engine": "mirror", "sources": [str(src)],
            "destination": str(dest), "options": {"bwlimit": 16384}})
        run_id = (await api.call("POST", f"/api/jobs/{job['id']}/start", {}))["run_id"]
        await api.wait_state(run_id, {"running"})
        await api.call("POST", f"/api/runs/{run_id}/pause", {})
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    with running_server(data) as (_, port):
        api = Api(session, port)
        await asyncio.sleep(1.0)
        run = await api.call("GET", f"/api/runs/{run_id}")
        assert run["state"] == "interrupted", run
        assert run["interrupted_reason"] == "shutdown_while_paused"
        await api.call("POST", f"/api/runs/{run_id}/resume", {})
        run = await api.wait_state(run_id, {"succeeded", "failed"}, within=120)
        assert run["state"] == "succeeded", run


def test_the_rate_limiter_gives_no_burst_for_time_spent_paused() -> None:
    limiter = RateLimiter(MiB)  # 1 MiB/s
    limiter.consume(MiB // 4)
    time.sleep(1.5)  # paused: no bytes written
    began = time.monotonic()
    for _ in range(8):
        limiter.consume(MiB // 4)
    # 2 MiB at 1 MiB/s takes 2 s less the burst (0.2 s); the pause bought nothing.
    assert time.monotonic() - began >= 1.7


def tree_bytes(root: Path) -> int:
    """Bytes of every file under root."""
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # a temp name renamed meanwhile
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


@pytest.mark.timeout(60)
def test_after_a_resume_the_bandwidth_limit_holds_from_the_first_second(
        tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    write(src / "big.bin", os.urandom(12 * MiB))
    spec_options = {"bwlimit": 1024, "threads": 1}  # 1 MiB/s
    spec = BackupSpec.build([src], dest, options=spec_options)
    control = RunControl()
    outcome: list[BaseException] = []

    def backup() -> None:
        try:
            MirrorEngine().backup(spec, control, NullReporter())
        except BaseException as err:  # handed to the test's thread
            outcome.append(err)
    worker = threading.Thread(target=backup)
    worker.start()
    try:
        time.sleep(1.0)
        control.pause()
        time.sleep(0.6)  # the copy reaches its next safe point and holds
        held = tree_bytes(dest)
        time.sleep(3.0)
        assert tree_bytes(dest) == held  # paused means nothing written
        control.resume()
        time.sleep(0.5)
        burst = tree_bytes(dest) - held
        time.sleep(1.5)
        two_seconds = tree_bytes(dest) - held
    finally:
        control.cancel()
        worker.join(30)
    assert isinstance(outcome[0], Cancelled)
    # At 1 MiB/s: half a second is 0.5 MiB; a quarter-second chunk and the 0.2 s burst
    # allowance on top. Before the fix the 3 s paused came back as a 3 MiB burst.
    assert burst <= 1.0 * MiB, burst
    assert two_seconds <= 2.5 * MiB, two_seconds

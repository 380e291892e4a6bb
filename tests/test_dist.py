"""The single-file build: `make dist` makes one executable that runs where Python is not."""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.cli_helpers import REPO, Api, running_server
from tests.engine_helpers import big_source, tree_signature, write
from tests.operation_helpers import api_operation

# Building takes a minute on a cold machine; the module's tests share one build.
pytestmark = pytest.mark.timeout(600)

BINARY = REPO / "dist" / "backup-manager"


@pytest.fixture(scope="module")
def binary() -> Path:
    """dist/backup-manager, rebuilt by make when any source is newer than it."""
    result = subprocess.run(["make", "-s", "dist"], cwd=REPO, capture_output=True, text=True,
                            timeout=540, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert BINARY.is_file() and os.access(BINARY, os.X_OK)
    return BINARY


def python_places() -> list[Path]:
    """Every Python install this machine has: the one running the tests, the venv, the
    system's."""
    places = {Path(sys.base_prefix), Path(sys.prefix), REPO / ".venv"}
    if Path(sys.base_prefix).parent.name == "versions":  # pyenv: every version it holds
        places.add(Path(sys.base_prefix).parent)
    for root in (Path("/usr/lib"), Path("/usr/local/lib"), Path("/usr/bin"),
                 Path("/usr/local/bin")):
        places.update(root.glob("python3*"))
        places.update(root.glob("libpython3*"))
    places.update(Path("/usr/lib/x86_64-linux-gnu").glob("libpython3*"))
    return sorted(p for p in places if p.exists() and str(p) not in ("/", "/usr"))


def without_python(places: list[Path]) -> list[str]:
    """A command prefix that runs the rest in a mount namespace where each of the places
    is hidden (an empty tmpfs over a folder, /dev/null over a file)."""
    folders = [p for p in places if p.is_dir() and not p.is_symlink()]
    files = {p.resolve() for p in places if p not in folders}
    folders = [p for p in folders if not any(p.is_relative_to(q) and p != q for q in folders)]
    # Files first: some are reached through a folder hidden after them.
    hide = "; ".join([f"mount --bind /dev/null {shlex.quote(str(p))}" for p in sorted(files)]
                     + [f"mount -t tmpfs none {shlex.quote(str(p))}" for p in folders])
    return ["unshare", "--mount", "--propagation", "private", "sh", "-ec",
            f'{hide}; exec "$@"', "sh"]


@pytest.fixture(scope="module")
def no_python() -> list[str]:
    """The prefix, after checking that under it no Python starts at all."""
    prefix = without_python(python_places())
    hidden = subprocess.run([*prefix, "true"], capture_output=True, text=True, timeout=30,
                            check=False)
    assert hidden.returncode == 0, f"cannot hide Python here: {hidden.stderr}"
    for python in ("python3", sys.executable, str(REPO / ".venv" / "bin" / "python")):
        probe = subprocess.run([*prefix, python, "-c", "print('still here')"],
                               capture_output=True, text=True, timeout=30, check=False)
        assert "still here" not in probe.stdout, f"{python} still runs: {probe.stderr}"
    return prefix


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client session."""
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def unpack_dir(tmp_path: Path) -> Iterator[Path]:
    """Where the executable unpacks itself ($TMPDIR); it must be empty again after."""
    path = tmp_path / "unpack"
    path.mkdir()
    yield path


async def backed_up(api: Api, engine: str, source: Path, dest: Path) -> tuple[Any, Any]:
    """Create a job, run it, and return the job and its run, which succeeded."""
    job = await api.call("POST", "/api/jobs", {"name": f"Docs by {engine}", "engine": engine,
                                               "sources": [str(source)],
                                               "destination": str(dest)})
    run_id = (await api.call("POST", f"/api/jobs/{job['id']}/start", {}))["run_id"]
    run = await api.wait_state(run_id, {"succeeded", "failed"})
    assert run["state"] == "succeeded", run
    return job, run


def test_make_dist_gives_one_self_contained_file(binary: Path, no_python: list[str]) -> None:
    assert binary.stat().st_size > 5_000_000  # Python and the dependencies are inside
    result = subprocess.run([*no_python, str(binary), "--help"], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "{serve,token,events}" in result.stdout


async def test_the_executable_backs_up_stops_cleanly_and_resumes_without_python(
        binary: Path, no_python: list[str], session: aiohttp.ClientSession, tmp_path: Path,
        unpack_dir: Path) -> None:
    small = tmp_path / "small"
    write(small / "docs" / "naïve résumé.txt", b"bonjour\n")
    write(small / "empty.txt", b"")
    (small / "link").symlink_to("docs/naïve résumé.txt")
    big, data, dest = big_source(tmp_path / "big"), tmp_path / "data", tmp_path / "dest"
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "TMPDIR": str(unpack_dir), "LANG": "C.UTF-8"}
    command = [*no_python, str(binary)]

    with running_server(data, command=command, env=env) as (proc, port):
        api = Api(session, port)
        page = await session.get(f"http://127.0.0.1:{port}/jobs")
        assert page.status == 200 and "/static/" in await page.text()  # templates and CSS
        job, run = await backed_up(api, "mirror", small, dest / "docs")
        restored = await api_operation(
            api, f"/api/jobs/{job['id']}/snapshots/{run['snapshot_id']}/restore",
            {"target": str(tmp_path / "restored")})
        assert restored["state"] == "succeeded", restored
        assert tree_signature(tmp_path / "restored" / "small") == tree_signature(small)
        # The system rsync, started from the bundle, loads its own libraries.
        await backed_up(api, "rsync", small, dest / "rsync")
        metrics = await (await session.get(f"http://127.0.0.1:{port}/metrics")).text()
        assert 'outcome="succeeded"} 1.0' in metrics
        assert 'backup_manager_build_info{version="unknown"}' not in metrics

        # A run going when SIGTERM comes stops at a safe point and is recorded as
        # interrupted; the next start of the executable resumes it.
        bigjob = await api.call("POST", "/api/jobs", {"name": "Big", "engine": "mirror",
                                                      "sources": [str(big)],
                                                      "destination": str(dest / "big"),
                                                      "options": {"bwlimit": 8192}})
        big_run = (await api.call("POST", f"/api/jobs/{bigjob['id']}/start", {}))["run_id"]
        await api.wait_state(big_run, {"running"})
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    app_log = (data / "logs" / "app.log").read_text()
    assert "event log closed at seq" in app_log and "Traceback" not in app_log
    assert "interrupted by shutdown" in (data / "logs" / "runs" / f"{big_run}.log").read_text()
    assert os.listdir(unpack_dir) == []  # the unpacked runtime is removed on exit

    with running_server(data, command=command, env=env) as (proc, port):
        api = Api(session, port)
        run = await api.wait_state(big_run, {"succeeded", "failed"}, within=120)
        assert run["state"] == "succeeded", run
        events = (await api.call("GET", "/api/events?since=0&limit=1000"))["events"]
        assert [e["type"] for e in events if e["data"].get("run_id") == big_run
                and e["type"] in ("RunInterrupted", "RunResumed", "RunSucceeded")] == [
            "RunInterrupted", "RunResumed", "RunSucceeded"]
        restored = await api_operation(
            api, f"/api/jobs/{bigjob['id']}/snapshots/{run['snapshot_id']}/restore",
            {"target": str(tmp_path / "big-restored")})
        assert restored["state"] == "succeeded", restored
        assert tree_signature(tmp_path / "big-restored" / "big") == tree_signature(big)
        # Ctrl-C in a terminal: the whole process group gets SIGINT, so the server gets
        # one from the terminal and one forwarded by the launcher; it stops once, cleanly.
        os.killpg(proc.pid, signal.SIGINT)
        assert await asyncio.to_thread(proc.wait, 60) == 0
    app_log = (data / "logs" / "app.log").read_text()
    assert app_log.count("event log closed at seq") == 2 and "Traceback" not in app_log
    assert "CleanupError" not in app_log
    assert os.listdir(unpack_dir) == []
    # The audit tool in the same file reads the log the executable wrote.
    verify = await asyncio.to_thread(
        subprocess.run, [*no_python, str(binary), "events", "verify", "--data", str(data)],
        capture_output=True, text=True, timeout=60, env=env, check=False)
    assert verify.returncode == 0 and verify.stdout.startswith("OK: "), verify.stdout

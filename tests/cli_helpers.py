"""Run the real `backup-manager` command and a real server process for tests, and talk to it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `python -m server ARGS` as a separate process and capture its output."""
    return subprocess.run([sys.executable, "-m", "server", *args], cwd=REPO, text=True,
                          capture_output=True, timeout=timeout, check=False)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


PYTHON_COMMAND = (sys.executable, "-m", "server")


def spawn_server(data: Path, port: int, log: IO[str] | int = subprocess.DEVNULL, *,
                 command: Sequence[str] = PYTHON_COMMAND, args: Sequence[str] = (),
                 env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
    """Start `backup-manager serve` (its output to `log`); the caller stops it."""
    return subprocess.Popen(
        [*command, "serve", "--port", str(port), "--data", str(data), *args],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True,
        env={**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"},
        # A process group of its own, as a shell gives a command: a test can signal the
        # group the way Ctrl-C in a terminal does.
        start_new_session=True)


def wait_served(proc: subprocess.Popen[str], port: int, within: float = 30) -> bool:
    """Whether the server answered /healthz before it exited or `within` seconds passed."""
    deadline = time.monotonic() + within
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def stop_server(proc: subprocess.Popen[str]) -> None:
    """SIGTERM, then SIGKILL if it is still there after 20 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def running_server(data: Path, port: int | None = None, *, command: Sequence[str] = PYTHON_COMMAND,
                   args: Sequence[str] = (), env: Mapping[str, str] | None = None,
                   ) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """Start `backup-manager serve` on a free loopback port; stop it with SIGTERM after.

    `command` runs something else as the command (the single-file build); `args` are
    more serve flags; `env` replaces the environment.
    """
    port = port or free_port()
    log_path = data.parent / f"server-{port}.log"
    with open(log_path, "w") as log:
        proc = spawn_server(data, port, log, command=command, args=args, env=env)
        try:
            if not wait_served(proc, port):
                raise RuntimeError("server did not start: " + log_path.read_text())
            yield proc, port
        finally:
            stop_server(proc)


class Api:
    """A tiny client for the running server's JSON API."""

    def __init__(self, session: aiohttp.ClientSession, port: int) -> None:
        self.session, self.base = session, f"http://127.0.0.1:{port}"

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        """Call the API and return the JSON answer (asserting a 2xx status)."""
        kwargs = {"json": body} if method in ("POST", "PUT") else {}
        async with self.session.request(method, self.base + path, **kwargs) as resp:
            data = await resp.json()
            assert resp.status < 300, data
            return data

    async def wait_state(self, run_id: str, states: set[str], within: float = 60) -> Any:
        """Poll a run until it is in one of the states."""
        async with asyncio.timeout(within):
            while True:
                run = await self.call("GET", f"/api/runs/{run_id}")
                if run["state"] in states:
                    return run
                await asyncio.sleep(0.05)


def _has_partial(dest: Path) -> bool:
    """Whether a partial snapshot is in the destination."""
    return dest.is_dir() and any(n.endswith(".partial") for n in os.listdir(dest))


async def start_paused_run(api: Api, src: Path, dest: Path) -> tuple[str, str]:
    """Create a mirror job, start it and pause it mid-way; return job and run ids."""
    job = await api.call("POST", "/api/jobs", {"name": "Big", "engine": "mirror",
                                               "sources": [str(src)],
                                               "destination": str(dest),
                                               # 16 MiB/s: the run is still going when
                                               # the test pauses it.
                                               "options": {"bwlimit": 16384}})
    run_id = (await api.call("POST", f"/api/jobs/{job['id']}/start", {}))["run_id"]
    await api.wait_state(run_id, {"running"})
    # Running is recorded as the engine is handed the run; paused only once its partial
    # snapshot is there, so the run is truly mid-way (not paused before it began).
    for _ in range(1500):  # 30 s
        if await asyncio.to_thread(_has_partial, dest):
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError(f"run {run_id} is running but has no partial snapshot in {dest}")
    await api.call("POST", f"/api/runs/{run_id}/pause", {})
    return job["id"], run_id


async def wait_healthy(session: aiohttp.ClientSession, port: int) -> None:
    """Wait until /healthz answers."""
    async with asyncio.timeout(30):
        while True:
            try:
                async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)

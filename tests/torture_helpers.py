"""Kill -9 torture: a real server process killed and restarted on one data directory, and
the checks that must hold after every restart."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import json
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.cli_helpers import REPO, Api, cli, free_port
from tests.engine_contract_helpers import descendants
from tests.projection_helpers import projection_files

HTTP_TIMEOUT = aiohttp.ClientTimeout(total=60)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


class Server:
    """One data directory served by a succession of server processes, each one either
    killed with SIGKILL (nothing flushed, nothing cleaned up) or stopped at the end."""

    def __init__(self, data: Path, logs: Path, session: aiohttp.ClientSession) -> None:
        self.data, self.logs, self.session = data, logs, session
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.starts = 0
        # Programs (rsync, restic) a killed server left running, with their command
        # line, so the ones still alive at the end can be stopped (and counted).
        self.orphans: list[tuple[int, bytes]] = []

    @property
    def api(self) -> Api:
        """A client for the current server process."""
        return Api(self.session, self.port)

    async def start(self, within: float = 30) -> None:
        """Start a server on a fresh loopback port and wait until /healthz answers 200."""
        assert self.proc is None or self.proc.poll() is not None
        self.starts += 1
        self.port = free_port()
        log_path = self.logs / f"server-{self.starts:02d}.log"
        self.proc = self._spawn(log_path)
        deadline = time.monotonic() + within
        while True:
            try:
                async with self.session.get(f"http://127.0.0.1:{self.port}/healthz",
                                            timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"server start #{self.starts} failed:\n"
                                     + log_path.read_text(errors="replace")[-4000:])
            await asyncio.sleep(0.05)

    def _spawn(self, log_path: Path) -> subprocess.Popen[bytes]:
        with open(log_path, "wb") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "server", "serve", "--port", str(self.port),
                 "--data", str(self.data)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"})

    def kill9(self) -> None:
        """SIGKILL the server process alone, as `kill -9 PID` does: the helper programs it
        started in their own sessions keep running, as they would."""
        assert self.proc is not None and self.proc.poll() is None, "the server died by itself"
        kids = descendants(self.proc.pid)
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.orphans += [(pid, cmd) for pid in kids if (cmd := _cmdline(pid))]

    def leftovers(self) -> list[str]:
        """Programs a killed server left behind that are still running (same pid, same
        command line), as readable strings."""
        alive = []
        for pid, cmd in self.orphans:
            if _cmdline(pid) == cmd and _alive(pid):
                words = cmd.rstrip(b"\0").split(b"\0")
                alive.append(f"{pid}: " + b" ".join(words).decode(errors="replace"))
        return alive

    def shutdown(self) -> None:
        """Stop the current server (SIGTERM, then SIGKILL) and whatever killed servers left
        running; never raises, never waits long."""
        if self.proc is not None and self.proc.poll() is None:
            kids = descendants(self.proc.pid)
            self.orphans += [(pid, cmd) for pid in kids if (cmd := _cmdline(pid))]
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for pid, cmd in self.orphans:
            if _cmdline(pid) == cmd:
                for sig in (signal.SIGKILL, signal.SIGCONT):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(pid, sig)
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, sig)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[:1] != ["Z"]


_IN_CREATE, _IN_MOVED_TO = 0x100, 0x80
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then the name


def _inotify(where: Path) -> int | None:
    """An inotify descriptor told of names created or moved into `where`, or None."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = int(libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
    except (OSError, AttributeError):
        return None
    if fd < 0:
        return None
    if libc.inotify_add_watch(fd, os.fsencode(where), _IN_CREATE | _IN_MOVED_TO) < 0:
        os.close(fd)
        return None
    return fd


class Watcher:
    """Kills the server from a thread the moment a wanted name appears in a directory (a
    manifest written, a snapshot put in place), to hit the few milliseconds of a run's
    finalising. inotify tells of the name within microseconds; where it cannot be had,
    the directory is polled every millisecond."""

    def __init__(self, where: Path, wanted: Callable[[str], bool], kill: Callable[[], None],
                 within: float) -> None:
        self.where, self.wanted, self.kill, self.within = where, wanted, kill, within
        self.fd = _inotify(where)  # before the listing: nothing created after it is missed
        self.before = self._names()
        self.seen: str | None = None
        self.cancelled = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _names(self) -> set[str]:
        try:
            return set(os.listdir(self.where))
        except FileNotFoundError:
            return set()

    def _new_names(self) -> set[str]:
        if self.fd is None:
            time.sleep(0.001)
            return self._names() - self.before
        ready, _, _ = select.select([self.fd], [], [], 0.05)
        names: set[str] = set()
        if ready:
            with contextlib.suppress(BlockingIOError):
                buf = os.read(self.fd, 65536)
                offset = 0
                while offset + _EVENT.size <= len(buf):
                    _, _, _, length = _EVENT.unpack_from(buf, offset)
                    raw = buf[offset + _EVENT.size:offset + _EVENT.size + length]
                    names.add(os.fsdecode(raw.rstrip(b"\0")))
                    offset += _EVENT.size + length
        return names

    def _watch(self) -> None:
        deadline = time.monotonic() + self.within
        try:
            while time.monotonic() < deadline and not self.cancelled.is_set():
                new = sorted(n for n in self._new_names() if self.wanted(n))
                if new:
                    self.kill()
                    self.seen = new[0]
                    return
        finally:
            if self.fd is not None:
                os.close(self.fd)

    async def wait(self, gone_by: Callable[[], Awaitable[bool]]) -> str | None:
        """Wait for the watch to end; the name that triggered the kill, or None when
        `gone_by()` said the moment had passed (the run ended) before it came."""
        while self.thread.is_alive():
            if await gone_by():
                self.cancelled.set()
            await asyncio.to_thread(self.thread.join, 0.05)
        return self.seen


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def assert_projections_equal_a_rebuild(server: Server, work: Path,
                                             within: float = 30) -> int:
    """`events replay` rebuilds byte-identical jobs/*.yaml and settings.yaml; returns the
    seq compared at. The server keeps appending while its run goes on, so the files are
    compared only when they reflect exactly the seq the replay stopped at (their hashes
    in .projection.json prove which seq they are at)."""
    deadline = time.monotonic() + within
    attempt = 0
    while True:
        attempt += 1
        health = await server.api.call("GET", "/healthz")
        if health["projector_lag"] == 0:
            out = work / f"replay-{server.starts:02d}-{attempt}"
            done = await asyncio.to_thread(cli, "events", "replay", "--out", str(out),
                                           "--data", str(server.data))
            assert done.returncode == 0, done.stdout + done.stderr
            match = re.search(r"replayed (\d+) events", done.stdout)
            assert match, done.stdout
            replayed = int(match.group(1))
            state = json.loads((server.data / ".projection.json").read_bytes())
            files = projection_files(server.data)
            again = json.loads((server.data / ".projection.json").read_bytes())
            consistent = (state == again and state["seq"] == replayed and
                          {rel: _sha(b) for rel, b in files.items()} == state["files"])
            if consistent:
                rebuilt = projection_files(out)
                assert sorted(rebuilt) == sorted(files)
                for rel, content in files.items():
                    assert rebuilt[rel] == content, f"{rel} differs from a rebuild at seq " \
                                                    f"{replayed}"
                shutil.rmtree(out)
                return replayed
            shutil.rmtree(out)
        if time.monotonic() > deadline:
            raise AssertionError(f"the projections never settled at the replayed seq "
                                 f"({attempt} attempts)")
        await asyncio.sleep(0.05)


def assert_chain_verifies(data: Path) -> None:
    """`events verify` exits 0 (read-only; works while the server runs)."""
    done = cli("events", "verify", "--data", str(data))
    assert done.returncode == 0, done.stdout + done.stderr


@dataclass
class Figures:
    """What one engine's torture did, for the summary line."""

    engine: str
    kills: int = 0
    moments: dict[str, int] = field(default_factory=dict)
    runs: int = 0
    restarts: int = 0
    strays: int = 0
    window: float = 0.0
    seconds: float = 0.0

    def count(self, moment: str) -> None:
        """Count one kill at a kind of moment."""
        self.moments[moment] = self.moments.get(moment, 0) + 1

    def line(self) -> str:
        """One line for the report."""
        moments = ", ".join(f"{k} {v}" for k, v in sorted(self.moments.items()))
        strays = f"; {self.strays} STRAY SNAPSHOTS" if self.strays else ""
        return (f"{self.engine}: {self.kills} kills survived ({moments}); {self.runs} runs "
                f"restored byte-identical{strays}; a run takes {self.window:.1f} s; "
                f"{self.seconds:.1f} s in all")


def json_dump(value: Any) -> str:
    """Compact JSON for assertion messages."""
    return json.dumps(value, sort_keys=True)[:2000]

"""Run the real `backup-manager` command and a real server process for tests."""

from __future__ import annotations

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


@contextlib.contextmanager
def running_server(data: Path, port: int | None = None, *, command: Sequence[str] = PYTHON_COMMAND,
                   args: Sequence[str] = (), env: Mapping[str, str] | None = None,
                   ) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """Start `backup-manager serve` on a free loopback port; stop it with SIGTERM after.

    `command` runs something else as the command (the single-file build); `args` are
    more serve flags; `env` replaces the environment.
    """
    port = port or free_port()
    log = open(data.parent / f"server-{port}.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [*command, "serve", "--port", str(port), "--data", str(data), *args],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True,
        env={**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"},
        # A process group of its own, as a shell gives a command: a test can signal the
        # group the way Ctrl-C in a terminal does.
        start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("server did not start: " +
                                       (data.parent / f"server-{port}.log").read_text()
                                       ) from None
                time.sleep(0.1)
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()

"""A server's start stops the rsync a killed server left on a job's destination (issue 12)."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

from engines.child import OWNER_ENV
from tests.cli_helpers import running_server
from tests.engine_helpers import write


def _post(port: int, path: str, body: dict[str, object]) -> dict[str, object]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="POST",
                                 data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        answer: dict[str, object] = json.loads(resp.read())
        return answer


def test_a_start_stops_what_a_dead_server_left_on_a_jobs_destination(tmp_path: Path) -> None:
    src, dest, data = tmp_path / "src", tmp_path / "dest", tmp_path / "data"
    write(src / "big.bin", os.urandom(2 << 20))
    data.mkdir()
    with running_server(data) as (_, port):
        _post(port, "/api/jobs", {"name": "Docs", "engine": "rsync", "sources": [str(src)],
                                  "destination": str(dest)})
    dead = subprocess.Popen(["true"])
    dead.wait()  # the killed server: its pid runs no more

    def slow_rsync(mark: dict[str, str]) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if k != OWNER_ENV}
        return subprocess.Popen(["rsync", "--bwlimit=1", str(src / "big.bin"),
                                 str(dest / "x.bin")], env={**env, **mark},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)

    dest.mkdir(exist_ok=True)
    leftover = slow_rsync({OWNER_ENV: f"{dead.pid}:1"})
    by_hand = slow_rsync({})  # a person's own rsync to the same place: never touched
    try:
        time.sleep(0.5)
        assert leftover.poll() is None and by_hand.poll() is None
        with running_server(data):
            assert leftover.wait(15) is not None  # stopped before the server served
            assert by_hand.poll() is None
    finally:
        for proc in (leftover, by_hand):
            if proc.poll() is None:
                proc.kill()
            proc.wait()

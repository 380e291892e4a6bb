"""Issue 12: a paused rsync's helpers die with the server, and the start-up sweep stops
whatever a dead server left on a destination, whatever its name."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engines.base import BackupSpec, RunControl
from engines.child import OWNER_ENV, owner_mark, stop_orphans_on
from engines.rsync import RsyncEngine
from tests.cli_helpers import free_port, spawn_server, wait_served
from tests.engine_helpers import RecordingReporter, write

MiB = 1024 * 1024
RSYNC = shutil.which("rsync")


def _api(port: int, method: str, path: str, body: Any = None) -> Any:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def _rsyncs_on(dest: Path) -> list[tuple[int, str]]:
    """(pid, state) of rsync processes whose command line names dest."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            argv = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        if os.path.basename(argv[0]) == b"rsync" and any(os.fsencode(dest) in a for a in argv):
            found.append((int(name), stat.rsplit(")", 1)[1].split()[0]))
    return found


def _wait(condition: Callable[[], bool], within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.mark.skipif(RSYNC is None, reason="rsync is not installed")
@pytest.mark.timeout(120)
def test_a_paused_rsync_leaves_no_stopped_process_when_its_server_is_killed(
        tmp_path: Path) -> None:
    # What a user sees: pause an rsync run, then the server is killed (-9, OOM). The
    # rsync the server started dies (PDEATHSIG), and so must the receiver and generator
    # it forked, though they are stopped: nothing may stay behind holding the
    # destination's files open.
    src = tmp_path / "src"
    for i in range(8):
        write(src / f"f{i}.bin", os.urandom(MiB))
    dest = tmp_path / "dest"
    port = free_port()
    proc = spawn_server(tmp_path / "data", port)
    leftovers: list[tuple[int, str]] = []
    try:
        assert wait_served(proc, port)
        job = _api(port, "POST", "/api/jobs", {
            "name": "Slow", "engine": "rsync", "sources": [str(src)],
            "destination": str(dest), "options": {"bwlimit": 1000}})
        run_id = _api(port, "POST", f"/api/jobs/{job['id']}/start", {})["run_id"]
        assert _wait(lambda: len(_rsyncs_on(dest)) >= 3, 30), _rsyncs_on(dest)
        time.sleep(1)
        assert _api(port, "POST", f"/api/runs/{run_id}/pause", {})["state"] == "paused"
        assert _wait(lambda: all(s == "T" for _, s in _rsyncs_on(dest)), 10)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        _wait(lambda: not _rsyncs_on(dest), 5)
        leftovers = _rsyncs_on(dest)
        assert leftovers == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid, _ in _rsyncs_on(dest):  # only the ones this test made (its own dest)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(60)
def test_the_start_sweep_stops_a_stopped_leftover_of_any_name_on_a_destination(
        tmp_path: Path) -> None:
    # A helper a program forked carries the dead server's mark in its environment; it
    # is stopped for good, and its name need not be rsync or restic.
    dest = tmp_path / "dest"
    dead = subprocess.Popen(["true"])
    dead.wait()
    started: list[subprocess.Popen[bytes]] = []

    def helper(mark: dict[str, str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(60)", f"{dest}/snap.partial/a"],
            env={**mark}, start_new_session=True)
        started.append(proc)
        return proc

    try:
        orphan = helper({OWNER_ENV: f"{dead.pid}:1"})
        ours = helper(owner_mark())
        by_hand = helper({})
        time.sleep(0.3)
        os.killpg(orphan.pid, signal.SIGSTOP)
        assert stop_orphans_on([str(tmp_path / "elsewhere"), str(dest)]) == 1
        assert orphan.wait(10) == -signal.SIGKILL
        assert ours.poll() is None and by_hand.poll() is None
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.timeout(60)
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None
                    or shutil.which("setpriv") is None,
                    reason="needs root, unshare and setpriv to hide /proc")
def test_the_start_sweep_without_a_readable_proc_finds_nothing_and_does_not_fail(
        tmp_path: Path) -> None:
    # A container where /proc cannot be read: the server must still start (the sweep
    # finds nothing). /proc is replaced, in a mount namespace of its own, by a directory
    # its user (nobody) may not list.
    hidden = tmp_path / "hidden"
    hidden.mkdir(mode=0)
    os.chmod(tmp_path, 0o755)
    code = "from engines.child import stop_orphans_on; print(stop_orphans_on(['/x']))"
    script = (f"mount --bind {hidden} /proc && exec setpriv --reuid 65534 --regid 65534 "
              f"--clear-groups {sys.executable} -c \"{code}\"")
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=30, cwd=root,
                          env={"PYTHONPATH": str(root), "PATH": os.environ["PATH"]})
    if done.returncode != 0 and "mount" in done.stderr:
        pytest.skip(f"cannot hide /proc here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0"
    assert "cannot look for leftover programs" in done.stderr


@pytest.mark.skipif(RSYNC is None, reason="rsync is not installed")
def test_rsync_keeps_hard_links_between_files_of_different_sources(tmp_path: Path) -> None:
    # What a user sees: the README says rsync keeps "hard links between files of the
    # job's sources" (-H), as mirror, archive and restic do. With two sources, one file
    # linked into both (s1/x and s2/y), the snapshot and its restore hold one inode.
    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    write(s1 / "x", b"shared content\n")
    write(s1 / "alone", b"one name\n")
    s2.mkdir()
    os.link(s1 / "x", s2 / "y")
    spec = BackupSpec.build([s1, s2], tmp_path / "dest", job_id="hl-1")
    engine = RsyncEngine()
    for _ in range(2):  # the second run links to the first (--link-dest): still one
        snap = engine.backup(spec, RunControl(), RecordingReporter()).snapshot_id
        stored = tmp_path / "dest" / snap
        assert (stored / "s1" / "x").stat().st_ino == (stored / "s2" / "y").stat().st_ino
        assert (stored / "s1" / "alone").stat().st_nlink <= 2
        assert sorted(os.listdir(stored)) == ["s1", "s2"]
        assert engine.verify(spec, snap, RunControl(), RecordingReporter()).ok
    out = tmp_path / "out"
    engine.restore(spec, snap, out, RunControl(), RecordingReporter())
    assert (out / "s1" / "x").stat().st_ino == (out / "s2" / "y").stat().st_ino
    assert (out / "s2" / "y").read_bytes() == b"shared content\n"

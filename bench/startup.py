"""Start-up of the real server on a large data directory, to a served dashboard.

`python -m bench --only startup`. Each repeat spawns `backup-manager serve` (the venv's
command) on a fresh copy of a data directory holding BENCH_STARTUP_EVENTS events (default
1,000,000: 999 jobs of 125 runs each, built once and kept under BENCH_STARTUP_DATA,
default /tmp/bm-startup-<events>) with its YAML projections at the head, and times it
until GET /dashboard answers 200:
- cold: no state snapshot (the first start after an upgrade, or a snapshot lost);
- snapshot: with the snapshot a clean stop leaves (the usual start).
The peer, run interleaved, is the same command on an empty data directory: what any
start costs (interpreter, imports, binding), so the ratio shows what the log adds.

A stop signal during start-up: SIGTERM is sent BENCH_STARTUP_SIGNAL_AT seconds (default
0.3) after the server logs that its event log is open (the state is loading then: the
snapshot, or the whole log when cold), against the same on an empty directory; the
figure is the time from the signal to the process's exit (target: 1 s).
Timing copies of 300 MB happen outside the measured time. Nothing here asserts.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench.compare import Comparison, interleave
from bench.eventlog import REPO_ROOT, TMP_ROOT, env_float, env_int
from core import snapshot
from core.snapshot import SNAPSHOT_FILE

# `backup-manager serve` as the venv's entry point runs it: this tree's code.
SERVE = (sys.executable, "-m", "server", "serve")
TARGET_SECONDS = 3.0
STOP_TARGET_SECONDS = 1.0
OPEN_LINE = "open at seq"  # server/app.py logs it once the store is open


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _spawn(data: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([*SERVE, "--data", str(data), "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                start_new_session=True)


def _answers(port: int, path: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _stop(proc: subprocess.Popen[bytes]) -> float:
    """SIGTERM; the seconds until the process is gone (SIGKILL after 60 s)."""
    started = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return time.perf_counter() - started


def served_after(data: Path, log: Path) -> float:
    """Seconds from the spawn until GET /dashboard answers 200; the server is stopped."""
    port = _free_port()
    started = time.perf_counter()
    proc = _spawn(data, port, log)
    try:
        while not _answers(port, "/dashboard"):
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited: {log.read_text()[-2000:]}")
            time.sleep(0.02)
        return time.perf_counter() - started
    finally:
        _stop(proc)


def stopped_after(data: Path, log: Path, signal_at: float) -> float:
    """Seconds from a SIGTERM until the exit, the signal sent `signal_at` s after the
    server said its log is open (the state is loading then)."""
    log.write_text("")
    proc = _spawn(data, _free_port(), log)
    while OPEN_LINE not in log.read_text():
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited early: {log.read_text()[-2000:]}")
        time.sleep(0.01)
    time.sleep(signal_at)
    return _stop(proc)


def _usable(path: Path) -> bool:
    """Whether this version of the server would start from the snapshot at `path`."""
    try:
        return snapshot.read(path, threading.Event()) is not None
    except snapshot.SnapshotUnusable:
        return False


def _build(base: Path, events: int) -> None:
    """The data directory, once: a log of `events` events, its YAML and a snapshot (made
    again when this version cannot use the one there: else the timed start is cold)."""
    if (base / SNAPSHOT_FILE).is_file() and _usable(base / SNAPSHOT_FILE):
        return
    if (base / "events.db").is_file() and (base / SNAPSHOT_FILE).is_file():
        print(f"  the snapshot under {base} is of another version: making it again",
              flush=True)
        (base / SNAPSHOT_FILE).unlink()
    else:
        from bench.startup_data import build_data_dir

        shutil.rmtree(base, ignore_errors=True)
        print(f"  building {events:,} events under {base} (once; kept for the next run)",
              flush=True)
        build_data_dir(base, events)
    # One start and clean stop leaves the snapshot (the cold start writes it at once).
    port, log = _free_port(), base.parent / "build-serve.log"
    proc = _spawn(base, port, log)
    try:
        while not (base / SNAPSHOT_FILE).is_file() and proc.poll() is None:
            time.sleep(0.5)
    finally:
        _stop(proc)


def _fresh(base: Path, into: Path, with_snapshot: bool) -> Path:
    shutil.rmtree(into, ignore_errors=True)
    shutil.copytree(base, into, ignore=shutil.ignore_patterns("*.lock", "logs"))
    if not with_snapshot:
        (into / SNAPSHOT_FILE).unlink()
    return into


def run_startup() -> list[Comparison]:
    """Time start-up cold and with the snapshot, and a stop during start-up."""
    events = env_int("BENCH_STARTUP_EVENTS", 1_000_000)
    repeats = env_int("BENCH_STARTUP_REPEATS", 5)
    signal_at = env_float("BENCH_STARTUP_SIGNAL_AT", 0.3)
    # BENCH_STARTUP_COLD=0 leaves out the starts without a snapshot (minutes at 1M).
    kinds = (("with its snapshot", True), ("cold, no snapshot", False))[
        :1 if os.environ.get("BENCH_STARTUP_COLD") == "0" else 2]
    base = Path(os.environ.get("BENCH_STARTUP_DATA", f"{TMP_ROOT}/bm-startup-{events}")) / "base"
    base.parent.mkdir(parents=True, exist_ok=True)
    _build(base, events)
    print(f"\n== start-up: {events:,} events, {repeats} interleaved repeats; peer: the "
          "same server on an empty data directory ==", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-startup-", dir=TMP_ROOT) as tmp:
        work = Path(tmp)
        log = work / "serve.log"

        def empty() -> Path:
            shutil.rmtree(work / "empty", ignore_errors=True)
            return work / "empty"

        def timed(with_snapshot: bool) -> float:
            return served_after(_fresh(base, work / "data", with_snapshot), log)

        comparisons = []
        for name, with_snapshot in kinds:
            ours, peer = interleave(functools.partial(timed, with_snapshot),
                                    lambda: served_after(empty(), log), repeats)
            comparisons.append(Comparison(
                f"start-up to a served dashboard, {events:,} events, {name}", "s", ours,
                peer, "the same server on an empty data directory",
                target_value=TARGET_SECONDS if with_snapshot else None,
                note="spawn of `backup-manager serve` until GET /dashboard answers 200"))
            print("  " + comparisons[-1].line(), flush=True)
        for name, with_snapshot in kinds:
            ours, peer = interleave(
                functools.partial(lambda s: stopped_after(_fresh(base, work / "data", s),
                                                          log, signal_at), with_snapshot),
                lambda: stopped_after(empty(), log, signal_at), repeats)
            comparisons.append(Comparison(
                f"SIGTERM during start-up to exit, {events:,} events, {name}", "s", ours,
                peer, "the same on an empty data directory",
                target_value=STOP_TARGET_SECONDS,
                note=f"signal {signal_at:g} s after the log is open (loading the state); "
                     "time from the signal to the end of the process"))
            print("  " + comparisons[-1].line(), flush=True)
    return comparisons

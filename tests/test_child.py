"""engines.child: the one supervisor of external programs, tried on real small programs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from engines.child import OWNER_ENV, Child, owner_mark, process_alive
from engines.control import RunControl

REPO = Path(__file__).resolve().parent.parent
# Prints a numbered line every 20 ms, for a minute at most.
TICKER = [sys.executable, "-c",
          "import time\nfor i in range(3000):\n print(i, flush=True)\n time.sleep(0.02)"]


def _until(what: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


class Lines:
    """Collects a child's stdout lines (from its pump thread)."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self._lock = threading.Lock()

    def __call__(self, raw: bytes) -> None:
        with self._lock:
            self.lines.append(raw)

    def __len__(self) -> int:
        with self._lock:
            return len(self.lines)


def test_pause_stops_output_and_resume_continues_it() -> None:
    lines = Lines()
    child = Child("ticker", on_stdout=lines)
    try:
        child.start(TICKER)
        _until(lambda: len(lines) >= 3)
        child.pause()
        time.sleep(0.2)  # a line already in the pipe may still arrive
        held = len(lines)
        time.sleep(0.5)
        assert len(lines) == held, "a paused program kept printing"
        assert child.paused
        child.resume()
        _until(lambda: len(lines) > held + 3)
    finally:
        child.close()
    assert child.returncode == -signal.SIGKILL  # close() kills a program still running
    assert lines.lines[:3] == [b"0\n", b"1\n", b"2\n"]


def test_stop_escalates_to_sigkill_for_a_program_that_ignores_sigterm() -> None:
    lines = Lines()
    child = Child("stubborn", on_stdout=lines, stop_signal=signal.SIGTERM, grace=0.6)
    child.start([sys.executable, "-c",
                 "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                 "print('ready', flush=True)\ntime.sleep(60)"])
    _until(lambda: len(lines) == 1)
    began = time.monotonic()
    assert child.stop() == -signal.SIGKILL
    assert 0.5 <= time.monotonic() - began < 5
    assert not process_alive(child.pid)


def test_stop_signal_is_enough_for_a_program_that_heeds_it() -> None:
    child = Child("polite", stop_signal=signal.SIGINT, grace=30)
    child.start(["sleep", "60"])
    began = time.monotonic()
    assert child.stop() == -signal.SIGINT
    assert time.monotonic() - began < 5


def test_stderr_tail_is_kept_and_what_was_dropped_counted() -> None:
    taken: list[bytes] = []

    def take(raw: bytes) -> bool:
        if raw.startswith(b"{"):
            taken.append(raw)
            return True
        return False

    child = Child("talker", on_stderr=take, stderr_keep=10)
    child.start(["sh", "-c", 'echo out; for i in $(seq 1 50); do echo "line $i" >&2; done; '
                 'echo "{json}" >&2; printf "caf\\303\\251 \\377\\n" >&2; exit 3'])
    assert child.wait() == 3
    assert child.returncode == 3
    tail = child.stderr_tail
    assert tail[:-1] == [f"line {i}" for i in range(42, 51)]
    assert tail[-1] == "café \\xff"  # not UTF-8: shown as \xNN, as engines.fsmeta does
    assert child.stderr_dropped == 41
    assert taken == [b"{json}\n"]


def test_supervise_carries_out_pause_and_cancel() -> None:
    lines = Lines()
    control = RunControl()
    paused: list[bool] = []
    child = Child("ticker", on_stdout=lines, stop_signal=signal.SIGTERM, grace=5)
    child.start(TICKER)
    outcome: list[str | None] = []
    runner = threading.Thread(target=lambda: outcome.append(child.supervise(
        control, on_pause=lambda: paused.append(True))))
    runner.start()
    try:
        _until(lambda: len(lines) >= 3)
        control.pause()
        _until(lambda: paused == [True])
        time.sleep(0.2)
        held = len(lines)
        time.sleep(0.4)
        assert len(lines) == held
        control.resume()
        _until(lambda: len(lines) > held + 2)
        control.cancel()
        runner.join(10)
    finally:
        child.close()
    assert outcome == ["cancel"]
    assert child.returncode == -signal.SIGTERM


def test_supervise_kills_at_once_when_the_check_says_so() -> None:
    control = RunControl()
    child = Child("sleeper", stop_signal=signal.SIGINT, grace=30)
    child.start(["sleep", "60"])
    began = time.monotonic()
    reasons = iter([None, None, "the repository vanished"])
    try:
        assert child.supervise(control, check=lambda: next(reasons, None)) == "check"
    finally:
        child.close()
    assert child.stop_reason == "the repository vanished"
    assert child.returncode == -signal.SIGKILL
    assert time.monotonic() - began < 5


def test_a_failing_output_handler_fails_the_run_when_asked_to() -> None:
    def broken(raw: bytes) -> None:
        raise ValueError("cannot read " + raw.decode().strip())

    control = RunControl()
    child = Child("ticker", on_stdout=broken, raise_handler_errors=True, grace=5)
    child.start(TICKER)
    try:
        with pytest.raises(ValueError, match="cannot read 0"):
            child.supervise(control)
    finally:
        child.close(kill=False)
    assert child.returncode == -signal.SIGTERM  # stopped, not left running


def test_the_child_carries_the_owner_mark(tmp_path: Path) -> None:
    out = tmp_path / "env"
    child = Child("env")
    child.start(["sh", "-c", f'printf %s "${OWNER_ENV}" > {out}'], env={"PATH": os.defpath})
    assert child.wait() == 0
    assert out.read_text() == owner_mark()[OWNER_ENV]


def test_a_killed_parent_takes_its_child_with_it() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c",
         "from engines.child import Child\n"
         "c = Child('sleep')\nc.start(['sleep', '60'])\n"
         "print(c.pid, flush=True)\nc.wait()\n"],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        assert process_alive(pid)
        parent.kill()  # SIGKILL: no clean-up code of the parent runs
        parent.wait()
        _until(lambda: not process_alive(pid), timeout=5)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()

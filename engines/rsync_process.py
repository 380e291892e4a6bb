"""Running one rsync: pause, resume, cancel and interrupt by signals to its process
group, checkpoints while it runs, and its output read as it comes (engines.rsync_output).

Split out of engines.rsync, which decides what each rsync copies.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, Any

from engines.base import Cancelled, Interrupted, ProgressMeter, Reporter, RunControl
from engines.procs import GroupGuard, die_with_parent, owner_mark
from engines.rsync_args import rsync_env
from engines.rsync_output import TransferTally

CHECKPOINT_EVERY = 2.0  # seconds
STDERR_KEEP = 10_000  # lines of rsync's stderr kept; the last ones carry the real error
STOP_GRACE = 10.0  # seconds rsync gets to clean up after SIGTERM before SIGKILL


class Checkpointer:
    """Emits the run's checkpoint now, or when a couple of seconds have passed."""

    def __init__(self, reporter: Reporter, state: Mapping[str, Any],
                 meter: ProgressMeter) -> None:
        self.reporter = reporter
        self.state = dict(state)
        self.meter = meter
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def emit(self) -> None:
        """Emit a checkpoint with the counts so far."""
        with self._lock:
            self.reporter.checkpoint({**self.state, "files_done": self.meter.state.files_done,
                                      "bytes_done": self.meter.state.bytes_done})
            self._last = time.monotonic()

    def maybe(self) -> None:
        """Emit a checkpoint if the last one is old enough."""
        if time.monotonic() - self._last >= CHECKPOINT_EVERY:
            self.emit()


class _Watcher(threading.Thread):
    """Applies pause, resume, cancel and interrupt to a running rsync's process group,
    and emits checkpoints while it runs."""

    def __init__(self, proc: subprocess.Popen[bytes], control: RunControl,
                 meter: ProgressMeter, checkpointer: Checkpointer) -> None:
        super().__init__(name="rsync-watcher", daemon=True)
        self.proc = proc
        self.control = control
        self.meter = meter
        self.checkpointer = checkpointer
        self.done = threading.Event()
        self.reason: str | None = None  # "cancel" or "interrupt" once rsync was stopped
        self.stopped = False

    def run(self) -> None:
        """Watch the control until rsync's output ends."""
        # The group cannot be reused while we watch: the reading loop reaps rsync only
        # after this thread has ended.
        while not self.done.is_set():
            if self.control.cancelled or self.control.interrupted:
                self.reason = "cancel" if self.control.cancelled else "interrupt"
                _signal_group(self.proc, signal.SIGTERM)
                _signal_group(self.proc, signal.SIGCONT)  # a stopped rsync must see it
                self.stopped = False
                return
            if self.control.paused and not self.stopped:
                _signal_group(self.proc, signal.SIGSTOP)
                self.stopped = True
                # Show where it holds (the last update may have been throttled away).
                self.meter.update(force=True)
            elif not self.control.paused and self.stopped:
                _signal_group(self.proc, signal.SIGCONT)
                self.stopped = False
            if not self.stopped:
                self.checkpointer.maybe()
            self.control.wait_for_change(0.1)
        if self.stopped:
            _signal_group(self.proc, signal.SIGCONT)


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop rsync and its helpers (cleanly if they will), and reap it."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        _signal_group(proc, signal.SIGCONT)
        try:
            proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()


def _collect_lines(stream: IO[bytes], keep: deque[str], dropped: list[int]) -> None:
    for raw in stream:
        if len(keep) == keep.maxlen:
            dropped[0] += 1
        # A name that is not UTF-8 shows as \xNN, as engines.fsmeta.shown writes it.
        keep.append(raw.decode("utf-8", "backslashreplace").rstrip("\n"))


@dataclass(frozen=True)
class RsyncRun:
    """How one rsync run ended."""

    returncode: int
    stderr: list[str]
    stderr_dropped: int  # lines beyond STDERR_KEEP, not kept
    tally: TransferTally


def run_rsync(argv: list[str], control: RunControl, meter: ProgressMeter,
              on_tally: Callable[[TransferTally], None],
              checkpointer: Checkpointer) -> RsyncRun:
    """Run rsync, feeding its output to `on_tally` as it comes, and return how it ended.

    Raises Cancelled or Interrupted if the control asked for that (rsync stopped first).
    rsync gets its own session so that pause and stop reach its helper processes too.
    It dies with this process (engines.procs.die_with_parent: this thread waits for it
    on every path), and carries the owner mark by which a next start finds a leftover.
    """
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True,
                            env={**rsync_env(), **owner_mark()},
                            preexec_fn=die_with_parent())
    assert proc.stdout is not None and proc.stderr is not None
    # PDEATHSIG reaches only this rsync, not the helpers it forks: if the server dies
    # while they are paused, the guard kills them (engines.procs.GroupGuard).
    guard = GroupGuard(proc.pid)
    # The pid in the checkpoint lets a resume or a discard stop this rsync if the worker
    # dies without it (engines.procs).
    checkpointer.state["pid"] = proc.pid
    checkpointer.emit()
    stderr: deque[str] = deque(maxlen=STDERR_KEEP)
    dropped = [0]
    reader = threading.Thread(target=_collect_lines, args=(proc.stderr, stderr, dropped),
                              name="rsync-stderr", daemon=True)
    reader.start()
    watcher = _Watcher(proc, control, meter, checkpointer)
    watcher.start()
    tally = TransferTally()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="backslashreplace")
    ended = False
    try:
        fd = proc.stdout.fileno()
        while chunk := os.read(fd, 1 << 16):
            tally.feed(decoder.decode(chunk))
            on_tally(tally)
        tally.feed(decoder.decode(b"", final=True))
        tally.finish()
        on_tally(tally)
        ended = True
    finally:
        watcher.done.set()
        watcher.join()
        guard.release()  # continued by the watcher, and not yet reaped
        if ended:
            # rsync closed its output and is exiting by itself: a signal now could turn
            # a finished run into "received SIGINT" (exit 20).
            try:
                proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                _stop_group(proc)
        else:
            _stop_group(proc)  # an error here: do not leave rsync running
        reader.join()
        proc.stdout.close()
        proc.stderr.close()
    if watcher.reason == "cancel":
        raise Cancelled("the run was cancelled")
    if watcher.reason == "interrupt":
        raise Interrupted("the run was interrupted; it can resume from its checkpoint")
    return RsyncRun(proc.returncode, list(stderr), dropped[0], tally)

"""Running one rsync under engines.child: pause, resume, cancel and interrupt by signals
to its process group, checkpoints while it runs, and its output read as it comes
(engines.rsync.output). engines.rsync.engine decides what each rsync copies.
"""

from __future__ import annotations

import codecs
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from engines.child import Child
from engines.control import RunControl
from engines.errors import Cancelled, Interrupted
from engines.progress import ProgressMeter, Reporter
from engines.rsync.args import rsync_env
from engines.rsync.output import TransferTally

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
    engines.child supervises it: its own session, so pause and stop reach its helper
    processes too; it dies with this thread, which waits for it on every path; a guard
    kills its helpers if the server dies while they are paused (engines.leftovers).
    """
    tally = TransferTally()
    decode = codecs.getincrementaldecoder("utf-8")(errors="backslashreplace").decode

    def on_output(chunk: bytes) -> None:
        # --info=progress2 moves with carriage returns: read as it comes, not by line.
        tally.feed(decode(chunk))
        on_tally(tally)

    child = Child("rsync", on_stdout=on_output, stdout_lines=False,
                  stderr_keep=STDERR_KEEP, stop_signal=signal.SIGTERM, grace=STOP_GRACE,
                  guard_group=True, settle_on_eof=True, raise_handler_errors=True)
    child.start(argv, env=rsync_env())
    try:
        # The pid in the checkpoint lets a resume or a discard stop this rsync if the
        # worker dies without it (engines.leftovers.stop_leftover).
        checkpointer.state["pid"] = child.pid
        checkpointer.emit()
        reason = child.supervise(control, poll=0.1, on_tick=checkpointer.maybe,
                                 # Show where it holds (the last update may have been
                                 # throttled away).
                                 on_pause=lambda: meter.update(force=True))
    finally:
        child.close(kill=False)  # an error here: do not leave rsync running
    tally.feed(decode(b"", final=True))
    tally.finish()
    on_tally(tally)
    if reason == "cancel":
        raise Cancelled("the run was cancelled")
    if reason == "interrupt":
        raise Interrupted("the run was interrupted; it can resume from its checkpoint")
    code = child.returncode
    assert code is not None
    return RsyncRun(code, child.stderr_tail, child.stderr_dropped, tally)

"""Stopping a helper program (rsync, restic) that an interrupted run left behind.

Engines start their program in its own session so pause and stop reach its helper
processes; the price is that a worker killed outright (a crash, kill -9) leaves the
program running, or stopped for good if it was paused. The checkpoint records its pid,
and the run that resumes or discards stops it first, so two programs never write into
one partial snapshot.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

WAIT = 10.0
POLL = 0.05


def process_alive(pid: int) -> bool:
    """Whether a process with this pid is alive (a zombie is not)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return status.rsplit(")", 1)[-1].split()[:1] != ["Z"]


def stop_leftover(resume: Mapping[str, Any] | None, program: str, marker: str) -> bool:
    """Kill the process group of the checkpoint's `pid` if it is `program` working on
    `marker` (a path in its command line); return whether one was stopped."""
    pid = resume.get("pid") if resume else None
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1 or pid == os.getpid():
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    # Only a process that is this program, on this run's files, is touched: the pid
    # may have been reused by anything since the crash.
    if os.path.basename(argv[0]) != os.fsencode(program) or \
            not any(os.fsencode(marker) in arg for arg in argv):
        return False
    log.warning("stopping %s (pid %d) left running by an interrupted run", program, pid)
    for sig in (signal.SIGKILL, signal.SIGCONT):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
    deadline = time.monotonic() + WAIT
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(POLL)
    return True

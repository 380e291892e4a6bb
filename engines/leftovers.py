"""Finding and stopping a helper program (rsync, restic) that a dead server or an
interrupted run left behind.

Engines start their program in its own session so pause and stop reach its helper
processes (engines.child); the price is that a worker killed outright (a crash, kill -9)
leaves the program running, or stopped for good if it was paused. Two ways find it:

- the checkpoint records its pid, and the run that resumes or discards stops it first
  (stop_leftover), so two programs never write into one partial snapshot;
- each child carries a mark in its environment: the server's pid and start time. A
  process that carries the mark of a server that no longer runs is a leftover
  (PDEATHSIG was not set, or a program started by an older version), and the next
  start, or the next use of the repository, stops it (stop_orphans, stop_orphans_on).
  A program someone runs by hand on the same repository has no mark and is never
  touched.

A GroupGuard (below) covers the one gap PDEATHSIG leaves: the forked helpers of a program
paused when the server died.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

WAIT = 10.0
POLL = 0.05
OWNER_ENV = "BACKUP_MANAGER_OWNER"


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
    kill_group(pid)
    deadline = time.monotonic() + WAIT
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(POLL)
    return True


def _start_time(pid: int) -> str | None:
    """A process's start time in clock ticks since boot: with the pid, a unique identity."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat_line.rsplit(")", 1)[-1].split()
    # Field 22 of stat; fields[0] here is field 3 (the state).
    return fields[19] if len(fields) > 19 and fields[0] != "Z" else None


def owner_mark() -> dict[str, str]:
    """The environment entry that marks a child as this process's."""
    return {OWNER_ENV: f"{os.getpid()}:{_start_time(os.getpid()) or 0}"}


def _owner_alive(mark: bytes) -> bool:
    pid_text, _, start = mark.decode("ascii", "replace").partition(":")
    if not pid_text.isdigit():
        return False
    pid = int(pid_text)
    # The same pid with another start time is another process that reused the pid.
    return process_alive(pid) and _start_time(pid) == start


def orphans(program: str, marker: str) -> list[int]:
    """Processes of `program` with `marker` as an argument (or a path under it) whose
    owning server no longer runs."""
    return _orphans((program,), (marker,))


def _orphans(programs: Sequence[str] | None, markers: Sequence[str]) -> list[int]:
    """One pass over /proc: orphans (of any of `programs`, or of any name if None) with
    an argument on any of `markers`."""
    found: list[int] = []
    if not markers:
        return found
    names = None if programs is None else {os.fsencode(p) for p in programs}
    wanted = [(os.fsencode(m), os.fsencode(m).rstrip(b"/") + b"/") for m in markers]
    key = os.fsencode(OWNER_ENV) + b"="
    me = os.getpid()
    try:
        entries = os.listdir("/proc")
    except OSError as exc:  # no /proc (a container without it): nothing to find
        log.warning("cannot look for leftover programs: %s", exc)
        return found
    for name in entries:
        if not name.isdigit() or int(name) == me:
            continue
        try:
            argv = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
            if (names is not None and os.path.basename(argv[0]) not in names) or not any(
                    arg == want or arg.startswith(prefix)
                    for arg in argv[1:] for want, prefix in wanted):
                continue
            environ = Path(f"/proc/{name}/environ").read_bytes().split(b"\0")
        except OSError:
            continue  # gone, or another user's: not ours to stop
        mark = next((e[len(key):] for e in environ if e.startswith(key)), None)
        if mark is not None and not _owner_alive(mark) and process_alive(int(name)):
            found.append(int(name))
    return found


def stop_orphans(program: str, marker: str) -> int:
    """Stop what a dead server left running of `program` on `marker`; return how many."""
    return _stop(orphans(program, marker), f"{program} on {marker}")


def stop_orphans_on(destinations: Iterable[str], programs: Sequence[str] | None = None
                    ) -> int:
    """At a server's start: stop what a dead server left running on these destinations
    (a `restic check` of a verify has no checkpoint to find it by); return how many.

    Any name by default: a program's forked helpers (rsync's receiver and generator)
    inherit its mark, and a stopped one must go too.
    """
    markers = [d for d in destinations if d]
    return _stop(_orphans(programs, markers), "a job's destination")


def _stop(pids: list[int], what: str) -> int:
    for pid in pids:
        log.warning("stopping pid %d (%s), left running by a server that no longer runs",
                    pid, what)
        kill_group(pid)
    deadline = time.monotonic() + WAIT
    while any(process_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(POLL)
    return len(pids)


def kill_group(pid: int) -> None:
    """SIGKILL a process and its group (a stopped one too)."""
    for sig in (signal.SIGKILL, signal.SIGCONT):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


# --- a paused program's helpers die with the server too -----------------------------------
#
# PDEATHSIG reaches only the process the server started. rsync forks a receiver and a
# generator; the kernel clears PDEATHSIG on fork, and a pause stops the whole group
# (SIGSTOP), so when the server dies the helpers stay stopped for good, holding the
# partial snapshot open: a stopped process never notices its closed pipes. A guard is a
# tiny `sh` in a session of its own (so a pause does not stop it and terminal signals do
# not reach it) blocked reading a pipe whose only writer is the server. When the server
# dies, however it dies, the kernel closes that pipe; `read` fails on the end of input
# and the guard continues and kills the group. A run that ends normally writes a line
# first, and the guard exits without a signal. It is released before the program is
# reaped, so the group's id cannot have been reused by then.

_GUARD_SCRIPT = 'read _ || { kill -CONT "-$1"; kill -KILL "-$1"; } 2>/dev/null'


class GroupGuard:
    """Kills a process group (continued first) if this process dies before release()."""

    def __init__(self, pgid: int) -> None:
        self._write: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        read, write = os.pipe()  # non-inheritable: no other child holds the write end
        try:
            self._proc = subprocess.Popen(
                ["/bin/sh", "-c", _GUARD_SCRIPT, "backup-manager-guard", str(pgid)],
                stdin=read, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True, env={})
            self._write = write
        except OSError as exc:  # no /bin/sh: PDEATHSIG and the start-up sweep remain
            log.warning("cannot guard process group %d: %s", pgid, exc)
            os.close(write)
        finally:
            os.close(read)

    def release(self) -> None:
        """Tell the guard the group is in hand (not stopped, about to be reaped)."""
        if self._write is not None:
            with contextlib.suppress(OSError):  # a guard killed by someone: nothing to tell
                os.write(self._write, b"done\n")
            os.close(self._write)
            self._write = None
        if self._proc is not None:
            self._proc.wait()
            self._proc = None

"""The one supervisor of the external programs engines run (restic, rsync, next rclone).

A `Child` starts a program in a session of its own (so pause and stop reach the helpers
it forks), pumps its stdout to a callback and keeps the tail of its stderr, pauses it
with SIGSTOP and resumes it with SIGCONT, stops it with the engine's stop signal and
SIGKILL after a grace period, and carries out a RunControl (pause, resume, cancel,
interrupt) while it runs. Every child dies with the server (PR_SET_PDEATHSIG) and carries
the server's mark, by which engines.leftovers finds what a crashed server left; the
finding and stopping of leftovers is re-exported here so callers need one module.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

from engines.control import RunControl
from engines.leftovers import (
    OWNER_ENV,
    GroupGuard,
    kill_group,
    orphans,
    owner_mark,
    process_alive,
    stop_leftover,
    stop_orphans,
    stop_orphans_on,
)

__all__ = ["OWNER_ENV", "Child", "GroupGuard", "die_with_parent", "kill_group", "orphans",
           "owner_mark", "process_alive", "stop_leftover", "stop_orphans", "stop_orphans_on"]

log = logging.getLogger(__name__)

GRACE = 10.0  # seconds a stopped program gets to clean up before SIGKILL
POLL = 0.05  # how often supervise() looks at the process and the control
CHUNK = 1 << 16

# --- children die with the server ---------------------------------------------------------
#
# Design (issue 12, item 13): every helper program is started with PR_SET_PDEATHSIG, so
# the kernel sends it SIGKILL the moment the server dies, however it dies (kill -9, OOM).
# The signal fires when the *thread* that forked the child ends, not only the process, so
# a child may only be started by a thread that then waits for it to exit: Child's users
# do (they wait for the child in a `finally` through close(), killing it first when they
# leave on an error), and a worker thread cannot end while it waits. SIGKILL, not SIGINT,
# because a paused child (SIGSTOP) would only act on SIGINT once continued, which nobody
# would do; restic and rsync leave nothing a later run cannot handle (a dead lock,
# unindexed packs, a partial file), as after any kill. PDEATHSIG is the first line; the
# owner mark in each child's environment (engines.leftovers) is the second.

PR_SET_PDEATHSIG = 1

try:  # resolved now: the child of a fork should call as little as possible
    _PRCTL: Any = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: no PDEATHSIG, the mark still works
    _PRCTL = None


def die_with_parent() -> Callable[[], None]:
    """A preexec_fn that has the kernel SIGKILL the child when its starting thread ends.

    Only for a child that the starting thread waits for (see the design note above).
    """
    parent = os.getpid()

    def preexec() -> None:
        if _PRCTL is not None:
            _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the prctl: no signal will come
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


# --- one supervised program ---------------------------------------------------------------


def stderr_text(raw: bytes) -> str | None:
    """A stderr line as kept by default: a name that is not UTF-8 shows as \\xNN."""
    return raw.decode("utf-8", "backslashreplace").rstrip("\n")


class Child:
    """One run of an external program in its own session, with its output pumped.

    start() and then supervise() or wait(), and close() in a `finally`, all from one
    thread (PDEATHSIG fires when the starting thread ends). `on_stdout` gets each line
    (or, with `stdout_lines=False`, each chunk as it comes, for output that moves with
    carriage returns); `on_stderr` may take a stderr line (return True), the others are
    kept, the last `stderr_keep`, as `clean_stderr` makes them (None: not kept).
    """

    def __init__(self, name: str, *, on_stdout: Callable[[bytes], None] | None = None,
                 stdout_lines: bool = True,
                 on_stderr: Callable[[bytes], bool] | None = None,
                 clean_stderr: Callable[[bytes], str | None] = stderr_text,
                 stderr_keep: int = 400, stop_signal: int = signal.SIGTERM,
                 grace: float = GRACE, guard_group: bool = False,
                 settle_on_eof: bool = False, raise_handler_errors: bool = False) -> None:
        self.name = name
        self.on_stdout = on_stdout
        self.stdout_lines = stdout_lines
        self.on_stderr = on_stderr
        self.clean_stderr = clean_stderr
        self.stop_signal = stop_signal
        self.grace = grace
        # A program that forks helpers gets a GroupGuard: PDEATHSIG reaches only itself.
        self.guard_group = guard_group
        # Once such a program closed its stdout it is exiting by itself: a signal now
        # could turn a finished run into a failed one (rsync: "received SIGINT", exit 20).
        self.settle_on_eof = settle_on_eof
        # Whether a failing output handler fails the run (else it is logged, and the
        # output is still drained: the program would block on a full pipe).
        self.raise_handler_errors = raise_handler_errors
        self.stop_reason: str | None = None  # what supervise()'s `check` said, if it stopped it
        self.stderr_dropped = 0
        self._stderr: deque[str] = deque(maxlen=stderr_keep)
        self._proc: subprocess.Popen[bytes] | None = None
        self._guard: GroupGuard | None = None
        self._pumps: list[threading.Thread] = []
        self._eof = threading.Event()
        self._handler_error: BaseException | None = None
        self._paused = False
        self._began = 0.0

    # --- starting ---------------------------------------------------------------------

    def start(self, argv: Sequence[str], env: Mapping[str, str] | None = None,
              cwd: str | os.PathLike[str] | None = None, stdin: int | IO[Any] | None = None
              ) -> int:
        """Start the program (stdin: /dev/null unless given) and return its pid.

        Raises OSError or SubprocessError as Popen does (FileNotFoundError: no program).
        """
        self._began = time.monotonic()
        self._proc = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL if stdin is None else stdin,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd,
            env={**(os.environ if env is None else env), **owner_mark()},
            start_new_session=True, preexec_fn=die_with_parent())
        assert self._proc.stdout is not None and self._proc.stderr is not None
        if self.guard_group:
            self._guard = GroupGuard(self._proc.pid)
        self._pumps = [
            threading.Thread(target=self._pump_stdout, args=(self._proc.stdout,),
                             name=f"{self.name}-stdout", daemon=True),
            threading.Thread(target=self._pump_stderr, args=(self._proc.stderr,),
                             name=f"{self.name}-stderr", daemon=True)]
        for pump in self._pumps:
            pump.start()
        return self._proc.pid

    def _handle(self, handler: Callable[[bytes], Any], raw: bytes) -> Any:
        try:
            return handler(raw)
        except Exception as err:  # keep draining: the program would block on a full pipe
            if self.raise_handler_errors:
                if self._handler_error is None:
                    self._handler_error = err
            else:
                log.exception("a line of %s's output could not be handled", self.name)
            return None

    def _pump_stdout(self, stream: IO[bytes]) -> None:
        with stream:
            if self.stdout_lines:
                chunks = iter(stream.readline, b"")
            else:
                fd = stream.fileno()
                chunks = iter(lambda: os.read(fd, CHUNK), b"")
            for raw in chunks:
                if self.on_stdout is not None and self._handler_error is None:
                    self._handle(self.on_stdout, raw)
        self._eof.set()

    def _pump_stderr(self, stream: IO[bytes]) -> None:
        with stream:
            for raw in iter(stream.readline, b""):
                if self.on_stderr is not None and self._handle(self.on_stderr, raw):
                    continue
                line = self.clean_stderr(raw)
                if line is not None:
                    if len(self._stderr) == self._stderr.maxlen:
                        self.stderr_dropped += 1
                    self._stderr.append(line)

    # --- state ------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        """The program's pid (and its process group's id)."""
        assert self._proc is not None, "not started"
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once reaped (negative: killed by that signal), else None."""
        return None if self._proc is None else self._proc.returncode

    @property
    def paused(self) -> bool:
        """Whether this supervisor stopped the program (SIGSTOP) and has not resumed it."""
        return self._paused

    @property
    def stderr_tail(self) -> list[str]:
        """The last kept lines of stderr (complete once wait() returned)."""
        return list(self._stderr)

    def _exited(self) -> bool:
        """Whether the program has exited, without reaping it (the guard needs its group)."""
        assert self._proc is not None, "not started"
        if self._proc.returncode is not None:
            return True
        try:
            return os.waitid(os.P_PID, self._proc.pid,
                             os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:  # reaped elsewhere (Popen did)
            return True

    # --- signals ----------------------------------------------------------------------

    def signal(self, sig: int) -> None:
        """Send a signal to the program's process group (nothing once it is reaped)."""
        if self._proc is None or self._proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    def pause(self) -> None:
        """Stop the whole group (SIGSTOP)."""
        self.signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """Continue the group (SIGCONT)."""
        self.signal(signal.SIGCONT)
        self._paused = False

    def ask_to_stop(self) -> None:
        """Send the stop signal, continuing a paused group so it acts on it."""
        self.signal(self.stop_signal)
        self.signal(signal.SIGCONT)
        self._paused = False

    def kill(self) -> None:
        """SIGKILL the group (continued too, so a stopped group dies at once)."""
        self.signal(signal.SIGKILL)
        self.signal(signal.SIGCONT)
        self._paused = False

    def stop(self, grace: float | None = None) -> int:
        """Ask the program to stop, SIGKILL it after `grace` seconds, reap it; its status."""
        if not self._exited():
            self.ask_to_stop()
            deadline = time.monotonic() + (self.grace if grace is None else grace)
            while not self._exited() and time.monotonic() < deadline:
                time.sleep(POLL)
            if not self._exited():
                self.kill()
        return self.wait()

    # --- waiting ----------------------------------------------------------------------

    def wait(self) -> int:
        """Wait for the program to exit, release its guard, reap it, drain its output."""
        assert self._proc is not None, "not started"
        if self._proc.returncode is None:
            if self._paused:
                self.resume()  # not left stopped, and the guard is released on a live group
            if self._guard is not None:
                with contextlib.suppress(ChildProcessError):  # exited, not yet reaped
                    os.waitid(os.P_PID, self._proc.pid, os.WEXITED | os.WNOWAIT)
                self._guard.release()
                self._guard = None
            self._proc.wait()
            for pump in self._pumps:
                pump.join()
            log.debug("%s exited %s after %.2fs", self.name, self._proc.returncode,
                      time.monotonic() - self._began)
        if self._handler_error is not None:
            err, self._handler_error = self._handler_error, None
            raise err
        return self._proc.returncode

    def close(self, kill: bool = True) -> None:
        """For a `finally`: a program still running is killed (or, with kill=False,
        stopped with its grace), then reaped; nothing is left behind."""
        if self._proc is None or self._proc.returncode is not None:
            return
        if not self._exited():
            if kill:
                self.kill()
            else:
                self.ask_to_stop()
                deadline = time.monotonic() + self.grace
                while not self._exited() and time.monotonic() < deadline:
                    time.sleep(POLL)
                self.kill()
        self._handler_error = None  # leaving on another error already
        self.wait()

    def supervise(self, control: RunControl, *, poll: float = POLL,
                  check: Callable[[], str | None] | None = None,
                  on_tick: Callable[[], None] | None = None,
                  on_pause: Callable[[], None] | None = None) -> str | None:
        """Wait for the program while carrying out the control's pause, resume, cancel and
        interrupt, then reap it; return "cancel", "interrupt" or "check" when this stopped it.

        Cancel and interrupt send the stop signal and SIGKILL after the grace period. A
        reason from `check` (looked at each poll) kills at once and is kept as
        stop_reason. `on_tick` runs each poll while the program runs unpaused, `on_pause`
        once it was paused. A failing handler (raise_handler_errors) is raised here.
        """
        stopping: str | None = None
        kill_at: float | None = None
        eof_at: float | None = None
        while not self._exited():
            if self._handler_error is not None:
                raise self._handler_error  # the caller's close() stops the program
            settled = self.settle_on_eof and self._eof.is_set()
            if settled and eof_at is None:
                eof_at = time.monotonic()
            if stopping is None and not settled:
                reason = check() if check is not None else None
                if control.cancelled or control.interrupted or reason:
                    stopping = ("cancel" if control.cancelled else
                                "interrupt" if control.interrupted else "check")
                    if stopping == "check":
                        self.stop_reason = reason
                        self.kill()
                    else:
                        self.ask_to_stop()
                        kill_at = time.monotonic() + self.grace
                elif control.paused != self._paused:
                    if control.paused:
                        self.pause()
                        if on_pause is not None:
                            on_pause()
                    else:
                        self.resume()
            elif settled and stopping is None and kill_at is None \
                    and time.monotonic() - (eof_at or 0.0) >= self.grace:
                # Output closed long ago and still running: stop it as after an error.
                self.ask_to_stop()
                kill_at = time.monotonic() + self.grace
            elif kill_at is not None and time.monotonic() >= kill_at:
                self.kill()
                kill_at = None
            if on_tick is not None and stopping is None and not self._paused:
                on_tick()
            control.wait_for_change(poll)
        self.wait()
        return stopping


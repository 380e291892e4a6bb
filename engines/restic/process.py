"""Running restic once, supervised by engines.child (the only place restic is started).

Pause is SIGSTOP to restic's process group and resume SIGCONT; cancel and interrupt are
SIGINT (restic exits 130 without a snapshot), then SIGKILL if it does not exit in time. A
watch (engines.restic.watch) has restic killed at once when its repository vanishes.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from engines.child import Child
from engines.control import RunControl
from engines.errors import BinaryMissing, EngineError
from engines.restic.cli import INSTALL_HINT, ResticRepo, restic_binary, restic_command, restic_env
from engines.restic.watch import RepositoryWatch

CANCEL_GRACE = 10.0  # seconds restic gets to clean up after SIGINT before SIGKILL
POLL = 0.05  # how often the driving thread looks at the process and the control
STDERR_KEEP = 400  # lines of restic's stderr kept to explain a failure


@dataclass
class Finished:
    """How one restic call ended."""

    code: int
    stderr: list[str]
    # "cancel" or "interrupt" when this engine asked restic to stop, "vanished" when the
    # repository watch did (the reason then says what it saw).
    stopped: str | None
    reason: str | None = None


def stderr_line(raw: bytes) -> str | None:
    """A stderr line as kept: without restic's line-clearing escape; blank ones dropped."""
    line = raw.decode("utf-8", "replace").replace("\x1b[2K", "").strip()
    return line or None


def run_restic(repo: ResticRepo, args: Sequence[str], control: RunControl | None = None,
               on_stdout: Callable[[bytes], None] | None = None,
               on_stderr: Callable[[bytes], bool] | None = None,
               on_start: Callable[[int], None] | None = None,
               env_extra: Mapping[str, str] | None = None,
               watch: str | None = None) -> Finished:
    """Run restic once; stdout lines go to on_stdout, stderr lines not taken by on_stderr
    are kept (the last STDERR_KEEP) to explain a failure. With `watch` (what the call is,
    e.g. "backup") and a control, restic is stopped as soon as the repository vanishes.

    The calling thread waits for restic in every case (close() in the `finally` kills it
    first when leaving on an error): restic dies with the thread that started it.
    """
    argv = restic_command(repo.path, *args, binary=restic_binary())
    child = Child("restic", on_stdout=on_stdout, on_stderr=on_stderr,
                  clean_stderr=stderr_line, stderr_keep=STDERR_KEEP,
                  stop_signal=signal.SIGINT, grace=CANCEL_GRACE)
    try:
        child.start(argv, env=restic_env(repo.password_file, repo.cache_dir, env_extra))
    except FileNotFoundError as err:
        raise BinaryMissing(INSTALL_HINT) from err
    except (OSError, subprocess.SubprocessError) as err:
        raise EngineError(f"restic could not be started: "
                          f"{getattr(err, 'strerror', None) or err}") from err
    repo_watch = (RepositoryWatch(repo.path, watch)
                  if watch is not None and control is not None else None)
    stopping: str | None = None
    try:
        if repo_watch is not None:
            repo_watch.start()
        if on_start is not None:
            on_start(child.pid)
        if control is None:
            child.wait()
        else:
            # With its repository gone restic has nothing to clean up: on SIGINT it would
            # only retry removing its lock for a minute and more, so the watch kills.
            stopping = child.supervise(
                control, poll=POLL,
                check=(lambda: repo_watch.reason) if repo_watch is not None else None)
    finally:
        if repo_watch is not None:
            repo_watch.stop()
        child.close()  # leaving on an exception: restic must not outlive the run
    code = child.returncode
    assert code is not None
    return Finished(code, child.stderr_tail,
                    "vanished" if stopping == "check" else stopping, child.stop_reason)

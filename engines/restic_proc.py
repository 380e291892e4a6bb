"""Starting restic: its command line, its environment, its options, and running it once.

This is the only place restic is started. The password reaches restic as
RESTIC_PASSWORD_FILE in its environment, never in argv, where any local user could read
it from /proc. Each restic dies with the server (engines.procs.die_with_parent) and carries
the server's mark in its environment, so a leftover of a killed server can be told from a
restic someone runs by hand.

Pause is SIGSTOP to restic's process group and resume SIGCONT; cancel and interrupt are
SIGINT (restic exits 130 without a snapshot), then SIGKILL if it does not exit in time. A
watch (engines.restic_watch) stops restic with SIGKILL when its repository vanishes.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from engines.base import BackupSpec, BinaryMissing, EngineError, RunControl
from engines.hostenv import host_environ
from engines.procs import die_with_parent, owner_mark
from engines.restic_watch import RepositoryWatch

log = logging.getLogger(__name__)

INSTALL_HINT = "restic is not installed; install it with apt-get install restic"
CANCEL_GRACE = 10.0  # seconds restic gets to clean up after SIGINT before SIGKILL
POLL = 0.05  # how often the driving thread looks at the process and the control
STDERR_KEEP = 400  # lines of restic's stderr kept to explain a failure

_SUBSET_RE = re.compile(r"^(\d+/\d+|\d+(\.\d+)?%|\d+[kKmMgGtT]?)$")
# restic reads these instead of (or on top of) what this engine passes; an ambient value
# could point a run at another repository or put a password in the environment.
_AMBIENT_ENV = ("RESTIC_PASSWORD", "RESTIC_PASSWORD_COMMAND", "RESTIC_PASSWORD_FILE",
                "RESTIC_REPOSITORY", "RESTIC_REPOSITORY_FILE", "RESTIC_KEY_HINT",
                "RESTIC_CACHE_DIR", "RESTIC_PROGRESS_FPS")


# --- the command line and the environment ------------------------------------------------


def restic_command(repository: Path, *args: str, binary: str = "restic") -> list[str]:
    """The argv of one restic call; it never holds the password (see restic_env)."""
    return [binary, "--repo", str(repository), *args]


def restic_env(password_file: Path, cache_dir: Path | None = None,
               extra: Mapping[str, str] | None = None,
               base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The child's environment: the password by file, the cache dir, no ambient overrides,
    and this server's mark."""
    env = {k: v for k, v in (host_environ() if base is None else base).items()
           if k not in _AMBIENT_ENV}
    env["RESTIC_PASSWORD_FILE"] = str(password_file)
    if cache_dir is not None:
        env["RESTIC_CACHE_DIR"] = str(cache_dir)
    env.update(owner_mark())
    env.update(extra or {})
    return env


def restic_binary() -> str:
    """The restic on PATH, or BinaryMissing with how to install it."""
    found = shutil.which("restic")
    if found is None:
        raise BinaryMissing(INSTALL_HINT)
    return found


@functools.lru_cache(maxsize=4)
def restore_keeps_holes(binary: str) -> bool:
    """Whether this restic's restore takes --sparse (0.15 and later; 0.14 fills holes)."""
    try:
        out = subprocess.run([binary, "restore", "--help"], capture_output=True, timeout=30,
                             env=host_environ(), check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return b"--sparse" in out.stdout


# --- options ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResticRepo:
    """A repository and the options restic is run with."""

    path: Path
    password_file: Path
    cache_dir: Path | None
    init: bool
    read_data_subset: str | None


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def repo_for(spec: BackupSpec) -> ResticRepo:
    """The repository and its options, with a clear error for a missing password file.

    The error names the file and why it cannot be read; the password itself is never
    read beyond checking the file has one, nor put in a message.
    """
    raw = spec.options.get("password_file")
    if not isinstance(raw, str | os.PathLike) or not os.fspath(raw):
        raise EngineError("the restic engine needs the password_file option: the path of a "
                          "file that holds the repository password")
    password_file = Path(os.path.abspath(os.path.expanduser(os.fspath(raw))))
    try:
        with open(password_file, "rb") as fh:
            first_line = fh.readline()
    except OSError as err:
        raise EngineError(f"the restic password file {password_file} cannot be read "
                          f"({err.strerror}); create it or correct the job's password_file"
                          ) from err
    if not first_line.strip(b"\r\n"):
        raise EngineError(f"the restic password file {password_file} is empty")
    cache = spec.options.get("cache_dir")
    cache_dir = (Path(os.path.abspath(os.path.expanduser(os.fspath(cache))))
                 if isinstance(cache, str | os.PathLike) and os.fspath(cache) else None)
    subset = spec.options.get("read_data_subset")
    if subset is not None and (not isinstance(subset, str) or not _SUBSET_RE.match(subset)):
        raise EngineError(f"read_data_subset {subset!r} is not a restic data subset; use "
                          "a share like '10%', a part like '1/5' or a size like '2G'")
    return ResticRepo(spec.destination, password_file, cache_dir,
                      _flag(spec.options.get("init")), subset or None)


def has_repository(path: Path) -> bool:
    """Whether path holds a restic repository (its config file)."""
    return (path / "config").is_file()


# --- running restic ---------------------------------------------------------------------


@dataclass
class Finished:
    """How one restic call ended."""

    code: int
    stderr: list[str]
    # "cancel" or "interrupt" when this engine asked restic to stop, "vanished" when the
    # repository watch did (the reason then says what it saw).
    stopped: str | None
    reason: str | None = None


def _pump(stream: IO[bytes], handle: Callable[[bytes], None]) -> None:
    with stream:
        for raw in iter(stream.readline, b""):
            try:
                handle(raw)
            except Exception:  # keep draining: restic would block on a full pipe
                log.exception("a line of restic's output could not be handled")


def signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Send a signal to restic's process group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _drive(proc: subprocess.Popen[bytes], control: RunControl,
           watch: RepositoryWatch | None) -> tuple[str | None, str | None]:
    """Wait for restic while carrying out pause, resume, cancel, interrupt and the watch;
    return why this engine stopped it, if it did, and the watch's reason."""
    stopped = False
    stopping: str | None = None
    reason: str | None = None
    kill_at: float | None = None
    while proc.poll() is None:
        vanished = watch.reason if watch is not None and stopping is None else None
        if stopping is None and (control.cancelled or control.interrupted or vanished):
            stopping = ("cancel" if control.cancelled else
                        "interrupt" if control.interrupted else "vanished")
            reason = vanished if stopping == "vanished" else None
            # With its repository gone restic has nothing to clean up: on SIGINT it would
            # only retry removing its lock for a minute and more.
            signal_group(proc, signal.SIGKILL if reason else signal.SIGINT)
            if stopped:  # a stopped process only acts on SIGINT once continued
                signal_group(proc, signal.SIGCONT)
            kill_at = None if reason else time.monotonic() + CANCEL_GRACE
        elif stopping is None and control.paused != stopped:
            stopped = control.paused
            signal_group(proc, signal.SIGSTOP if stopped else signal.SIGCONT)
        elif kill_at is not None and time.monotonic() >= kill_at:
            signal_group(proc, signal.SIGKILL)
            kill_at = None
        control.wait_for_change(POLL)
    return stopping, reason


def run_restic(repo: ResticRepo, args: Sequence[str], control: RunControl | None = None,
               on_stdout: Callable[[bytes], None] | None = None,
               on_stderr: Callable[[bytes], bool] | None = None,
               on_start: Callable[[int], None] | None = None,
               env_extra: Mapping[str, str] | None = None,
               watch: str | None = None) -> Finished:
    """Run restic once; stdout lines go to on_stdout, stderr lines not taken by on_stderr
    are kept (the last STDERR_KEEP) to explain a failure. With `watch` (what the call is,
    e.g. "backup") and a control, restic is stopped as soon as the repository vanishes.

    The calling thread waits for restic in every case (a `finally` kills it first when
    leaving on an error): restic is started with PDEATHSIG, which fires when this thread
    ends, so the thread must not end before restic does.
    """
    argv = restic_command(repo.path, *args, binary=restic_binary())
    began = time.monotonic()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE,
                                env=restic_env(repo.password_file, repo.cache_dir, env_extra),
                                start_new_session=True, preexec_fn=die_with_parent())
    except FileNotFoundError as err:
        raise BinaryMissing(INSTALL_HINT) from err
    except (OSError, subprocess.SubprocessError) as err:
        raise EngineError(f"restic could not be started: "
                          f"{getattr(err, 'strerror', None) or err}") from err
    assert proc.stdout is not None and proc.stderr is not None
    kept: deque[str] = deque(maxlen=STDERR_KEEP)

    def take_stderr(raw: bytes) -> None:
        if on_stderr is None or not on_stderr(raw):
            line = raw.decode("utf-8", "replace").replace("\x1b[2K", "").strip()
            if line:
                kept.append(line)

    pumps = [threading.Thread(target=_pump, args=(proc.stdout, on_stdout or (lambda _: None)),
                              name="restic-stdout", daemon=True),
             threading.Thread(target=_pump, args=(proc.stderr, take_stderr),
                              name="restic-stderr", daemon=True)]
    for pump in pumps:
        pump.start()
    repo_watch = (RepositoryWatch(repo.path, watch)
                  if watch is not None and control is not None else None)
    stopping: str | None = None
    reason: str | None = None
    try:
        if repo_watch is not None:
            repo_watch.start()
        if on_start is not None:
            on_start(proc.pid)
        if control is None:
            proc.wait()
        else:
            stopping, reason = _drive(proc, control, repo_watch)
    finally:
        if repo_watch is not None:
            repo_watch.stop()
        if proc.poll() is None:  # leaving on an exception: restic must not outlive the run
            signal_group(proc, signal.SIGKILL)
            signal_group(proc, signal.SIGCONT)
            proc.wait()
        for pump in pumps:
            pump.join()
    log.debug("%s exited %s after %.2fs", argv, proc.returncode, time.monotonic() - began)
    return Finished(proc.returncode, list(kept), stopping, reason)

"""restic's command line, environment and options: how restic is called for a repository.

The password reaches restic as RESTIC_PASSWORD_FILE in its environment, never in argv,
where any local user could read it from /proc. The environment also carries the server's
mark (engines.child), so a leftover of a killed server can be told from a restic someone
runs by hand; ambient RESTIC_* variables that could point a run elsewhere are dropped.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engines.child import owner_mark
from engines.contract import BackupSpec
from engines.errors import BinaryMissing, EngineError
from engines.hostenv import host_environ

INSTALL_HINT = "restic is not installed; install it with apt-get install restic"

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

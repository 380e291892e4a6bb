"""Noticing, within seconds, that a local restic repository vanished under a running restic.

restic does not notice by itself: its local backend re-creates the directories it writes
into (data/, index/, snapshots/), so a backup whose repository was deleted goes on, "saves"
its snapshot into a directory that holds no config and no keys, and only complains when
it fails to remove its lock, about 95 s later, still exiting 0. The watch looks at the
repository's `config` file, which restic never writes after init, once a second from a
thread of its own (so a hanging file system cannot hold up pause or cancel), and the
runner stops restic when the file is gone or is another file (a repository deleted and
made again is not the one the run started with).
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

EVERY = 1.0  # seconds between looks: prompt enough, and one stat costs nothing


def _identity(config: Path) -> tuple[int, int] | str:
    """The config file's (device, inode), or why it cannot be seen."""
    try:
        st = os.stat(config)
    except (FileNotFoundError, NotADirectoryError):
        return "vanished"
    except OSError as err:
        return f"cannot be reached ({err.strerror})"
    return st.st_dev, st.st_ino


class RepositoryWatch:
    """Watches one local repository while a restic call runs; `reason` is set when it is
    gone, replaced or unreachable."""

    def __init__(self, path: Path, what: str, every: float = EVERY) -> None:
        self.path = path
        self.what = what
        self.every = every
        self.reason: str | None = None
        self._config = path / "config"
        self._start = _identity(self._config)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="restic-watch", daemon=True)

    def start(self) -> None:
        """Start looking (a repository not there at the start is not watched: restic
        reports that itself)."""
        if isinstance(self._start, tuple):
            self._thread.start()

    def stop(self) -> None:
        """Stop looking; returns at once (a look stuck on a hung file system is left)."""
        self._done.set()

    def check(self) -> str | None:
        """Look once; the reason restic must stop, or None."""
        now = _identity(self._config)
        if now == self._start:
            return None
        if now == "vanished":
            return f"the repository {self.path} vanished during the {self.what}"
        if isinstance(now, str):
            return f"the repository {self.path} {now} during the {self.what}"
        return (f"the repository {self.path} was replaced by another one during the "
                f"{self.what}")

    def _loop(self) -> None:
        while not self._done.wait(self.every):
            reason = self.check()
            if reason is not None:
                self.reason = reason
                return


# What restic's local backend re-creates on its own when it writes into a repository that
# was deleted. Without config and keys nothing in them can ever be read.
_RECREATED = frozenset({"data", "index", "snapshots", "locks"})


def clear_remnant(path: Path) -> bool:
    """After the repository vanished: remove what restic wrote into its place, when that
    is all there is (no config, no keys, nothing else), so the path is as the user left
    it; return whether anything was removed."""
    try:
        names = set(os.listdir(path))
    except OSError:
        return False
    if not names or not names <= _RECREATED:
        return False
    for name in names:
        shutil.rmtree(path / name, ignore_errors=True)
    return True

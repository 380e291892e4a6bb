"""The data directory: created on first use and locked so only one server writes to it."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO


class DataDirBusy(RuntimeError):
    """Another backup-manager process is already using this data directory."""


def lock_data_dir(data_dir: Path) -> IO[bytes]:
    """Create the data directory if needed and hold an exclusive lock on it."""
    # Made private: the YAML files name sources, destinations and webhook URLs.
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    handle = open(data_dir / ".lock", "a+b")  # noqa: SIM115 - held for the app's lifetime
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as err:
        handle.close()
        raise DataDirBusy(
            f"another backup-manager is already serving {data_dir}; stop it first "
            "(two writers on one event log are refused)") from err
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n".encode())
    handle.flush()
    return handle

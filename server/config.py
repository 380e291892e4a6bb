"""Server configuration, built once by the CLI or a test and handed to create_app."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DATA_ENV = "BACKUP_MANAGER_DATA"


def default_data_dir() -> Path:
    """The data directory from BACKUP_MANAGER_DATA, else ./data."""
    return Path(os.environ.get(DATA_ENV) or "data")


@dataclass(frozen=True)
class Config:
    """Everything create_app needs to know."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8080
    # Events a WebSocket client may have queued before it is closed as too slow.
    ws_queue_limit: int = 10_000
    log_level: str = "INFO"
    log_to_file: bool = True
    # Host names (besides loopback and the bound address) the server answers to.
    allowed_hosts: tuple[str, ...] = ()

    @property
    def events_db(self) -> Path:
        """The event log file."""
        return self.data_dir / "events.db"

    @property
    def logs_dir(self) -> Path:
        """Where the application log and the run logs go."""
        return self.data_dir / "logs"

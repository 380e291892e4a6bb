"""Application logging: to stderr and to a rotating file in the data directory."""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_file_logging(logs_dir: Path, level: str) -> logging.Handler:
    """Send the application log to logs/app.log (rotated at 5 MB, 5 kept)."""
    logs_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(
        logs_dir / "app.log", maxBytes=5 * 1024 * 1024, backupCount=5, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    return handler


def setup_console_logging(level: str) -> None:
    """Log to stderr at the given level."""
    logging.basicConfig(level=level, format=FORMAT)

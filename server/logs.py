"""Application logging: to stderr and to a rotating file in the data directory."""

from __future__ import annotations

import logging
import logging.handlers
import queue
from pathlib import Path

# The format is core's: the Logs page reads back what these handlers write.
from core.logformat import app_formatter


class FileLog:
    """logs/app.log (rotated at 5 MB, 5 kept), written by a background thread.

    Log calls only put the record on a queue: every request's access-log line would
    otherwise be a blocking file write on the event loop.
    """

    def __init__(self, logs_dir: Path, level: str) -> None:
        logs_dir.mkdir(parents=True, exist_ok=True)
        file_handler = logging.handlers.RotatingFileHandler(
            logs_dir / "app.log", maxBytes=5 * 1024 * 1024, backupCount=5, encoding="utf-8")
        file_handler.setFormatter(app_formatter())
        records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self.handler = logging.handlers.QueueHandler(records)
        self._listener = logging.handlers.QueueListener(records, file_handler)
        self._file_handler = file_handler
        self._listener.start()
        root = logging.getLogger()
        root.addHandler(self.handler)
        root.setLevel(level)

    def close(self) -> None:
        """Write what is queued, then stop the writer and close the file."""
        logging.getLogger().removeHandler(self.handler)
        self._listener.stop()
        self._file_handler.close()


def setup_console_logging(level: str) -> None:
    """Log to stderr at the given level."""
    handler = logging.StreamHandler()
    handler.setFormatter(app_formatter())
    logging.basicConfig(level=level, handlers=[handler])

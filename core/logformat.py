"""How the two logs are written and how a line that starts a record is recognised.

The application log is written by Python's logging with APP_LOG_FORMAT (server/logs.py
sets it up), a run log by core/runlog.py with run_log_line; the readers (core/logread.py,
the live tail in core/livelog.py) parse them with the heads below, kept next to the
writers so the two cannot drift apart.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LEVEL_RANK = {name: rank for rank, name in enumerate(LEVELS)}
LEVEL_NUMBERS = logging.getLevelNamesMapping()

# "2026-11-24 05:00:00,123 WARNING core.runner: ..."
APP_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
APP_HEAD = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ([A-Z]+) ")
# "2026-11-24T05:00:00Z WARNING ..."; the runner writes failures as FAILED.
RUN_HEAD = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z) (?:(WARNING|ERROR|FAILED)\b)?")


class UTCFormatter(logging.Formatter):
    """Log times in UTC, like the event log and the pages ("times in UTC")."""

    def converter(self, seconds: float | None) -> time.struct_time:
        """The record's time as UTC."""
        return time.gmtime(seconds)


def app_formatter() -> logging.Formatter:
    """The formatter every application-log handler uses (file, console, live tail)."""
    return UTCFormatter(APP_LOG_FORMAT)


def run_log_line(message: str, now: datetime | None = None) -> str:
    """A run-log line for a message: its UTC time to the second, then the message."""
    stamp = (now or datetime.now(UTC)).isoformat(timespec="seconds").replace("+00:00", "Z")
    return f"{stamp} {message}\n"


def iso_millis(moment: float) -> str:
    """A Unix time as ISO 8601 UTC with milliseconds (the live tail's `time`)."""
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def level_name(levelno: int) -> str:
    """One of LEVELS for a logging level number (CRITICAL counts as ERROR)."""
    if levelno >= logging.ERROR:
        return "ERROR"
    if levelno >= logging.WARNING:
        return "WARNING"
    return "INFO" if levelno >= logging.INFO else "DEBUG"


def parse_app_head(line: str) -> tuple[str, str] | None:
    """(time, level) of an application-log line that starts a record, else None."""
    match = APP_HEAD.match(line)
    if match is None:
        return None
    return match[1], level_name(LEVEL_NUMBERS.get(match[2], logging.INFO))


def parse_run_head(line: str) -> tuple[str, str] | None:
    """(time, level) of a run-log line that starts an entry, else None."""
    match = RUN_HEAD.match(line)
    if match is None:
        return None
    word = match[2]
    return match[1], ("INFO" if word is None else "WARNING" if word == "WARNING" else "ERROR")


@dataclass(frozen=True, slots=True)
class LogFormat:
    """How to read one kind of log: where records start, and how its levels are written."""

    parse_head: Callable[[str], tuple[str, str] | None]
    # For a minimum level, the words a block of text must hold to have a matching record.
    level_words: Mapping[str, tuple[str, ...]]


APP_FORMAT = LogFormat(parse_app_head, {"WARNING": ("WARNING", "ERROR", "CRITICAL"),
                                        "ERROR": ("ERROR", "CRITICAL")})
RUN_FORMAT = LogFormat(parse_run_head, {"WARNING": ("WARNING", "ERROR", "FAILED"),
                                        "ERROR": ("ERROR", "FAILED")})

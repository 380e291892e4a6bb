"""Read a log backwards from its end: the newest matching records, never the whole file.

A log file can be large, so a page never reads one whole: it reads backwards from the
end in blocks, in a thread (never on the event loop), and stops at MAX_LINES matching
entries or MAX_SCAN_BYTES, whichever comes first (issue 5: p50 under 10 ms). What a
record looks like is core/logformat.py's, next to the code that writes it.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from core.logformat import LEVEL_RANK, LogFormat

MAX_LINES = 500
# Also a cap on the text shown: 500 long tracebacks would break the page-weight budget
# (60 KB gzipped with CSS and JS); the download has everything.
MAX_SHOWN_CHARS = 120_000
MAX_SCAN_BYTES = 4 * 1024 * 1024
BLOCK_BYTES = 64 * 1024
MAX_RECORD_LINES = 200  # lines kept of one record (a traceback keeps its end)


class OutsideLogs(PermissionError):
    """A log path that resolves outside the logs directory (a symlink planted there)."""


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One record: its text (with any continuation lines), level, time and run."""

    text: str
    level: str
    time: str
    run_id: str | None = None


@dataclass(frozen=True, slots=True)
class LogFile:
    """A file to read from its end, its format, and the run it belongs to."""

    path: Path
    format: LogFormat
    run_id: str | None = None


@dataclass(frozen=True, slots=True)
class Wanted:
    """The filter as the reader applies it: a minimum level and a lower-case needle."""

    level: str
    needle: str

    def matches(self, entry: LogEntry) -> bool:
        """Whether a record passes the filter."""
        return LEVEL_RANK[entry.level] >= LEVEL_RANK[self.level] \
            and (not self.needle or self.needle in entry.text.lower())

    def might_match(self, text: str, fmt: LogFormat) -> bool:
        """Whether a block of text can hold a matching record (cheap: string scans in C)."""
        if self.needle and self.needle not in text.lower():
            return False
        words = fmt.level_words.get(self.level)
        return words is None or any(word in text for word in words)


@dataclass
class Scan:
    """What one read found: matching entries, oldest first, and whether there may be more."""

    entries: list[LogEntry]
    limited: bool = False  # more than MAX_LINES matched
    cut: bool = False  # the byte budget ended before a file's start
    missing: bool = False  # no file to read at all


def _blocks_back(path: Path, budget: int, scan: Scan) -> Iterator[str]:
    """A file's text in blocks of whole lines, from its end, reading at most `budget` bytes."""
    with open(path, "rb") as fh:
        end = fh.seek(0, 2)
        floor = max(0, end - budget)
        pos, rest = end, b""
        while pos > floor:
            size = min(BLOCK_BYTES, pos - floor)
            pos -= size
            fh.seek(pos)
            block = fh.read(size) + rest
            if pos > 0:
                # The block may start mid-line (and mid-character): keep that part for the
                # next block, decode from a line start.
                first = block.find(b"\n")
                if first < 0:
                    rest = block
                    continue
                rest, block = block[:first], block[first + 1:]
            else:
                rest = b""
            yield block.decode("utf-8", "replace")
        if floor > 0:
            scan.cut = True  # `rest` is a line cut by the budget: left out


def _first_head(text: str, fmt: LogFormat) -> int | None:
    """Where the first line that starts a record begins in a block, if one does."""
    start = 0
    while True:
        end = text.find("\n", start)
        if fmt.parse_head(text[start:end if end >= 0 else None]):
            return start
        if end < 0:
            return None
        start = end + 1


def _last_head(text: str, fmt: LogFormat) -> int:
    """Where the last line that starts a record begins (a block with a first has a last)."""
    end = len(text)
    while True:
        start = text.rfind("\n", 0, end) + 1
        if fmt.parse_head(text[start:end]) or start == 0:
            return start
        end = start - 1


def _entries_back(source: LogFile, budget: int, wanted: Wanted, scan: Scan
                  ) -> Generator[LogEntry, None, None]:
    """A file's records from the newest, continuation lines joined to their first line.

    Records in a block that cannot match are skipped without being parsed: a search for
    a rare word reads MAX_SCAN_BYTES at string-scan speed, not line by line.
    """
    fmt = source.format
    tail: list[str] = []  # continuation lines seen so far, newest first
    for text in _blocks_back(source.path, budget, scan):
        order: Iterable[str]
        first = None if wanted.might_match(text, fmt) else _first_head(text, fmt)
        if first is None:
            order = reversed(text.split("\n"))
        else:
            # Nothing here can match. Only the newest record (its end may be in the newer
            # block, already in `tail`) and the lines before the first record (the end of
            # an older one) reach outside this block; the records between are skipped.
            last = _last_head(text, fmt)
            order = itertools.chain(reversed(text[last:].split("\n")),
                                    reversed(text[:first].split("\n")))
        for line in order:
            line = line.rstrip("\r")
            head = fmt.parse_head(line)
            if head is None:
                if line and len(tail) < MAX_RECORD_LINES:
                    tail.append(line)
                continue
            text = "\n".join([line, *reversed(tail)]) if tail else line
            tail = []
            yield LogEntry(text, head[1], head[0], source.run_id)


def read_logs(logs_dir: Path, files: Sequence[LogFile], level: str, query: str,
              chained: bool) -> Scan:
    """Read matching entries from the ends of files (blocking: call it in a thread).

    `chained` files are one log split by rotation, newest file first; otherwise the
    files are separate logs (runs) whose entries are merged by time.
    """
    scan = Scan([])
    wanted = Wanted(level, query.lower())
    present: list[tuple[LogFile, int]] = []
    for source in files:
        path = safe_log_path(logs_dir, source.path)
        if path.is_file():
            present.append((LogFile(path, source.format, source.run_id), path.stat().st_size))
    if not present:
        scan.missing = True
        return scan
    streams: list[Generator[LogEntry, None, None]] = []
    newest_first: Iterator[LogEntry]
    if chained:
        budget = MAX_SCAN_BYTES
        for source, size in present:
            if budget <= 0:
                break
            streams.append(_entries_back(source, budget, wanted, scan))
            budget -= size
        newest_first = itertools.chain(*streams)
    else:
        share = max(BLOCK_BYTES, MAX_SCAN_BYTES // len(present))
        streams = [_entries_back(source, share, wanted, scan) for source, _ in present]
        # Each run's entries come newest first: merging reads only what is shown.
        newest_first = heapq.merge(*streams, key=lambda e: e.time, reverse=True)
    try:
        found = list(itertools.islice(filter(wanted.matches, newest_first), MAX_LINES + 1))
    finally:
        for stream in streams:
            stream.close()  # closes its file now, not when collected
    shown: list[LogEntry] = []
    chars = 0
    for entry in found[:MAX_LINES]:
        chars += len(entry.text)
        if chars > MAX_SHOWN_CHARS and shown:
            break
        shown.append(entry)
    scan.limited = len(found) > len(shown)
    scan.entries = shown[::-1]
    return scan


def safe_log_path(logs_dir: Path, path: Path) -> Path:
    """The real path of a log file; OutsideLogs when it lies outside the logs directory."""
    real = path.resolve()
    if not real.is_relative_to(logs_dir.resolve()):
        raise OutsideLogs("that file is not in the logs directory")
    return real

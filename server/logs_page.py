"""The Logs page: the application log and run logs, filtered, searched, tailed live, downloaded.

A log file can be large, so a page never reads one whole: it reads backwards from the
end in blocks, in a thread (never on the event loop), and stops at MAX_LINES matching
entries or MAX_SCAN_BYTES, whichever comes first (issue 5: p50 under 10 ms). New lines
reach open pages through the WebSocket as transient `{"kind": "log"}` messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import re
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from markupsafe import Markup, escape

from core.errors import NotFound
from core.runlog import RunLogs
from core.state import RunView, State
from events.notifier import Notifier
from models.ids import check_job_id, check_run_id
from server.errors import BadRequest
from server.keys import CONFIG, STATE, STORE
from server.logs import FORMAT, UTCFormatter
from server.page_support import render, when

log = logging.getLogger(__name__)

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LEVEL_RANK = {name: rank for rank, name in enumerate(LEVELS)}
LEVEL_LABELS = {"DEBUG": "All levels", "INFO": "Info and above",
                "WARNING": "Warnings and errors", "ERROR": "Errors only"}
SOURCES = ("app", "run")
APP_LOG_FILES = ("app.log", "app.log.1")  # the current file, then the one rotated last
MAX_LINES = 500
# Also a cap on the text shown: 500 long tracebacks would break the page-weight budget
# (60 KB gzipped with CSS and JS); the download has everything.
MAX_SHOWN_CHARS = 120_000
MAX_SCAN_BYTES = 4 * 1024 * 1024
BLOCK_BYTES = 64 * 1024
MAX_RECORD_LINES = 200  # lines kept of one record (a traceback keeps its end)
RECENT_RUNS = 20
MAX_QUERY = 200

# "2026-11-24 05:00:00,123 WARNING core.runner: ..." (server/logs.py FORMAT)
APP_HEAD = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ([A-Z]+) ")
# "2026-11-24T05:00:00Z WARNING ..." (core/runlog.py); the runner writes failures as FAILED.
RUN_HEAD = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z) (?:(WARNING|ERROR|FAILED)\b)?")


def level_name(levelno: int) -> str:
    """One of LEVELS for a logging level number (CRITICAL counts as ERROR)."""
    if levelno >= logging.ERROR:
        return "ERROR"
    if levelno >= logging.WARNING:
        return "WARNING"
    return "INFO" if levelno >= logging.INFO else "DEBUG"


LEVEL_NUMBERS = logging.getLevelNamesMapping()


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
    """The real path of a log file, refused (403) when it lies outside the logs directory."""
    real = path.resolve()
    if not real.is_relative_to(logs_dir.resolve()):
        raise web.HTTPForbidden(reason="that file is not in the logs directory")
    return real


# --- the page -----------------------------------------------------------------------------

@dataclass(frozen=True)
class LogFilter:
    """What the person asked to see: which log, which job or run, minimum level, search."""

    source: str
    job_id: str | None
    run_id: str | None
    level: str
    q: str
    live: bool

    def query(self) -> dict[str, str]:
        """The query string of this view, defaults left out (for links and history)."""
        parts = {"source": self.source, "job": self.job_id or "", "run": self.run_id or "",
                 "level": "" if self.level == "DEBUG" else self.level, "q": self.q,
                 "live": "" if self.live else "off"}
        return {k: v for k, v in parts.items() if v}


def read_filter(request: web.Request) -> LogFilter:
    """Read and check the filter from the query string."""
    query, state = request.query, request.app[STATE]
    run_id = query.get("run", "").strip() or None
    job_id = query.get("job", "").strip() or None
    if run_id is not None:
        check_run_id(run_id)
        run = state.runs.get(run_id)
        if run is not None:
            job_id = run.job_id  # the run says which job it belongs to
    if job_id is not None:
        check_job_id(job_id)
        if job_id not in state.jobs and run_id is None:
            raise NotFound(f"no job {job_id!r}")
    source = query.get("source", "").strip() or ("run" if job_id or run_id else "app")
    if source not in SOURCES:
        raise BadRequest(f"source must be app or run, not {source[:40]!r}")
    level = query.get("level", "").strip().upper() or "DEBUG"
    if level not in LEVEL_RANK:
        raise BadRequest(f"level must be one of {', '.join(LEVELS)}, not {level[:40]!r}")
    # The form sends a hidden live=off before the checkbox, so the last value is the
    # checkbox when ticked; with neither (a plain link) live is on.
    live = query.getall("live", ["on"])[-1] == "on"
    return LogFilter(source, job_id, run_id, level, query.get("q", "").strip()[:MAX_QUERY],
                     live)


def _recent_runs(state: State, job_id: str | None) -> list[RunView]:
    """The runs whose logs the run view merges, newest first."""
    if job_id is not None:
        job = state.jobs.get(job_id)
        ids = job.run_ids[-RECENT_RUNS:][::-1] if job is not None else []
        return [state.runs[r] for r in ids if r in state.runs]
    # Runs are kept in the order they were queued, so the newest are at the end.
    return list(itertools.islice(reversed(state.runs.values()), RECENT_RUNS))


def _job_name(state: State, job_id: str) -> str:
    job = state.jobs.get(job_id)
    return str(job.spec.get("name", job_id)) if job is not None else f"{job_id} (deleted)"


def _files(logs_dir: Path, view: LogFilter, runs: Sequence[RunView]) -> list[LogFile]:
    if view.source == "app":
        return [LogFile(logs_dir / name, APP_FORMAT) for name in APP_LOG_FILES]
    run_ids = [view.run_id] if view.run_id else [r.run_id for r in runs]
    return [LogFile(logs_dir / "runs" / f"{r}.log", RUN_FORMAT, r) for r in run_ids]


# The job select lists every job (1,000 of them must still render in a few ms): its
# options are built once per state of the log, not for each request.
_JOB_OPTIONS: weakref.WeakKeyDictionary[State, tuple[int, str]] = weakref.WeakKeyDictionary()


def _job_options(state: State, selected: str | None) -> Markup:
    """The <option>s of the job select, by name, with the chosen job selected."""
    cached = _JOB_OPTIONS.get(state)
    if cached is None or cached[0] != state.seq:
        jobs = sorted(((str(j.spec.get("name", j.job_id)), j.job_id)
                       for j in state.jobs.values()), key=lambda j: (j[0].lower(), j[1]))
        cached = state.seq, "".join(
            f'<option value="{escape(job_id)}">{escape(name)}</option>\n'
            for name, job_id in jobs)
        _JOB_OPTIONS[state] = cached
    options = cached[1]
    if selected:
        # Job ids are slugs (models.ids), so they need no escaping to be found here.
        options = options.replace(f'<option value="{selected}">',
                                  f'<option value="{selected}" selected>', 1)
    return Markup(options)  # safe: built above from escaped values only


def _heading(state: State, view: LogFilter) -> str:
    if view.source == "app":
        return "Application log"
    if view.run_id:
        run = state.runs.get(view.run_id)
        return f"Run {view.run_id}" + (f" of {_job_name(state, run.job_id)}" if run else "")
    if view.job_id:
        return f"Recent runs of {_job_name(state, view.job_id)}"
    return "Recent runs, all jobs"


def _summary(scan: Scan) -> str:
    count = len(scan.entries)
    text = f"{count} line{'s' if count != 1 else ''}"
    if scan.limited:
        text = f"The last {count} matching lines"
    if scan.cut:
        text += f"; only the last {MAX_SCAN_BYTES // (1024 * 1024)} MB of each file were read"
    return text + "."


def _empty_text(request: web.Request, view: LogFilter, scan: Scan) -> str:
    if view.q or view.level != "DEBUG":
        return "No lines match these filters."
    if view.source == "app":
        if scan.missing and not request.app[CONFIG].log_to_file:
            return "The application log is not written to a file (file logging is off)."
        return "The application log is empty."
    if view.run_id:
        return "This run has no log lines (yet)."
    return "No run has written a log yet." if scan.missing else "These runs have no log lines."


async def logs_page(request: web.Request) -> web.Response:
    """The application log or run logs, newest last, filtered; `?fragment=lines` for htmx."""
    fragments = {"lines": "partials/log_lines.html"}
    fragment = request.query.get("fragment")
    if fragment not in (None, "lines"):
        return render(request, "logs.html", {}, fragments)  # the layout's own (recovery)
    state, logs_dir = request.app[STATE], request.app[CONFIG].logs_dir
    view = read_filter(request)
    runs = _recent_runs(state, view.job_id)
    if view.run_id and view.run_id not in {r.run_id for r in runs}:
        runs = [state.runs[view.run_id], *runs] if view.run_id in state.runs else runs
    scan = await asyncio.to_thread(read_logs, logs_dir, _files(logs_dir, view, runs),
                                   view.level, view.q, view.source == "app")
    page_url = str(request.app.router["logs"].url_for().with_query(view.query()))
    context: dict[str, Any] = {
        "view": view, "entries": scan.entries, "summary": _summary(scan),
        "empty_text": _empty_text(request, view, scan), "heading": _heading(state, view),
        "levels": LEVEL_LABELS, "runs": runs,
        "run_labels": {r.run_id: f"{r.run_id} · {r.state} · {when(r.queued)}"
                       + ("" if view.job_id else f" · {_job_name(state, r.job_id)}")
                       for r in runs},
        "job_options": _job_options(state, view.job_id),
        "job_missing": view.job_id is not None and view.job_id not in state.jobs,
        "job_name": _job_name(state, view.job_id) if view.job_id else "",
        "download_url": _download_url(request, view),
    }
    response = render(request, "logs.html", context, fragments)
    if fragment == "lines":
        # htmx asked for the lines only: the address bar shows the page, not the fragment.
        response.headers["HX-Push-Url"] = page_url
    return response


def _download_url(request: web.Request, view: LogFilter) -> str | None:
    route = request.app.router["logs-download"]
    if view.source == "app":
        return str(route.url_for().with_query(source="app"))
    return str(route.url_for().with_query(run=view.run_id)) if view.run_id else None


async def logs_download(request: web.Request) -> web.StreamResponse:
    """The application log, or one run's log, as a plain-text attachment."""
    run = request.query.get("run", "").strip()
    source = request.query.get("source", "").strip() or ("run" if run else "app")
    logs_dir = request.app[CONFIG].logs_dir
    if source == "app":
        path, filename = logs_dir / "app.log", "backup-manager-app.log"
    elif source == "run":
        if not run:
            raise BadRequest("name the run whose log to download: run=<run id>")
        run_id = check_run_id(run)
        path, filename = logs_dir / "runs" / f"{run_id}.log", f"backup-manager-{run_id}.log"
    else:
        raise BadRequest(f"source must be app or run, not {source[:40]!r}")

    def find() -> Path | None:
        real = safe_log_path(logs_dir, path)
        return real if real.is_file() else None

    real = await asyncio.to_thread(find)
    if real is None:
        raise web.HTTPNotFound(reason="that log has no file (yet)")
    return web.FileResponse(real, headers={
        "Content-Type": "text/plain; charset=utf-8",
        "Content-Disposition": f'attachment; filename="{filename}"',
        "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})


def setup_logs_routes(app: web.Application) -> None:
    """Declare the Logs page and the log download, by name."""
    app.router.add_get("/logs", logs_page, name="logs")
    app.router.add_get("/logs/download", logs_download, name="logs-download")


# --- the live tail ------------------------------------------------------------------------

MAX_LIVE_PER_SECOND = 200  # more than a person can read; the page and download have the rest
MAX_LIVE_PENDING = 1000
# Records that must not be broadcast: the access log (every request, the page's own
# fetches included), and loggers a WebSocket send itself may write to, which would
# feed back (send -> log -> broadcast -> send).
QUIET_LOGGERS = ("aiohttp.access", "aiohttp.websocket", "events.notifier", __name__)


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


class LogBroadcast:
    """Hands new log lines to the notifier on the event loop, from any thread, bounded."""

    def __init__(self, loop: asyncio.AbstractEventLoop, notifier: Notifier, state: State
                 ) -> None:
        self._loop, self._notifier, self._state = loop, notifier, state
        self._pending: deque[dict[str, Any]] = deque(maxlen=MAX_LIVE_PENDING)
        self._lock = threading.Lock()
        self._scheduled = False
        self._closed = False
        self._window, self._sent_in_window = 0.0, 0
        self.dropped = 0

    @property
    def listening(self) -> bool:
        """Whether anyone could receive a line (skip formatting when nobody can)."""
        return not self._closed and self._notifier.subscriber_count > 0

    def offer(self, message: dict[str, Any]) -> None:
        """Queue a message for the loop; drop it past MAX_LIVE_PER_SECOND (any thread)."""
        with self._lock:
            if self._closed:
                return
            now = time.monotonic()
            if now - self._window >= 1.0:
                self._window, self._sent_in_window = now, 0
            if self._sent_in_window >= MAX_LIVE_PER_SECOND:
                self.dropped += 1
                return
            self._sent_in_window += 1
            self._pending.append(message)
            if self._scheduled:
                return
            self._scheduled = True
        # One wake-up per batch, however many lines arrive before the loop runs it; a
        # closed loop (shutdown) has nobody left to send to.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._flush)

    def run_line(self, run_id: str, line: str) -> None:
        """A run-log line was written (RunLogs listener, on its writer thread)."""
        if not self.listening:
            return
        head = parse_run_head(line)
        self.offer({"kind": "log", "source": "run", "job_id": None, "run_id": run_id,
                    "level": head[1] if head else "INFO",
                    "time": head[0] if head else _iso(time.time()), "line": line})

    def close(self) -> None:
        """Stop sending; queued lines are dropped."""
        with self._lock:
            self._closed = True
            self._pending.clear()

    def _flush(self) -> None:
        with self._lock:
            items = list(self._pending)
            self._pending.clear()
            self._scheduled = False
        for message in items:
            if message["source"] == "run":
                # Looked up here, on the loop, where the state is safe to read.
                run = self._state.runs.get(message["run_id"])
                message["job_id"] = run.job_id if run is not None else None
            self._notifier.broadcast(message)


class AppLogHandler(logging.Handler):
    """A root-logger handler that broadcasts each record as the file has it."""

    def __init__(self, broadcast: LogBroadcast) -> None:
        super().__init__()
        self.broadcast = broadcast
        self.setFormatter(UTCFormatter(FORMAT))
        self._local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        """Format the record and offer it to the broadcast (never recursively)."""
        name = record.name
        if any(name == q or name.startswith(q + ".") for q in QUIET_LOGGERS) \
                or (name == "asyncio" and record.levelno < logging.ERROR) \
                or getattr(self._local, "busy", False) or not self.broadcast.listening:
            return
        self._local.busy = True
        try:
            self.broadcast.offer({
                "kind": "log", "source": "app", "job_id": None, "run_id": None,
                "level": level_name(record.levelno), "time": _iso(record.created),
                "line": self.format(record)})
        except Exception:
            self.handleError(record)
        finally:
            self._local.busy = False


def install_log_broadcast(app: web.Application, run_logs: RunLogs) -> Callable[[], None]:
    """Send new application-log records and run-log lines to WebSocket clients.

    Call it on the event loop once the store and state are set up; it returns the
    function that undoes it (call that on cleanup, before closing `run_logs`).
    """
    broadcast = LogBroadcast(asyncio.get_running_loop(), app[STORE].notifier, app[STATE])
    handler = AppLogHandler(broadcast)
    root = logging.getLogger()
    root.addHandler(handler)
    run_logs.add_listener(broadcast.run_line)

    def uninstall() -> None:
        root.removeHandler(handler)
        run_logs.remove_listener(broadcast.run_line)
        broadcast.close()
        if broadcast.dropped:
            log.info("%d log line(s) were too many to show live", broadcast.dropped)

    return uninstall

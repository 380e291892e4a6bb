"""The Logs page: the application log and run logs, filtered, searched, tailed live, downloaded.

The handlers only: reading a log from its end is core/logread.py's, the line formats are
core/logformat.py's, new lines reach open pages through the live feed (core/livelog.py)
and the markup is web/templates/logs.html and its partials.
"""

from __future__ import annotations

import asyncio
import itertools
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from core.errors import NotFound
from core.logformat import APP_FORMAT, LEVEL_RANK, LEVELS, RUN_FORMAT
from core.logread import MAX_SCAN_BYTES, LogFile, OutsideLogs, Scan, read_logs, safe_log_path
from core.state import RunView, State
from models.ids import check_job_id, check_run_id
from server.errors import BadRequest
from server.keys import CONFIG, STATE
from server.page_support import render, when

LEVEL_LABELS = {"DEBUG": "All levels", "INFO": "Info and above",
                "WARNING": "Warnings and errors", "ERROR": "Errors only"}
SOURCES = ("app", "run")
APP_LOG_FILES = ("app.log", "app.log.1")  # the current file, then the one rotated last
RECENT_RUNS = 20
MAX_QUERY = 200


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


# The job select lists every job up to JOB_SELECT_MAX of them; past that, the jobs that ran
# last (every job's run logs stay one click away: the Log link on its page). The sorted
# (name, id) pairs are worked out once per state of the log, not for each request.
JOB_SELECT_MAX = 200
_JOB_CHOICES: weakref.WeakKeyDictionary[State, tuple[int, list[tuple[str, str]], int]] = \
    weakref.WeakKeyDictionary()


def _job_choices(state: State) -> tuple[list[tuple[str, str]], int]:
    """(name, job id) of the jobs the select offers, by name, and how many are left out."""
    cached = _JOB_CHOICES.get(state)
    if cached is None or cached[0] != state.seq:
        if len(state.jobs) <= JOB_SELECT_MAX:
            chosen = list(state.jobs.values())
        else:  # newest runs first, until enough jobs: stops long before the oldest run
            ids: dict[str, None] = {}
            for run in reversed(state.runs.values()):
                if run.job_id in state.jobs:
                    ids.setdefault(run.job_id)
                    if len(ids) >= JOB_SELECT_MAX:
                        break
            chosen = [state.jobs[i] for i in ids]
        jobs = sorted(((str(j.spec.get("name", j.job_id)), j.job_id) for j in chosen),
                      key=lambda j: (j[0].lower(), j[1]))
        cached = state.seq, jobs, len(state.jobs) - len(jobs)
        _JOB_CHOICES[state] = cached
    return cached[1], cached[2]


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
    try:
        scan = await asyncio.to_thread(read_logs, logs_dir, _files(logs_dir, view, runs),
                                       view.level, view.q, view.source == "app")
    except OutsideLogs as err:
        raise web.HTTPForbidden(reason=str(err)) from err
    page_url = str(request.app.router["logs"].url_for().with_query(view.query()))
    choices, left_out = _job_choices(state)
    context: dict[str, Any] = {
        "view": view, "entries": scan.entries, "summary": _summary(scan),
        "empty_text": _empty_text(request, view, scan), "heading": _heading(state, view),
        "levels": LEVEL_LABELS, "runs": runs,
        "run_labels": {r.run_id: f"{r.run_id} · {r.state} · {when(r.queued)}"
                       + ("" if view.job_id else f" · {_job_name(state, r.job_id)}")
                       for r in runs},
        "job_choices": choices, "jobs_left_out": left_out,
        # A job not offered (deleted, or past the select's limit) is added as chosen.
        "job_missing": view.job_id is not None and view.job_id not in
        {job_id for _, job_id in choices},
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

    try:
        real = await asyncio.to_thread(find)
    except OutsideLogs as err:
        raise web.HTTPForbidden(reason=str(err)) from err
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

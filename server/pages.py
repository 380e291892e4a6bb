"""The pages people use: dashboard, jobs, a job, the job form and settings.

Handlers are thin: read the request, call a command or a query, render. Every form
posts and redirects (303) so the pages work with JavaScript off; htmx only makes them
faster and live.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp_jinja2
from aiohttp import web
from markupsafe import Markup

from core import operations, paging
from core.commands import validate_job
from core.errors import CommandError, Invalid
from core.pathcheck import path_warnings_off_loop
from core.queries import JobRow
from core.state import JobView, RunView
from engines.base import EngineError
from models.job import clean_path
from server.forms import (
    CHOICES,
    JOB_FIELDS,
    job_form_values,
    job_input,
    read_fields,
)
from server.keys import COMMANDS, QUERIES, RUNNER, STATE
from server.page_support import form_of as _form
from server.page_support import redirect, render, safe_next
from server.page_support import url_of as _url
from server.runs_page import setup_runs_routes

log = logging.getLogger(__name__)

JOBS_PER_PAGE = 50
RUN_HISTORY = 50  # runs a page of a job's history shows ("Older runs" for the rest)
SNAPSHOTS_SHOWN = 20  # snapshots a page shows, newest first, each with its restore form
DASHBOARD_RUNS = 10  # running (and paused) runs shown, then queued ones; the rest counted
FLASH_ERROR_TYPES = (CommandError, EngineError)


# --- dashboard ------------------------------------------------------------------------

def _run_item(request: web.Request, run: RunView) -> dict[str, Any]:
    """An active run with its job and latest progress, for running_runs.html."""
    active = request.app[RUNNER].active.get(run.run_id)
    return {"run": run, "job": request.app[STATE].jobs[run.job_id],
            "progress": (active.progress if active is not None else None) or {}}


def _running(request: web.Request, job_id: str | None = None) -> list[dict[str, Any]]:
    """A job's active runs (not interrupted) with their latest progress, in queue order."""
    state = request.app[STATE]
    return [_run_item(request, run) for run in state.active_runs(job_id)
            if run.job_id in state.jobs and run.state != "interrupted"]


def _dashboard_context(request: web.Request) -> dict[str, Any]:
    queries, state = request.app[QUERIES], request.app[STATE]
    chart = queries.chart()
    # Counts and the first few of each: the queue after a downtime is a thousand runs.
    going = paging.active_runs(state, ("running", "paused"), None, DASHBOARD_RUNS)
    waiting = paging.active_runs(state, ("queued",), None, DASHBOARD_RUNS)
    return {"stats": queries.dashboard(),
            "running": [_run_item(request, r) for r in going.items + waiting.items],
            "running_more": going.total - len(going.items),
            "waiting_more": waiting.total - len(waiting.items),
            "recent": queries.recent_runs(10), "jobs_by_id": state.jobs,
            "chart": chart, "chart_max_runs": max([d.succeeded + d.failed for d in chart] + [1]),
            "chart_max_bytes": max([d.bytes for d in chart] + [1])}


async def dashboard(request: web.Request) -> web.Response:
    """Cards, running runs with live progress, recent runs and the 30-day chart."""
    context = _dashboard_context(request)
    cards = aiohttp_jinja2.render_string("partials/dashboard_stats.html", request, context)
    context["stats_html"] = Markup(cards)  # rendered (and escaped) by its own template
    context["stats_digest"] = hashlib.sha256(cards.encode()).hexdigest()[:16]
    if request.query.get("fragment") == "stats" \
            and request.query.get("have") == context["stats_digest"]:
        return web.Response(status=204)  # what the page shows is still current
    return render(request, "dashboard.html", context, {
        "stats": "partials/dashboard_stats_poll.html", "running": "partials/dashboard_runs.html",
        "recent": "partials/recent_runs.html", "chart": "partials/runs_chart.html"})


# --- jobs list ------------------------------------------------------------------------

def _job_rows(request: web.Request) -> dict[str, Any]:
    state, queries = request.app[STATE], request.app[QUERIES]
    query = request.query.get("q", "").strip()[:100]
    jobs = queries.jobs_by_name()
    if query:
        needle = query.lower()
        jobs = [j for j in jobs if needle in str(j.spec.get("name", "")).lower()
                or needle in j.job_id or needle in str(j.spec.get("destination", "")).lower()]
    raw_page = request.query.get("page", "1")
    pages = max(1, -(-len(jobs) // JOBS_PER_PAGE))
    # ASCII digits only: str.isdigit() also takes "²", which int() refuses.
    page = min(int(raw_page), pages) if re.fullmatch(r"[0-9]{1,6}", raw_page) \
        and int(raw_page) > 0 else 1
    shown = jobs[(page - 1) * JOBS_PER_PAGE: page * JOBS_PER_PAGE]
    rows: list[JobRow] = [queries.job_row(job) for job in shown]
    return {"rows": rows, "q": query, "page": page, "pages": pages, "total": len(jobs),
            "all_jobs": len(state.jobs)}


async def jobs(request: web.Request) -> web.Response:
    """Every job with its state, last run, last success, next run and quick actions."""
    response = render(request, "jobs.html", _job_rows(request),
                      {"list": "partials/job_list.html"})
    if request.headers.get("HX-Trigger") == "job-search":
        # Typing in the search box: the address bar shows the search, not the fragment.
        query = request.rel_url.query.copy()
        query.popall("fragment", None)
        query.popall("page", None)
        response.headers["HX-Push-Url"] = str(request.rel_url.with_query(query))
    return response


# --- one job --------------------------------------------------------------------------

async def _snapshots(job: JobView) -> tuple[list[Any], str | None]:
    try:
        return list(reversed(await operations.list_snapshots(job))), None
    except EngineError as err:
        return [], str(err)


def _position(request: web.Request, name: str) -> int | None:
    """A place in a list from the query string (ASCII digits), None when absent or not one."""
    raw = request.query.get(name, "")
    return int(raw) if re.fullmatch(r"[0-9]{1,9}", raw) else None


async def job_page(request: web.Request, restore_errors: Mapping[str, str] | None = None,
                   restore_values: Mapping[str, Any] | None = None,
                   status: int = 200) -> web.Response:
    """A job: its settings, actions, run history, snapshots with restore and verify."""
    commands = request.app[COMMANDS]
    job = commands.job(request.match_info["job_id"])
    fragment = request.query.get("fragment")
    snapshots: list[Any] = []
    snapshot_error: str | None = None
    if fragment in (None, "snapshots"):
        snapshots, snapshot_error = await _snapshots(job)
    start = _position(request, "snapshots_from")
    if restore_errors:  # the page holding the snapshot whose form has the error
        ids = [s.id for s in snapshots]
        first = next((ids.index(i) for i in restore_errors if i in ids), None)
        start = start if first is None else first - first % SNAPSHOTS_SHOWN
    state = request.app[STATE]
    context = {
        "job": job, "row": request.app[QUERIES].job_row(job),
        "runs": paging.job_runs(state, job, _position(request, "runs_before"), RUN_HISTORY),
        "running": _running(request, job.job_id),
        "snapshots": paging.slice_page(snapshots, start or 0, SNAPSHOTS_SHOWN),
        "snapshot_error": snapshot_error,
        "activity": list(reversed(job.activity)),
        "restore_errors": restore_errors or {}, "restore_values": restore_values or {},
        # With other jobs' destinations: two jobs saved on one before that was refused.
        "path_warnings": await path_warnings_off_loop(
            job.spec, others=request.app[COMMANDS].other_owners(job.job_id))
        if fragment is None else [],
    }
    return render(request, "job.html", context, {
        "header": "partials/job_header.html", "runs": "partials/job_runs.html",
        "snapshots": "partials/job_snapshots.html", "running": "partials/running_runs.html"},
        status=status)


# --- job form -------------------------------------------------------------------------

def _form_context(values: Mapping[str, str], errors: Mapping[str, str],
                  job: JobView | None) -> dict[str, Any]:
    return {"values": values, "errors": errors, "job": job, "choices": CHOICES}


async def job_new(request: web.Request) -> web.Response:
    """The empty job form."""
    values = job_form_values({"engine": "mirror", "enabled": True})
    return render(request, "job_form.html", _form_context(values, {}, None))


async def job_edit(request: web.Request) -> web.Response:
    """The job form filled with a job's current spec."""
    job = request.app[COMMANDS].job(request.match_info["job_id"])
    return render(request, "job_form.html", _form_context(job_form_values(job.spec), {}, job))


async def job_save(request: web.Request) -> web.StreamResponse:
    """Create or change a job from the form; refused input comes back with its messages."""
    commands = request.app[COMMANDS]
    job_id = request.match_info.get("job_id")
    job = commands.job(job_id) if job_id else None
    form = await _form(request)
    values, errors = read_fields(form, JOB_FIELDS)
    data, text_errors = job_input(values)
    errors.update(text_errors)
    try:
        if errors:
            # Show every problem at once: the spec's own checks too, not only the text's.
            try:
                validate_job({**(job.spec if job else {}), **data},
                             commands.allow_link_local_webhooks())
            except Invalid as err:
                errors = {**err.errors, **errors}
            raise Invalid("the form has errors", errors)
        if job is None:
            saved = await commands.create_job(data)
            message = f"Job “{saved.spec['name']}” created."
        else:
            saved = await commands.update_job(job.job_id, data)
            message = f"Job “{saved.spec['name']}” saved."
        warnings = await path_warnings_off_loop(saved.spec)
    except Invalid as err:
        shown = {("retention" if k.startswith("keep_") else k): v
                 for k, v in err.errors.items()}
        # 422 so htmx swaps the form in place (see the htmx-config meta in base.html).
        return render(request, "job_form.html", _form_context(values, shown, job), status=422)
    if warnings:  # saved, but a path is missing for now: say so at once
        return redirect(_url(request, "job", job_id=saved.job_id),
                        ("warn", f"{message} But: {'; '.join(warnings)}"))
    return redirect(_url(request, "job", job_id=saved.job_id), ("ok", message))


# --- actions --------------------------------------------------------------------------

async def _act(request: web.Request, default: str, action: Callable[[], Awaitable[str]]
               ) -> web.Response:
    """Run a command for a form button; come back to the page with what happened."""
    form = await _form(request)
    back = safe_next(request, form.get("next"), default)
    try:
        message = await action()
    except FLASH_ERROR_TYPES as err:
        return redirect(back, ("error", str(err)))
    return redirect(back, ("ok", message))


async def job_start(request: web.Request) -> web.StreamResponse:
    """Queue a run now."""
    job_id = request.match_info["job_id"]

    async def start() -> str:
        run = await request.app[COMMANDS].start_run(job_id)
        return f"Run {run.run_id} queued."
    return await _act(request, _url(request, "job", job_id=job_id), start)


async def job_switch(request: web.Request) -> web.StreamResponse:
    """Enable or disable a job's schedule."""
    job_id, enable = request.match_info["job_id"], request.match_info["switch"] == "enable"

    async def switch() -> str:
        job = await request.app[COMMANDS].set_enabled(job_id, enable)
        return f"Schedule of “{job.spec['name']}” {'enabled' if enable else 'disabled'}."
    return await _act(request, _url(request, "job", job_id=job_id), switch)


async def job_delete(request: web.Request) -> web.StreamResponse:
    """Delete a job after its confirmation; stop its run first when asked."""
    commands = request.app[COMMANDS]
    job = commands.job(request.match_info["job_id"])
    form = await _form(request)
    page = _url(request, "job", job_id=job.job_id)
    if form.get("confirm") != "delete":
        return redirect(page, ("error", "Deleting needs the confirmation."))
    try:
        await commands.delete_job(job.job_id, stop_runs=form.get("cancel_runs") == "on")
    except FLASH_ERROR_TYPES as err:
        return redirect(page, ("error", str(err)))
    return redirect(_url(request, "jobs"), ("ok", f"Job “{job.spec['name']}” deleted. Its "
                                                  "backups were left in place."))


async def run_action(request: web.Request) -> web.StreamResponse:
    """Pause, resume, cancel or discard a run from a button."""
    commands = request.app[COMMANDS]
    run = commands.run(request.match_info["run_id"])
    action = request.match_info["action"]
    command = {"pause": commands.pause_run, "resume": commands.resume_run,
               "cancel": commands.cancel_run, "discard": commands.discard_run}[action]
    done = {"pause": "paused", "resume": "resumed", "cancel": "cancelled",
            "discard": "discarded"}[action]

    async def act() -> str:
        await command(run.run_id)
        return f"Run {run.run_id} {done}."
    return await _act(request, _url(request, "job", job_id=run.job_id), act)


async def snapshot_restore(request: web.Request) -> web.StreamResponse:
    """Queue a restore of a snapshot (or a path in it) into a target directory."""
    commands = request.app[COMMANDS]
    job = commands.job(request.match_info["job_id"])
    snapshot_id = request.match_info["snapshot_id"]
    form = await _form(request)
    page = _url(request, "job", job_id=job.job_id)
    path = str(form.get("path", "")).strip() or None
    try:
        target = clean_path(form.get("target"), "target")
    except ValueError as err:
        # Shown beside the field of this snapshot's form, with what was typed kept.
        typed = {"target": str(form.get("target", ""))[:4096], "path": path or "",
                 "overwrite": form.get("overwrite") == "on"}
        return await job_page(request, {snapshot_id: str(err)}, {snapshot_id: typed}, 422)
    data = {"target": target, "path": path, "overwrite": form.get("overwrite") == "on"}
    try:
        run = await commands.queue_restore(job.job_id, snapshot_id, data)
    except FLASH_ERROR_TYPES as err:  # refused before anything was recorded or written
        return redirect(page + "#activity", ("error", f"Restore of {snapshot_id} failed: {err}"))
    return redirect(page + "#running", ("ok", f"Restore of {snapshot_id} into {target} queued "
                                              f"(run {run.run_id}); it shows under Current "
                                              "run, its result under Activity."))


async def snapshot_verify(request: web.Request) -> web.StreamResponse:
    """Queue a verify of a snapshot against its manifest."""
    commands = request.app[COMMANDS]
    job = commands.job(request.match_info["job_id"])
    snapshot_id = request.match_info["snapshot_id"]
    page = _url(request, "job", job_id=job.job_id)
    await _form(request)  # the CSRF token is checked on reading it
    try:
        run = await commands.queue_verify(job.job_id, snapshot_id)
    except FLASH_ERROR_TYPES as err:
        return redirect(page + "#activity", ("error", f"Verify not started: {err}."))
    return redirect(page + "#running", ("ok", f"Verify of {snapshot_id} queued (run "
                                              f"{run.run_id}); its result shows under "
                                              "Activity."))


async def job_prune(request: web.Request) -> web.StreamResponse:
    """Queue a prune: the job's retention applied now."""
    job_id = request.match_info["job_id"]

    async def prune() -> str:
        run = await request.app[COMMANDS].queue_prune(job_id)
        return f"Prune queued (run {run.run_id})."
    return await _act(request, _url(request, "job", job_id=job_id), prune)


# --- settings and theme ---------------------------------------------------------------

def setup_page_routes(app: web.Application) -> None:
    """Declare the page routes, by name (the first part of a name is the nav section)."""
    r = app.router
    r.add_get("/dashboard", dashboard, name="dashboard")
    r.add_get("/jobs", jobs, name="jobs")
    r.add_get("/jobs/new", job_new, name="jobs-new")
    r.add_post("/jobs/new", job_save, name="jobs-create")
    r.add_get("/jobs/{job_id}", job_page, name="job")
    r.add_get("/jobs/{job_id}/edit", job_edit, name="job-edit")
    r.add_post("/jobs/{job_id}/edit", job_save, name="job-save")
    r.add_post("/jobs/{job_id}/start", job_start, name="job-start")
    r.add_post("/jobs/{job_id}/{switch:enable|disable}", job_switch, name="job-switch")
    r.add_post("/jobs/{job_id}/delete", job_delete, name="job-delete")
    r.add_post("/jobs/{job_id}/prune", job_prune, name="job-prune")
    r.add_post("/jobs/{job_id}/snapshots/{snapshot_id}/restore", snapshot_restore,
               name="job-restore")
    r.add_post("/jobs/{job_id}/snapshots/{snapshot_id}/verify", snapshot_verify,
               name="job-verify")
    r.add_post("/runs/{run_id}/{action:pause|resume|cancel|discard}", run_action,
               name="run-action")
    setup_runs_routes(app)

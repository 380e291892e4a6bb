"""The JSON API (/api): the same commands and reads as the UI, for scripts and tests."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from core import operations, paging
from core.pathcheck import path_warnings_off_loop
from core.state import JobView, RunView
from models.runs import ACTIVE_STATES
from server.cursors import cursor_of, int_key, limit_of, paged, queue_key
from server.errors import BadRequest
from server.keys import COMMANDS, QUERIES, STATE

JOBS_LIMIT, JOBS_MAX = 100, 500  # jobs per page of /api/jobs: by default, at most
RUNS_LIMIT, RUNS_MAX = 50, 500  # runs per page of a job's runs and of /api/runs
SNAPSHOTS_LIMIT, SNAPSHOTS_MAX = 100, 1000


async def _json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object (the content type was checked by the middleware)."""
    try:
        body = await request.json(loads=json.loads)
    except (ValueError, LookupError, RecursionError) as err:
        # ValueError covers bad JSON, bad UTF-8 and numbers too long to convert;
        # LookupError an unknown charset; RecursionError nesting no person writes.
        raise BadRequest(f"the body is not valid JSON: {str(err)[:200]}") from err
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    if _has_lone_surrogate(body):
        raise BadRequest("the body holds text that is not valid Unicode (a lone surrogate)")
    return body


def _has_lone_surrogate(value: Any, depth: int = 0) -> bool:
    """Whether any string in a JSON value holds a lone surrogate (JSON allows \\ud800)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if depth > 50:
        return False  # deeper values are refused by the commands anyway
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k, depth + 1) or _has_lone_surrogate(v, depth + 1)
                   for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v, depth + 1) for v in value)
    return False


def run_json(run: RunView) -> dict[str, Any]:
    """A run as the API shows it (RunView.as_dict's fields), for an answer encoded at once.

    No deep copy: json_response encodes it before the handler returns, and the state
    changes only on this loop, so nothing can change it between. (A page of 100 jobs
    spent most of its time copying runs.)
    """
    return {k: v for k, v in run.__dict__.items() if k != "queued_seq"}


def job_json(request: web.Request, job: JobView) -> dict[str, Any]:
    """A job as the API shows it: id, spec, and its latest runs."""
    queries = request.app[QUERIES]
    # Backups only: a restore, verify or prune is a run too, but not the job's last run.
    # Walked back from the newest run until found: not a copy of the job's whole history.
    last_run, last_success = queries.last_backup(job), queries.last_success(job)
    next_run = queries.next_run(job)
    return {"id": job.job_id, **job.spec, "created": job.created, "updated": job.updated,
            "next_run": next_run.isoformat().replace("+00:00", "Z") if next_run else None,
            "last_run": run_json(last_run) if last_run else None,
            "last_success": run_json(last_success) if last_success else None}


async def list_jobs(request: web.Request) -> web.Response:
    """Jobs by id, a page at a time (`limit`, `cursor`; `next` names the next page)."""
    limit = limit_of(request, JOBS_LIMIT, JOBS_MAX)
    page = request.app[QUERIES].job_index.page(cursor_of(request, "jobs"), limit)
    return paged(request, "jobs", "jobs", page, [job_json(request, j) for j in page.items],
                 limit)


async def list_job_runs(request: web.Request) -> web.Response:
    """A job's runs, newest first, a page at a time."""
    job = request.app[COMMANDS].job(request.match_info["job_id"])
    limit = limit_of(request, RUNS_LIMIT, RUNS_MAX)
    page = paging.job_runs(request.app[STATE], job, int_key(cursor_of(request, "runs")), limit)
    return paged(request, "runs", "runs", page, [run_json(r) for r in page.items], limit)


async def list_active_runs(request: web.Request) -> web.Response:
    """Unfinished runs (all, or `?state=queued` etc.) in queue order, a page at a time."""
    states = request.query.getall("state", []) or sorted(ACTIVE_STATES)
    unknown = [s for s in states if s not in ACTIVE_STATES]
    if unknown:
        raise BadRequest(f"state must be one of {', '.join(sorted(ACTIVE_STATES))} (runs "
                         "that ended are listed per job: /api/jobs/{id}/runs)")
    limit = limit_of(request, RUNS_LIMIT, RUNS_MAX)
    page = paging.active_runs(request.app[STATE], states,
                              queue_key(cursor_of(request, "queue")), limit)
    return paged(request, "runs", "queue", page, [run_json(r) for r in page.items], limit)


async def create_job(request: web.Request) -> web.Response:
    """Create a job from a JSON spec."""
    job = await request.app[COMMANDS].create_job(await _json_body(request))
    return web.json_response(job_json(request, job), status=201)


async def get_job(request: web.Request) -> web.Response:
    """One job with its recent runs."""
    job = request.app[COMMANDS].job(request.match_info["job_id"])
    body = job_json(request, job)
    body["runs"] = [run_json(r) for r in paging.job_runs(request.app[STATE], job, None, 20).items]
    # Only here, not in the list: it touches each path, too slow for 1,000 jobs at once.
    body["path_warnings"] = await path_warnings_off_loop(
        job.spec, others=request.app[COMMANDS].other_owners(job.job_id))
    return web.json_response(body)


async def update_job(request: web.Request) -> web.Response:
    """Change a job's spec."""
    job = await request.app[COMMANDS].update_job(request.match_info["job_id"],
                                                 await _json_body(request))
    return web.json_response(job_json(request, job))


async def delete_job(request: web.Request) -> web.Response:
    """Delete a job; refused while a run is going unless `?cancel=true` stops it first."""
    job_id = request.match_info["job_id"]
    stop = request.query.get("cancel", "").lower() in ("1", "true", "yes")
    await request.app[COMMANDS].delete_job(job_id, stop_runs=stop)
    return web.json_response({"deleted": job_id})


async def set_enabled(request: web.Request) -> web.Response:
    """Switch a job's schedule on or off."""
    enabled = request.match_info["switch"] == "enable"
    job = await request.app[COMMANDS].set_enabled(request.match_info["job_id"], enabled)
    return web.json_response(job_json(request, job))


async def start_job(request: web.Request) -> web.Response:
    """Queue a run of a job now."""
    return _queued(request, await request.app[COMMANDS].start_run(request.match_info["job_id"]))


async def get_run(request: web.Request) -> web.Response:
    """One run with its state."""
    run = request.app[COMMANDS].run(request.match_info["run_id"])
    return web.json_response(run.as_dict())


async def run_action(request: web.Request) -> web.Response:
    """Pause, resume, cancel or discard a run."""
    commands = request.app[COMMANDS]
    action = {"pause": commands.pause_run, "resume": commands.resume_run,
              "cancel": commands.cancel_run, "discard": commands.discard_run}
    run = await action[request.match_info["action"]](request.match_info["run_id"])
    return web.json_response(commands.run(run.run_id).as_dict())


async def list_snapshots(request: web.Request) -> web.Response:
    """A job's complete snapshots, oldest first, a page at a time."""
    job = request.app[COMMANDS].job(request.match_info["job_id"])
    limit = limit_of(request, SNAPSHOTS_LIMIT, SNAPSHOTS_MAX)
    start = int_key(cursor_of(request, "snapshots")) or 0
    page = paging.slice_page(await operations.list_snapshots(job), start, limit)
    return paged(request, "snapshots", "snapshots", page, [
        {"id": s.id, "time": s.time.isoformat(), "files": s.files, "size": s.size}
        for s in page.items], limit)


def _queued(request: web.Request, run: RunView) -> web.Response:
    """202 with the queued run's id, state and API URL."""
    url = request.app.router["api-run"].url_for(run_id=run.run_id)
    return web.json_response({"run_id": run.run_id, "state": run.state, "url": str(url)},
                             status=202)


async def restore_snapshot(request: web.Request) -> web.Response:
    """Queue a restore of a snapshot into a target directory (checked before queueing)."""
    run = await request.app[COMMANDS].queue_restore(request.match_info["job_id"],
                                                    request.match_info["snapshot_id"],
                                                    await _json_body(request))
    return _queued(request, run)


async def verify_snapshot(request: web.Request) -> web.Response:
    """Queue a verify of a snapshot."""
    run = await request.app[COMMANDS].queue_verify(request.match_info["job_id"],
                                                   request.match_info["snapshot_id"])
    return _queued(request, run)


async def prune_job(request: web.Request) -> web.Response:
    """Queue a prune: the job's retention applied now."""
    return _queued(request, await request.app[COMMANDS].queue_prune(
        request.match_info["job_id"]))


async def get_settings(request: web.Request) -> web.Response:
    """The settings in force."""
    return web.json_response(request.app[STATE].settings)


async def put_settings(request: web.Request) -> web.Response:
    """Change settings (only the keys sent)."""
    return web.json_response(await request.app[COMMANDS].change_settings(
        await _json_body(request)))


def setup_api_routes(app: web.Application) -> None:
    """Declare the API routes, by name."""
    r = app.router
    r.add_get("/api/jobs", list_jobs, name="api-jobs")
    r.add_post("/api/jobs", create_job, name="api-jobs-create")
    r.add_get("/api/jobs/{job_id}", get_job, name="api-job")
    r.add_put("/api/jobs/{job_id}", update_job, name="api-job-update")
    r.add_delete("/api/jobs/{job_id}", delete_job, name="api-job-delete")
    r.add_post("/api/jobs/{job_id}/start", start_job, name="api-job-start")
    r.add_post("/api/jobs/{job_id}/{switch:enable|disable}", set_enabled, name="api-job-switch")
    r.add_get("/api/jobs/{job_id}/runs", list_job_runs, name="api-job-runs")
    r.add_get("/api/jobs/{job_id}/snapshots", list_snapshots, name="api-snapshots")
    r.add_post("/api/jobs/{job_id}/snapshots/{snapshot_id}/restore", restore_snapshot,
               name="api-restore")
    r.add_post("/api/jobs/{job_id}/snapshots/{snapshot_id}/verify", verify_snapshot,
               name="api-verify")
    r.add_post("/api/jobs/{job_id}/prune", prune_job, name="api-prune")
    r.add_get("/api/runs", list_active_runs, name="api-runs")
    r.add_get("/api/runs/{run_id}", get_run, name="api-run")
    r.add_post("/api/runs/{run_id}/{action:pause|resume|cancel|discard}", run_action,
               name="api-run-action")
    r.add_get("/api/settings", get_settings, name="api-settings")
    r.add_put("/api/settings", put_settings, name="api-settings-update")

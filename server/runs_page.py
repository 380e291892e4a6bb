"""The Runs page: every unfinished run (running, paused, queued, interrupted) in queue
order, a page at a time: the dashboard shows the first few and links here for the rest."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from core import paging
from models.runs import ACTIVE_STATES
from server.cursors import cursor_of, encode, queue_key
from server.keys import STATE
from server.page_support import render

RUNS_PER_PAGE = 50
STATE_ORDER = ("running", "paused", "queued", "interrupted")


async def runs_page(request: web.Request) -> web.Response:
    """Unfinished runs in queue order; `?state=` narrows, "Show more" reads the next page."""
    state = request.app[STATE]
    chosen = request.query.get("state", "")
    states = (chosen,) if chosen in ACTIVE_STATES else STATE_ORDER
    page = paging.active_runs(state, states, queue_key(cursor_of(request, "queue")),
                              RUNS_PER_PAGE)
    base = request.app.router["runs"].url_for()
    more = None
    if page.after is not None:
        query = {"cursor": encode("queue", page.after), **({"state": chosen} if chosen in
                                                          ACTIVE_STATES else {})}
        more = str(base.with_query(query))
    counts = {s: 0 for s in STATE_ORDER}
    for run in paging.queue(state):
        if run.job_id in state.jobs:
            counts[run.state] = counts.get(run.state, 0) + 1
    context: dict[str, Any] = {
        "runs": page.items, "total": page.total, "more_url": more, "chosen": chosen,
        "counts": counts, "jobs_by_id": state.jobs, "continued": "cursor" in request.query,
        "states": STATE_ORDER}
    return render(request, "runs.html", context, {"rows": "partials/queue_rows.html"})


def setup_runs_routes(app: web.Application) -> None:
    """Declare the Runs page, by name."""
    app.router.add_get("/runs", runs_page, name="runs")

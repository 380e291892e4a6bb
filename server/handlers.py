"""Thin handlers: parse the request, read or call the core, render the answer."""

from __future__ import annotations

import re

from aiohttp import web

from server.errors import BadRequest
from server.health import chain_state, health_status, log_problems
from server.keys import PROJECTOR, STORE, WEBSOCKETS
from server.ws import parse_since

MAX_EVENTS_PAGE = 1000


async def index(request: web.Request) -> web.StreamResponse:
    """Send the browser to the dashboard."""
    raise web.HTTPFound(request.app.router["dashboard"].url_for())


async def healthz(request: web.Request) -> web.Response:
    """Report whether the log and the projector are healthy, with their positions.

    See server/health.py for what each status means; `problems` says what is wrong.
    """
    store, projector = request.app[STORE], request.app[PROJECTOR]
    problems = log_problems(store)
    if not projector.healthy:
        problems.append(f"the YAML projections are not being written: {projector.error}"
                        if projector.error else "the YAML projector is not running")
    status = health_status(store, problems)
    body = {
        "status": status,
        "problems": problems,
        "last_seq": store.last_seq,
        "chain_check": chain_state(store),
        "write_error": store.write_error,
        "write_error_since": store.write_error_since,
        "projector_seq": projector.seq,
        "projector_lag": projector.lag,
        "projector_catching_up": projector.catching_up,
        "projector_error": str(projector.error) if projector.error else None,
        "websocket_clients": len(request.app[WEBSOCKETS]),
    }
    return web.json_response(body, status=503 if status == "degraded" else 200)


async def api_events(request: web.Request) -> web.Response:
    """Return stored events after `since` as JSON, oldest first, one page at a time."""
    store = request.app[STORE]
    since = parse_since(request, default=0)
    raw_limit = request.query.get("limit", "500")
    if not re.fullmatch(r"[0-9]{1,6}", raw_limit) or not 1 <= int(raw_limit) <= MAX_EVENTS_PAGE:
        raise BadRequest(f"limit must be a whole number from 1 to {MAX_EVENTS_PAGE}")
    events = await store.read(since=since, limit=int(raw_limit))
    return web.json_response({"events": [ev.as_dict() for ev in events],
                              "last_seq": store.last_seq})

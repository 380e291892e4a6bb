"""Domain errors mapped to HTTP in one place: JSON for the API, plain pages elsewhere."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import aiohttp_jinja2
from aiohttp import web

from core.errors import Conflict, Invalid, NotFound
from engines.base import EngineError, RestoreConflict, SnapshotNotFound
from events.store import ConcurrencyError, StoreClosed, StoreError
from models.ids import InvalidId
from server.origin import origin_refusal

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BadRequest(ValueError):
    """A request's input is not valid; the message says what to fix."""


def _status_for(err: Exception) -> int | None:
    if isinstance(err, InvalidId | NotFound | SnapshotNotFound):
        return 404
    if isinstance(err, Invalid):
        return 400
    if isinstance(err, Conflict | RestoreConflict):
        return 409
    if isinstance(err, EngineError):
        return 422
    if isinstance(err, BadRequest):
        return 400
    if isinstance(err, ConcurrencyError):
        return 409
    if isinstance(err, StoreClosed):
        return 503
    if isinstance(err, StoreError):
        return 500
    return None


def _message(err: Exception) -> str:
    """What a person reads: the store's version wording means nothing to them."""
    if isinstance(err, ConcurrencyError):
        log.info("version conflict answered with 409: %s", err)
        return ("this job changed while your request was handled (another request or its "
                "run got there first); reload and try again")
    return str(err)


def wants_json(request: web.Request) -> bool:
    """Whether the caller is a script (the API) rather than a browser."""
    return request.path.startswith("/api/") or "application/json" in request.headers.get(
        "Accept", "")


def respond_error(request: web.Request, status: int, message: str,
                  fields: dict[str, str] | None = None) -> web.Response:
    """An error answer: JSON for scripts, a styled page for browsers."""
    if wants_json(request):
        body: dict[str, object] = {"error": message}
        if fields:
            body["fields"] = fields
        return web.json_response(body, status=status)
    if request.headers.get("HX-Request") and not request.headers.get("HX-Boosted"):
        # A fragment refresh: keep what the page shows rather than swap an error into it.
        return web.Response(text=f"{status}: {message}\n", status=status,
                            headers={"HX-Reswap": "none"})
    if aiohttp_jinja2.REQUEST_CONTEXT_KEY not in request:
        # Refused before the page context was gathered (a foreign Host): no layout to
        # fill, and nothing went wrong that the log should show a traceback for.
        return web.Response(text=f"{status}: {message}\n", status=status)
    try:
        return aiohttp_jinja2.render_template("error.html", request,
                                              {"status": status, "message": message},
                                              status=status)
    except Exception:  # the error page itself failed: plain text still says what happened
        log.exception("cannot render the error page")
        return web.Response(text=f"{status}: {message}\n", status=status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn domain errors and HTTP errors into clear responses; never show a traceback."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.empty_body:
            raise
        return respond_error(request, exc.status, exc.reason)
    except Exception as err:
        status = _status_for(err)
        if status is None:
            log.exception("unexpected error on %s %s", request.method, request.path)
            return respond_error(request, 500, "internal error; see the application log")
        if status >= 500:
            log.error("%s %s failed: %s", request.method, request.path, err)
        return respond_error(request, status, _message(err), getattr(err, "errors", None))


@web.middleware
async def api_guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """State-changing API calls take only JSON bodies and a same-origin Origin when sent.

    A cross-site page cannot send `application/json` without a CORS preflight, which
    this server never approves, so a foreign page cannot drive the API.
    """
    if request.path.startswith("/api/") and request.method not in ("GET", "HEAD", "OPTIONS"):
        refusal = origin_refusal(request)
        if refusal is not None:
            return respond_error(request, 403, refusal)
        if request.method in ("POST", "PUT") and request.content_type != "application/json":
            return respond_error(request, 415, "send the body as application/json")
    return await handler(request)

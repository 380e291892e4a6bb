"""Domain errors mapped to HTTP in one place: JSON for the API, plain pages elsewhere."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from events.store import ConcurrencyError, StoreClosed, StoreError
from models.ids import InvalidId

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BadRequest(ValueError):
    """A request's input is not valid; the message says what to fix."""


def _status_for(err: Exception) -> int | None:
    if isinstance(err, InvalidId):
        return 404
    if isinstance(err, BadRequest):
        return 400
    if isinstance(err, ConcurrencyError):
        return 409
    if isinstance(err, StoreClosed):
        return 503
    if isinstance(err, StoreError):
        return 500
    return None


def _respond(request: web.Request, status: int, message: str) -> web.Response:
    if request.path.startswith("/api/") or "application/json" in request.headers.get(
            "Accept", ""):
        return web.json_response({"error": message}, status=status)
    return web.Response(text=f"{status}: {message}\n", status=status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn domain errors and HTTP errors into clear responses; never show a traceback."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.empty_body:
            raise
        return _respond(request, exc.status, exc.reason)
    except Exception as err:
        status = _status_for(err)
        if status is None:
            log.exception("unexpected error on %s %s", request.method, request.path)
            return _respond(request, 500, "internal error; see the application log")
        if status >= 500:
            log.error("%s %s failed: %s", request.method, request.path, err)
        return _respond(request, status, str(err))

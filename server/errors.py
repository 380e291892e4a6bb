"""Domain errors mapped to HTTP in one place: JSON for the API, plain pages elsewhere."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from core.errors import Conflict, Invalid, NotFound
from engines.base import EngineError, RestoreConflict, SnapshotNotFound
from events.store import ConcurrencyError, StoreClosed, StoreError
from models.ids import InvalidId

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


def _respond(request: web.Request, status: int, message: str,
             fields: dict[str, str] | None = None) -> web.Response:
    if request.path.startswith("/api/") or "application/json" in request.headers.get(
            "Accept", ""):
        body: dict[str, object] = {"error": message}
        if fields:
            body["fields"] = fields
        return web.json_response(body, status=status)
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
        return _respond(request, status, str(err), getattr(err, "errors", None))


@web.middleware
async def api_guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """State-changing API calls take only JSON bodies and a same-origin Origin when sent.

    A cross-site page cannot send `application/json` without a CORS preflight, which
    this server never approves, so a foreign page cannot drive the API.
    """
    if request.path.startswith("/api/") and request.method not in ("GET", "HEAD", "OPTIONS"):
        origin = request.headers.get("Origin")
        if origin is not None and origin != f"{request.scheme}://{request.host}":
            return _respond(request, 403, f"cross-origin request from {origin[:100]} refused")
        if request.method in ("POST", "PUT") and request.content_type != "application/json":
            return _respond(request, 415, "send the body as application/json")
    return await handler(request)

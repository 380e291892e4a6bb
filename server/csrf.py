"""CSRF protection for forms and htmx requests: a token and a same-origin check.

The token is derived from a secret kept in the data directory (mode 0600), so a page
rendered before a restart still posts after it. A cross-site page can neither read the
token nor send a matching Origin, so it cannot drive the server through a form.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

from aiohttp import web

from models.atomic import write_atomic
from server.errors import Handler, respond_error
from server.keys import CSRF_TOKEN
from server.origin import origin_refusal

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
SECRET_FILE = "secret.key"


def load_secret(data_dir: Path) -> bytes:
    """Read the data directory's secret, creating it (0600, atomically) the first time."""
    path = data_dir / SECRET_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    write_atomic(path, secrets.token_hex(32).encode(), mode=0o600)
    return bytes.fromhex(path.read_text().strip())


def csrf_token(secret: bytes) -> str:
    """The token forms and htmx requests must send back."""
    return hmac.new(secret, b"backup-manager csrf v1", hashlib.sha256).hexdigest()


def session_key(secret: bytes) -> str:
    """The key session cookies are signed with (never shown in a page, unlike the token)."""
    return hmac.new(secret, b"backup-manager session v1", hashlib.sha256).hexdigest()


@web.middleware
async def csrf_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse a form or htmx post without the CSRF token or from another origin."""
    if request.method in SAFE_METHODS or request.path.startswith("/api/"):
        return await handler(request)
    refusal = origin_refusal(request, referer_too=True)
    if refusal is not None:
        return respond_error(request, 403, refusal)
    sent = request.headers.get("X-CSRF-Token")
    if sent is None and request.content_type in ("application/x-www-form-urlencoded",
                                                 "multipart/form-data"):
        field = (await request.post()).get("_csrf")
        sent = field if isinstance(field, str) else None
    if sent is None or not hmac.compare_digest(sent, request.app[CSRF_TOKEN]):
        return respond_error(request, 403, "the form's security token is missing or stale; "
                                           "reload the page and try again")
    return await handler(request)

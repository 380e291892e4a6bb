"""Sign-in with an access token, needed when the server is reachable beyond loopback.

The token lives in the data directory (`access-token`, mode 0600), made by
`backup-manager token`. With it set, every page, the API and the WebSocket need either
a session cookie from /login or `Authorization: Bearer <token>`. A loopback-only server
without a token needs neither: only this machine can reach it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from pathlib import Path

import aiohttp_jinja2
from aiohttp import web

from models.atomic import write_atomic
from server.errors import Handler, respond_error, wants_json
from server.keys import AUTH_TOKEN, SESSION_KEY
from server.origin import own_origin
from server.page_support import redirect, safe_next

TOKEN_FILE = "access-token"
SESSION_COOKIE = "bm_session"
MACHINE_PATHS = frozenset({"/ws", "/metrics"})
# Set by reverse proxies (nginx, Caddy, Traefik, Apache) on what they forward.
PROXY_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Forwarded-Proto", "X-Real-IP")
SESSION_SECONDS = 30 * 24 * 3600
OPEN_PATHS = ("/login", "/healthz")  # and /static/: the login page needs its CSS
FAILED_SIGN_IN_DELAY = 1.0  # seconds: slows guessing without blocking anyone else


def token_path(data_dir: Path) -> Path:
    """Where the access token is kept."""
    return data_dir / TOKEN_FILE


def read_token(data_dir: Path) -> str | None:
    """The access token, or None when none was set."""
    try:
        token = token_path(data_dir).read_text().strip()
    except FileNotFoundError:
        return None
    return token or None


def create_token(data_dir: Path, rotate: bool = False) -> tuple[str, bool]:
    """Make the access token (0600, written atomically) unless one exists; (token, made)."""
    existing = None if rotate else read_token(data_dir)
    if existing is not None:
        return existing, False
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    write_atomic(token_path(data_dir), f"{token}\n".encode(), mode=0o600)
    return token, True


def _signature(secret: str, token: str, expires: int) -> str:
    # Bound to the token: making a new token signs every old session out.
    key = hashlib.sha256(f"{secret}|{token}".encode()).digest()
    return hmac.new(key, f"session|{expires}".encode(), hashlib.sha256).hexdigest()


def session_value(secret: str, token: str, now: float | None = None) -> str:
    """A session cookie value that expires after SESSION_SECONDS."""
    expires = int((now or time.time()) + SESSION_SECONDS)
    return f"{expires}.{_signature(secret, token, expires)}"


def session_valid(secret: str, token: str, value: str | None) -> bool:
    """Whether a session cookie was made by this server for this token and is current."""
    if not value or "." not in value:
        return False
    raw_expires, signature = value.split(".", 1)
    if not raw_expires.isascii() or not raw_expires.isdigit() or \
            int(raw_expires) < time.time():
        return False
    return hmac.compare_digest(signature, _signature(secret, token, int(raw_expires)))


def signed_in(request: web.Request) -> bool:
    """Whether the request carries a valid session or the bearer token."""
    token = request.app[AUTH_TOKEN]
    if token is None:
        return True
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer ") and hmac.compare_digest(header[7:].strip(), token):
        return True
    return session_valid(request.app[SESSION_KEY], token, request.cookies.get(SESSION_COOKIE))


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """With an access token set, refuse whoever has not signed in."""
    if request.app[AUTH_TOKEN] is None and request.path not in OPEN_PATHS \
            and any(h in request.headers for h in PROXY_HEADERS):
        # A loopback server needs no sign-in because only this machine reaches it; a
        # reverse proxy in front of it lets the network in, so without a token it
        # answers nothing but the way to make one.
        return respond_error(request, 403, (
            "this request came through a proxy, which makes the server reachable from "
            "other machines, and no access token is set. On the server run "
            "`backup-manager token --data DIR` (or --config FILE), restart it, and sign "
            "in with the token."))
    if request.app[AUTH_TOKEN] is None or request.path in OPEN_PATHS \
            or request.path.startswith("/static/") or signed_in(request):
        return await handler(request)
    # Machines (scripts, WebSocket clients, a Prometheus scraper) get a 401 they can
    # read, not a sign-in page to follow.
    if wants_json(request) or request.path in MACHINE_PATHS:
        response = respond_error(request, 401, "sign in first: send the header "
                                               "'Authorization: Bearer <access token>'")
        response.headers["WWW-Authenticate"] = 'Bearer realm="backup-manager"'
        return response
    return redirect(f"/login?next={request.path_qs}" if request.method == "GET" else "/login")


async def login_page(request: web.Request) -> web.StreamResponse:
    """The sign-in form."""
    if request.app[AUTH_TOKEN] is None:
        raise web.HTTPSeeOther("/dashboard")
    return aiohttp_jinja2.render_template("login.html", request, {
        "next": safe_next(request, request.query.get("next"), "/dashboard"), "error": None})


async def login(request: web.Request) -> web.StreamResponse:
    """Check the access token; on success set the session cookie and go on."""
    token = request.app[AUTH_TOKEN]
    form = await request.post()
    back = safe_next(request, form.get("next"), "/dashboard")
    sent = form.get("token")
    if token is None or not isinstance(sent, str) or \
            not hmac.compare_digest(sent.strip().encode(), token.encode()):
        await asyncio.sleep(FAILED_SIGN_IN_DELAY)
        return aiohttp_jinja2.render_template(
            "login.html", request, {"next": back, "error": "That is not the access token."},
            status=401)
    response = redirect(back)
    response.set_cookie(SESSION_COOKIE, session_value(request.app[SESSION_KEY], token),
                        max_age=SESSION_SECONDS, path="/", httponly=True, samesite="Strict",
                        secure=own_origin(request).startswith("https:"))
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    """Forget this browser's session."""
    response = redirect("/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


def setup_auth_routes(app: web.Application) -> None:
    """Declare the sign-in routes."""
    app.router.add_get("/login", login_page, name="login")
    app.router.add_post("/login", login, name="login-post")
    app.router.add_post("/logout", logout, name="logout")

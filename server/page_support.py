"""What every page shares: its context (navigation, theme, flash), rendering, redirects."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote

import aiohttp_jinja2
from aiohttp import web

from core import paging
from core.queries import parse_time
from events.types import topic_map
from models.runs import INTERRUPT_REASONS
from models.settings import THEMES
from server.errors import Handler
from server.keys import ASSETS, AUTH_TOKEN, CSRF_TOKEN, STATE, STORE

NAV = (("dashboard", "Dashboard"), ("jobs", "Jobs"), ("settings", "Settings"), ("logs", "Logs"))
THEME_COOKIE = "bm_theme"
FLASH_COOKIE = "bm_flash"
FLASH_KINDS = ("ok", "error", "warn")
YEAR = 365 * 24 * 3600
BANNER_RUNS = 5  # interrupted runs the banner names (the others are counted)
SAFE_PATH = re.compile(r"/(?![/\\])[\x21-\x5b\x5d-\x7e]*")  # one leading slash, no backslash
# Which page topics each event type refreshes, for web/static/app.js (from the classes).
EVENT_TOPICS = json.dumps(topic_map(), separators=(",", ":"), sort_keys=True)


def theme_of(request: web.Request) -> str:
    """The theme this browser chose (cookie), else the theme setting."""
    chosen = request.cookies.get(THEME_COOKIE)
    if chosen in THEMES:
        return chosen
    setting = request.app[STATE].settings.get("theme")
    return setting if setting in THEMES else "system"


def _flash(request: web.Request) -> dict[str, str] | None:
    raw = request.cookies.get(FLASH_COOKIE)
    if not raw:
        return None
    kind, _, text = unquote(raw).partition(":")
    return {"kind": kind, "text": text[:500]} if kind in FLASH_KINDS and text else None


def _here(request: web.Request) -> str:
    """This page's path and query without `fragment`: where a form on it comes back to."""
    query = request.rel_url.query.copy()
    query.popall("fragment", None)
    return str(request.rel_url.with_query(query))


async def page_context(request: web.Request) -> dict[str, Any]:
    """Context every template gets: navigation, theme, CSRF token, flash, recovery banner."""
    state = request.app[STATE]
    theme = theme_of(request)
    route = request.match_info.route
    section = (route.name or "").split("-")[0] if route is not None else ""
    section = {"job": "jobs", "logs": "logs"}.get(section, section)
    here = _here(request)
    # The banner names the first few; the rest are counted and listed on /runs.
    waiting = paging.active_runs(state, ("interrupted",), None, BANNER_RUNS)
    interrupted = waiting.items
    return {
        "nav": NAV,
        "section": section,
        "theme": theme,
        "theme_class": "" if theme == "system" else theme,
        "next_theme": THEMES[(THEMES.index(theme) + 1) % len(THEMES)],
        "csrf_token": request.app[CSRF_TOKEN],
        "flash": _flash(request),
        "last_seq": request.app[STORE].last_seq,
        "event_topics": EVENT_TOPICS,
        "interrupted": interrupted,
        "interrupted_total": waiting.total,
        "interrupt_reasons": INTERRUPT_REASONS,
        "job_names": {r.job_id: state.jobs[r.job_id].spec.get("name", r.job_id)
                      for r in interrupted},
        "static_url": request.app[ASSETS].url,
        "auth_on": request.app[AUTH_TOKEN] is not None,
        "here": here,
        "fragment_url": lambda name: f"{here}{'&' if '?' in here else '?'}fragment={name}",
    }


def url_of(request: web.Request, name: str, **parts: str) -> str:
    """The URL of a named route."""
    return str(request.app.router[name].url_for(**parts))


async def form_of(request: web.Request) -> Mapping[str, Any]:
    """The posted form of a request."""
    return await request.post()


def render(request: web.Request, template: str, context: Mapping[str, Any],
           fragments: Mapping[str, str] | None = None, status: int = 200) -> web.Response:
    """Render a page, or just one of its fragments when `?fragment=` names one."""
    fragment = request.query.get("fragment")
    if fragment is not None:
        known = {"recovery": "partials/recovery_banner.html", **(fragments or {})}
        if fragment not in known:
            raise web.HTTPNotFound(reason=f"this page has no fragment {fragment[:40]!r}")
        template = known[fragment]
    return aiohttp_jinja2.render_template(template, request, dict(context), status=status)


def safe_next(request: web.Request, raw: Any, default: str) -> str:
    """A same-site path to go back to after a form (never another site)."""
    # Printable ASCII only: browsers drop tabs and newlines from URLs ("/\t/evil" would
    # become "//evil"), and control characters cannot go in a Location header at all.
    if isinstance(raw, str) and len(raw) < 2000 and SAFE_PATH.fullmatch(raw):
        return raw
    return default


def redirect(location: str, flash: tuple[str, str] | None = None) -> web.Response:
    """A 303 back to a page, with a one-time message for it to show."""
    response = web.Response(status=303, headers={"Location": location})
    if flash is not None:
        kind, text = flash
        response.set_cookie(FLASH_COOKIE, quote(f"{kind}:{text[:500]}"), max_age=60,
                            path="/", httponly=True, samesite="Strict")
    return response


@web.middleware
async def page_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """HTML is never cached, is gzipped when accepted, and a shown flash is cleared."""
    response = await handler(request)
    if not isinstance(response, web.Response) or response.content_type != "text/html":
        return response
    response.headers["Cache-Control"] = "no-store"
    response.headers.setdefault("Vary", "Accept-Encoding")
    if FLASH_COOKIE in request.cookies and response.status < 300 \
            and "fragment" not in request.query:
        response.del_cookie(FLASH_COOKIE, path="/")
    if "gzip" in request.headers.get("Accept-Encoding", "") and response.body is not None \
            and len(response.text or "") > 1024:
        response.enable_compression(web.ContentCoding.gzip)
    return response


# --- template filters ---------------------------------------------------------------

def when(value: str | datetime | None) -> str:
    """A time as people read it: 'Nov 24 05:12' (UTC), with the year when not this one."""
    if value is None:
        return "—"
    moment = parse_time(value) if isinstance(value, str) else value
    now = datetime.now(UTC)
    fmt = "%b %d %H:%M" if moment.year == now.year else "%Y-%m-%d %H:%M"
    return moment.astimezone(UTC).strftime(fmt)


def ago(value: str | datetime | None) -> str:
    """How long ago (or from now) a time is: '3 min ago', 'in 2 h'."""
    if value is None:
        return "never"
    moment = parse_time(value) if isinstance(value, str) else value
    seconds = (datetime.now(UTC) - moment).total_seconds()
    text = duration(abs(seconds), coarse=True)
    if abs(seconds) < 45:
        return "just now" if seconds >= 0 else "in under a minute"
    return f"{text} ago" if seconds >= 0 else f"in {text}"


def duration(seconds: float | None, coarse: bool = False) -> str:
    """Seconds as '1 h 5 min', '42 s'."""
    if seconds is None or math.isnan(seconds):
        return "—"
    seconds = max(0, int(seconds))
    if coarse:  # one unit, rounded: "in 6 h" for 5 h 59 min, not "in 5 h"
        for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
            if seconds >= size * (2 if unit == "days" else 1) - size // 120:
                return f"{round(seconds / size)} {unit}"
        return f"{seconds} s"
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min" if not secs else f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h" if not minutes else f"{hours} h {minutes} min"
    return f"{hours // 24} days"


def filesize(value: float | None) -> str:
    """Bytes as '1.2 MB' (powers of 1000, like the tools people compare with)."""
    if value is None:
        return "—"
    size = float(value)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(size) < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def percent(done: float | None, total: float | None) -> float:
    """How far done is towards total, 0 to 100."""
    if not total or done is None:
        return 0.0
    return max(0.0, min(100.0, 100.0 * done / total))


FILTERS = {"when": when, "ago": ago, "duration": duration, "filesize": filesize,
           "percent": percent}


def setup_templates(app: web.Application, templates_dir: Any) -> None:
    """Jinja2 with autoescape and the filters the templates use."""
    import jinja2  # local: only the app factory needs it

    env = aiohttp_jinja2.setup(
        app, loader=jinja2.FileSystemLoader(templates_dir), autoescape=True,
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(FILTERS)

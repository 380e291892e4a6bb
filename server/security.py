"""Protections every request passes: a Host allow-list and the security headers.

The server can read any file it is pointed at and write anywhere, so a web page open in
the same browser must not reach it. DNS rebinding makes a foreign page same-origin with
the server, so the Host header is checked against the names this server answers to.
"""

from __future__ import annotations

import functools
import ipaddress
import re

from aiohttp import web

from server.errors import Handler, respond_error
from server.keys import CONFIG

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
# Scripts only from this server (no inline script: htmx is configured by a meta tag);
# inline styles are allowed for the width of progress bars. No framing anywhere.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; "
                           "style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                           "connect-src 'self'; object-src 'none'; base-uri 'none'; "
                           "form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def host_name(host_header: str) -> str:
    """The name in a Host header, without port or IPv6 brackets, lower-cased."""
    host = host_header.strip().lower()
    if host.startswith("["):
        # "[::1]" or "[::1]:8080" only; anything after the bracket but a port is refused.
        match = re.fullmatch(r"\[([0-9a-f:.]+)\](?::[0-9]{1,5})?", host)
        return match.group(1) if match else host
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def is_loopback(host: str) -> bool:
    """Whether an address or name to bind to is this machine only."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@functools.cache  # the same two arguments on every request
def allowed_hosts(bind_host: str, extra: tuple[str, ...]) -> frozenset[str]:
    """The Host names this server answers to: loopback, the bound address, the extra ones."""
    names = set(LOOPBACK_NAMES) | {host_name(h) for h in extra if h}
    if bind_host not in ("0.0.0.0", "::", ""):
        names.add(host_name(bind_host) if ":" not in bind_host else bind_host.lower())
    return frozenset(names)


@web.middleware
async def host_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer only to the Host names on the allow-list (421 otherwise)."""
    config = request.app[CONFIG]
    name = host_name(request.host or "")
    if name not in allowed_hosts(config.host, config.allowed_hosts) and \
            not (name and is_loopback(name)):
        # Misdirected Request: this server is not the one that name points to.
        return respond_error(request, 421, f"this server does not answer to the host name "
                                           f"{name[:100]!r}; add it with --allowed-host")
    return await handler(request)


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Send the security headers on every response, static files and errors included."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


"""Which origin a request comes from, compared with this server's own.

One check for every way a foreign page could drive the server: forms and htmx posts
(server/csrf.py), JSON API writes (server/errors.py) and the WebSocket handshake
(server/ws.py). It depends on nothing else of the server, so any module may use it.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from aiohttp import web


def own_origin(request: web.Request) -> str:
    """This server's origin as the browser sees it (https behind a TLS proxy)."""
    scheme = request.headers.get("X-Forwarded-Proto", request.scheme).split(",")[0].strip()
    return f"{scheme}://{request.host}"


def origin_refusal(request: web.Request, referer_too: bool = False) -> str | None:
    """Why the request comes from another origin, or None when it is this server's own.

    The Origin header decides when sent. Without it, and with `referer_too` (forms,
    which older browsers post without Origin), the Referer's origin decides. A request
    with neither is not a browser's cross-site request, so it passes.
    """
    sent = request.headers.get("Origin")
    origin = sent
    if sent is None and referer_too:
        sent = request.headers.get("Referer")
        if sent is not None:
            parts = urlsplit(sent)
            origin = f"{parts.scheme}://{parts.netloc}"
    if sent is None or origin == own_origin(request):
        return None
    return f"cross-origin request from {sent[:100]} refused"

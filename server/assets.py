"""Static files: loaded once, served from memory with a content hash in the URL.

A URL that carries the file's hash can be cached for a year: a new build makes a new
URL. Each file is gzipped once at start, not on every request.
"""

from __future__ import annotations

import gzip
import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

IMMUTABLE = "public, max-age=31536000, immutable"
# A stale URL (a page rendered before an upgrade) still gets the file, but only briefly cached.
SHORT = "public, max-age=60"
COMPRESSIBLE = (".css", ".js", ".svg", ".json", ".txt", ".map")


@dataclass(frozen=True)
class Asset:
    """One static file, its hash and its gzipped body."""

    name: str
    body: bytes
    gzipped: bytes | None
    digest: str
    content_type: str


class StaticAssets:
    """Every file under web/static, keyed by name, with hashed URLs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.assets: dict[str, Asset] = {}

    def load(self) -> None:
        """Read, hash and gzip every file (blocking: call it off the event loop)."""
        assets = {}
        for path in sorted(self.root.rglob("*")):
            if not path.is_file() or path.name.startswith("."):
                continue
            name = path.relative_to(self.root).as_posix()
            body = path.read_bytes()
            packed = gzip.compress(body, 9, mtime=0) if name.endswith(COMPRESSIBLE) else None
            ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
            if ctype.startswith("text/") or ctype in ("application/javascript", "image/svg+xml"):
                ctype += "; charset=utf-8"
            assets[name] = Asset(name, body, packed if packed and len(packed) < len(body)
                                 else None, hashlib.sha256(body).hexdigest()[:12], ctype)
        self.assets = assets

    def url(self, name: str) -> str:
        """The cache-busting URL of a static file."""
        asset = self.assets.get(name)
        if asset is None:
            raise KeyError(f"no static file {name!r} in {self.root}")
        return f"/static/{asset.digest}/{name}"

    async def serve(self, request: web.Request) -> web.Response:
        """Serve /static/{digest}/{name} from memory, gzipped when the client accepts it."""
        asset = self.assets.get(request.match_info["name"])
        if asset is None:
            raise web.HTTPNotFound(reason="no such static file")
        current = request.match_info["digest"] == asset.digest
        etag = f'"{asset.digest}"'
        headers = {"Cache-Control": IMMUTABLE if current else SHORT, "ETag": etag,
                   "Vary": "Accept-Encoding", "X-Content-Type-Options": "nosniff"}
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=headers)
        body = asset.body
        if asset.gzipped is not None and "gzip" in request.headers.get("Accept-Encoding", ""):
            body = asset.gzipped
            headers["Content-Encoding"] = "gzip"
        return _response(body, asset, headers)


def _response(body: bytes, asset: Asset, headers: dict[str, str]) -> web.Response:
    resp = web.Response(body=body, headers=headers)
    resp.headers["Content-Type"] = asset.content_type
    return resp

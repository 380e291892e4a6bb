"""Cursor paging for the API's lists: `?limit=` and an opaque `?cursor=`, `next` in the answer.

A cursor is the key the list continues after (core/paging.py), tagged with the list it
belongs to and base64url-encoded: clients pass it back as they got it, never build one.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from aiohttp import web

from core.paging import Page
from server.errors import BadRequest

MAX_CURSOR = 400  # characters; a key is an id or two numbers


def limit_of(request: web.Request, default: int, most: int) -> int:
    """The `limit` asked for: a whole number from 1 to `most` (`default` when absent)."""
    raw = request.query.get("limit")
    if raw is None or raw == "":
        return default
    if not re.fullmatch(r"[0-9]{1,6}", raw) or not 1 <= int(raw) <= most:
        raise BadRequest(f"limit must be a whole number from 1 to {most}")
    return int(raw)


def encode(kind: str, key: str) -> str:
    """An opaque cursor for `key` in the list `kind`."""
    return base64.urlsafe_b64encode(f"{kind}:{key}".encode()).decode().rstrip("=")


def cursor_of(request: web.Request, kind: str) -> str | None:
    """The key the `cursor` parameter names in the list `kind` (None: from the start)."""
    raw = request.query.get("cursor")
    if raw is None or raw == "":
        return None
    try:
        if len(raw) > MAX_CURSOR or not re.fullmatch(r"[A-Za-z0-9_-]+", raw):
            raise ValueError(raw)
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError) as err:
        raise BadRequest("cursor is not one this list gave (pass `next_cursor` back as "
                         "it came)") from err
    tag, sep, key = text.partition(":")
    if not sep or tag != kind:
        raise BadRequest(f"cursor is not one this list gave (it belongs to {tag[:20]!r})")
    return key


def int_key(key: str | None) -> int | None:
    """A cursor key that is a position (a whole number), or BadRequest."""
    if key is None:
        return None
    if not re.fullmatch(r"[0-9]{1,12}", key):
        raise BadRequest("cursor is not one this list gave")
    return int(key)


def queue_key(key: str | None) -> tuple[int, str] | None:
    """A cursor key that is a place in the queue ("<seq>:<run id>"), or BadRequest."""
    if key is None:
        return None
    seq, _, run_id = key.partition(":")
    if not re.fullmatch(r"[0-9]{1,15}", seq) or not run_id:
        raise BadRequest("cursor is not one this list gave")
    return int(seq), run_id


def paged(request: web.Request, name: str, kind: str, page: Page[Any], items: list[Any],
          limit: int, **extra: Any) -> web.Response:
    """The JSON answer for a page: `{name: items, total, limit, next_cursor, next}`, and a
    `Link: <next>; rel="next"` header when there is more."""
    cursor = encode(kind, page.after) if page.after is not None else None
    query = {k: v for k, v in request.query.items() if k != "cursor"}
    next_url = (str(request.rel_url.with_query({**query, "limit": str(limit),
                                                "cursor": cursor}))
                if cursor is not None else None)
    response = web.json_response({name: items, **extra, "total": page.total, "limit": limit,
                                  "next_cursor": cursor, "next": next_url})
    if next_url is not None:
        response.headers["Link"] = f'<{next_url}>; rel="next"'
    return response

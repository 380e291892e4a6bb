"""The /ws endpoint: replay stored events after `since`, then tail the live log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re

from aiohttp import WSCloseCode, WSMsgType, web

from core.live import LiveSubscription
from events.notifier import Subscription
from events.store import EventStore, StoreUnavailable
from server.errors import BadRequest
from server.keys import CONFIG, LIVE, STORE, WEBSOCKETS
from server.origin import origin_refusal

log = logging.getLogger(__name__)

# 1013 "Try Again Later": the client fell too far behind and should reconnect with the
# last seq it saw; it loses nothing because the log still has every event.
CLOSE_TOO_SLOW = 1013


def parse_since(request: web.Request, default: int) -> int:
    """Read a non-negative `since` from the query string."""
    raw = request.query.get("since")
    if raw is None or raw == "":
        return default
    # ASCII digits only (int() also reads "١٢"), and no bigger than SQLite's integers.
    if not re.fullmatch(r"[0-9]{1,18}", raw):
        raise BadRequest(f"since must be a whole number of 0 or more, not {raw[:40]!r}")
    return int(raw)


async def _send_stored(ws: web.WebSocketResponse, store: EventStore, last: int,
                       upto: int | None = None) -> int:
    """Send stored events after `last` (up to `upto`) from the log; return the last seq sent."""
    async for page in store.iterate(since=last, until=upto, page=500):
        for ev in page:
            await ws.send_frame(ev.message(), WSMsgType.TEXT)
            last = ev.seq
    return last


async def _tail(ws: web.WebSocketResponse, store: EventStore, sub: Subscription,
                live: LiveSubscription, wake: asyncio.Event, last: int) -> None:
    """Send queued events in order (no gap, no duplicate), and live messages among them in
    the order they happened, until the client goes away.

    `wake` is set by both queues: one Event to wait on, no task per wait, and each
    event's message encoded once for every client (it is sent as the same bytes).
    """
    while not ws.closed:
        while not (sub.ready or live.ready):
            wake.clear()
            await wake.wait()
        # Both taken at once: a live message stamped with seq s came after event s, and
        # event s is already in hand (it was queued before the message was published).
        events, messages = sub.take(), live.take_shared()
        if sub.overflowed:
            await ws.close(code=CLOSE_TOO_SLOW,
                           message=f"client fell behind; reconnect with since={last}".encode())
            return
        if sub.closed or live.closed:
            return
        queued = iter(messages)
        pending = next(queued, None)
        for ev in events:
            while pending is not None and pending[0] < ev.seq:
                await ws.send_frame(pending[1].data(), WSMsgType.TEXT)
                pending = next(queued, None)
            if ev.seq <= last:
                continue  # already sent during the replay
            if ev.seq > last + 1:
                last = await _send_stored(ws, store, last, ev.seq - 1)
            await ws.send_frame(ev.message(), WSMsgType.TEXT)
            last = ev.seq
        while pending is not None:
            await ws.send_frame(pending[1].data(), WSMsgType.TEXT)
            pending = next(queued, None)


async def websocket(request: web.Request) -> web.WebSocketResponse:
    """Stream every stored event after `since`, then new events as they are committed."""
    store = request.app[STORE]
    # A client ahead of this log (it was restored or rebuilt) starts over from its head;
    # it lowers its own seq on the hello, and must not miss what comes next.
    since = min(parse_since(request, default=store.last_seq), store.last_seq)
    # Browsers let any page open a WebSocket to any host; only the Origin tells a page
    # of this server from a foreign one reading the whole log.
    refusal = origin_refusal(request)
    if refusal is not None:
        raise web.HTTPForbidden(reason=refusal)
    # compress=False: a deflated frame is compressed again for each client (its own zlib
    # stream); uncompressed, an event is encoded once and the same bytes go to everyone.
    ws = web.WebSocketResponse(heartbeat=30, compress=False)
    await ws.prepare(request)
    clients = request.app[WEBSOCKETS]
    clients.add(ws)
    # Subscribe before reading the log: whatever commits during the replay is queued,
    # and the seq check in _tail drops what the replay already sent.
    wake = asyncio.Event()
    sub = store.notifier.subscribe(limit=request.app[CONFIG].ws_queue_limit, wake=wake)
    # Progress and log lines: stamped with the log's head as they come, to keep their place.
    live = request.app[LIVE].subscribe(clock=lambda: store.notifier.last_seq, wake=wake)

    async def read_client() -> None:
        # Reading is what processes pings and the client's close frame.
        async for _ in ws:
            pass
        sub.close()
        live.close()

    reader = asyncio.create_task(read_client())
    try:
        await ws.send_str(json.dumps({"kind": "hello", "head": store.last_seq}))
        last = await _send_stored(ws, store, since)
        await _tail(ws, store, sub, live, wake, last)
    except ConnectionResetError:
        pass  # the client went away mid-send; it reconnects with its last seq
    except StoreUnavailable as err:
        # A damaged row met while replaying: say so to the client, not as a traceback.
        log.error("WebSocket replay stopped: %s", err)
        await ws.close(code=WSCloseCode.INTERNAL_ERROR,
                       message=b"event log damaged or unavailable; see /healthz")
    finally:
        sub.close()
        live.close()
        clients.discard(ws)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        if not ws.closed:
            await ws.close()
    return ws


async def close_websockets(app: web.Application) -> None:
    """On shutdown, close every open WebSocket with 1001 (going away)."""
    clients: set[web.WebSocketResponse] = app[WEBSOCKETS]
    for ws in list(clients):
        with contextlib.suppress(Exception):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")

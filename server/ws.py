"""The /ws endpoint: replay stored events after `since`, then tail the live log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re

from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.abc import AbstractStreamWriter

from core.live import LiveSubscription
from events.notifier import Subscription
from events.store import EventStore, StoreUnavailable
from server.errors import BadRequest
from server.keys import CONFIG, LIVE, STORE, WEBSOCKETS
from server.origin import origin_refusal
from server.wsdirect import BUFFER_LIMIT, DirectClient, fanout_for

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


class _Connection:
    """One WebSocket's ways of getting news: its own queues while its handler sends, or the
    direct fan-out while it is caught up (see server/wsdirect.py)."""

    def __init__(self, request: web.Request, ws: web.WebSocketResponse,
                 writer: AbstractStreamWriter, store: EventStore) -> None:
        self.ws, self.writer, self.store = ws, writer, store
        self.wake = asyncio.Event()
        self.transport = request.transport
        self._limit = request.app[CONFIG].ws_queue_limit
        self._live_feed = request.app[LIVE]
        self._fanout = fanout_for(store.notifier, self._live_feed)
        self.sub: Subscription
        self.live: LiveSubscription
        self._client: DirectClient | None = None
        self._back_at = 0
        self.closed = False

    def open_queues(self) -> None:
        """Queue what is committed and published from now on, both waking `wake`."""
        self.sub = self.store.notifier.subscribe(limit=self._limit, wake=self.wake)
        # Progress and log lines: stamped with the log's head as they come, to keep their
        # place among events.
        self.live = self._live_feed.subscribe(clock=lambda: self.store.notifier.last_seq,
                                              wake=self.wake)

    @property
    def ready(self) -> bool:
        """Whether the handler has something to send (or to act on) in its queues."""
        return self.sub.ready or self.live.ready

    async def _wait_for_news(self) -> None:
        if not self.ready:  # looked at just before clearing: nothing is missed
            self.wake.clear()
            await self.wake.wait()

    async def wait(self, last: int) -> int | None:
        """Wait for news, with nothing queued and every event up to `last` sent.

        When `last` is the log's head and the transport is clear, the client is handed
        to the direct fan-out until it falls behind: its last seq is returned then (its
        fresh queues hold what came after). None: look at the queues again.
        """
        ws, transport = self.ws, self.transport
        if (ws.closed or transport is None or transport.is_closing()
                or last != self.store.notifier.last_seq):
            await self._wait_for_news()
            return None
        if transport.get_write_buffer_size() > BUFFER_LIMIT:
            # Still sending what came before: once the client has read it, go direct.
            await self.writer.drain()
            if transport.get_write_buffer_size() > BUFFER_LIMIT:
                await self._wait_for_news()
            return None
        self.sub.close()  # the fan-out writes from now on, in the order things happen
        self.live.close()
        self._client = DirectClient(ws, transport, last, self._handed_back)
        self._fanout.add(self._client)
        while self._client is not None and not self.closed:
            self.wake.clear()
            await self.wake.wait()
        return None if self.closed else self._back_at

    def _handed_back(self, last: int) -> None:
        # Called in the publisher's call: queues opened here miss nothing after `last`.
        self._client, self._back_at = None, last
        self.open_queues()
        self.wake.set()

    def close(self) -> None:
        """Stop every way of getting news, and wake the handler."""
        self.closed = True
        if self._client is not None:
            self._fanout.discard(self._client)
            self._client = None
        self.sub.close()
        self.live.close()
        self.wake.set()


async def _tail(conn: _Connection, last: int) -> None:
    """Send queued events in order (no gap, no duplicate), and live messages among them in
    the order they happened, until the client goes away.

    `wake` is set by both queues: one Event to wait on, no task per wait, and each
    event's message encoded once for every client (it is sent as the same bytes). Once
    caught up, the client is handed to the direct fan-out until it falls behind.
    """
    ws, store = conn.ws, conn.store
    while not ws.closed and not conn.closed:
        while not conn.ready:
            back_at = await conn.wait(last)
            if conn.closed:
                return
            if back_at is not None:
                last = back_at  # handed back: its own queues hold what came after
        sub, live = conn.sub, conn.live
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
    writer = await ws.prepare(request)
    clients = request.app[WEBSOCKETS]
    clients.add(ws)
    # Subscribe before reading the log: whatever commits during the replay is queued,
    # and the seq check in _tail drops what the replay already sent.
    conn = _Connection(request, ws, writer, store)
    conn.open_queues()

    async def read_client() -> None:
        # Reading is what processes pings and the client's close frame.
        async for _ in ws:
            pass
        conn.close()

    reader = asyncio.create_task(read_client())
    try:
        await ws.send_str(json.dumps({"kind": "hello", "head": store.last_seq}))
        last = await _send_stored(ws, store, since)
        await _tail(conn, last)
    except ConnectionResetError:
        pass  # the client went away mid-send; it reconnects with its last seq
    except StoreUnavailable as err:
        # A damaged row met while replaying: say so to the client, not as a traceback.
        log.error("WebSocket replay stopped: %s", err)
        await ws.close(code=WSCloseCode.INTERNAL_ERROR,
                       message=b"event log damaged or unavailable; see /healthz")
    finally:
        conn.close()
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

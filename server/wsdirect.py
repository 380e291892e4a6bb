"""Direct WebSocket fan-out: what is published is written at once to every caught-up client.

A WebSocket handler that has sent everything (nothing queued, its transport not backed
up, every committed event sent) hands its client over here and sleeps. Each committed
batch and each live message is then framed once and written to every such client's
transport in the publisher's own call, in the order they happen: no task woken and no
queue per client (those cost three times the socket write itself at 500 clients).

A client whose transport backs up (it reads slower than events come) is handed back to
its handler, with fresh queues opened in that same call so nothing is missed; the handler
then applies the usual limits (a client too far behind is closed with 1013).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable, Sequence

from aiohttp import web

from core.live import LiveFeed, Published
from events.notifier import Notifier
from events.record import StoredEvent

log = logging.getLogger(__name__)

# Bytes a client's transport may hold unsent before it is handed back to its handler
# (aiohttp's own writer waits for the client past this much).
BUFFER_LIMIT = 64 * 1024


def text_frame(payload: bytes) -> bytes:
    """A final, unmasked text frame, as a server sends it (what aiohttp writes)."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 65536:
        return bytes((0x81, 126)) + size.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + size.to_bytes(8, "big") + payload


class DirectClient:
    """A client whose events are written by the fan-out; `last` is the last seq it was sent."""

    __slots__ = ("hand_back", "last", "transport", "ws")

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.Transport, last: int,
                 hand_back: Callable[[int], None]) -> None:
        self.ws = ws
        self.transport = transport
        self.last = last
        # Called (synchronously) when the fan-out gives the client back, with its last seq.
        self.hand_back = hand_back


class DirectFanout:
    """The clients written to directly, for one event log and live feed."""

    def __init__(self) -> None:
        self._clients: dict[DirectClient, None] = {}  # an ordered set

    def __len__(self) -> int:
        return len(self._clients)

    def add(self, client: DirectClient) -> None:
        """Write to this client from now on."""
        self._clients[client] = None

    def discard(self, client: DirectClient) -> None:
        """Stop writing to this client (it went away)."""
        self._clients.pop(client, None)

    def _give_back(self, client: DirectClient) -> None:
        self._clients.pop(client, None)
        client.hand_back(client.last)

    def _write(self, client: DirectClient, data: bytes, last: int) -> None:
        """Write to one client (`last`: its last seq once written); hand it back when it is
        going away or its transport holds too much."""
        transport = client.transport
        if client.ws.closed or transport.is_closing():
            self._give_back(client)
            return
        transport.write(data)
        client.last = last
        if transport.get_write_buffer_size() > BUFFER_LIMIT:
            self._give_back(client)  # written whole; its handler waits for the rest

    def on_events(self, events: Sequence[StoredEvent]) -> None:
        """Write a committed batch to every client (a notifier listener)."""
        if not self._clients or not events:
            return
        frames = [(ev.seq, text_frame(ev.message())) for ev in events]
        whole = b"".join(frame for _, frame in frames)
        first, head = frames[0][0], frames[-1][0]
        for client in list(self._clients):
            try:
                # A client is sent each seq once: all of the batch, as a rule.
                data = whole if client.last < first else b"".join(
                    frame for seq, frame in frames if seq > client.last)
                if data:
                    self._write(client, data, head)
            except Exception:  # one client's failure must not stop the others
                log.exception("WebSocket direct write failed; handing the client back")
                self._give_back(client)

    def on_live(self, message: Published) -> None:
        """Write a live message to every client (a live feed listener)."""
        if not self._clients:
            return
        frame = text_frame(message.data())
        for client in list(self._clients):
            try:
                self._write(client, frame, client.last)
            except Exception:
                log.exception("WebSocket direct write failed; handing the client back")
                self._give_back(client)


# One fan-out per event log (an app); weakly keyed so a closed app's goes with it.
_FANOUTS: weakref.WeakKeyDictionary[Notifier, DirectFanout] = weakref.WeakKeyDictionary()


def fanout_for(notifier: Notifier, live: LiveFeed) -> DirectFanout:
    """The direct fan-out of this log and live feed, listening to both from its first use."""
    fanout = _FANOUTS.get(notifier)
    if fanout is None:
        fanout = _FANOUTS[notifier] = DirectFanout()
        notifier.add_listener(fanout.on_events)
        live.add_listener(fanout.on_live, fanout.__len__)
    return fanout

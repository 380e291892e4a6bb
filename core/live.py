"""The live feed: transient messages (progress ticks, log lines) that are shown, never stored.

Committed events go through events/notifier.py, which must not lose one; these may be
lost: a subscriber that falls behind loses its oldest messages, and the publisher (the
event loop, the runner) never waits for anyone.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

Message = dict[str, Any]

log = logging.getLogger(__name__)

# How many live messages were turned into JSON (each once, however many read it).
STATS = {"encoded": 0}


class Published:
    """A published message, shared by every subscriber, encoded once when first sent."""

    __slots__ = ("_data", "message")

    def __init__(self, message: Message) -> None:
        self.message = message
        self._data: bytes | None = None

    def data(self) -> bytes:
        """The message as UTF-8 JSON, encoded on first use only."""
        if self._data is None:
            self._data = json.dumps(self.message).encode()
            STATS["encoded"] += 1
        return self._data


class LiveSubscription:
    """One subscriber's bounded queue of live messages; the oldest go first when it is full."""

    def __init__(self, feed: LiveFeed, limit: int, clock: Callable[[], int] | None,
                 wake: asyncio.Event | None = None) -> None:
        self._feed = feed
        self._clock = clock
        # Each message with the clock's reading when it came (0 without a clock).
        self._items: deque[tuple[int, Published]] = deque(maxlen=limit)
        # May be shared with the reader's other queues (see `ready`).
        self._wake = wake or asyncio.Event()
        self.dropped = 0
        self.closed = False

    def offer(self, message: Published) -> None:
        """Queue a message without waiting (dropping the oldest past the limit)."""
        if self.closed:
            return
        if len(self._items) == self._items.maxlen:
            self.dropped += 1
        self._items.append((self._clock() if self._clock else 0, message))
        self._wake.set()

    @property
    def ready(self) -> bool:
        """Whether a message is queued or the subscription is closed."""
        return bool(self._items) or self.closed

    async def wait(self) -> None:
        """Wait until a message is queued or the subscription is closed; take nothing."""
        while not self._items and not self.closed:
            self._wake.clear()
            await self._wake.wait()

    def take(self) -> list[tuple[int, Message]]:
        """Return and forget what is queued, each message with its clock reading."""
        return [(clock, item.message) for clock, item in self.take_shared()]

    def take_shared(self) -> list[tuple[int, Published]]:
        """As take, each message as published (encoded once for every reader)."""
        items = list(self._items)
        self._items.clear()
        return items

    async def get(self) -> list[Message]:
        """Wait for and return everything queued so far (empty once closed)."""
        await self.wait()
        return [message for _, message in self.take()]

    def close(self) -> None:
        """Stop receiving and wake a waiting reader."""
        self.closed = True
        self._feed.unsubscribe(self)
        self._wake.set()

    def __enter__(self) -> LiveSubscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LiveFeed:
    """Fans transient messages out to every subscriber (call it on the event loop)."""

    def __init__(self) -> None:
        self._subscriptions: set[LiveSubscription] = set()
        self._listeners: list[Callable[[Published], None]] = []
        self._audiences: list[Callable[[], int]] = []

    def add_listener(self, listener: Callable[[Published], None],
                     audience: Callable[[], int]) -> None:
        """Call `listener` with each published message, synchronously, on publish (the
        WebSocket's direct fan-out writes it to caught-up clients there and then);
        `audience` says how many readers it currently serves."""
        self._listeners.append(listener)
        self._audiences.append(audience)

    def subscribe(self, limit: int = 1000, clock: Callable[[], int] | None = None,
                  wake: asyncio.Event | None = None) -> LiveSubscription:
        """Start receiving what is published from now on.

        `clock` is read as each message comes (the WebSocket passes the log's last seq),
        so a reader can put the message back in order among committed events. `wake` is
        an Event set on news, which the reader may share with its other queues.
        """
        sub = LiveSubscription(self, limit, clock, wake)
        self._subscriptions.add(sub)
        return sub

    def unsubscribe(self, sub: LiveSubscription) -> None:
        """Stop delivering to a subscription."""
        self._subscriptions.discard(sub)

    @property
    def subscriber_count(self) -> int:
        """How many readers there are: open subscriptions, and those listeners serve."""
        return len(self._subscriptions) + sum(audience() for audience in self._audiences)

    def publish(self, message: Message) -> None:
        """Deliver a message to every listener and subscriber, never waiting."""
        if not self._subscriptions and not self._listeners:
            return
        shared = Published(message)
        # Taken before the listeners run: a subscription a listener opens (a client handed
        # back to its own queue) starts after this message, which the listener delivered.
        subscriptions = list(self._subscriptions)
        for listener in self._listeners:
            try:
                listener(shared)
            except Exception:  # a reader's bug must not stop the publisher
                log.exception("live listener %r failed", listener)
        for sub in subscriptions:
            sub.offer(shared)

    def close_all(self) -> None:
        """Close every subscription, waking their readers."""
        for sub in list(self._subscriptions):
            sub.close()

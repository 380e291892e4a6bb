"""In-process notifier: hands each committed batch to listeners and bounded subscriber queues.

It carries committed events only; progress ticks and log lines, which may be lost, go
through their own feed (core/live.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence

from events.record import StoredEvent

log = logging.getLogger(__name__)


class Subscription:
    """One subscriber's bounded queue; it overflows rather than slowing the publisher."""

    def __init__(self, notifier: Notifier, limit: int,
                 wake: asyncio.Event | None = None) -> None:
        self._notifier = notifier
        self._items: deque[StoredEvent] = deque()
        # May be shared with other queues (a WebSocket waits on its events and its live
        # messages with one Event: no task per wait); see `ready`.
        self._wake = wake or asyncio.Event()
        self.limit = limit
        self.overflowed = False
        self.closed = False

    def offer(self, items: Sequence[StoredEvent]) -> None:
        """Queue items without waiting; mark the subscription overflowed when full."""
        if self.overflowed or self.closed:
            return
        if len(self._items) + len(items) > self.limit:
            # A subscriber this far behind is told so and must catch up from the log;
            # the publisher (the single writer) never waits for it.
            self.overflowed = True
            self._items.clear()
        else:
            self._items.extend(items)
        self._wake.set()

    @property
    def ready(self) -> bool:
        """Whether something is queued, or the subscription overflowed or closed."""
        return bool(self._items) or self.overflowed or self.closed

    async def wait(self) -> None:
        """Wait until something is queued, or the subscription overflowed or closed."""
        while not self._items and not self.overflowed and not self.closed:
            self._wake.clear()
            await self._wake.wait()

    def take(self) -> list[StoredEvent]:
        """Return and forget what is queued (empty once overflowed or closed)."""
        items = list(self._items)
        self._items.clear()
        return items

    async def get(self) -> list[StoredEvent]:
        """Wait for and return everything queued so far (empty once overflowed or closed)."""
        await self.wait()
        return self.take()

    async def wait_for_news(self) -> None:
        """Wait until something was published, then forget it (for readers of the log)."""
        while not self._items and not self.overflowed and not self.closed:
            self._wake.clear()
            await self._wake.wait()
        self._items.clear()
        self.overflowed = False

    def close(self) -> None:
        """Stop receiving and wake a waiting reader."""
        self.closed = True
        self._notifier.unsubscribe(self)
        self._wake.set()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Notifier:
    """Fans committed events out to every listener and subscriber."""

    def __init__(self) -> None:
        self._subscriptions: set[Subscription] = set()
        self._listeners: list[Callable[[Sequence[StoredEvent]], None]] = []
        self.last_seq = 0

    def add_listener(self, listener: Callable[[Sequence[StoredEvent]], None]) -> None:
        """Call `listener` with each committed batch, synchronously, before any subscriber
        wakes: in-memory state is current by the time an append returns to its caller."""
        self._listeners.append(listener)

    def subscribe(self, limit: int = 10_000, wake: asyncio.Event | None = None) -> Subscription:
        """Start receiving what is committed from now on (`wake`: an Event set on news,
        shared with other queues the reader waits on)."""
        sub = Subscription(self, limit, wake)
        self._subscriptions.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop delivering to a subscription."""
        self._subscriptions.discard(sub)

    @property
    def subscriber_count(self) -> int:
        """How many subscriptions are open."""
        return len(self._subscriptions)

    def publish(self, events: Sequence[StoredEvent]) -> None:
        """Deliver committed events to every subscriber (called after the commit)."""
        if not events:
            return
        self.last_seq = events[-1].seq
        for listener in self._listeners:
            try:
                listener(events)
            except Exception:  # a reader's bug must not stop the writer
                log.exception("event listener %r failed", listener)
        for sub in list(self._subscriptions):
            sub.offer(events)

    def close_all(self) -> None:
        """Close every subscription, waking their readers."""
        for sub in list(self._subscriptions):
            sub.close()

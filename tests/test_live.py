"""The live feed: transient messages fan out, a slow subscriber loses its oldest, never blocks."""

from __future__ import annotations

import asyncio

from core.live import LiveFeed


async def test_messages_reach_every_subscriber_in_order() -> None:
    feed = LiveFeed()
    with feed.subscribe() as one, feed.subscribe() as two:
        assert feed.subscriber_count == 2
        feed.publish({"kind": "progress", "n": 1})
        feed.publish({"kind": "log", "n": 2})
        assert [m["n"] for m in await one.get()] == [1, 2]
        assert [m["n"] for m in await two.get()] == [1, 2]
    assert feed.subscriber_count == 0


async def test_a_slow_subscriber_keeps_the_newest_and_counts_what_it_lost() -> None:
    feed = LiveFeed()
    seq = 7
    with feed.subscribe(limit=3, clock=lambda: seq) as sub:
        for n in range(10):
            feed.publish({"n": n})
        assert sub.dropped == 7
        assert sub.take() == [(7, {"n": 7}), (7, {"n": 8}), (7, {"n": 9})]


async def test_close_all_wakes_a_waiting_reader() -> None:
    feed = LiveFeed()
    sub = feed.subscribe()
    reader = asyncio.create_task(sub.get())
    await asyncio.sleep(0)
    feed.close_all()
    assert await asyncio.wait_for(reader, 1) == []
    feed.publish({"n": 1})  # nobody left: nothing queued, nothing raised
    assert sub.closed and feed.subscriber_count == 0

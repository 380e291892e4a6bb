"""The live feed: transient messages fan out, a slow subscriber loses its oldest, never blocks."""

from __future__ import annotations

import asyncio
from typing import Any

from core.live import LiveFeed
from events.types import JobDisabled, JobEnabled
from server.keys import LIVE, STORE
from tests.conftest import created


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


async def test_the_websocket_sends_live_messages_in_their_place_among_events(
        app_client: Any) -> None:
    store, live = app_client.app[STORE], app_client.app[LIVE]
    async with app_client.ws_connect("/ws") as ws:
        assert (await ws.receive_json(timeout=5))["kind"] == "hello"
        for _ in range(3):
            # Published between two commits, with nothing read in between: still between.
            await store.append("docs-1", None, [created("docs-1")] if store.last_seq == 0
                               else [JobEnabled(job_id="docs-1")])
            live.publish({"kind": "progress", "run_id": "r-1", "after": store.last_seq})
        await store.append("docs-1", None, [JobDisabled(job_id="docs-1")])
        got = [await ws.receive_json(timeout=5) for _ in range(7)]
    order = [m.get("seq", m.get("after")) for m in got]
    assert order == [1, 1, 2, 2, 3, 3, 4]
    assert [m.get("kind") for m in got[1::2]] == ["progress"] * 3

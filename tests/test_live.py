"""The live feed: transient messages fan out, a slow subscriber loses its oldest, never blocks."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import aiohttp

from core.live import LiveFeed
from events.types import JobDisabled, JobEnabled, RunCheckpointed
from server.keys import LIVE, STORE
from server.wsdirect import fanout_for
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


async def _until(check: Callable[[], bool], within: float = 5.0) -> None:
    """Poll until `check` holds (nothing signals these states)."""
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


def _small_buffer_socket(addr_info: Any) -> socket.socket:
    """A client socket with a tiny receive buffer: the server's side backs up quickly."""
    family, kind, proto, _, _ = addr_info
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


async def test_caught_up_clients_are_written_directly_and_handed_back_when_behind(
        app_client: Any) -> None:
    store, live = app_client.app[STORE], app_client.app[LIVE]
    fanout = fanout_for(store.notifier, live)
    connector = aiohttp.TCPConnector(socket_factory=_small_buffer_socket)
    async with aiohttp.ClientSession(connector=connector) as session:
        fast = await app_client.ws_connect("/ws")
        slow = await session.ws_connect(app_client.make_url("/ws"))
        for ws in (fast, slow):
            assert (await ws.receive_json(timeout=5))["kind"] == "hello"
        await _until(lambda: len(fanout) == 2)  # both caught up: written to directly
        # Events and live messages reach a direct client in the order they happened.
        await store.append("blob-1", 0, [created("blob-1")])
        live.publish({"kind": "progress", "after": 1})
        assert (await fast.receive_json(timeout=5))["seq"] == 1
        assert (await fast.receive_json(timeout=5))["after"] == 1
        # The slow client reads nothing: once its transport backs up it is handed back
        # to its handler, while the fast one keeps being written to directly.
        blob = "x" * 32_000
        total = 1
        while len(fanout) == 2:
            assert total < 2_000, "the slow client was never handed back"
            total += 1
            await store.append("blob-1", None, [RunCheckpointed(
                job_id="blob-1", run_id="r-000000000001", checkpoint={"i": total, "p": blob})])
            await asyncio.sleep(0)
        assert len(fanout) == 1
        for _ in range(5):
            total += 1
            await store.append("blob-1", None, [JobEnabled(job_id="blob-1")])
        got = [m.get("seq") for m in [await fast.receive_json(timeout=5)
                                      for _ in range(total - 1)]]
        assert got == list(range(2, total + 1))
        # The slow client, reading at last, gets every event once and in order (the live
        # message in its place), and is written to directly again once caught up.
        seen = [await slow.receive_json(timeout=10) for _ in range(total + 1)]
        assert [m.get("seq", m.get("after")) for m in seen] == [1, 1, *range(2, total + 1)]
        await _until(lambda: len(fanout) == 2)
        await store.append("blob-1", None, [JobDisabled(job_id="blob-1")])
        for ws in (fast, slow):
            assert (await ws.receive_json(timeout=5))["seq"] == total + 1
        await slow.close()
        await fast.close()
    await _until(lambda: len(fanout) == 0)  # clients that went away are forgotten

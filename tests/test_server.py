"""The app through a real socket: health, events API, and the WebSocket replay-then-tail."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from aiohttp import ClientWebSocketResponse, WSMsgType, web
from aiohttp.test_utils import TestClient

from events.types import RunCheckpointed
from server.app import create_app
from server.config import Config
from server.keys import PROJECTOR, STORE
from tests.conftest import AppClient, created

Client = TestClient[web.Request, web.Application]


async def receive_seqs(ws: ClientWebSocketResponse, count: int,
                       within: float = 10.0) -> list[int]:
    """Read stored-event messages until `count` have arrived; return their seqs."""
    seqs: list[int] = []
    async with asyncio.timeout(within):
        while len(seqs) < count:
            msg = await ws.receive_json()
            if "seq" in msg:
                seqs.append(msg["seq"])
    return seqs


async def test_root_redirects_to_dashboard_and_jobs_lists_a_logged_job(app_client: Client
                                                                       ) -> None:
    store = app_client.app[STORE]
    await store.append("docs-1", 0, [created("docs-1", name="Home documents")])
    for _ in range(100):
        if app_client.app[PROJECTOR].lag == 0:
            break
        await asyncio.sleep(0.01)
    resp = await app_client.get("/", allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "/dashboard"
    page = await (await app_client.get("/dashboard")).text()
    assert re.search(r'data-stat="jobs">1<', page)
    assert "Home documents" in await (await app_client.get("/jobs")).text()


async def test_healthz_reports_positions(app_client: Client) -> None:
    store = app_client.app[STORE]
    await store.append("docs-1", 0, [created("docs-1")])
    for _ in range(100):
        body = await (await app_client.get("/healthz")).json()
        if body["projector_lag"] == 0:
            break
        await asyncio.sleep(0.01)
    assert body["status"] == "ok"
    assert body["last_seq"] == 1 and body["projector_seq"] == 1


async def test_events_api_pages_and_rejects_bad_input(app_client: Client) -> None:
    store = app_client.app[STORE]
    for i in range(5):
        await store.append(f"j-{i}", 0, [created(f"j-{i}")])
    body = await (await app_client.get("/api/events?since=2&limit=2")).json()
    assert [e["seq"] for e in body["events"]] == [3, 4]
    assert body["events"][0]["type"] == "JobCreated" and body["last_seq"] == 5
    for bad in ("since=abc", "since=-4", "limit=0", "limit=100000"):
        resp = await app_client.get(f"/api/events?{bad}")
        assert resp.status == 400, bad
        assert "error" in await resp.json()


async def test_ws_replays_then_tails_with_no_gap_under_concurrent_appends(
        app_client: Client) -> None:
    store = app_client.app[STORE]
    for i in range(50):
        await store.append(f"j-{i}", 0, [created(f"j-{i}")])

    async def appender(k: int) -> None:
        for i in range(30):
            stream = f"w{k}-{i}"
            await store.append(stream, 0, [created(stream)])
            if i % 7 == 0:
                await asyncio.sleep(0)

    writers = asyncio.gather(*(appender(k) for k in range(10)))
    ws = await app_client.ws_connect("/ws?since=20")
    hello = await ws.receive_json()
    assert hello["kind"] == "hello"
    seqs = await receive_seqs(ws, 350 - 20)
    await writers
    assert seqs == list(range(21, 351))
    # Reconnecting with the last seen seq gives exactly what came after it.
    await ws.close()
    await store.append("late-1", 0, [created("late-1")])
    ws2 = await app_client.ws_connect(f"/ws?since={seqs[-1]}")
    assert await receive_seqs(ws2, 1) == [351]
    await ws2.close()


async def test_ws_without_since_tails_only_new_events(app_client: Client) -> None:
    store = app_client.app[STORE]
    await store.append("old-1", 0, [created("old-1")])
    ws = await app_client.ws_connect("/ws")
    assert (await ws.receive_json())["head"] == 1
    await store.append("new-1", 0, [created("new-1")])
    msg = await ws.receive_json(timeout=5)
    assert msg["seq"] == 2 and msg["stream"] == "new-1" and msg["data"]["job_id"] == "new-1"
    await ws.close()


async def test_ws_rejects_a_bad_since(app_client: Client) -> None:
    resp = await app_client.get("/ws?since=nope")
    assert resp.status == 400


async def test_slow_ws_client_is_closed_and_does_not_delay_others(
        aiohttp_client: AppClient, tmp_path: Path) -> None:
    config = Config(data_dir=tmp_path / "data", log_to_file=False, ws_queue_limit=50)
    client: Client = await aiohttp_client(create_app(config))
    store = client.app[STORE]
    slow = await client.ws_connect("/ws?since=0")  # never read until the end
    fast = await client.ws_connect("/ws?since=0")
    blob = "x" * 32_000
    total = 800  # ~25 MB: far more than the socket buffers between server and client

    async def produce() -> None:
        for i in range(total):
            await store.append("blob-1", None, [RunCheckpointed(
                job_id="blob-1", run_id="r-000000000001", checkpoint={"i": i, "pad": blob})])

    producer = asyncio.create_task(produce())
    assert await receive_seqs(fast, total, within=60) == list(range(1, total + 1))
    await producer
    # The slow client now reads: a gap-free prefix, then a close asking it to reconnect.
    seqs: list[int] = []
    async with asyncio.timeout(30):
        while True:
            msg = await slow.receive()
            if msg.type == WSMsgType.TEXT:
                if '"seq"' in msg.data[:20]:
                    seqs.append(int(msg.data.split(",", 1)[0].split(":")[1]))
                continue
            break
    assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING)
    assert slow.close_code == 1013
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) < total
    assert f"since={seqs[-1]}" in (msg.extra or "")
    await fast.close()


async def test_ws_client_ahead_of_the_log_still_gets_new_events(app_client: Client) -> None:
    # A browser that saw seq 500 of a log since restored to seq 1 must not miss seq 2.
    store = app_client.app[STORE]
    await store.append("docs-1", 0, [created("docs-1")])
    async with app_client.ws_connect("/ws?since=500") as ws:
        hello = await ws.receive_json(timeout=5)
        assert hello == {"kind": "hello", "head": 1}
        await store.append("docs-2", 0, [created("docs-2")])
        msg = await ws.receive_json(timeout=5)
        assert msg["seq"] == 2

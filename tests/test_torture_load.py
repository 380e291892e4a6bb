"""Load: 200 HTTP clients and 300 WebSocket clients against a real server running 4 backups.

The server is the real `backup-manager serve` in its own process. Four mirror jobs run at
once (held to ~10 s each by `bwlimit`) while 200 HTTP clients request pages and API reads
back to back and 300 WebSocket clients follow `/ws`. Afterwards: no request failed, every
run succeeded, and every WebSocket client received exactly the stored events (as
`/api/events` lists them), in order, with no gap and no duplicate. The figures are
printed in the test output.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import re
import resource
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.cli_helpers import cli, running_server

HTTP_CLIENTS = 200
WS_CLIENTS = 300
RUNS = 4
FILES_PER_SOURCE = 40
FILE_BYTES = 128 * 1024  # 5 MiB per source
BWLIMIT_KIB = 480  # KiB/s: ~10.7 s per run
RUNS_DEADLINE = 40.0  # seconds for the 4 runs to finish under load (~11 s without)
REQUEST_TIMEOUT = 15.0  # a request slower than this counts as an error
CONNECT_GATE = 50  # WebSocket handshakes in flight at once (the listen backlog is 128)
WS_RECONNECTS = 3  # a client closed with 1013 may come back this many times
SCENARIO_TIMEOUT = 70.0  # everything after the server is up
TERMINAL = {"succeeded", "failed", "cancelled", "interrupted"}
TRANSIENT_KINDS = {"hello", "progress", "log"}
PLAIN_PATHS = ("/dashboard", "/dashboard?fragment=stats", "/jobs", "/api/jobs", "/healthz",
               "/settings")


def raise_fd_limit(wanted: int) -> None:
    """Raise the soft open-files limit towards `wanted` (bounded by the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (pct from 0 to 100); NaN when there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(pct / 100 * len(ordered))) - 1]


def make_source(root: Path, seed: int) -> None:
    """A source of plain files, large enough that a bwlimit run lasts several seconds."""
    rng = random.Random(seed)
    for i in range(FILES_PER_SOURCE):
        path = root / f"d{i % 4}" / f"f{i:03d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(FILE_BYTES))


@dataclass
class HttpStats:
    """What the HTTP clients saw."""

    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    by_path: Counter[str] = field(default_factory=Counter)
    by_worker: Counter[int] = field(default_factory=Counter)
    seconds: float = 0.0


@dataclass
class WsClient:
    """One WebSocket client: every stored event it received, and what went wrong."""

    since: int
    # (seq, hash, type, event time, receive time) per stored-event message
    got: list[tuple[int, str, str, str, float]] = field(default_factory=list)
    transient: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    reconnects: int = 0
    ws: aiohttp.ClientWebSocketResponse | None = None
    closing: bool = False

    @property
    def last(self) -> int:
        """The last seq received (where a reconnect resumes from)."""
        return self.got[-1][0] if self.got else self.since


async def ws_follow(session: aiohttp.ClientSession, base: str, client: WsClient,
                    gate: asyncio.Semaphore, connected: asyncio.Event,
                    news: asyncio.Event) -> None:
    """Connect, check the hello, then record every message until told to close; on a
    1013 (too slow) close, reconnect from the last seq seen. `news` is set on every stored
    event and when the client stops."""
    try:
        await _follow(session, base, client, gate, connected, news)
    finally:
        connected.set()
        news.set()


async def _follow(session: aiohttp.ClientSession, base: str, client: WsClient,
                  gate: asyncio.Semaphore, connected: asyncio.Event,
                  news: asyncio.Event) -> None:
    while True:
        try:
            async with gate:
                ws = await session.ws_connect(f"{base}/ws?since={client.last}")
                hello = await ws.receive(timeout=REQUEST_TIMEOUT)
        except Exception as err:
            client.errors.append(f"connect: {err!r}")
            return
        client.ws = ws
        if hello.type != aiohttp.WSMsgType.TEXT or json.loads(hello.data).get("kind") != "hello":
            client.errors.append(f"expected a hello first, got {hello!r}")
        connected.set()
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                client.errors.append(f"unexpected message {msg.type!r}")
                continue
            data: str = msg.data
            now = time.time()
            if data.startswith('{"seq":'):
                ev = json.loads(data)
                client.got.append((ev["seq"], ev["hash"], ev["type"], ev["time"], now))
                news.set()
            else:
                kind = json.loads(data).get("kind")
                client.transient[str(kind)] += 1
                if kind not in TRANSIENT_KINDS:
                    client.errors.append(f"unknown message {data[:120]}")
        if client.closing:
            return
        code = ws.close_code
        if code == 1013 and client.reconnects < WS_RECONNECTS:
            client.reconnects += 1
            continue
        client.errors.append(f"closed by the server with {code} "
                             f"({ws.exception()!r}) after seq {client.last}")
        return


async def http_worker(session: aiohttp.ClientSession, base: str,
                      paths: dict[str, list[str]],
                      stats: HttpStats, stop: asyncio.Event, seed: int) -> None:
    """Request pages and API reads back to back until told to stop (each kind of
    request as often as the others)."""
    rng = random.Random(seed)
    labels = sorted(paths)
    while not stop.is_set():
        label = rng.choice(labels)
        path = rng.choice(paths[label])
        started = time.perf_counter()
        try:
            async with session.get(base + path, allow_redirects=False) as resp:
                await resp.read()
                status = resp.status
        except Exception as err:
            stats.errors.append(f"GET {path}: {err!r}")
            continue
        stats.latencies.append(time.perf_counter() - started)
        stats.by_path[label] += 1
        stats.by_worker[seed] += 1
        if not 200 <= status < 400:
            stats.errors.append(f"GET {path}: HTTP {status}")


async def api(session: aiohttp.ClientSession, method: str, url: str,
              body: dict[str, Any] | None = None, status: int = 200) -> Any:
    """One JSON API call that must answer `status`."""
    async with session.request(method, url, json=body) as resp:
        payload = await resp.json()
        assert resp.status == status, (method, url, resp.status, payload)
        return payload


async def stored_events(session: aiohttp.ClientSession, base: str, since: int
                        ) -> list[dict[str, Any]]:
    """Every stored event after `since`, paged through /api/events."""
    events: list[dict[str, Any]] = []
    while True:
        page = (await api(session, "GET", f"{base}/api/events?since={since}&limit=1000"))
        if not page["events"]:
            return events
        events += page["events"]
        since = page["events"][-1]["seq"]


async def scenario(port: int, tmp: Path) -> dict[str, Any]:
    """Set up the jobs, apply the load while the runs go, and gather what everyone saw."""
    base = f"http://127.0.0.1:{port}"
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    # limit=0: the default connector holds only 100 connections; every client here needs one.
    async with aiohttp.ClientSession(timeout=timeout) as ctl, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                  timeout=timeout) as http, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as wss:
        since = (await api(ctl, "GET", f"{base}/healthz"))["last_seq"]
        await api(ctl, "PUT", f"{base}/api/settings", {"max_concurrent_runs": RUNS})
        job_ids = []
        for i in range(RUNS):
            job = await api(ctl, "POST", f"{base}/api/jobs", {
                "name": f"Load {i}", "engine": "mirror", "sources": [str(tmp / f"src-{i}")],
                "destination": str(tmp / f"dst-{i}"), "options": {"bwlimit": BWLIMIT_KIB}},
                status=201)
            job_ids.append(job["id"])

        # 300 WebSocket clients replay the setup events, then tail the runs.
        clients = [WsClient(since) for _ in range(WS_CLIENTS)]
        gate = asyncio.Semaphore(CONNECT_GATE)
        ready = [asyncio.Event() for _ in clients]
        news = asyncio.Event()
        followers = [asyncio.create_task(ws_follow(wss, base, c, gate, r, news))
                     for c, r in zip(clients, ready, strict=True)]
        try:
            connect_started = time.perf_counter()
            async with asyncio.timeout(30):
                await asyncio.gather(*(r.wait() for r in ready))
            connect_seconds = time.perf_counter() - connect_started
            tail_from = (await api(ctl, "GET", f"{base}/healthz"))["last_seq"]
            run_ids = [(await api(ctl, "POST", f"{base}/api/jobs/{j}/start", {}, status=202)
                        )["run_id"] for j in job_ids]
            paths = {p: [p] for p in PLAIN_PATHS}
            paths["/api/events"] = [f"/api/events?since={since}&limit=100"]
            paths["/jobs/{id}"] = [f"/jobs/{j}" for j in job_ids]
            paths["/api/jobs/{id}"] = [f"/api/jobs/{j}" for j in job_ids]
            paths["/api/runs/{id}"] = [f"/api/runs/{r}" for r in run_ids]
            stats = HttpStats()
            stop = asyncio.Event()
            load_started = time.perf_counter()
            workers = [asyncio.create_task(http_worker(http, base, paths, stats, stop, i))
                       for i in range(HTTP_CLIENTS)]
            try:
                # Apply the load until every run has finished (or the deadline passes).
                runs: dict[str, dict[str, Any]] = {}
                deadline = time.monotonic() + RUNS_DEADLINE
                while time.monotonic() < deadline:
                    runs = {r: await api(ctl, "GET", f"{base}/api/runs/{r}") for r in run_ids}
                    if all(run["state"] in TERMINAL for run in runs.values()):
                        break
                    await asyncio.sleep(0.5)
            finally:
                stop.set()
                async with asyncio.timeout(REQUEST_TIMEOUT + 10):
                    await asyncio.gather(*workers, return_exceptions=True)
            stats.seconds = time.perf_counter() - load_started

            # The log after the load is the reference every WebSocket client must match.
            reference = await stored_events(ctl, base, since)
            head = reference[-1]["seq"] if reference else since
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(20):
                    while any(c.last < head and not f.done()
                              for c, f in zip(clients, followers, strict=True)):
                        news.clear()
                        await news.wait()
            health = await api(ctl, "GET", f"{base}/healthz")
        finally:
            for c in clients:
                c.closing = True
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(20):
                    await asyncio.gather(*(c.ws.close() for c in clients if c.ws is not None),
                                         return_exceptions=True)
                    await asyncio.gather(*followers, return_exceptions=True)
            for f in followers:
                f.cancel()
    return {"clients": clients, "stats": stats, "runs": runs, "reference": reference,
            "health": health, "connect_seconds": connect_seconds, "tail_from": tail_from}


def event_time(text: str) -> float:
    """A stored event's time (ISO 8601, UTC, Z) as a Unix timestamp."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_200_http_and_300_websocket_clients_during_4_backups(
        tmp_path: Path, pytestconfig: pytest.Config,
        capsys: pytest.CaptureFixture[str]) -> None:
    raise_fd_limit(4096)
    for i in range(RUNS):
        make_source(tmp_path / f"src-{i}", seed=i)
    data = tmp_path / "data"
    wall_started = time.perf_counter()
    with running_server(data) as (proc, port):
        result = asyncio.run(asyncio.wait_for(scenario(port, tmp_path), SCENARIO_TIMEOUT))
        assert proc.poll() is None, "the server exited under load"
    wall = time.perf_counter() - wall_started
    assert proc.returncode == 0, "the server did not stop cleanly on SIGTERM after the load"
    clients: list[WsClient] = result["clients"]
    stats: HttpStats = result["stats"]
    reference: list[dict[str, Any]] = result["reference"]

    # The figures first, so that a failure still shows them.
    deliveries = sum(len(c.got) for c in clients)
    times = {ev["seq"]: event_time(ev["time"]) for ev in reference}
    # Lag = receive time - the event's time, for events committed while clients tailed.
    lags = [at - times[seq] for c in clients for seq, _, _, _, at in c.got
            if seq in times and seq > result["tail_from"]]
    transient = sum((c.transient for c in clients), Counter())
    lat_ms = [s * 1000 for s in stats.latencies]
    served = len(stats.latencies)
    summary = (
        f"load: {served:,} HTTP requests served by {HTTP_CLIENTS} clients in "
        f"{stats.seconds:.1f} s ({served / stats.seconds:,.0f} req/s), "
        f"p50 {percentile(lat_ms, 50):.0f} ms, p99 {percentile(lat_ms, 99):.0f} ms, "
        f"max {max(lat_ms, default=math.nan):.0f} ms, {len(stats.errors)} errors; "
        f"{WS_CLIENTS} WebSocket clients (connected in {result['connect_seconds']:.1f} s) x "
        f"{len(reference)} events = {deliveries:,} deliveries, delivery lag "
        f"p50 {percentile(lags, 50) * 1000:.0f} ms, max {max(lags, default=math.nan) * 1000:.0f}"
        f" ms, {sum(transient.values()):,} transient messages "
        f"({', '.join(f'{k} {v:,}' for k, v in sorted(transient.items()))}), "
        f"{sum(c.reconnects for c in clients)} reconnects after 1013; "
        f"{RUNS} runs: {', '.join(r['state'] for r in result['runs'].values())}; "
        f"wall {wall:.1f} s")
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        with capsys.disabled():  # output captured during a test would be shown only on failure
            reporter.write_line("")
            reporter.write_line(summary)
    else:
        print(summary)

    # What the server logged as going wrong (shown with the first failure it explains).
    server_log = (tmp_path / f"server-{port}.log").read_text(errors="replace")
    app_log = (data / "logs" / "app.log").read_text(errors="replace")
    bad = [line for line in (server_log + app_log).splitlines()
           if re.search(r"\b(ERROR|CRITICAL)\b|Traceback|Error:", line)]
    assert not stats.errors, (f"{len(stats.errors)} HTTP errors, e.g. {stats.errors[:5]}; "
                              f"server log: {bad[:20]}")
    # Every client took part, and every kind of request was made.
    assert len(stats.by_worker) == HTTP_CLIENTS
    assert len(stats.by_path) == len(PLAIN_PATHS) + 4, stats.by_path
    assert len(result["runs"]) == RUNS
    assert all(r["state"] == "succeeded" for r in result["runs"].values()), result["runs"]
    assert result["health"]["status"] == "ok"

    # The reference itself is gap-free and covers setup and every run to its end.
    seqs = [ev["seq"] for ev in reference]
    assert seqs == list(range(clients[0].since + 1, clients[0].since + 1 + len(seqs)))
    types = Counter(ev["type"] for ev in reference)
    assert types["JobCreated"] == RUNS and types["RunStarted"] == RUNS
    assert types["RunSucceeded"] == RUNS
    want = [(ev["seq"], ev["hash"], ev["type"]) for ev in reference]
    broken = []
    for n, c in enumerate(clients):
        got = [(seq, h, t) for seq, h, t, _, _ in c.got]
        if c.errors or got != want:
            first_bad = next((i for i, (a, b) in enumerate(zip(got, want, strict=False))
                              if a != b), min(len(got), len(want)))
            broken.append(f"client {n}: {len(got)} of {len(want)} events, first difference "
                          f"at index {first_bad}, errors {c.errors[:3]}")
    assert not broken, f"{len(broken)} WebSocket clients incomplete, e.g. {broken[:5]}"

    # Nothing went wrong inside the server either, and the log's hash chain is intact.
    assert not bad, bad[:20]
    verify = cli("events", "verify", "--data", str(data))
    assert verify.returncode == 0, verify.stdout + verify.stderr

"""Lists at scale: server time and bytes of the dashboard, the jobs list and /api/jobs with
1,000 jobs and 100,000 events, 900 of whose runs wait in the queue (after a downtime every
missed schedule runs once), each against a static file of the same size served by the same
aiohttp app, interleaved (bench/compare.py).

The log is bench/page_data.py's (specs as the API takes them, runs over the last 30 days,
written through EventStore with their planned times) plus a queued run for 900 jobs. The
app folds it and serves it with the runner and the scheduler stopped, so the queue stays
as it is while pages are read. `python -m bench --only pages` runs it after the page
figures; BENCH_LISTS_GETS (10) GETs per repeat, five repeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gzip
import http.client
import logging
import queue
import statistics
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web

from bench.compare import Comparison, interleave
from bench.eventlog import TMP_ROOT, Figure, env_int
from bench.page_data import plan_log, write_log
from events.store import MAX_BATCH_CALLS, EventStore
from events.types import RunQueued
from tests.scale_helpers import scale_app

QUEUED = 900  # of 1,000 jobs (fewer jobs: nine in ten of them)
PAGES = (("dashboard", "/dashboard", "html"), ("jobs list", "/jobs", "html"),
         ("/api/jobs", "/api/jobs", "json"))
SERVER_TARGET_MS = 10.0  # issue 5: p50 under 10 ms for every page
PEER = "same-size static file"


async def build(root: Path, jobs: int, events: int, queued: int) -> Path:
    """A data directory: bench/page_data.py's log of `events - queued` events, then a queued
    run for `queued` jobs (appended as the scheduler does, a run per job)."""
    data_dir = root / "data"
    plan = await asyncio.to_thread(plan_log, root, jobs, events - queued, time.time())
    await write_log(data_dir / "events.db", plan.events)
    store = await EventStore.open(data_dir / "events.db")
    try:
        tail = [(j.job_id, RunQueued(job_id=j.job_id, run_id=f"r-z{j.index:010x}",
                                     trigger="schedule")) for j in plan.jobs[:queued]]
        for at in range(0, len(tail), MAX_BATCH_CALLS):
            await asyncio.gather(*(store.append(stream, None, [event])
                                   for stream, event in tail[at:at + MAX_BATCH_CALLS]))
    finally:
        await store.close()
    return data_dir


@contextlib.asynccontextmanager
async def serve(data_dir: Path, peer_dir: Path) -> AsyncIterator[str]:
    """The app on loopback with a route serving files of `peer_dir`; yields its base URL."""
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    app = scale_app(data_dir)  # the core folded and followed; nothing runs or fires

    async def peer(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(peer_dir / request.match_info["name"])

    app.router.add_get("/bench-peer/{name}", peer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{int(runner.addresses[0][1])}"
    finally:
        await runner.cleanup()


class Client:
    """A keep-alive HTTP/1.1 client in this thread (the server's loop runs in another)."""

    def __init__(self, base: str) -> None:
        host, port = base.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=600)

    def get(self, path: str) -> bytes:
        """GET a path (no compression), the body read; raise unless 200."""
        self.conn.request("GET", path, headers={"Accept-Encoding": "identity"})
        resp = self.conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{path}: {resp.status}")
        return body

    def median_ms(self, path: str, gets: int) -> float:
        """The median time (ms) of `gets` sequential GETs of `path`."""
        times = []
        for _ in range(gets):
            started = time.perf_counter()
            self.get(path)
            times.append((time.perf_counter() - started) * 1000)
        return statistics.median(times)


def measure(base: str, peer_dir: Path, scale: str, gets: int) -> list[Comparison | Figure]:
    """Each page against its same-size static file, and its bytes (raw and gzipped)."""
    out: list[Comparison | Figure] = []
    client = Client(base)
    for label, path, ext in PAGES:
        body = client.get(path)
        name = f"{label.strip('/').replace('/', '-').replace(' ', '-')}.{ext}"
        (peer_dir / name).write_bytes(body)
        ours, peer = interleave(functools.partial(client.median_ms, path, gets),
                                functools.partial(client.median_ms, f"/bench-peer/{name}",
                                                  gets))
        timed = Comparison(f"pages: {label} GET ({scale})", "ms", ours, peer, PEER,
                           target_value=SERVER_TARGET_MS,
                           note=f"{len(body):,} bytes; median of {gets} GETs a repeat")
        out.append(timed)
        out.append(Figure(f"pages: {label} bytes ({scale})", len(body) / 1024, "KB"))
        out.append(Figure(f"pages: {label} bytes gzipped ({scale})",
                          len(gzip.compress(body)) / 1024, "KB"))
        print("  " + timed.line() + f"; {len(body) / 1024:,.1f} KB", flush=True)
    return out


def _serve_in_thread(data_dir: Path, peer_dir: Path) -> tuple[str, Callable[[], None]]:
    """Serve on a loop of its own thread; return the base URL and a function that stops it."""
    ready: queue.Queue[str | BaseException] = queue.Queue()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def main() -> None:
        try:
            async with serve(data_dir, peer_dir) as base:
                ready.put(base)
                await stop.wait()
        except BaseException as err:
            ready.put(err)
            raise

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    got = ready.get()
    if isinstance(got, BaseException):
        raise got

    def halt() -> None:
        loop.call_soon_threadsafe(stop.set)
        thread.join()
        loop.close()

    return got, halt


async def run_page_lists() -> list[Comparison | Figure]:
    """Build the data, serve it, measure; print each line as it comes."""
    jobs = env_int("BENCH_PAGES_JOBS", 1_000)
    events = env_int("BENCH_PAGES_EVENTS", 100_000)
    gets = env_int("BENCH_LISTS_GETS", 10)
    queued = min(QUEUED, jobs * 9 // 10)
    print(f"\n== lists at scale: {jobs:,} jobs, {events:,} events, {queued} runs queued; "
          f"each page against a static file of its size, same app ==", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-lists-", dir=TMP_ROOT) as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        data_dir = await build(root, jobs, events, queued)
        peer_dir = root / "peer"
        peer_dir.mkdir()
        print(f"  data built in {time.perf_counter() - started:.1f} s", flush=True)
        base, halt = await asyncio.to_thread(_serve_in_thread, data_dir, peer_dir)
        try:
            return await asyncio.to_thread(measure, base, peer_dir,
                                           f"{jobs:,} jobs, {events:,} events, {queued} queued",
                                           gets)
        finally:
            await asyncio.to_thread(halt)

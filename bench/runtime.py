"""Job runtime benchmarks: start request -> RunStarted on a WebSocket; then, in
bench/runtime_jobs.py, start and create latency among 1,000 scheduled jobs and the drain
after downtime, each against a peer run interleaved beside it.

The app is served on 127.0.0.1 in this process, and the HTTP and WebSocket clients share
its event loop, so every figure includes the client's own work. Nothing asserts; temporary
data lives in tempfile.TemporaryDirectory under /tmp and is removed when each part ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp

from bench.compare import Comparison
from bench.eventlog import TMP_ROOT, Figure, env_int, percentile
from bench.runtime_jobs import run_jobs_comparisons
from bench.serving import call, serve

PATIENCE = 30.0  # seconds to wait for any one event, response or run before giving up
RUN_ENDS = frozenset({"RunSucceeded", "RunFailed", "RunCancelled", "RunInterrupted"})
MAX_CONCURRENT_RUNS = 32  # the highest the settings accept
FILES_PER_SOURCE = 4


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def _summary(latencies: list[float]) -> str:
    """p50, p99 and max of latencies (seconds) as milliseconds."""
    return (f"p50 {_ms(percentile(latencies, 50)):.2f} ms, "
            f"p99 {_ms(percentile(latencies, 99)):.2f} ms, "
            f"max {_ms(max(latencies, default=math.nan)):.2f} ms")


async def _set_concurrency(session: aiohttp.ClientSession) -> None:
    """Let as many runs go at once as the settings allow."""
    await call(session, "PUT", "/api/settings", {"max_concurrent_runs": MAX_CONCURRENT_RUNS},
               200)


class _Tail:
    """Stamp run events as they reach one WebSocket client; let callers wait for them."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.waiting: dict[tuple[str, str], asyncio.Future[tuple[str, float]]] = {}
        self.task = asyncio.create_task(self._read())

    def _future(self, key: tuple[str, str]) -> asyncio.Future[tuple[str, float]]:
        fut = self.waiting.get(key)
        if fut is None:
            fut = self.waiting[key] = asyncio.get_running_loop().create_future()
        return fut

    async def _read(self) -> None:
        """Take each message as it comes; stamp RunStarted and run ends by run id."""
        async for msg in self.ws:
            now = time.perf_counter()
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            message = json.loads(msg.data)
            kind = message.get("type")
            data = message.get("data")
            run_id = data.get("run_id") if isinstance(data, dict) else None
            if not isinstance(run_id, str):
                continue
            if kind == "RunStarted":
                fut = self._future(("started", run_id))
            elif kind in RUN_ENDS:
                fut = self._future(("ended", run_id))
            else:
                continue
            if not fut.done():
                fut.set_result((str(kind), now))

    async def wait(self, what: str, run_id: str, patience: float) -> tuple[str, float] | None:
        """(event type, receive time) of a run's 'started' or 'ended' event; None if late."""
        key = (what, run_id)
        try:
            return await asyncio.wait_for(self._future(key), patience)
        except TimeoutError:
            return None
        finally:
            self.waiting.pop(key, None)

    async def close(self) -> None:
        """Stop reading."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def _make_sources(root: Path, jobs: int) -> list[tuple[Path, Path]]:
    """Give each job a tiny source tree of a few files and an empty destination."""
    pairs = []
    for i in range(jobs):
        src, dest = root / "src" / f"job-{i:04d}", root / "dest" / f"job-{i:04d}"
        (src / "sub").mkdir(parents=True)
        for f in range(FILES_PER_SOURCE):
            (src / ("sub" if f % 2 else "") / f"file-{f}.txt").write_text(f"job {i} file {f}\n")
        dest.mkdir(parents=True)
        pairs.append((src, dest))
    return pairs


async def bench_start_to_event(runs: int) -> tuple[list[float], Counter[str]]:
    """Start `runs` small mirror jobs one after another; time start request -> RunStarted."""
    latencies: list[float] = []
    outcomes: Counter[str] = Counter()
    with tempfile.TemporaryDirectory(prefix="bench-runtime-", dir=TMP_ROOT) as tmp:
        root = Path(tmp)
        pairs = await asyncio.to_thread(_make_sources, root, runs)
        async with serve(root / "data", PATIENCE) as session:
            await _set_concurrency(session)
            job_ids = []
            for i, (src, dest) in enumerate(pairs):
                job = await call(session, "POST", "/api/jobs", {
                    "name": f"runtime bench {i}", "engine": "mirror", "sources": [str(src)],
                    "destination": str(dest)}, 201)
                job_ids.append(str(job["id"]))
            async with session.ws_connect("/ws") as ws:
                # The server subscribes before it sends the hello: after it, nothing is missed.
                await ws.receive_json(timeout=PATIENCE)
                tail = _Tail(ws)
                try:
                    for job_id in job_ids:
                        started = time.perf_counter()
                        run = await call(session, "POST", f"/api/jobs/{job_id}/start", {}, 202)
                        run_id = str(run["run_id"])
                        seen = await tail.wait("started", run_id, PATIENCE)
                        latencies.append(seen[1] - started if seen else math.inf)
                        # Let the run finish before the next one, so runs do not pile up.
                        ended = await tail.wait("ended", run_id, PATIENCE)
                        outcomes[ended[0] if ended else "not finished in time"] += 1
                finally:
                    await tail.close()
    return latencies, outcomes


async def run_runtime() -> list[Figure | Comparison]:
    """Run the job runtime benchmarks, print as they go; return their figures."""
    figures: list[Figure | Comparison] = []
    runs = env_int("BENCH_RUNTIME_RUNS", 50)
    print(f"\n== job start -> RunStarted on a WebSocket: {runs} small mirror jobs "
          f"({FILES_PER_SOURCE} files each), started one at a time ==")
    print("  Server, runner, HTTP client and one live-tail /ws client share this process's "
          "event loop;\n  latency = time the WebSocket client read RunStarted - time before "
          "POST /api/jobs/{id}/start.\n  Each run finishes before the next start.", flush=True)
    latencies, outcomes = await bench_start_to_event(runs)
    missing = sum(1 for lat in latencies if math.isinf(lat))
    print(f"  {len(latencies) - missing} of {runs} RunStarted events seen: {_summary(latencies)}"
          f"; runs ended: {', '.join(f'{n} {k}' for k, n in sorted(outcomes.items()))}",
          flush=True)
    name = f"start -> RunStarted on ws, {runs} runs"
    figures.append(Figure(f"{name}, p50", _ms(percentile(latencies, 50)), "ms"))
    figures.append(Figure(f"{name}, p99", _ms(percentile(latencies, 99)), "ms"))
    figures.append(Figure(f"{name}, max", _ms(max(latencies, default=math.nan)), "ms"))

    # Start and create latency among 1,000 cron jobs, and the drain after downtime, each
    # against a peer run interleaved beside it (bench/runtime_jobs.py).
    return [*figures, *await run_jobs_comparisons()]

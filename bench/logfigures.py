"""The event log's figures, each ours against a peer run interleaved with it.

- append, 1 writer: durable single-event appends against a plain SQLite commit per event
  (WAL, synchronous=FULL, same table, same payloads, same disk): what the store adds to
  the commit it cannot avoid.
- append, 100 writers: against plain SQLite committing 100 rows per transaction, the
  most that a group commit of 100 waiting writers could reach on this disk.
- replay: rebuilding the YAML projections of N events into an empty directory against
  only reading and decoding the same rows.
- ws: event-to-client p99 with 500 clients against a bare fan-out server writing the
  same frames to as many clients: what the app adds to the fan-out itself.

Knobs: BENCH_LOG_REPEATS (5), BENCH_APPEND_SECONDS (2 per sample), BENCH_REPLAY_EVENTS
(1000000; the 20 s target is for a million), BENCH_WS_CLIENTS (500), BENCH_WS_EVENTS (200),
BENCH_WS_SPACING_MS (10), BENCH_WS_PROCS (2 client processes).
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from statistics import median

from bench.compare import Comparison, interleave
from bench.eventlog import (
    TMP_ROOT,
    AppendResult,
    bench_append,
    checkpoint,
    env_float,
    env_int,
    generate_log,
    job_id,
    percentile,
    run_id,
)
from bench.wsfanout import FanoutResult, bench_fanout
from bench.wsstatic import bench_static
from events import sql
from events.audit import iter_events, open_readonly
from events.batch import canonical_text
from events.types import RunCheckpointed
from storage.replay import replay_into


def _repeats() -> int:
    return env_int("BENCH_LOG_REPEATS", 5)


# --- append ------------------------------------------------------------------------------


def plain_sqlite_rate(seconds: float, rows_per_commit: int, streams: int = 1) -> float:
    """Rows per second committed by plain sqlite3 (WAL, synchronous=FULL) on TMP_ROOT.

    Rows go round `streams` streams as our writers' do: each stream's row lands on its own
    page of the (stream, version) index, which is most of what a commit writes.
    """
    payload = canonical_text(RunCheckpointed(job_id=job_id(0), run_id=run_id(0, 1),
                                             checkpoint=checkpoint(1)).payload())
    with tempfile.TemporaryDirectory(prefix="bench-plain-", dir=TMP_ROOT) as tmp:
        conn = sqlite3.connect(Path(tmp) / "plain.db", isolation_level=None)
        try:
            for pragma in sql.PRAGMAS_WRITER:
                conn.execute(pragma)
            conn.executescript(sql.SCHEMA)
            seq = 0
            started = time.perf_counter()
            deadline = started + seconds
            while time.perf_counter() < deadline:
                rows = [(seq + i, job_id((seq + i) % streams), (seq + i - 1) // streams + 1,
                         "2026-01-01T00:00:00.000000Z", "RunCheckpointed", payload, "0" * 64)
                        for i in range(1, rows_per_commit + 1)]
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(sql.INSERT_EVENT, rows)
                conn.execute("COMMIT")
                seq += rows_per_commit
            return seq / (time.perf_counter() - started)
        finally:
            conn.close()


def append_comparisons() -> list[Comparison]:
    """1 writer against a plain commit per event; 100 writers against 100 rows a commit."""
    seconds = env_float("BENCH_APPEND_SECONDS", 2.0)
    print(f"\n== append: durable single-event appends with expected_version, {seconds:g} s "
          f"a sample, fresh log each, {_repeats()} interleaved repeats ==", flush=True)
    found: list[Comparison] = []
    for writers, rows_per_commit, peer_name, target_ratio, target in (
            (1, 1, "plain SQLite commit per event", 0.8, None),
            (100, 100, "plain SQLite, 100 rows per commit over 100 streams", None, 20_000.0)):
        results: list[AppendResult] = []

        def ours(writers: int = writers, results: list[AppendResult] = results) -> float:
            res = asyncio.run(bench_append(writers, seconds))
            results.append(res)
            return res.rate

        def peer(rows: int = rows_per_commit, streams: int = writers) -> float:
            return plain_sqlite_rate(seconds, rows, streams)

        ours_samples, peer_samples = interleave(ours, peer, _repeats())
        comparison = Comparison(
            f"append, {writers} writer{'s' if writers > 1 else ''}", "ev/s", ours_samples,
            peer_samples, peer_name, target_ratio=target_ratio, target_value=target,
            lower_is_better=False,
            note=f"{median(r.per_commit for r in results):.1f} events per commit")
        latencies = [lat for r in results for lat in r.latencies]
        print(f"  {comparison.line()}\n    {comparison.note}; append latency p50 "
              f"{percentile(latencies, 50) * 1e3:.2f} ms, p99 "
              f"{percentile(latencies, 99) * 1e3:.2f} ms", flush=True)
        found.append(comparison)
    return found


# --- replay ------------------------------------------------------------------------------


def _timed(work: Callable[[], object], cpu: list[float]) -> float:
    """Wall seconds of `work`; its CPU seconds (all threads) are appended to `cpu`."""
    started, cpu_started = time.perf_counter(), time.process_time()
    work()
    cpu.append(time.process_time() - cpu_started)
    return time.perf_counter() - started


def _read_and_decode(conn: sqlite3.Connection) -> int:
    """Read every row and decode its payload, keeping none (as a replay keeps none)."""
    count = 0
    for ev in iter_events(conn):
        if ev.payload:
            count += 1
    return count


def replay_comparisons() -> list[Comparison]:
    """Rebuild the projections of a generated log against reading and decoding its rows."""
    total = env_int("BENCH_REPLAY_EVENTS", 1_000_000)
    print(f"\n== replay: {total:,} events into an empty directory (replay_into), against "
          f"reading and decoding the same rows, {_repeats()} interleaved repeats ==",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-replay-", dir=TMP_ROOT) as tmp:
        db = Path(tmp) / "events.db"
        started = time.perf_counter()
        events, commits = asyncio.run(generate_log(db, total))
        print(f"  generated {events:,} events in {time.perf_counter() - started:.1f} s "
              f"({commits:,} commits; events.db {db.stat().st_size / 1e6:,.0f} MB)",
              flush=True)
        out = Path(tmp) / "replayed"
        # CPU seconds too (every thread of this process): on a machine shared with other
        # work, wall time mostly measures the neighbours; CPU time measures the work.
        cpu: dict[str, list[float]] = {"ours": [], "peer": []}

        def ours() -> float:
            shutil.rmtree(out, ignore_errors=True)
            conn = open_readonly(db)
            try:
                return _timed(lambda: replay_into(conn, out), cpu["ours"])
            finally:
                conn.close()

        def peer() -> float:
            conn = open_readonly(db)
            try:
                return _timed(lambda: _read_and_decode(conn), cpu["peer"])
            finally:
                conn.close()

        ours_samples, peer_samples = interleave(ours, peer, _repeats())
    peer_name = "reading and decoding the rows"
    wall = Comparison(f"replay {total:,} events", "s", ours_samples, peer_samples, peer_name,
                      target_value=20.0 if total >= 1_000_000 else None)
    cpu_time = Comparison(f"replay {total:,} events, CPU time", "s", cpu["ours"],
                          cpu["peer"], peer_name)
    print(f"  {wall.line()}\n  {cpu_time.line()}", flush=True)
    return [wall, cpu_time]


# --- WebSocket fan-out --------------------------------------------------------------------


def ws_comparisons() -> list[Comparison]:
    """Event-to-client p99 with many clients: the app against a bare fan-out server."""
    clients = env_int("BENCH_WS_CLIENTS", 500)
    events = env_int("BENCH_WS_EVENTS", 200)
    spacing = env_float("BENCH_WS_SPACING_MS", 10.0) / 1000.0
    # Two client processes: one Python process reading 500 sockets is itself slow enough
    # to show in the p99 (of both sides); two share the work on this machine's 2 cores.
    procs = env_int("BENCH_WS_PROCS", 2)
    print(f"\n== ws: {events} events {spacing * 1e3:g} ms apart to {clients} clients, commit "
          f"-> client receive p99, the app against a bare fan-out server writing the same "
          f"frames (minimal clients in {procs} other processes; same machine clock), "
          f"{_repeats()} interleaved repeats ==", flush=True)
    missing: list[int] = []

    def p99(fanout: Callable[..., Coroutine[None, None, FanoutResult]]) -> float:
        fan = asyncio.run(fanout(clients, events, spacing, "raw", procs))
        missing.append(fan.missing)
        return percentile(fan.latencies, 99) * 1e3

    ours_samples, peer_samples = interleave(lambda: p99(bench_fanout),
                                            lambda: p99(bench_static), _repeats())
    comparison = Comparison(f"ws fan-out p99, {clients} clients", "ms", ours_samples,
                            peer_samples, "a bare fan-out server", target_value=20.0,
                            note=f"{sum(missing)} deliveries missing")
    print(f"  {comparison.line()}\n    {comparison.note}", flush=True)
    return [comparison]

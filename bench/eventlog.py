"""Event log benchmarks: append throughput and latency, replay, WebSocket fan-out.

Every function here measures and returns figures; nothing asserts. Temporary data lives
in tempfile.TemporaryDirectory under /tmp and is removed when each benchmark ends.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import os
import resource
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from events.audit import open_readonly
from events.record import StoredEvent
from events.store import EventStore
from events.types import (
    Event,
    JobCreated,
    RunCheckpointed,
    RunFailed,
    RunQueued,
    RunStarted,
    RunSucceeded,
    SettingsChanged,
)
from server.app import create_app
from server.config import Config
from server.keys import STORE
from storage.replay import replay_into

TMP_ROOT = "/tmp"
REPO_ROOT = Path(__file__).resolve().parent.parent

# Replay log shape: each job is created once, then runs of
# RunQueued, RunStarted, CHECKPOINTS_PER_RUN x RunCheckpointed, RunSucceeded/RunFailed.
REPLAY_JOBS = 1_000
CHECKPOINTS_PER_RUN = 5
FAIL_EVERY = 20  # one run in this many fails instead of succeeding
GEN_CHUNK = 250  # events per append call while generating the replay log


# --- small helpers -----------------------------------------------------------------------


def env_int(name: str, default: int) -> int:
    """Read a positive whole number from the environment, else the default."""
    raw = os.environ.get(name, "").replace("_", "").replace(",", "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else default


def env_float(name: str, default: float) -> float:
    """Read a positive number from the environment, else the default."""
    try:
        value = float(os.environ.get(name, ""))
    except ValueError:
        return default
    return value if value > 0 else default


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of values (pct from 0 to 100); NaN when there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def job_id(index: int) -> str:
    """A job id (stream name) that matches models/ids.py JOB_ID_RE."""
    return f"job-{index:06d}"


def run_id(job_index: int, run_index: int) -> str:
    """A run id that matches models/ids.py RUN_ID_RE (r- and 12 hex digits)."""
    return f"r-{job_index:06x}{run_index:06x}"


def job_spec(index: int) -> dict[str, Any]:
    """A realistic job spec, as a person would create it."""
    return {
        "name": f"Nightly backup {index}",
        "engine": ("mirror", "archive", "rsync", "restic")[index % 4],
        "sources": [f"/home/user{index % 50}/documents", f"/home/user{index % 50}/photos"],
        "destination": f"/mnt/backup/job-{index:06d}",
        "include": [],
        "exclude": ["*.tmp", ".cache/"],
        "schedule": f"{index % 60} 3 * * *",
        "retention": {"keep_last": 7, "keep_daily": 14, "keep_weekly": 8, "keep_monthly": 12},
        "options": {"compression": "zstd", "one_file_system": True},
    }


def checkpoint(step: int) -> dict[str, Any]:
    """A realistic checkpoint payload (what a run needs to resume)."""
    return {"phase": "copy", "files_done": 1_000 * step, "bytes_done": 4_096_000 * step,
            "last_path": f"/home/user/documents/projects/report-{step:04d}.odt"}


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft open-files limit towards `wanted` (bounded by the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


# --- figures -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    """One result line: a value with its unit, and the target it is held against (if any)."""

    name: str
    value: float
    unit: str
    target: float | None = None
    higher_is_better: bool = True

    @staticmethod
    def _fmt(value: float, unit: str) -> str:
        if math.isnan(value):
            return "n/a"
        if math.isinf(value):
            return "never"
        if unit in ("ev/s", "events", "commits"):
            return f"{value:,.0f} {unit}" if value >= 100 or value == int(value) \
                else f"{value:,.1f} {unit}"
        if unit == "ms":
            return f"{value:,.2f} ms"
        if unit == "s":
            return f"{value:,.1f} s"
        return f"{value:,.1f} {unit}"

    @property
    def value_text(self) -> str:
        """The value with its unit."""
        return self._fmt(self.value, self.unit)

    @property
    def target_text(self) -> str:
        """The target as text ('-' when there is none)."""
        if self.target is None:
            return "-"
        sign = ">=" if self.higher_is_better else "<"
        return f"{sign} {self._fmt(self.target, self.unit)}"

    @property
    def verdict(self) -> str:
        """OK, MISS, or blank when there is no target."""
        if self.target is None:
            return ""
        if math.isnan(self.value) or math.isinf(self.value):
            return "MISS"
        met = self.value >= self.target if self.higher_is_better else self.value < self.target
        return "OK" if met else "MISS"


def format_table(figures: Sequence[Figure]) -> str:
    """Render figures as an aligned text table with targets and verdicts."""
    header = ("figure", "value", "target", "")
    rows = [header] + [(f.name, f.value_text, f.target_text, f.verdict) for f in figures]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = []
    for i, (name, value, target, verdict) in enumerate(rows):
        lines.append(f"  {name:<{widths[0]}}  {value:>{widths[1]}}  {target:<{widths[2]}}  "
                     f"{verdict}".rstrip())
        if i == 0:
            lines.append("  " + "-" * (sum(widths) + 10))
    return "\n".join(lines)


# --- 1 and 2: append throughput and single-append latency ----------------------------------


@dataclass
class AppendResult:
    """What one append-throughput configuration measured."""

    appenders: int
    events: int
    seconds: float
    commits: int
    latencies: list[float] = field(repr=False)

    @property
    def rate(self) -> float:
        """Durable events per second."""
        return self.events / self.seconds if self.seconds > 0 else math.nan

    @property
    def per_commit(self) -> float:
        """Events carried by each transaction (group commit factor)."""
        return self.events / self.commits if self.commits else math.nan


async def _appender(store: EventStore, stream: str, deadline: float,
                    latencies: list[float]) -> int:
    """Append single-event calls to one stream, tracking its version, until the deadline."""
    version = store.stream_version(stream)
    count = 0
    while time.perf_counter() < deadline:
        ev = RunCheckpointed(job_id=stream, run_id=run_id(0, 1), checkpoint=checkpoint(count))
        started = time.perf_counter()
        await store.append(stream, version, [ev])
        latencies.append(time.perf_counter() - started)
        version += 1
        count += 1
    return count


async def bench_append(appenders: int, seconds: float) -> AppendResult:
    """Run `appenders` concurrent appenders on a fresh log for `seconds`."""
    with tempfile.TemporaryDirectory(prefix="bench-append-", dir=TMP_ROOT) as tmp:
        store = await EventStore.open(Path(tmp) / "events.db")
        try:
            streams = [job_id(i) for i in range(appenders)]
            # Each stream starts with its JobCreated, as in real use (not timed).
            await asyncio.gather(*(store.append(s, 0, [JobCreated(job_id=s, spec=job_spec(i))])
                                   for i, s in enumerate(streams)))
            latencies: list[float] = []
            commits_before = store.commits
            started = time.perf_counter()
            counts = await asyncio.gather(*(_appender(store, s, started + seconds, latencies)
                                            for s in streams))
            elapsed = time.perf_counter() - started
            commits = store.commits - commits_before
        finally:
            await store.close()
    return AppendResult(appenders, sum(counts), elapsed, commits, latencies)


# --- 3: replay of a large log --------------------------------------------------------------


def job_events(job_index: int, count: int) -> Iterator[Event]:
    """Yield exactly `count` events of one job: created, then run after run."""
    jid = job_id(job_index)
    if count <= 0:
        return
    yield JobCreated(job_id=jid, spec=job_spec(job_index))
    emitted, run = 1, 0
    while True:
        run += 1
        rid = run_id(job_index, run)
        steps: list[Event] = [RunQueued(job_id=jid, run_id=rid, trigger="schedule"),
                              RunStarted(job_id=jid, run_id=rid)]
        steps += [RunCheckpointed(job_id=jid, run_id=rid, checkpoint=checkpoint(step))
                  for step in range(1, CHECKPOINTS_PER_RUN + 1)]
        if run % FAIL_EVERY == 0:
            steps.append(RunFailed(job_id=jid, run_id=rid,
                                   error="destination full: No space left on device"))
        else:
            steps.append(RunSucceeded(job_id=jid, run_id=rid,
                                      snapshot_id=f"{job_index:06d}-{run:06d}",
                                      files=12_345 + run, bytes=987_654_321 + run,
                                      duration=42.5))
        for ev in steps:
            if emitted >= count:
                return
            yield ev
            emitted += 1


async def generate_log(db_path: Path, total: int) -> tuple[int, int]:
    """Append `total` events of REPLAY_JOBS jobs through the store; return (events, commits)."""
    jobs = max(1, min(REPLAY_JOBS, total))
    settings_events = min(10, total - jobs)
    job_total = total - settings_events
    per_job, extra = divmod(job_total, jobs)
    store = await EventStore.open(db_path)
    try:
        async def feed(index: int, count: int) -> None:
            batch: list[Event] = []
            for ev in job_events(index, count):
                batch.append(ev)
                if len(batch) >= GEN_CHUNK:
                    await store.append(job_id(index), None, batch)
                    batch = []
            if batch:
                await store.append(job_id(index), None, batch)

        await asyncio.gather(*(feed(i, per_job + (1 if i < extra else 0)) for i in range(jobs)))
        for i in range(settings_events):
            await store.append("settings", None,
                               [SettingsChanged(changes={"max_concurrent_runs": 2 + i % 3})])
        return store.last_seq, store.commits
    finally:
        await store.close()


@dataclass
class ReplayResult:
    """What the replay benchmark measured."""

    events: int
    generate_seconds: float
    generate_commits: int
    db_bytes: int
    replay_seconds: float
    jobs: int
    files: int


def _replay(db_path: Path, out_dir: Path) -> tuple[float, int]:
    """Replay the whole log into out_dir; return (seconds, job documents)."""
    conn = open_readonly(db_path)
    try:
        started = time.perf_counter()
        projection = replay_into(conn, out_dir)
        return time.perf_counter() - started, len(projection.jobs)
    finally:
        conn.close()


async def bench_replay(total: int) -> ReplayResult:
    """Generate a log of `total` events, then time replay_into into an empty directory."""
    with tempfile.TemporaryDirectory(prefix="bench-replay-", dir=TMP_ROOT) as tmp:
        db_path = Path(tmp) / "events.db"
        started = time.perf_counter()
        events, commits = await generate_log(db_path, total)
        generate_seconds = time.perf_counter() - started
        db_bytes = db_path.stat().st_size
        out_dir = Path(tmp) / "replayed"
        seconds, jobs = await asyncio.to_thread(_replay, db_path, out_dir)
        files = sum(1 for p in out_dir.rglob("*.yaml"))
    return ReplayResult(events, generate_seconds, commits, db_bytes, seconds, jobs, files)


# --- 4: WebSocket fan-out ----------------------------------------------------------------


@dataclass
class FanoutResult:
    """What the WebSocket fan-out benchmark measured (latencies in seconds)."""

    clients: int
    events: int
    spacing: float
    kind: str
    procs: int
    latencies: list[float] = field(repr=False)
    last_client: list[float] = field(repr=False)  # per event: until the last client had it
    missing: int = 0


async def _aiohttp_clients(port: int, clients: int, count: int, since: int,
                           patience: float) -> list[list[tuple[int, float]]]:
    """Connect `clients` aiohttp WebSockets, say READY on stdout, record (seq, receive time)."""
    url = f"http://127.0.0.1:{port}/ws?since={since}"
    # limit=0: the default connector allows only 100 connections, and a WebSocket
    # holds its connection for its whole life.
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        gate = asyncio.Semaphore(50)  # do not overflow the listen backlog with SYNs

        async def connect() -> aiohttp.ClientWebSocketResponse:
            async with gate:
                ws = await session.ws_connect(url)
                hello = await ws.receive(timeout=patience)
                if hello.type != aiohttp.WSMsgType.TEXT or json.loads(hello.data).get(
                        "kind") != "hello":
                    raise RuntimeError(f"expected a hello message, got {hello!r}")
                return ws

        sockets = await asyncio.gather(*(connect() for _ in range(clients)))
        print("READY", flush=True)
        deadline = time.monotonic() + patience

        async def listen(ws: aiohttp.ClientWebSocketResponse) -> list[tuple[int, float]]:
            got: list[tuple[int, float]] = []
            while len(got) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    msg = await ws.receive(timeout=left)
                except TimeoutError:
                    break
                now = time.time()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                data: str = msg.data
                # Stored events start with {"seq":N, ; read N without a full JSON parse.
                if data.startswith('{"seq":'):
                    got.append((int(data[7:data.index(",", 7)]), now))
            return got

        received = await asyncio.gather(*(listen(ws) for ws in sockets))
        await asyncio.gather(*(ws.close() for ws in sockets))
    return received


class _RawClient(asyncio.Protocol):
    """A minimal WebSocket client: handshake, then parse server frames as bytes arrive.

    It stamps each TCP read once, in data_received, before any other work, so what it
    measures is when the kernel handed the frame over, not when a task got to run.
    """

    def __init__(self, host: str, path: str, count: int) -> None:
        self.request = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                        "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}"
                        "\r\n\r\n").encode()
        self.count = count
        self.buffer = bytearray()
        self.upgraded = False
        self.got: list[tuple[int, float]] = []
        loop = asyncio.get_running_loop()
        self.hello: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Send the upgrade request."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        """Stamp the read, then take every whole frame out of the buffer."""
        now = time.time()
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.buffer.startswith(b"HTTP/1.1 101"):
                self._finish(RuntimeError(bytes(self.buffer[:200]).decode(errors="replace")))
                return
            del self.buffer[:end + 4]
            self.upgraded = True
        buf = self.buffer
        while len(buf) >= 2:
            opcode, size, start = buf[0] & 0x0F, buf[1] & 0x7F, 2
            if size == 126:
                if len(buf) < 4:
                    break
                size, start = int.from_bytes(buf[2:4], "big"), 4
            elif size == 127:
                if len(buf) < 10:
                    break
                size, start = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < start + size:
                break
            payload = bytes(buf[start:start + size])
            del buf[:start + size]
            if opcode == 0x8:  # close
                self._finish(None)
            elif opcode == 0x1 and payload.startswith(b'{"seq":'):
                self.got.append((int(payload[7:payload.index(b",", 7)]), now))
                if len(self.got) >= self.count:
                    self._finish(None)
            elif opcode == 0x1 and not self.hello.done():
                self.hello.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop waiting when the server goes away."""
        self._finish(None)

    def _finish(self, err: Exception | None) -> None:
        for fut in (self.hello, self.done):
            if not fut.done():
                if err is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(err)


async def _raw_clients(port: int, clients: int, count: int, since: int,
                       patience: float) -> list[list[tuple[int, float]]]:
    """Connect `clients` minimal WebSockets, say READY on stdout, record (seq, receive time)."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(50)  # do not overflow the listen backlog with SYNs
    host = f"127.0.0.1:{port}"

    async def connect() -> _RawClient:
        async with gate:
            _, proto = await loop.create_connection(
                lambda: _RawClient(host, f"/ws?since={since}", count), "127.0.0.1", port)
            await asyncio.wait_for(proto.hello, patience)
            return proto

    protos = await asyncio.gather(*(connect() for _ in range(clients)))
    print("READY", flush=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(p.done for p in protos)), patience)
    for proto in protos:
        if proto.transport is not None:
            # A close frame (1000), masked as a client must; an all-zero mask keeps it plain.
            proto.transport.write(b"\x88\x82\x00\x00\x00\x00\x03\xe8")
            proto.transport.close()
    return [p.got for p in protos]


WS_CLIENT_KINDS = {"raw": _raw_clients, "aiohttp": _aiohttp_clients}


def ws_clients_main(argv: Sequence[str]) -> int:
    """Client process entry: KIND PORT CLIENTS COUNT SINCE PATIENCE; JSON on stdout."""
    kind = argv[0]
    port, clients, count, since = (int(a) for a in argv[1:5])
    patience = float(argv[5])
    raise_fd_limit(clients + 256)
    received = asyncio.run(WS_CLIENT_KINDS[kind](port, clients, count, since, patience))
    sys.stdout.write(json.dumps(received))
    sys.stdout.flush()
    return 0


async def bench_fanout(clients: int, count: int, spacing: float, kind: str = "raw",
                       procs: int = 1) -> FanoutResult:
    """Serve the app, connect `clients` WebSockets from `procs` other processes, append
    `count` events one at a time, and time commit -> receive."""
    raise_fd_limit(clients + 1024)
    with tempfile.TemporaryDirectory(prefix="bench-ws-", dir=TMP_ROOT) as tmp:
        app = create_app(Config(data_dir=Path(tmp) / "data", log_to_file=False,
                                log_level="WARNING"))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        children: list[asyncio.subprocess.Process] = []
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
            await site.start()
            port = int(runner.addresses[0][1])
            store = app[STORE]
            stream = job_id(1)
            await store.append(stream, 0, [JobCreated(job_id=stream, spec=job_spec(1))])
            await store.append(stream, 1, [RunQueued(job_id=stream, run_id=run_id(1, 1)),
                                           RunStarted(job_id=stream, run_id=run_id(1, 1))])

            # Commit time = the moment the writer publishes after COMMIT, taken by wrapping
            # this store's notifier instance (the time after `append` returns would be
            # later: the WebSocket tasks are woken in the same loop turn).
            commit_times: dict[int, float] = {}
            publish = store.notifier.publish

            def timed_publish(events: Sequence[StoredEvent]) -> None:
                now = time.time()
                for ev in events:
                    commit_times[ev.seq] = now
                publish(events)

            store.notifier.publish = timed_publish  # type: ignore[method-assign]
            first_seq = store.last_seq

            # Clients run in other processes so their receive work does not share the
            # server's event loop; both sides read time.time() on the same machine clock.
            patience = 30.0 + count * spacing
            shares = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
            for share in shares:
                children.append(await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "bench.eventlog", "ws-clients", kind, str(port),
                    str(share), str(count), str(first_seq), str(patience),
                    cwd=REPO_ROOT, stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE))
            for child in children:
                assert child.stdout is not None
                line = await asyncio.wait_for(child.stdout.readline(), timeout=120)
                if line.strip() != b"READY":
                    raise RuntimeError(f"WebSocket client process did not get ready: {line!r}")
            await asyncio.sleep(0.5)  # let every server-side handler settle into its tail
            version = store.stream_version(stream)
            for step in range(count):
                ev = RunCheckpointed(job_id=stream, run_id=run_id(1, 1),
                                     checkpoint=checkpoint(step))
                await store.append(stream, version, [ev])
                version += 1
                await asyncio.sleep(spacing)
            received: list[list[list[float]]] = []
            for child in children:
                out, _ = await asyncio.wait_for(child.communicate(), timeout=patience + 60)
                if child.returncode != 0:
                    raise RuntimeError(f"WebSocket client process exited {child.returncode}")
                received += json.loads(out)
        finally:
            for child in children:
                if child.returncode is None:
                    child.kill()
                    await child.wait()
            await runner.cleanup()

    latencies: list[float] = []
    slowest: dict[int, float] = {}
    reached: dict[int, int] = {}
    for client in received:
        for seq_f, at in client:
            seq = int(seq_f)
            lat = at - commit_times[seq]
            latencies.append(lat)
            slowest[seq] = max(slowest.get(seq, lat), lat)
            reached[seq] = reached.get(seq, 0) + 1
    missing = clients * count - len(latencies)
    # A delivery that never came counts as infinitely late, so it cannot flatter p99.
    latencies += [math.inf] * missing
    last_client = [slowest[seq] if reached.get(seq) == clients else math.inf
                   for seq in sorted(commit_times) if seq > first_seq]
    return FanoutResult(clients, count, spacing, kind, procs, latencies, last_client, missing)


# --- running everything --------------------------------------------------------------------


def _ms(seconds: float) -> float:
    return seconds * 1000.0


async def run(selected: Sequence[str]) -> list[Figure]:
    """Run the selected benchmarks (append, replay and chain, ws), print as they go; return
    figures."""
    figures: list[Figure] = []
    if "append" in selected:
        seconds = env_float("BENCH_APPEND_SECONDS", 3.0)
        single: AppendResult | None = None
        print(f"\n== append throughput: single-event appends with expected_version, "
              f"{seconds:g} s per configuration, fresh log each ==")
        for appenders in (1, 10, 100):
            res = await bench_append(appenders, seconds)
            print(f"  {appenders:>3} appenders: {res.events:>8,} events in {res.seconds:5.2f} s"
                  f" = {res.rate:>9,.0f} ev/s durable; {res.commits:>6,} commits, "
                  f"{res.per_commit:6.1f} events/commit; append latency "
                  f"p50 {_ms(percentile(res.latencies, 50)):.2f} ms, "
                  f"p99 {_ms(percentile(res.latencies, 99)):.2f} ms", flush=True)
            figures.append(Figure(
                f"append, {appenders} appender{'s' if appenders > 1 else ''}", res.rate,
                "ev/s", target=20_000 if appenders == 100 else None))
            if appenders == 1:
                single = res
            if appenders == 100:
                figures.append(Figure("events per commit, 100 appenders", res.per_commit,
                                      "events"))
        assert single is not None
        print(f"\n== single-append latency (the 1-appender run above: "
              f"{len(single.latencies):,} timed `await store.append` calls) ==")
        p50 = _ms(percentile(single.latencies, 50))
        p99 = _ms(percentile(single.latencies, 99))
        print(f"  p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
              f"max {_ms(max(single.latencies)):.2f} ms", flush=True)
        figures.append(Figure("append latency p50, 1 appender", p50, "ms", target=2.0,
                              higher_is_better=False))
        figures.append(Figure("append latency p99, 1 appender", p99, "ms"))

    if "replay" in selected:
        total = env_int("BENCH_REPLAY_EVENTS", 1_000_000)
        print(f"\n== replay: generate {total:,} events ({min(REPLAY_JOBS, total):,} jobs, runs "
              f"of {CHECKPOINTS_PER_RUN + 3} events), then replay_into an empty directory ==",
              flush=True)
        rep = await bench_replay(total)
        print(f"  generated {rep.events:,} events in {rep.generate_seconds:.1f} s "
              f"({rep.events / rep.generate_seconds:,.0f} ev/s, {rep.generate_commits:,} "
              f"commits; events.db {rep.db_bytes / 1e6:,.0f} MB)")
        print(f"  replayed in {rep.replay_seconds:.1f} s "
              f"({rep.events / rep.replay_seconds:,.0f} ev/s): {rep.jobs:,} jobs, "
              f"{rep.files:,} YAML files", flush=True)
        # The target (< 20 s) is for a million events; a smaller run is shown without one
        # (files are rendered and fsynced per flush, so time does not scale linearly).
        target = 20.0 if total >= 1_000_000 else None
        figures.append(Figure(f"replay {total:,} events", rep.replay_seconds, "s",
                              target=target, higher_is_better=False))
        figures.append(Figure(f"generate {total:,} events (setup)", rep.generate_seconds, "s"))

    if "chain" in selected or "replay" in selected:
        from bench.chaincheck import run_chain  # it imports this module's helpers

        figures += await run_chain()

    if "ws" in selected:
        clients = env_int("BENCH_WS_CLIENTS", 500)
        events = env_int("BENCH_WS_EVENTS", 200)
        spacing = env_float("BENCH_WS_SPACING_MS", 10.0) / 1000.0
        procs = env_int("BENCH_WS_CLIENT_PROCS", 2)
        print(f"\n== WebSocket fan-out: {clients} clients, {events} events appended one at a "
              f"time {_ms(spacing):g} ms apart ==")
        print("  The server (store, projector, /ws handlers) runs in this process's event "
              "loop, as in production;\n  clients run in other processes. Latency = client "
              "receive time - time the writer published after COMMIT\n  (same machine "
              "clock). 500 clients on this machine share its CPUs with the server, so the\n"
              "  figures are an upper bound on what the server alone adds.", flush=True)
        # Primary: minimal clients (frames parsed as bytes arrive, one process), which
        # add the least of their own work; then real aiohttp clients, for comparison.
        for kind, kind_procs, label in (
                ("raw", 1, "minimal clients (1 process)"),
                ("aiohttp", procs, f"aiohttp clients ({procs} processes)")):
            fan = await bench_fanout(clients, events, spacing, kind, kind_procs)
            lat = fan.latencies
            print(f"  {label}: {len(lat) - fan.missing:,} deliveries ({fan.missing:,} "
                  f"missing): p50 {_ms(percentile(lat, 50)):.2f} ms, "
                  f"p99 {_ms(percentile(lat, 99)):.2f} ms, "
                  f"max {_ms(max(lat, default=math.nan)):.2f} ms; until the last client had "
                  f"an event: p50 {_ms(percentile(fan.last_client, 50)):.2f} ms, "
                  f"p99 {_ms(percentile(fan.last_client, 99)):.2f} ms", flush=True)
            name = f"ws fan-out {clients} clients, {kind}"
            figures.append(Figure(f"{name}, p50", _ms(percentile(lat, 50)), "ms"))
            figures.append(Figure(f"{name}, p99", _ms(percentile(lat, 99)), "ms",
                                  target=20.0 if kind == "raw" else None,
                                  higher_is_better=False))
            figures.append(Figure(f"{name}, max", _ms(max(lat, default=math.nan)), "ms"))
            figures.append(Figure(f"{name}, missing", float(fan.missing), "events"))
    return figures


if __name__ == "__main__":
    # The WebSocket benchmark starts its client processes through this entry.
    if sys.argv[1:2] == ["ws-clients"]:
        raise SystemExit(ws_clients_main(sys.argv[2:]))
    raise SystemExit("usage: python -m bench.eventlog ws-clients KIND PORT CLIENTS EVENTS "
                     "SINCE PATIENCE (internal; run the benchmarks with `python -m bench`)")

"""WebSocket fan-out benchmark: the app served here, clients in other processes.

Latency is client receive time minus the moment the writer published the event after its
COMMIT, on the same machine clock. The client processes start through this module's
entry (`python -m bench.wsfanout ws-clients ...`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from bench.eventlog import (
    REPO_ROOT,
    TMP_ROOT,
    checkpoint,
    job_id,
    job_spec,
    raise_fd_limit,
    run_id,
)
from events.record import StoredEvent
from events.types import JobCreated, RunCheckpointed, RunQueued, RunStarted
from server.app import create_app
from server.config import Config
from server.keys import STORE

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


async def run_clients(port: int, clients: int, count: int, since: int, kind: str,
                      procs: int, patience: float,
                      drive: Callable[[], Awaitable[None]]) -> list[list[list[float]]]:
    """Connect `clients` WebSockets from `procs` other processes to the server on `port`,
    run `drive` (it sends the events) once all are connected, and return what each
    client received: [seq, receive time] pairs."""
    children: list[asyncio.subprocess.Process] = []
    try:
        # Clients run in other processes so their receive work does not share the
        # server's event loop; both sides read time.time() on the same machine clock.
        shares = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
        for share in shares:
            children.append(await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.wsfanout", "ws-clients", kind, str(port),
                str(share), str(count), str(since), str(patience),
                cwd=REPO_ROOT, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE))
        for child in children:
            assert child.stdout is not None
            line = await asyncio.wait_for(child.stdout.readline(), timeout=120)
            if line.strip() != b"READY":
                raise RuntimeError(f"WebSocket client process did not get ready: {line!r}")
        await asyncio.sleep(0.5)  # let every server-side handler settle into its tail
        await drive()
        received: list[list[list[float]]] = []
        for child in children:
            out, _ = await asyncio.wait_for(child.communicate(), timeout=patience + 60)
            if child.returncode != 0:
                raise RuntimeError(f"WebSocket client process exited {child.returncode}")
            received += json.loads(out)
        return received
    finally:
        for child in children:
            if child.returncode is None:
                child.kill()
                await child.wait()


def summarize(received: list[list[list[float]]], commit_times: dict[int, float],
              first_seq: int, clients: int, count: int, spacing: float, kind: str,
              procs: int) -> FanoutResult:
    """Latencies (receive minus commit) of every delivery; a missing one counts as late."""
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

            async def drive() -> None:
                version = store.stream_version(stream)
                for step in range(count):
                    ev = RunCheckpointed(job_id=stream, run_id=run_id(1, 1),
                                         checkpoint=checkpoint(step))
                    await store.append(stream, version, [ev])
                    version += 1
                    await asyncio.sleep(spacing)

            received = await run_clients(port, clients, count, first_seq, kind, procs,
                                         30.0 + count * spacing, drive)
        finally:
            await runner.cleanup()
    return summarize(received, commit_times, first_seq, clients, count, spacing, kind, procs)


if __name__ == "__main__":
    # The benchmark starts its client processes through this entry.
    if sys.argv[1:2] == ["ws-clients"]:
        raise SystemExit(ws_clients_main(sys.argv[2:]))
    raise SystemExit("usage: python -m bench.wsfanout ws-clients KIND PORT CLIENTS EVENTS "
                     "SINCE PATIENCE (internal; run the benchmarks with `python -m bench`)")

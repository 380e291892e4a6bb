"""The WebSocket fan-out benchmark's peer: the least a server can do for the same fan-out.

A bare asyncio server (no app, no log, no per-client task) answers the upgrade and keeps
each client's transport; for each event it writes one prebuilt frame, the same bytes the
app sends, to every transport in turn. The clients are the same minimal clients in
another process as for the app, so what is left between the two is the app's own work.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import tempfile
import time

from bench.eventlog import TMP_ROOT, checkpoint, job_id, raise_fd_limit, run_id
from bench.wsfanout import FanoutResult, run_clients, summarize
from events.record import StoredEvent
from events.types import RunCheckpointed, canonical_json
from server.wsdirect import text_frame  # the app's own framing: the same bytes

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_KEY = re.compile(rb"(?im)^sec-websocket-key:\s*(\S+)")


class _Peer(asyncio.Protocol):
    """One client connection: answer the upgrade, say hello, then only be written to."""

    def __init__(self, clients: set[asyncio.Transport]) -> None:
        self.clients = clients
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport until the upgrade request is in."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        """Answer the upgrade once its request is whole; ignore what the client sends after."""
        if self.transport is None or self.transport in self.clients:
            return
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer:
            return
        found = _KEY.search(self.buffer)
        key = found.group(1) if found else b""
        accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept
                             + b"\r\n\r\n" + text_frame(b'{"kind":"hello","head":0}'))
        self.clients.add(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the client."""
        if self.transport is not None:
            self.clients.discard(self.transport)


def _message(seq: int, step: int) -> bytes:
    """The same message the app sends for the benchmark's event at `seq`."""
    stream = job_id(1)
    payload = canonical_json(RunCheckpointed(job_id=stream, run_id=run_id(1, 1),
                                             checkpoint=checkpoint(step)).payload())
    return StoredEvent(seq, stream, seq, "2026-01-01T00:00:00.000000Z", "RunCheckpointed",
                       payload, "0" * 64).message()


async def bench_static(clients: int, count: int, spacing: float, kind: str = "raw",
                       procs: int = 1) -> FanoutResult:
    """Serve a bare fan-out, connect `clients` WebSockets as for the app, write `count`
    events one at a time, and time write -> receive."""
    raise_fd_limit(clients + 1024)
    loop = asyncio.get_running_loop()
    connected: set[asyncio.Transport] = set()
    server = await loop.create_server(lambda: _Peer(connected), "127.0.0.1", 0, backlog=1024)
    first_seq = 3  # as in the app's run: a job created, a run queued and started
    commit_times: dict[int, float] = {}

    async def drive() -> None:
        for step in range(count):
            seq = first_seq + 1 + step
            # Framed here, like the app's send path frames the encoded event.
            frame = text_frame(_message(seq, step))
            commit_times[seq] = time.time()
            for transport in list(connected):
                transport.write(frame)
            await asyncio.sleep(spacing)

    try:
        port = int(server.sockets[0].getsockname()[1])
        with tempfile.TemporaryDirectory(prefix="bench-ws-static-", dir=TMP_ROOT):
            received = await run_clients(port, clients, count, first_seq, kind, procs,
                                         30.0 + count * spacing, drive)
    finally:
        server.close()
        for transport in list(connected):
            transport.close()
        await server.wait_closed()
    return summarize(received, commit_times, first_seq, clients, count, spacing, kind, procs)

"""The server the runtime benchmarks talk to: a fresh app on a loopback port in this
process, and one JSON API call that checks the answer's status."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from server.app import create_app
from server.config import Config


@contextlib.asynccontextmanager
async def serve(data_dir: Path, patience: float) -> AsyncIterator[aiohttp.ClientSession]:
    """Serve a fresh app on a free loopback port; yield a client session bound to it."""
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    app = create_app(Config(data_dir=data_dir, log_to_file=False, log_level="WARNING"))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = int(runner.addresses[0][1])
        timeout = aiohttp.ClientTimeout(total=patience)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", timeout=timeout) as session:
            yield session
    finally:
        await runner.cleanup()


async def call(session: aiohttp.ClientSession, method: str, path: str,
               body: dict[str, Any] | None, expect: int) -> dict[str, Any]:
    """Send one API request (JSON body when given); return the JSON answer or raise."""
    async with session.request(method, path, json=body) as resp:
        answer: dict[str, Any] = await resp.json()
        if resp.status != expect:
            raise RuntimeError(f"{method} {path} answered {resp.status}: {answer}")
        return answer

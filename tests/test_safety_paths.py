"""A job's page and API show what is wrong with its paths, without waiting on others.

Two jobs on one destination (saved before that was refused, or written by hand) are
named on both jobs' pages; path checks run on threads of their own, so they answer
while asyncio's default executor is busy (and a hung mount's checks cannot fill it).
"""

from __future__ import annotations

import asyncio
import html
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.api_helpers import job_by_hand
from tests.engine_helpers import write

Client = TestClient[web.Request, web.Application]


async def test_two_jobs_on_one_destination_are_named_on_each_jobs_page(
        app_client: Client, tmp_path: Path) -> None:
    write(tmp_path / "src" / "a.txt", b"a\n")
    resp = await app_client.post("/api/jobs", json={
        "name": "Alpha", "engine": "mirror", "sources": [str(tmp_path / "src")],
        "destination": str(tmp_path / "shared"), "enabled": False})
    assert resp.status == 201, await resp.text()
    alpha = (await resp.json())["id"]
    beta = await job_by_hand(app_client, tmp_path, "Beta", "shared")  # past the checks
    for job_id, other in ((beta, f"job Alpha (id {alpha})"), (alpha, f"job Beta (id {beta})")):
        warnings = (await (await app_client.get(f"/api/jobs/{job_id}")).json())["path_warnings"]
        assert any(other in w and "each job needs its own" in w for w in warnings), warnings
        page = html.unescape(await (await app_client.get(f"/jobs/{job_id}")).text())
        assert other in page and "each job needs its own" in page


async def test_path_checks_answer_while_the_default_executor_is_busy(
        app_client: Client, tmp_path: Path) -> None:
    write(tmp_path / "src" / "a.txt", b"a\n")
    resp = await app_client.post("/api/jobs", json={
        "name": "Photos", "engine": "mirror", "sources": [str(tmp_path / "src")],
        "destination": str(tmp_path / "dest"), "enabled": False})
    job_id = (await resp.json())["id"]
    # Every thread of the loop's default executor busy, as threads stuck on a hung
    # mount would leave it: the job's path checks must not queue behind them.
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
    release = threading.Event()
    busy = loop.run_in_executor(None, release.wait, 30.0)
    try:
        started = time.monotonic()
        body = await (await app_client.get(f"/api/jobs/{job_id}")).json()
        took = time.monotonic() - started
    finally:
        release.set()
        await busy
    assert body["path_warnings"] == [], body["path_warnings"]  # not "did not answer"
    assert took < 3.0, took

"""Drive the real app's JSON API from a test client: make jobs, start runs, wait for them."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from events.types import JobCreated
from models.ids import new_job_id
from models.job import JobSpec
from server.keys import STORE
from tests.engine_helpers import write

Client = TestClient[web.Request, web.Application]


async def wait_run(client: Client, run_id: str, states: set[str],
                   within: float = 60) -> dict[str, Any]:
    """Poll a run until it reaches one of `states`."""
    async with asyncio.timeout(within):
        while True:
            run = await (await client.get(f"/api/runs/{run_id}")).json()
            if run["state"] in states:
                return run  # type: ignore[no-any-return]
            await asyncio.sleep(0.05)


async def make_job(client: Client, tmp_path: Path, name: str, dest: str,
                   slow: bool = False) -> str:
    """A mirror job over a small source; `slow` ones are rate limited so they last."""
    src = tmp_path / f"src-{name}"
    write(src / "data.bin", os.urandom(4 * 1024 * 1024 if slow else 1024))
    options: dict[str, Any] = {"bwlimit": 1024} if slow else {}
    resp = await client.post("/api/jobs", json={
        "name": name, "engine": "mirror", "sources": [str(src)],
        "destination": str(tmp_path / dest), "options": options})
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["id"])


async def job_by_hand(client: Client, tmp_path: Path, name: str, dest: str) -> str:
    """A mirror job written straight into the log, past the commands' checks."""
    src = tmp_path / f"src-{name}"
    write(src / "data.bin", os.urandom(1024))
    spec = JobSpec.from_input({"name": name, "engine": "mirror", "sources": [str(src)],
                               "destination": str(tmp_path / dest)}).to_dict()
    job_id = new_job_id(name)
    await client.app[STORE].append(job_id, 0, [JobCreated(job_id=job_id, spec=spec)])
    return job_id


async def start(client: Client, job_id: str) -> str:
    """Start a job; return the run id."""
    resp = await client.post(f"/api/jobs/{job_id}/start", json={})
    assert resp.status == 202, await resp.text()
    return str((await resp.json())["run_id"])

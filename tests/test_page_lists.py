"""Long lists on a job's page and in the API are read a page at a time, with links on."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient

from events.types import RunQueued, RunStarted, RunSucceeded
from server.keys import STATE, STORE
from tests.api_helpers import start, wait_run
from tests.engine_helpers import make_tree
from tests.page_helpers import csrf_of

Client = TestClient[web.Request, web.Application]


async def _job_with_snapshots(client: Client, tmp_path: Path, count: int) -> tuple[str, list[str]]:
    """A mirror job with one real backup copied into `count` snapshots, oldest first."""
    src = make_tree(tmp_path / "src", small_files=2, large_bytes=100)
    dest = tmp_path / "dest"
    job = await (await client.post("/api/jobs", json={
        "name": "Many", "engine": "mirror", "sources": [str(src)],
        "destination": str(dest)})).json()
    run = await wait_run(client, await start(client, job["id"]), {"succeeded"})
    made = run["snapshot_id"]
    manifest = next(p for p in dest.iterdir() if p.name.startswith(made) and p.is_file())
    suffix = manifest.name[len(made):]
    ids = []
    for n in range(count - 1):  # older than the real one: ids sort by time
        snap = f"2020-01-01T{n // 60:02d}{n % 60:02d}00Z"
        shutil.copytree(dest / made, dest / snap, symlinks=True)
        shutil.copy2(manifest, dest / f"{snap}{suffix}")
        ids.append(snap)
    return job["id"], [*ids, made]


async def test_a_jobs_snapshots_show_twenty_at_a_time(app_client: Client,
                                                      tmp_path: Path) -> None:
    """45 snapshots: newest 20, then 'Older snapshots'; the API pages them by cursor."""
    job_id, ids = await _job_with_snapshots(app_client, tmp_path, 45)
    listed = (await (await app_client.get(f"/api/jobs/{job_id}/snapshots?limit=1000")).json())
    # The copies carry the real snapshot's time: they sort by id, before it.
    assert [s["id"] for s in listed["snapshots"]] == ids and listed["next"] is None
    seen: list[str] = []
    url: str | None = f"/api/jobs/{job_id}/snapshots?limit=20"
    while url:
        body = await (await app_client.get(url)).json()
        assert len(body["snapshots"]) <= 20 and body["total"] == 45
        seen += [s["id"] for s in body["snapshots"]]
        url = body["next"]
    assert seen == ids
    html = await (await app_client.get(f"/jobs/{job_id}")).text()
    newest = list(reversed(ids))
    assert re.findall(r'data-snapshot="([^"]+)"', html) == newest[:20]
    assert "Snapshots 1 to 20 of 45" in html and "data-snapshots-newer" not in html
    older = re.search(r'href="([^"]+)" data-snapshots-older', html)
    assert older
    page2 = await (await app_client.get(older.group(1).replace("&amp;", "&"))).text()
    assert re.findall(r'data-snapshot="([^"]+)"', page2) == newest[20:40]
    assert "data-snapshots-newer" in page2
    # A refused restore of a snapshot on the third page shows that page, with the error.
    last = newest[44]
    resp = await app_client.post(f"/jobs/{job_id}/snapshots/{last}/restore",
                                 data={"_csrf": csrf_of(html), "target": "not/absolute"})
    assert resp.status == 422
    refused = await resp.text()
    assert re.findall(r'data-snapshot="([^"]+)"', refused) == newest[40:]
    assert "must be an absolute path" in refused


async def test_a_jobs_run_history_shows_fifty_runs_a_page(app_client: Client,
                                                          tmp_path: Path) -> None:
    """120 runs: the newest 50, 'Older runs' back to the first, 'Newer runs' forward."""
    job = await (await app_client.post("/api/jobs", json={
        "name": "Long", "engine": "mirror", "sources": [str(make_tree(tmp_path / "s"))],
        "destination": str(tmp_path / "d")})).json()
    store = app_client.app[STORE]
    for n in range(120):
        rid = f"r-{n:012x}"
        await store.append(job["id"], None, [
            RunQueued(job_id=job["id"], run_id=rid, trigger="manual"),
            RunStarted(job_id=job["id"], run_id=rid),
            RunSucceeded(job_id=job["id"], run_id=rid, snapshot_id=f"s{n}", files=1,
                         bytes=1, duration=1.0)])
    ids = list(reversed(app_client.app[STATE].jobs[job["id"]].run_ids))
    url: str | None = f"/jobs/{job['id']}"
    pages: list[list[str]] = []
    while url:
        html = await (await app_client.get(url)).text()
        pages.append(re.findall(r'data-run-row="([^"]+)"', html))
        older = re.search(r'href="([^"]+)" data-runs-older', html)
        url = older.group(1).replace("&amp;", "&") if older else None
    assert [len(p) for p in pages] == [50, 50, 20]
    assert [r for p in pages for r in p] == ids
    newer = re.search(r'href="([^"]+)" data-runs-newer', html)
    assert newer
    back = await (await app_client.get(newer.group(1).replace("&amp;", "&"))).text()
    assert re.findall(r'data-run-row="([^"]+)"', back) == pages[1]
    api = await (await app_client.get(f"/api/jobs/{job['id']}/runs?limit=7")).json()
    assert [r["run_id"] for r in api["runs"]] == ids[:7] and api["total"] == 120

"""At 1,000 jobs and 100,000 events every page and API list answers bounded in size.

Not timed (speed figures live in bench/pages.py): the data is built once per session
(tests/scale_helpers.py) and served once for this module.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from server.keys import STATE, STORE
from tests.scale_helpers import Client, ScaleData, scale_data, serve_scale

__all__ = ["scale_data"]  # the fixture, used by name

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(scale_data: ScaleData) -> AsyncIterator[Client]:
    """The app serving the scale data, once for the module."""
    async with serve_scale(scale_data.data_dir) as c:
        yield c


async def test_the_scale_data_is_what_it_says(client: Client, scale_data: ScaleData) -> None:
    """1,000 jobs, 100,000 events, the queued runs still queued."""
    state = client.app[STATE]
    assert len(state.jobs) == 1_000
    assert client.app[STORE].last_seq == 100_000
    queued = [r for r in state.active_runs() if r.state == "queued"]
    assert len(queued) == len(scale_data.queued_run_ids) == 900


async def _walk(client: Client, url: str, name: str, during: Any = None
                ) -> tuple[list[dict[str, Any]], int]:
    """Follow `next` from `url` to the end; return every item and the largest answer."""
    items: list[dict[str, Any]] = []
    largest = 0
    next_url: str | None = url
    pages = 0
    while next_url is not None:
        resp = await client.get(next_url)
        assert resp.status == 200, await resp.text()
        raw = await resp.read()
        largest = max(largest, len(raw))
        body = json.loads(raw)
        items += body[name]
        assert len(body[name]) <= body["limit"]
        next_url = body["next"]
        assert (next_url is None) == (body["next_cursor"] is None) == ("Link" not in resp.headers)
        pages += 1
        assert pages < 10_000, "the walk does not end"
        if during is not None:
            await during(pages)
    return items, largest


async def test_api_jobs_answers_a_bounded_page_and_a_walk_sees_every_job_once(
        client: Client, scale_data: ScaleData, tmp_path: Path) -> None:
    """/api/jobs: 100 jobs by default, at most 500, and the cursor walk visits each job
    once, even with jobs created while it walks."""
    first = await client.get("/api/jobs")
    body = await first.json()
    assert len(body["jobs"]) == 100 and body["total"] == 1_000 and body["next"]
    assert len(await first.read()) < 250_000
    assert (await client.get("/api/jobs?limit=501")).status == 400
    assert (await client.get("/api/jobs?limit=0")).status == 400
    assert (await client.get("/api/jobs?cursor=bm90LWEtY3Vyc29y")).status == 400
    assert (await client.get("/api/jobs?cursor=%%%")).status == 400
    runs_cursor = (await (await client.get(
        f"/api/jobs/{scale_data.heavy_job_id}/runs")).json())["next_cursor"]
    assert (await client.get(f"/api/jobs?cursor={runs_cursor}")).status == 400
    created: list[str] = []

    (tmp_path / "src").mkdir()

    async def create(page: int) -> None:
        made = await client.post("/api/jobs", json={
            "name": f"walk {page}", "engine": "mirror", "sources": [str(tmp_path / "src")],
            "destination": str(tmp_path / f"dest-{page}")})
        assert made.status == 201, await made.text()
        created.append((await made.json())["id"])

    jobs, largest = await _walk(client, "/api/jobs?limit=137", "jobs", create)
    ids = [j["id"] for j in jobs]
    assert len(ids) == len(set(ids)), "a job was listed twice"
    assert set(scale_data.job_ids) <= set(ids), "a job was missed"
    assert set(ids) <= set(scale_data.job_ids) | set(created)
    assert ids == sorted(ids)
    assert largest < 350_000


async def test_a_jobs_runs_and_the_queue_are_read_a_page_at_a_time(
        client: Client, scale_data: ScaleData) -> None:
    """/api/jobs/{id}/runs walks a 2,000-run history newest first; /api/runs the queue."""
    heavy = scale_data.heavy_job_id
    runs, largest = await _walk(client, f"/api/jobs/{heavy}/runs?limit=300", "runs")
    ids = [r["run_id"] for r in runs]
    assert len(ids) == len(set(ids)) == len(client.app[STATE].jobs[heavy].run_ids)
    assert ids == list(reversed(client.app[STATE].jobs[heavy].run_ids))
    assert largest < 200_000
    job = await (await client.get(f"/api/jobs/{heavy}")).json()
    assert len(job["runs"]) == 20
    queued, largest = await _walk(client, "/api/runs?state=queued", "runs")
    assert [r["run_id"] for r in queued] == scale_data.queued_run_ids
    first = await (await client.get("/api/runs")).json()
    assert len(first["runs"]) == 50 and first["total"] == 920  # with the interrupted ones
    assert (await client.get("/api/runs?state=succeeded")).status == 400


async def _page(client: Client, url: str) -> str:
    resp = await client.get(url)
    assert resp.status == 200, url
    return await resp.text()


async def test_the_dashboard_shows_counts_and_the_first_few_runs(client: Client) -> None:
    """900 queued runs: the dashboard names ten, counts the rest and links to them all."""
    html = await _page(client, "/dashboard")
    assert len(html.encode()) < 60_000
    assert len(re.findall(r'data-run="r-', html)) == 10
    assert re.search(r"And\s+890 more queued", html) and 'href="/runs"' in html
    # The recovery banner on every page: five of the 20 interrupted runs, then a count.
    assert "20 interrupted runs waiting" in html and re.search(r"And 15 more", html)
    assert len(re.findall(r"/runs/r-i[0-9a-f]+/resume", html)) == 5
    fragment = await _page(client, "/dashboard?fragment=running")
    assert len(fragment.encode()) < 30_000 and "890 more queued" in fragment


async def test_the_runs_page_shows_the_queue_a_page_at_a_time(
        client: Client, scale_data: ScaleData) -> None:
    """/runs: 50 unfinished runs a page, "Show more" reads the next, each run once."""
    html = await _page(client, "/runs?state=queued")
    assert len(html.encode()) < 80_000
    seen = re.findall(r'data-queue-run="([^"]+)"', html)
    assert len(seen) == 50
    more = re.search(r'hx-get="([^"]+)"', html[html.index('id="queue-more"'):])
    while more:
        rows = await _page(client, more.group(1).replace("&amp;", "&"))
        assert len(rows.encode()) < 60_000
        found = re.findall(r'data-queue-run="([^"]+)"', rows)
        assert 0 < len(found) <= 50
        seen += found
        more = re.search(r'hx-get="([^"]+)"', rows)
    assert seen == scale_data.queued_run_ids
    everything = await _page(client, "/runs")
    assert "All (920)" in everything and "Interrupted (20)" in everything


async def test_every_page_and_list_is_bounded(client: Client, scale_data: ScaleData) -> None:
    """No page or API answer grows with the 100,000 events or the 1,000 jobs' history."""
    heavy = scale_data.heavy_job_id
    # Its runs are among the oldest (the log was written job by job): past the Logs
    # select's 200 jobs that ran last, so the select adds it as the chosen one.
    left_out = scale_data.job_ids[100]
    bounds = {  # bytes, uncompressed; today's answers are about half of each
        "/dashboard": 60_000, "/jobs": 100_000, "/jobs?page=20": 100_000,
        "/jobs?q=photos": 100_000, f"/jobs/{heavy}": 80_000,
        f"/jobs/{heavy}?runs_before=60": 80_000, f"/jobs/{heavy}?fragment=runs": 40_000,
        "/runs": 80_000, "/runs?state=interrupted": 40_000, "/logs": 50_000,
        f"/logs?source=run&job={left_out}": 50_000, "/settings": 40_000,
        "/jobs/new": 40_000, f"/api/jobs/{heavy}": 40_000, "/api/jobs": 250_000,
        f"/api/jobs/{heavy}/runs": 60_000, "/api/runs": 60_000,
        "/api/events?since=0": 400_000,
        # One series per job and run state for Prometheus: grows with jobs, not events.
        "/metrics": 1_000 * len(scale_data.job_ids),
    }
    for url, most in bounds.items():
        resp = await client.get(url, headers={"Accept-Encoding": "identity"})
        body = await resp.read()
        assert resp.status == 200, url
        assert len(body) < most, f"{url}: {len(body)} bytes"
    logs = await _page(client, f"/logs?source=run&job={left_out}")
    assert logs.count(f'<option value="{left_out}"') == 1
    assert f'<option value="{left_out}" selected>' in logs
    assert re.search(r"The 200 jobs that ran last are listed; the other [0-9]+:", logs)


async def test_the_jobs_list_pages_show_each_job_once(client: Client) -> None:
    """/jobs: 50 jobs a page by name; the pages together show every job exactly once."""
    seen: list[str] = []
    page = 1
    while True:
        html = await _page(client, f"/jobs?page={page}")
        found = re.findall(r'<tr data-job="([^"]+)"', html)
        assert len(found) <= 50
        seen += found
        if f"?page={page + 1}" not in html:
            break
        page += 1
    assert sorted(seen) == sorted(client.app[STATE].jobs) and len(seen) == len(set(seen))

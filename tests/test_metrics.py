"""/metrics through the real app: real runs of the mirror engine, scraped and parsed."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from core.queries import parse_time
from events.store import EventStore
from events.types import JobCreated, RunInterrupted, RunQueued, RunStarted
from server.app import create_app
from server.config import Config
from server.keys import STORE
from tests.api_helpers import wait_run
from tests.conftest import AppClient, job_spec
from tests.engine_helpers import make_tree
from tests.operation_helpers import operation

Client = TestClient[web.Request, web.Application]
# What Prometheus 2.x sends when it scrapes.
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
                     "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


class Scrape:
    """One parsed /metrics answer."""

    def __init__(self, text: str) -> None:
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples: list[Sample] = [s for f in self.families.values() for s in f.samples]

    def find(self, name: str, **labels: str) -> list[Sample]:
        """Samples of this name whose labels include the given ones."""
        return [s for s in self.samples if s.name == name
                and all(s.labels.get(k) == v for k, v in labels.items())]

    def value(self, name: str, **labels: str) -> float:
        """The one sample of this name with these labels."""
        found = self.find(name, **labels)
        assert len(found) == 1, (name, labels, found)
        return found[0].value


async def scrape(client: Client, **headers: str) -> Scrape:
    """GET /metrics as Prometheus would and parse it."""
    resp = await client.get("/metrics", headers={"Accept": PROMETHEUS_ACCEPT, **headers})
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"] == CONTENT_TYPE_LATEST
    return Scrape(await resp.text())


async def create_job(client: Client, name: str, sources: list[str], destination: Path
                     ) -> str:
    """Create a mirror job through the API; its id."""
    resp = await client.post("/api/jobs", json={"name": name, "engine": "mirror",
                                                "sources": sources,
                                                "destination": str(destination)})
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["id"])


async def run_job(client: Client, job_id: str) -> dict[str, Any]:
    """Start a run of the job and wait for it to finish."""
    start = await client.post(f"/api/jobs/{job_id}/start", json={})
    assert start.status == 202, await start.text()
    return await wait_run(client, (await start.json())["run_id"],
                          {"succeeded", "failed", "cancelled"})


def seconds(value: str) -> float:
    """An event time as unix seconds."""
    return parse_time(value).timestamp()


async def test_a_real_backup_shows_in_every_run_figure(app_client: Client,
                                                      tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    job_id = await create_job(app_client, "Home docs", [str(src)], tmp_path / "backups")
    idle_id = await create_job(app_client, "Never run", [str(src)], tmp_path / "other")
    before = time.time()
    run = await run_job(app_client, job_id)
    assert run["state"] == "succeeded", run
    assert run["bytes"] > 6 * 1024 * 1024 and run["files"] > 100

    m = await scrape(app_client)
    labels = {"job_id": job_id, "job_name": "Home docs"}
    assert m.value("backup_manager_runs_total", **labels, outcome="succeeded") == 1
    for outcome in ("failed", "cancelled", "discarded"):
        # Present at 0, so the first failure is an increase an alert can see.
        assert m.value("backup_manager_runs_total", **labels, outcome=outcome) == 0
    assert m.value("backup_manager_backed_up_bytes_total", **labels) == run["bytes"]
    assert m.value("backup_manager_backed_up_files_total", **labels) == run["files"]
    last_success = m.value("backup_manager_last_success_timestamp_seconds", **labels)
    assert seconds(run["started"]) <= last_success == pytest.approx(seconds(run["finished"]))
    assert before - 1 <= last_success <= time.time()
    assert m.value("backup_manager_last_run_duration_seconds", **labels) == pytest.approx(
        run["duration"])
    assert m.value("backup_manager_run_duration_seconds_count", outcome="succeeded") == 1
    assert m.value("backup_manager_run_duration_seconds_sum", outcome="succeeded") == \
        pytest.approx(run["duration"])
    first_bucket = next(b for b in ("1.0", "5.0", "15.0", "30.0", "60.0")
                        if run["duration"] <= float(b))
    assert m.value("backup_manager_run_duration_seconds_bucket", outcome="succeeded",
                   le=first_bucket) == 1
    assert m.value("backup_manager_run_duration_seconds_count", outcome="failed") == 0
    assert m.families["backup_manager_run_duration_seconds"].type == "histogram"
    assert m.families["backup_manager_runs"].type == "counter"

    # A job that never succeeded reads 0, so `time() - x > 86400` fires for it.
    idle = {"job_id": idle_id, "job_name": "Never run"}
    assert m.value("backup_manager_last_success_timestamp_seconds", **idle) == 0
    assert m.value("backup_manager_runs_total", **idle, outcome="succeeded") == 0
    assert not m.find("backup_manager_last_run_duration_seconds", job_id=idle_id)
    for state in ("queued", "running", "paused", "interrupted"):
        assert m.value("backup_manager_active_runs", state=state) == 0

    store = app_client.app[STORE]
    assert m.value("backup_manager_event_log_seq") == store.last_seq
    on_disk = sum(os.stat(p).st_size for p in (store.path, Path(f"{store.path}-wal"))
                  if p.exists())
    assert m.value("backup_manager_event_log_bytes") == on_disk > 0
    assert m.value("backup_manager_projector_lag_events") >= 0
    assert m.value("backup_manager_websocket_clients") == 0
    [info] = m.find("backup_manager_build_info")
    assert info.value == 1 and info.labels["version"]

    # A second run adds up; a renamed job keeps its counts under the new name.
    second = await run_job(app_client, job_id)
    assert second["state"] == "succeeded", second
    renamed = await app_client.put(f"/api/jobs/{job_id}", json={"name": "Documents"})
    assert renamed.status == 200, await renamed.text()
    m = await scrape(app_client)
    labels = {"job_id": job_id, "job_name": "Documents"}
    assert m.value("backup_manager_runs_total", **labels, outcome="succeeded") == 2
    assert m.value("backup_manager_backed_up_bytes_total", **labels) == \
        run["bytes"] + second["bytes"]
    assert m.value("backup_manager_last_success_timestamp_seconds", **labels) == \
        pytest.approx(seconds(second["finished"]))
    assert m.value("backup_manager_run_duration_seconds_count", outcome="succeeded") == 2
    assert not m.find("backup_manager_runs_total", job_name="Home docs")

    # A restore is a run too, but nothing was backed up by it: the backup figures stay.
    restored = await operation(app_client, f"/api/jobs/{job_id}/snapshots/"
                               f"{second['snapshot_id']}/restore",
                               {"target": str(tmp_path / "restored")})
    assert restored["state"] == "succeeded" and restored["bytes"] > 0, restored
    m = await scrape(app_client)
    assert m.value("backup_manager_runs_total", **labels, outcome="succeeded") == 2
    assert m.value("backup_manager_backed_up_bytes_total", **labels) == \
        run["bytes"] + second["bytes"]
    assert m.value("backup_manager_last_success_timestamp_seconds", **labels) == \
        pytest.approx(seconds(second["finished"]))

    # A deleted job's series end; the histogram (no job label) does not go backwards.
    assert (await app_client.delete(f"/api/jobs/{job_id}")).status == 200
    m = await scrape(app_client)
    assert not m.find("backup_manager_runs_total", job_id=job_id)
    assert not m.find("backup_manager_last_success_timestamp_seconds", job_id=job_id)
    assert m.value("backup_manager_run_duration_seconds_count", outcome="succeeded") == 2
    assert m.value("backup_manager_runs_total", job_id=idle_id, outcome="succeeded") == 0


async def test_a_run_whose_source_is_missing_counts_as_failed(app_client: Client,
                                                              tmp_path: Path) -> None:
    src = tmp_path / "gone"
    src.mkdir()
    job_id = await create_job(app_client, "Gone", [str(src)], tmp_path / "backups")
    src.rmdir()
    run = await run_job(app_client, job_id)
    assert run["state"] == "failed", run

    m = await scrape(app_client)
    labels = {"job_id": job_id, "job_name": "Gone"}
    assert m.value("backup_manager_runs_total", **labels, outcome="failed") == 1
    assert m.value("backup_manager_runs_total", **labels, outcome="succeeded") == 0
    assert m.value("backup_manager_backed_up_bytes_total", **labels) == 0
    assert m.value("backup_manager_last_success_timestamp_seconds", **labels) == 0
    assert m.value("backup_manager_run_duration_seconds_count", outcome="failed") == 1
    assert m.value("backup_manager_run_duration_seconds_count", outcome="succeeded") == 0
    took = seconds(run["finished"]) - seconds(run["started"])
    assert m.value("backup_manager_last_run_duration_seconds", **labels) == \
        pytest.approx(took, abs=1e-6)
    assert m.value("backup_manager_event_log_seq") == app_client.app[STORE].last_seq


async def test_a_run_cut_off_by_a_crash_shows_until_discarded(aiohttp_client: AppClient,
                                                              tmp_path: Path) -> None:
    data = tmp_path / "data"
    # The log a crash leaves: a run started and never finished.
    store = await EventStore.open(data / "events.db")
    job_id, run_id = "nightly-1", "r-00000000000a"
    spec = job_spec("Nightly", sources=[str(tmp_path / "src")],
                    destination=str(tmp_path / "backups"))
    await store.append(job_id, 0, [JobCreated(job_id=job_id, spec=spec)])
    await store.append(job_id, None, [RunQueued(job_id=job_id, run_id=run_id),
                                      RunStarted(job_id=job_id, run_id=run_id),
                                      RunInterrupted(job_id=job_id, run_id=run_id)])
    await store.close()
    client: Client = await aiohttp_client(create_app(Config(data_dir=data, log_to_file=False)))

    m = await scrape(client)
    assert m.value("backup_manager_active_runs", state="interrupted") == 1
    assert m.value("backup_manager_runs_total", job_id=job_id, outcome="discarded") == 0
    assert m.value("backup_manager_event_log_seq") == 4

    discarded = await client.post(f"/api/runs/{run_id}/discard", json={})
    assert discarded.status == 200, await discarded.text()
    m = await scrape(client)
    assert m.value("backup_manager_active_runs", state="interrupted") == 0
    assert m.value("backup_manager_runs_total", job_id=job_id, job_name="Nightly",
                   outcome="discarded") == 1
    # Given up, not a backup that took time: no duration is recorded for it.
    assert not m.find("backup_manager_last_run_duration_seconds", job_id=job_id)
    assert m.value("backup_manager_event_log_seq") == 5


async def websocket_clients(client: Client) -> float:
    """The websocket_clients gauge now."""
    return (await scrape(client)).value("backup_manager_websocket_clients")


async def test_websocket_clients_go_up_and_down(app_client: Client) -> None:
    assert await websocket_clients(app_client) == 0
    ws = await app_client.ws_connect("/ws")
    assert (await ws.receive_json())["kind"] == "hello"
    assert await websocket_clients(app_client) == 1
    await ws.close()
    async with asyncio.timeout(10):  # the server lets go of a client once it read the close
        while True:
            if await websocket_clients(app_client) == 0:
                break
            await asyncio.sleep(0.02)


async def test_with_a_token_metrics_need_the_bearer_header(
        guarded: tuple[Client, str]) -> None:
    client, token = guarded
    refused = await client.get("/metrics", headers={"Accept": PROMETHEUS_ACCEPT},
                               allow_redirects=False)
    assert refused.status == 401  # not a redirect to the sign-in page a scraper cannot use
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert "Authorization: Bearer" in await refused.text()
    wrong = await client.get("/metrics", headers={"Authorization": "Bearer nope"},
                             allow_redirects=False)
    assert wrong.status == 401

    m = await scrape(client, Authorization=f"Bearer {token}")
    assert m.value("backup_manager_event_log_seq") == client.app[STORE].last_seq
    answer = await client.get("/metrics", headers={"Authorization": f"Bearer {token}",
                                                   "Accept-Encoding": "gzip"})
    assert answer.headers["Content-Encoding"] == "gzip"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    # The rest of the app still sends browsers to sign in.
    page = await client.get("/dashboard", allow_redirects=False)
    assert page.status == 303

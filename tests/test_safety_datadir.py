"""The server's own data directory (event log, job files, key) is never written by a
restore or used as a job's destination (issue 12): real server, real files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from server.keys import STORE
from tests.api_helpers import wait_run
from tests.engine_helpers import write
from tests.operation_helpers import operation

Client = TestClient[web.Request, web.Application]


async def _backed_up(client: Client, source: Path, backups: Path) -> tuple[str, str]:
    """A mirror job of source, run once: its id and its snapshot's id."""
    resp = await client.post("/api/jobs", json={
        "name": "Src", "engine": "mirror", "sources": [str(source)],
        "destination": str(backups)})
    assert resp.status == 201, await resp.text()
    job_id = (await resp.json())["id"]
    resp = await client.post(f"/api/jobs/{job_id}/start", json={})
    run = await wait_run(client, (await resp.json())["run_id"], {"succeeded", "failed"})
    assert run["state"] == "succeeded", run
    return job_id, str(run["snapshot_id"])


async def _events(client: Client) -> list[str]:
    """The type of every event in the log, in order."""
    return [e.type async for page in client.app[STORE].iterate(since=0, verify=False)
            for e in page]


async def test_a_restore_cannot_overwrite_the_servers_own_event_log(
        app_client: Client, tmp_path: Path) -> None:
    # A source named "data" restored (with overwrite) into the data directory's parent
    # would replace data/events.db: every job lost at the next start. Refused, unchanged.
    data = tmp_path / "data"  # the app_client fixture's data directory
    evil = tmp_path / "evil" / "data"
    write(evil / "events.db", b"not a database")
    job_id, snap = await _backed_up(app_client, evil, tmp_path / "backups")
    log_before = (data / "events.db").read_bytes()[:16]
    assert log_before == b"SQLite format 3\x00"
    recorded = await _events(app_client)

    resp = await app_client.post(f"/api/jobs/{job_id}/snapshots/{snap}/restore",
                                 json={"target": str(tmp_path), "overwrite": True})
    assert resp.status == 400, await resp.text()
    assert "data directory" in (await resp.json())["error"]
    assert (data / "events.db").read_bytes()[:16] == log_before
    assert await _events(app_client) == recorded  # nothing recorded

    # Through a symlink to the parent: the same folder, refused the same way.
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    resp = await app_client.post(f"/api/jobs/{job_id}/snapshots/{snap}/restore",
                                 json={"target": str(link), "overwrite": True})
    assert resp.status == 400, await resp.text()
    assert (data / "events.db").read_bytes()[:16] == log_before


async def test_a_restore_into_the_data_directory_itself_is_refused(
        app_client: Client, tmp_path: Path) -> None:
    # A source named "jobs" restored into the data directory would merge into its job
    # files. Refused with a message, as a restore into a destination is.
    src = tmp_path / "jobs"
    write(src / "x-000000.yaml", b"name: not a job\n")
    job_id, snap = await _backed_up(app_client, src, tmp_path / "backups")
    for target in (tmp_path / "data", tmp_path / "data" / "sub"):
        resp = await app_client.post(f"/api/jobs/{job_id}/snapshots/{snap}/restore",
                                     json={"target": str(target), "overwrite": True})
        assert resp.status == 400, await resp.text()
        assert "data directory" in (await resp.json())["error"]
    assert not (tmp_path / "data" / "jobs" / "x-000000.yaml").exists()
    assert not (tmp_path / "data" / "sub").exists()


async def test_a_restore_beside_the_data_directory_still_works(
        app_client: Client, tmp_path: Path) -> None:
    # Restoring into the data directory's parent is fine when what it writes (the
    # source's own name) is not the data directory.
    src = tmp_path / "docs"
    write(src / "a.txt", b"hello")
    job_id, snap = await _backed_up(app_client, src, tmp_path / "backups")
    target = tmp_path / "restored"
    target.mkdir()
    run = await operation(app_client, f"/api/jobs/{job_id}/snapshots/{snap}/restore",
                          {"target": str(target)})
    assert run["state"] == "succeeded", run
    assert (target / "docs" / "a.txt").read_bytes() == b"hello"


async def test_a_job_cannot_keep_its_backups_in_or_around_the_data_directory(
        app_client: Client, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
        ) -> None:
    # A destination in, equal to or around the data directory would prune or overwrite
    # the server's files: refused on create and on update, nothing saved.
    src = tmp_path_factory.mktemp("elsewhere") / "src"  # not inside tmp_path
    write(src / "a.txt", b"x")
    data = tmp_path / "data"
    link = tmp_path / "datalink"
    os.symlink(data, link)
    for dest in (data, data / "backups", tmp_path, link / "b"):
        resp = await app_client.post("/api/jobs", json={
            "name": "Bad", "engine": "mirror", "sources": [str(src)],
            "destination": str(dest)})
        assert resp.status == 400, (dest, await resp.text())
        assert "data directory" in (await resp.json())["error"], dest
    resp = await app_client.get("/api/jobs")
    assert (await resp.json())["jobs"] == []

    resp = await app_client.post("/api/jobs", json={
        "name": "Good", "engine": "mirror", "sources": [str(src)],
        "destination": str(tmp_path / "backups")})
    assert resp.status == 201, await resp.text()
    job = await resp.json()
    resp = await app_client.put(f"/api/jobs/{job['id']}", json={
        "name": "Good", "engine": "mirror", "sources": [str(src)],
        "destination": str(data / "backups")})
    assert resp.status == 400, await resp.text()
    resp = await app_client.get(f"/api/jobs/{job['id']}")
    assert (await resp.json())["destination"] == str(tmp_path / "backups")

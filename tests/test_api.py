"""The JSON API through the real app: a job's whole life with a real engine."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from server.keys import STORE
from tests.api_helpers import wait_run
from tests.engine_helpers import make_tree, tree_signature, write
from tests.operation_helpers import operation

Client = TestClient[web.Request, web.Application]


async def test_full_lifecycle_with_the_mirror_engine(app_client: Client, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    resp = await app_client.post("/api/jobs", json={
        "name": "Home docs", "engine": "mirror", "sources": [str(src)],
        "destination": str(tmp_path / "backups"), "retention": {"keep_last": 2}})
    assert resp.status == 201, await resp.text()
    job = await resp.json()
    job_id = job["id"]
    assert job_id.startswith("home-docs-") and job["engine"] == "mirror"
    assert job["next_run"] is None  # manual only
    hourly = await app_client.put(f"/api/jobs/{job_id}", json={"schedule": "0 * * * *"})
    assert (await hourly.json())["next_run"].endswith(":00:00Z")
    await app_client.put(f"/api/jobs/{job_id}", json={"schedule": None})

    start = await app_client.post(f"/api/jobs/{job_id}/start", json={})
    assert start.status == 202
    run_id = (await start.json())["run_id"]
    # The same answer as a queued restore's: where to follow the run.
    assert (await start.json())["url"] == f"/api/runs/{run_id}"
    run = await wait_run(app_client, run_id, {"succeeded", "failed"})
    assert run["state"] == "succeeded", run
    assert run["files"] > 100 and run["snapshot_id"]

    snaps = (await (await app_client.get(f"/api/jobs/{job_id}/snapshots")).json())["snapshots"]
    assert [s["id"] for s in snaps] == [run["snapshot_id"]]
    target = tmp_path / "restored"
    restored = await operation(
        app_client, f"/api/jobs/{job_id}/snapshots/{run['snapshot_id']}/restore",
        {"target": str(target)})
    assert restored["state"] == "succeeded" and restored["kind"] == "restore", restored
    assert restored["snapshot_id"] == run["snapshot_id"] and restored["files"] > 100
    assert tree_signature(target / "src") == tree_signature(src)
    before = app_client.app[STORE].last_seq
    again = await app_client.post(
        f"/api/jobs/{job_id}/snapshots/{run['snapshot_id']}/restore", json={"target": str(target)})
    assert again.status == 409 and "already exist" in (await again.json())["error"]
    assert app_client.app[STORE].last_seq == before  # refused before queueing: no record
    verified = await operation(
        app_client, f"/api/jobs/{job_id}/snapshots/{run['snapshot_id']}/verify")
    assert verified["state"] == "succeeded" and verified["kind"] == "verify", verified

    detail = await (await app_client.get(f"/api/jobs/{job_id}")).json()
    assert detail["last_success"]["run_id"] == run_id
    types = [e["type"] for e in (await (await app_client.get(
        "/api/events?since=0")).json())["events"]]
    for expected in ("JobCreated", "RunQueued", "RunStarted", "RunSucceeded", "RestoreStarted",
                     "RestoreFinished", "VerifyFinished"):
        assert expected in types

    deleted = await app_client.delete(f"/api/jobs/{job_id}")
    assert deleted.status == 200
    assert (await app_client.get(f"/api/jobs/{job_id}")).status == 404


async def test_pause_resume_and_cancel_through_the_api(app_client: Client,
                                                      tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(4):
        write(src / f"big{i}.bin", os.urandom(64 * 1024 * 1024))
    job = await (await app_client.post("/api/jobs", json={
        "name": "Big", "engine": "archive", "sources": [str(src)],
        "destination": str(tmp_path / "backups")})).json()
    run_id = (await (await app_client.post(f"/api/jobs/{job['id']}/start", json={})).json())[
        "run_id"]
    await wait_run(app_client, run_id, {"running"})
    paused = await app_client.post(f"/api/runs/{run_id}/pause", json={})
    assert paused.status == 200 and (await paused.json())["state"] == "paused"
    twice = await app_client.post(f"/api/jobs/{job['id']}/start", json={})
    assert twice.status == 409 and "Big is already running" in (await twice.json())["error"]
    resumed = await app_client.post(f"/api/runs/{run_id}/resume", json={})
    assert (await resumed.json())["state"] == "running"
    cancelled = await app_client.post(f"/api/runs/{run_id}/cancel", json={})
    assert (await cancelled.json())["state"] == "cancelled"
    for _ in range(200):
        if not any(n.endswith(".partial") for n in os.listdir(tmp_path / "backups")):
            break
        await asyncio.sleep(0.05)
    assert not any(n.endswith(".partial") for n in os.listdir(tmp_path / "backups"))
    again = await app_client.post(f"/api/runs/{run_id}/pause", json={})
    assert again.status == 409 and "is cancelled" in (await again.json())["error"]


@pytest.mark.parametrize(("body", "field", "words"), [
    ({"name": "", "engine": "mirror", "sources": ["/a"], "destination": "/b"}, "name",
     "required"),
    ({"name": "x", "engine": "tape", "sources": ["/a"], "destination": "/b"}, "engine",
     "choose an engine"),
    ({"name": "x", "engine": "mirror", "sources": ["rel/path"], "destination": "/b"},
     "sources", "absolute"),
    ({"name": "x", "engine": "mirror", "sources": ["/a/../etc"], "destination": "/b"},
     "sources", "'..'"),
    ({"name": "x", "engine": "mirror", "sources": ["/a"], "destination": "/a/b"},
     "destination", "Destination /a/b is inside source /a"),
    ({"name": "x", "engine": "mirror", "sources": ["/a"], "destination": "/b",
      "schedule": "every day at noon"}, "schedule", "not a valid schedule"),
    ({"name": "x", "engine": "mirror", "sources": ["/a"], "destination": "/b",
      "retention": {"keep_last": -1}}, "retention", "whole number"),
    ({"name": "x", "engine": "mirror", "sources": ["/a\x00"], "destination": "/b"},
     "sources", "NUL"),
])
async def test_bad_job_input_is_a_400_per_field_and_appends_nothing(
        app_client: Client, body: dict[str, Any], field: str, words: str) -> None:
    before = app_client.app[STORE].last_seq
    resp = await app_client.post("/api/jobs", json=body)
    assert resp.status == 400
    answer = await resp.json()
    assert words in answer["fields"][field]
    assert app_client.app[STORE].last_seq == before


async def test_api_refuses_non_json_and_foreign_origins(app_client: Client) -> None:
    form = await app_client.post("/api/jobs", data={"name": "x"})
    assert form.status == 415
    foreign = await app_client.post("/api/jobs", json={}, headers={"Origin": "https://evil.example"})
    assert foreign.status == 403
    assert (await app_client.get("/api/runs/not-a-run")).status == 404
    assert (await app_client.get("/api/jobs/..%2f..%2fetc")).status == 404


async def test_settings_are_validated_and_applied(app_client: Client) -> None:
    ok = await app_client.put("/api/settings", json={"max_concurrent_runs": 3})
    assert (await ok.json())["max_concurrent_runs"] == 3
    bad = await app_client.put("/api/settings", json={"max_concurrent_runs": 0, "nope": 1})
    assert bad.status == 400
    fields = (await bad.json())["fields"]
    assert "1 to 32" in fields["max_concurrent_runs"] and "not a setting" in fields["nope"]
    assert (await (await app_client.get("/api/settings")).json())["max_concurrent_runs"] == 3


async def test_delete_refuses_a_running_job_unless_asked_to_cancel(app_client: Client,
                                                                   tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "data.bin", os.urandom(4 * 1024 * 1024))
    job = await (await app_client.post("/api/jobs", json={
        "name": "slow", "engine": "mirror", "sources": [str(src)],
        "destination": str(tmp_path / "backups"), "options": {"bwlimit": 1024}})).json()
    run_id = (await (await app_client.post(f"/api/jobs/{job['id']}/start", json={})).json())[
        "run_id"]
    await wait_run(app_client, run_id, {"running"})
    refused = await app_client.delete(f"/api/jobs/{job['id']}")
    assert refused.status == 409 and "cancel" in (await refused.json())["error"]
    deleted = await app_client.delete(f"/api/jobs/{job['id']}?cancel=true")
    assert deleted.status == 200, await deleted.text()
    assert (await app_client.get(f"/api/jobs/{job['id']}")).status == 404
    assert not any(n.endswith(".partial") for n in os.listdir(tmp_path / "backups"))


async def test_run_commands_refuse_bad_ids_and_states_and_append_nothing(
        app_client: Client, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "a.txt", b"a")
    job = await (await app_client.post("/api/jobs", json={
        "name": "small", "engine": "mirror", "sources": [str(src)],
        "destination": str(tmp_path / "backups")})).json()
    run_id = (await (await app_client.post(f"/api/jobs/{job['id']}/start", json={})).json())[
        "run_id"]
    await wait_run(app_client, run_id, {"succeeded"})
    store = app_client.app[STORE]
    before = store.last_seq
    for action in ("pause", "resume", "cancel", "discard"):
        done = await app_client.post(f"/api/runs/{run_id}/{action}", json={})
        assert done.status == 409 and "succeeded" in (await done.json())["error"]
        missing = await app_client.post(f"/api/runs/r-000000000000/{action}", json={})
        assert missing.status == 404
        bad = await app_client.post(f"/api/runs/..%2Fx/{action}", json={})
        assert bad.status == 404
    for path in ("/api/jobs/nope-123/start", "/api/jobs/NOPE/enable"):
        assert (await app_client.post(path, json={})).status == 404
    assert (await app_client.put("/api/jobs/nope-1", json={"name": "x"})).status == 404
    assert (await app_client.put(f"/api/jobs/{job['id']}", json={"engine": "tape"})).status == 400
    bad_json = await app_client.post("/api/jobs", data=b"{not json",
                                     headers={"Content-Type": "application/json"})
    assert bad_json.status == 400 and "not valid JSON" in (await bad_json.json())["error"]
    assert store.last_seq == before


async def test_disable_and_enable(app_client: Client, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    job = await (await app_client.post("/api/jobs", json={
        "name": "s", "engine": "mirror", "sources": [str(tmp_path / "a")],
        "destination": str(tmp_path / "b"),
        "schedule": "every 1 hours"})).json()
    off = await (await app_client.post(f"/api/jobs/{job['id']}/disable", json={})).json()
    assert off["enabled"] is False and off["next_run"] is None
    on = await (await app_client.post(f"/api/jobs/{job['id']}/enable", json={})).json()
    assert on["enabled"] is True and on["next_run"]


async def test_progress_is_broadcast_live_but_never_stored(app_client: Client,
                                                          tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "data.bin", os.urandom(16 * 1024 * 1024))
    job = await (await app_client.post("/api/jobs", json={
        "name": "watched", "engine": "mirror", "sources": [str(src)],
        "destination": str(tmp_path / "backups"), "options": {"bwlimit": 8192}})).json()
    ws = await app_client.ws_connect("/ws")
    await ws.receive_json()  # hello
    run_id = (await (await app_client.post(f"/api/jobs/{job['id']}/start", json={})).json())[
        "run_id"]
    progress: list[dict[str, Any]] = []
    async with asyncio.timeout(30):
        while True:
            msg = await ws.receive_json()
            if msg.get("kind") == "progress" and msg["run_id"] == run_id:
                progress.append(msg)
            if msg.get("type") == "RunSucceeded":
                break
    await ws.close()
    assert len(progress) >= 3
    assert any(0 < p["bytes_done"] < p["bytes_total"] for p in progress)
    assert progress[-1]["bytes_done"] == 16 * 1024 * 1024
    # A 2-second run at the limit: a few updates a second, not one per chunk or file.
    assert len(progress) <= 20
    stored = (await (await app_client.get("/api/events?since=0")).json())["events"]
    assert not any(e["type"].lower().startswith("progress") for e in stored)


async def test_log_level_setting_applies_without_restart(app_client: Client) -> None:
    before = logging.getLogger().level
    try:
        await app_client.put("/api/settings", json={"log_level": "DEBUG"})
        assert logging.getLogger().level == logging.DEBUG
        await app_client.put("/api/settings", json={"log_level": "WARNING"})
        assert logging.getLogger().level == logging.WARNING
    finally:
        logging.getLogger().setLevel(before)


async def test_engine_options_are_checked_when_the_job_is_saved(app_client: Client,
                                                                tmp_path: Path) -> None:
    store = app_client.app[STORE]
    before = store.last_seq
    base = {"name": "Opts", "sources": [str(tmp_path / "src")],
            "destination": str(tmp_path / "dest")}
    cases = [
        ({"engine": "restic", "options": {}}, "password_file is needed"),
        ({"engine": "mirror", "options": {"bwlimit": -5}}, "bwlimit must be a whole number"),
        ({"engine": "mirror", "options": {"foo": "bar"}}, "foo is not an option of the mirror"),
        ({"engine": "archive", "options": {"compression": "lzma"}}, "zstd, gzip"),
        ({"engine": "archive", "options": {"compression": "gzip", "level": 12}}, "1 to 9"),
        ({"engine": "restic", "options": {"password_file": "relative"}}, "absolute path"),
    ]
    for extra, message in cases:
        resp = await app_client.post("/api/jobs", json={**base, **extra})
        body = await resp.json()
        assert resp.status == 400, body
        assert message in body["fields"]["options"], (extra, body)
    assert store.last_seq == before
    (tmp_path / "src").mkdir()
    (tmp_path / "pw").write_text("secret\n")
    ok = await app_client.post("/api/jobs", json={
        **base, "engine": "restic",
        "options": {"password_file": str(tmp_path / "pw"), "init": True}})
    assert ok.status == 201


async def test_a_bandwidth_limit_is_refused_where_the_engine_cannot_apply_it(
        app_client: Client, tmp_path: Path) -> None:
    for engine, extra in (("archive", {}), ("restic", {"password_file": "/etc/pw"})):
        resp = await app_client.post("/api/jobs", json={
            "name": "Limited", "engine": engine, "sources": [str(tmp_path / "src")],
            "destination": str(tmp_path / engine), "options": {"bwlimit": 100, **extra}})
        body = await resp.json()
        assert resp.status == 400 and "bwlimit is not an option" in body["fields"]["options"]

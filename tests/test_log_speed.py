"""What the faster log must still do: group commits that group, acks that survive, the mark
kept, a catch-up that stops when asked, YAML text unchanged, and one encoding per event."""

from __future__ import annotations

import asyncio
import shutil
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import yaml

from core import live as live_module
from events import record
from events.audit import open_readonly, verify
from events.store import EventsMissing, EventStore
from events.types import RunCheckpointed, RunQueued
from server.keys import LIVE, STORE
from storage.projection import Projection
from storage.projector import Projector
from storage.replay import replay_into
from storage.yamltext import dump_yaml, render_mapping
from tests.conftest import created
from tests.projection_helpers import projection_files


async def _hundred_appenders(store: EventStore, rounds: int) -> list[int]:
    """100 writers, each appending `rounds` single events to its own stream; acked seqs."""
    acked: list[int] = []

    async def writer(i: int) -> None:
        stream = f"job-{i}"
        stored = await store.append(stream, 0, [created(stream)])
        acked.append(stored[0].seq)
        for v in range(1, rounds + 1):
            stored = await store.append(stream, v, [RunQueued(job_id=stream,
                                                              run_id=f"r-{v:012x}")])
            acked.append(stored[0].seq)

    await asyncio.gather(*(writer(i) for i in range(100)))
    return acked


async def test_a_hundred_concurrent_appenders_share_commits(store: EventStore) -> None:
    before = store.commits
    acked = await _hundred_appenders(store, rounds=4)
    calls = len(acked)
    commits = store.commits - before
    assert calls == 500 and sorted(acked) == list(range(1, 501))
    # Each round of 100 waiting writers goes out in a handful of transactions, not 100.
    assert commits <= calls // 10, f"{commits} commits for {calls} append calls"


async def test_every_acknowledged_event_is_there_after_reopen(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    store = await EventStore.open(db)
    acked = await _hundred_appenders(store, rounds=2)
    head = store.last_seq
    # No close(): no final checkpoint. What was acknowledged must already be durable;
    # a second reader of the file sees every event, the chain intact.
    with closing(open_readonly(db)) as conn:
        result = verify(conn)
    assert result.ok and result.checked == head == max(acked)
    # The mark was written in the same trip as each commit, before any ack.
    mark = (tmp_path / "events.db-acked").read_text().split()
    assert int(mark[0]) == head and mark[1] == result.head_hash
    await store.close()
    reopened = await EventStore.open(db)
    try:
        seqs = {ev.seq for page in [await reopened.read(limit=10_000)] for ev in page}
        assert set(acked) <= seqs
    finally:
        await reopened.close()


async def test_the_mark_still_catches_a_log_cut_short_after_group_commits(
        tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    store = await EventStore.open(db)
    await store.append("job-a", 0, [created("job-a")])
    await store.close()
    shutil.copy(db, tmp_path / "older.db")
    store = await EventStore.open(db)
    await _hundred_appenders(store, rounds=1)
    head = store.last_seq
    await store.close()
    shutil.copy(tmp_path / "older.db", db)
    with pytest.raises(EventsMissing, match=f"seqs 2 to {head} are missing"):
        await EventStore.open(db)


async def _large_log(store: EventStore, jobs: int, per_job: int) -> None:
    """Append jobs with many checkpoints each, in big calls (fast to build)."""
    async def feed(i: int) -> None:
        stream = f"big-{i}"
        await store.append(stream, 0, [created(stream)])
        await store.append(stream, 1, [RunQueued(job_id=stream, run_id="r-000000000001")])
        for start in range(0, per_job, 2_500):
            await store.append(stream, None, [
                RunCheckpointed(job_id=stream, run_id="r-000000000001",
                                checkpoint={"files_done": n})
                for n in range(start, min(per_job, start + 2_500))])

    await asyncio.gather(*(feed(i) for i in range(jobs)))


async def test_a_catch_up_of_a_large_log_stops_when_asked(tmp_path: Path) -> None:
    store = await EventStore.open(tmp_path / "events.db")
    try:
        await _large_log(store, jobs=8, per_job=2_000)
        root = tmp_path / "projections"
        projector = Projector(store, root)
        starting = asyncio.create_task(projector.start())
        # Poll (nothing signals the first folded page): then the catch-up is under way.
        while projector.projection.seq == 0 and not starting.done():  # noqa: ASYNC110
            await asyncio.sleep(0.001)
        asked = time.monotonic()
        await asyncio.wait_for(projector.stop(), 1.0)
        assert time.monotonic() - asked < 1.0
        await asyncio.wait_for(starting, 1.0)
        assert projector.interrupted and not projector.healthy
        assert projector.projection.seq < store.last_seq, "the catch-up ran to its end"
        assert projector.seq == 0  # nothing half-written: the files stay as they were
        # The next start catches up from where the files are, to the same files as a
        # rebuild from seq 0.
        again = Projector(store, root)
        await again.start()
        await again.stop()
        assert again.seq == store.last_seq
        with closing(open_readonly(tmp_path / "events.db")) as conn:
            replay_into(conn, tmp_path / "rebuilt")
        assert projection_files(root) == projection_files(tmp_path / "rebuilt")
    finally:
        await store.close()


def test_yaml_text_is_what_pyyaml_writes() -> None:
    # Scalars that PyYAML quotes, folds or writes plain, in the layout written here...
    doc = {"id": "job-1", "name": "Nightly: photos", "enabled": True, "n": 3, "f": 42.5,
           "none": None, "empty": "", "when": "2026-12-03T15:31:36.123456Z", "yes": "yes",
           "num": "0123", "path": "/home/a b/c", "uni": "café", "minus": "- x",
           "nested": {"b": [1, {"z": [], "a": {}}], "a": "12:30"}}
    assert render_mapping(doc) == dump_yaml({k: _sorted(v) for k, v in doc.items()})
    assert yaml.safe_load(render_mapping(doc))["when"] == "2026-12-03T15:31:36.123456Z"
    # ...and documents left to PyYAML whole (a folded line, a list in a list, an odd key).
    for odd in ({"long": "x " * 70}, {"list": [[1], "a"]}, {"odd key: here": 1}):
        assert render_mapping(odd) == dump_yaml(odd)
    assert Projection(Path("/nonexistent")).render("settings") is not None


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


async def test_an_event_is_encoded_once_for_many_websocket_clients(app_client: Any) -> None:
    store, live = app_client.app[STORE], app_client.app[LIVE]
    sockets = [await app_client.ws_connect("/ws") for _ in range(20)]
    try:
        for ws in sockets:
            assert (await ws.receive_json(timeout=5))["kind"] == "hello"
        events_before = record.STATS["encoded"]
        live_before = live_module.STATS["encoded"]
        await store.append("docs-1", 0, [created("docs-1")])
        live.publish({"kind": "progress", "run_id": "r-1", "files": 3})
        for ws in sockets:
            assert (await ws.receive_json(timeout=5))["seq"] == 1
            assert (await ws.receive_json(timeout=5))["kind"] == "progress"
        assert record.STATS["encoded"] - events_before == 1
        assert live_module.STATS["encoded"] - live_before == 1
    finally:
        for ws in sockets:
            await ws.close()


async def test_a_projector_stopped_before_it_starts_writes_nothing(store: EventStore,
                                                                   tmp_path: Path) -> None:
    await store.append("docs-1", 0, [created("docs-1")])
    projector = Projector(store, tmp_path / "projections")
    await projector.stop()
    await asyncio.wait_for(projector.start(), 1.0)
    assert projector.interrupted and not projector.healthy
    assert not (tmp_path / "projections").exists()

"""What the faster log must still do: group commits that group, acks that survive, the mark
kept, a catch-up that stops when asked, YAML text unchanged, and one encoding per event."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import yaml

from core import live as live_module
from events import record
from events.audit import open_readonly, verify
from events.batch import canonical_text, encode_events
from events.registry import event_classes
from events.store import EventsMissing, EventStore
from events.types import RunCheckpointed, RunQueued, SettingsChanged
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


def _sample(annotation: object) -> object:
    """A value for a field of this (string) annotation, with what JSON must get right."""
    text = str(annotation)
    if text.startswith("dict"):
        return {"b": [1, 2.5, None, True], "a": "é \u2603", "z": {"k": -0.0, "e": 1e-7}}
    if text.startswith(("list", "tuple")):
        return ["x", 1]
    return {"int": 7, "float": 2.5, "bool": True}.get(text.split(" ")[0], "s-é")


def test_every_event_type_is_stored_as_the_canonical_text_of_its_payload() -> None:
    # The writer encodes fields in place with a reused encoder: the text (which the hash
    # chain covers) must stay what canonical_text(payload()) gives.
    for cls in event_classes():
        event = cls(**{f.name: _sample(f.type) for f in dataclasses.fields(cls)
                       if f.default is dataclasses.MISSING
                       and f.default_factory is dataclasses.MISSING})
        assert encode_events([event]) == [(cls.type_name, canonical_text(event.payload()))]
    loop: dict[str, object] = {}
    loop["self"] = loop
    for bad, error in ((float("nan"), ValueError), (loop, ValueError), (object(), TypeError)):
        with pytest.raises(error):
            encode_events([SettingsChanged(changes={"x": bad})])


async def test_calls_that_arrive_during_a_commit_go_out_together_next(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    store = await EventStore.open(db)
    blocker = sqlite3.connect(db, isolation_level=None)
    try:
        before = store.commits
        blocker.execute("BEGIN IMMEDIATE")  # the writer's commit waits on this lock
        first = asyncio.ensure_future(store.append("job-0", 0, [created("job-0")]))
        await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(store.append(f"job-{i}", 0, [created(f"job-{i}")]))
                for i in range(1, 51)]
        await asyncio.sleep(0.05)
        assert not first.done()
        blocker.execute("ROLLBACK")
        stored = [(await first)[0]] + [(await call)[0] for call in rest]
        assert [ev.seq for ev in stored] == list(range(1, 52))
        assert store.commits - before == 2  # the first call, then the 50 gathered behind it
        assert len({ev.time for ev in stored[1:]}) == 1  # one group, one clock reading
    finally:
        blocker.close()
        await store.close()


async def test_a_group_behind_a_refused_commit_is_built_on_what_was_committed(
        tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    store = await EventStore.open(db)
    blocker = sqlite3.connect(db, isolation_level=None)
    try:
        await store.append("job-0", 0, [created("job-0")])
        blocker.execute("BEGIN IMMEDIATE")
        first = asyncio.gather(*(store.append(s, 0, [created(s)]) for s in ("a-1", "b-1")))
        await asyncio.sleep(0.05)
        behind = asyncio.gather(*(store.append(f"c-{i}", 0, [created(f"c-{i}")])
                                  for i in range(10)))
        await asyncio.sleep(0.05)
        # Another process takes seq 2 while the first group waits: that group's commit is
        # refused, retried call by call, and the group behind it must follow the new head.
        blocker.execute("INSERT INTO events VALUES (2, 'x-1', 1, 't', 'JobDeleted', '{}', "
                        "'f00d')")
        blocker.execute("COMMIT")
        seqs = [ev.seq for stored in [*await first, *await behind] for ev in stored]
        assert sorted(seqs) == list(range(3, 15))
        rows = await store.read(since=2, verify=False)
        prev = "f00d"
        for row in rows:  # each row hashed onto the one before it, from the foreign row on
            assert row.expected_hash(prev) == row.hash
            prev = row.hash
    finally:
        blocker.close()
        await store.close()


async def test_a_cancelled_caller_has_its_append_written_whole(store: EventStore) -> None:
    waiting = asyncio.ensure_future(store.append("docs-1", 0, [
        created("docs-1"), RunQueued(job_id="docs-1", run_id="r-000000000001")]))
    await asyncio.sleep(0)  # queued
    waiting.cancel()
    others = await asyncio.gather(*(store.append(f"j-{i}", 0, [created(f"j-{i}")])
                                    for i in range(3)))
    assert waiting.cancelled() and len(others) == 3
    assert store.stream_version("docs-1") == 2
    assert [ev.type for ev in await store.read_stream("docs-1")] == ["JobCreated", "RunQueued"]
    nxt = await store.append("docs-1", 2, [RunQueued(job_id="docs-1", run_id="r-000000000002")])
    assert nxt[0].seq == store.last_seq

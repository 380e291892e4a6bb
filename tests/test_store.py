"""Contract tests for the event store: what every caller of append/read relies on."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from events.store import (
    ConcurrencyError,
    EventsMissing,
    EventStore,
    StoreClosed,
    StoreError,
    WriteFailed,
)
from events.types import JobDeleted, RunQueued, RunStarted, SettingsChanged
from tests.conftest import created


async def test_append_assigns_seq_and_versions_in_order(store: EventStore) -> None:
    stored = await store.append("docs-1", 0, [created("docs-1"),
                                             RunQueued(job_id="docs-1", run_id="r-000000000001")])
    assert [(e.seq, e.version) for e in stored] == [(1, 1), (2, 2)]
    more = await store.append("settings", 0, [SettingsChanged(changes={"auto_resume": False})])
    assert (more[0].seq, more[0].version, more[0].stream) == (3, 1, "settings")
    got = await store.read(since=0)
    assert [e.seq for e in got] == [1, 2, 3]
    assert [e.type for e in got] == ["JobCreated", "RunQueued", "SettingsChanged"]
    assert got[1].payload == {"job_id": "docs-1", "run_id": "r-000000000001",
                              "trigger": "manual", "kind": "backup", "params": {}}
    assert [e.seq for e in await store.read(since=1, limit=1)] == [2]


async def test_version_conflict_writes_nothing(store: EventStore) -> None:
    await store.append("docs-1", 0, [created("docs-1")])
    with pytest.raises(ConcurrencyError, match="version 1, expected 0"):
        await store.append("docs-1", 0, [created("docs-1"), JobDeleted(job_id="docs-1")])
    assert [e.seq for e in await store.read()] == [1]
    assert store.stream_version("docs-1") == 1
    # The next correct append continues the chain without a gap.
    nxt = await store.append("docs-1", 1, [JobDeleted(job_id="docs-1")])
    assert (nxt[0].seq, nxt[0].version) == (2, 2)


async def test_concurrent_appends_to_one_stream_let_exactly_one_win(store: EventStore) -> None:
    await store.append("docs-1", 0, [created("docs-1")])
    results = await asyncio.gather(
        *(store.append("docs-1", 1, [RunQueued(job_id="docs-1", run_id=f"r-{i:012x}")])
          for i in range(20)), return_exceptions=True)
    wins = [r for r in results if not isinstance(r, BaseException)]
    assert len(wins) == 1
    assert all(isinstance(r, ConcurrencyError) for r in results if r not in wins)
    assert len(await store.read()) == 2


async def test_group_commit_keeps_every_call_atomic_and_dense(store: EventStore) -> None:
    async def appender(i: int) -> None:
        stream = f"job-{i}"
        await store.append(stream, 0, [created(stream)])
        for v in range(1, 6):
            await store.append(stream, v, [RunQueued(job_id=stream, run_id=f"r-{v:012x}")])

    commits_before = store.commits
    await asyncio.gather(*(appender(i) for i in range(100)))
    events = await store.read(limit=10_000)
    assert [e.seq for e in events] == list(range(1, 601))
    for i in range(100):
        versions = [e.version for e in events if e.stream == f"job-{i}"]
        assert versions == [1, 2, 3, 4, 5, 6]
    # 600 appends from 100 concurrent tasks shared transactions: that is group commit.
    assert store.commits - commits_before < 600


async def test_batch_is_atomic_when_the_database_refuses_part_of_it(tmp_path: Path) -> None:
    store = await EventStore.open(tmp_path / "events.db")
    try:
        await store.append("docs-1", 0, [created("docs-1")])
        # Another process writes version 3 behind our back; our batch of versions 2 and 3
        # then hits the UNIQUE constraint on its second row.
        other = sqlite3.connect(tmp_path / "events.db")
        other.execute("INSERT INTO events VALUES (99, 'docs-1', 3, 't', 'JobDeleted', '{}', 'x')")
        other.commit()
        other.close()
        with pytest.raises(ConcurrencyError, match="nothing was written"):
            await store.append("docs-1", 1, [RunQueued(job_id="docs-1", run_id="r-000000000001"),
                                            RunStarted(job_id="docs-1", run_id="r-000000000001")])
        # verify=False: the foreign row breaks the chain, which a checked read refuses.
        rows = await store.read(verify=False)
        assert [(e.seq, e.version) for e in rows] == [(1, 1), (99, 3)]
    finally:
        await store.close()


async def test_one_failing_call_in_a_group_does_not_sink_the_others(tmp_path: Path) -> None:
    store = await EventStore.open(tmp_path / "events.db")
    try:
        for s in ("a-1", "b-1", "c-1"):
            await store.append(s, 0, [created(s)])
        other = sqlite3.connect(tmp_path / "events.db")
        other.execute("INSERT INTO events VALUES (50, 'b-1', 2, 't', 'JobDeleted', '{}', 'x')")
        other.commit()
        other.close()
        results = await asyncio.gather(
            *(store.append(s, 1, [JobDeleted(job_id=s)]) for s in ("a-1", "b-1", "c-1")),
            return_exceptions=True)
        assert not isinstance(results[0], BaseException)
        assert isinstance(results[1], ConcurrencyError)
        assert not isinstance(results[2], BaseException)
        streams = [(e.stream, e.version) for e in await store.read(verify=False)]
        assert ("a-1", 2) in streams and ("c-1", 2) in streams
    finally:
        await store.close()


async def test_unserialisable_event_is_refused_and_writes_nothing(store: EventStore) -> None:
    with pytest.raises(StoreError, match="cannot be stored"):
        await store.append("docs-1", 0, [created("docs-1"),
                                         SettingsChanged(changes={"x": float("nan")})])
    assert await store.read() == []
    assert store.stream_version("docs-1") == 0


async def test_bad_call_in_a_group_fails_alone(store: EventStore) -> None:
    results = await asyncio.gather(
        store.append("a-1", 0, [created("a-1")]),
        store.append("b-1", 0, [SettingsChanged(changes={"name": "bad \ud800 surrogate"})]),
        store.append("c-1", 0, [created("c-1")]), return_exceptions=True)
    assert isinstance(results[1], StoreError)
    assert [e.stream for e in await store.read()] == ["a-1", "c-1"]


async def test_hash_chain_links_every_event(store: EventStore) -> None:
    await store.append("docs-1", 0, [created("docs-1")])
    await store.append("docs-1", 1, [JobDeleted(job_id="docs-1")])
    first, second = await store.read()
    assert first.expected_hash("0" * 64) == first.hash
    assert second.expected_hash(first.hash) == second.hash
    assert second.expected_hash("f" * 64) != second.hash


async def test_database_itself_refuses_update_and_delete(store: EventStore) -> None:
    await store.append("docs-1", 0, [created("docs-1")])
    conn = sqlite3.connect(store.path)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("UPDATE events SET payload = '{}' WHERE seq = 1")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("DELETE FROM events WHERE seq = 1")
    finally:
        conn.close()
    assert (await store.read())[0].payload["job_id"] == "docs-1"


async def test_events_survive_reopen_with_durable_settings(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    store = await EventStore.open(path)
    await store.append("docs-1", 0, [created("docs-1")])
    await store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    again = await EventStore.open(path)
    try:
        assert again.last_seq == 1 and again.stream_version("docs-1") == 1
        nxt = await again.append("docs-1", 1, [JobDeleted(job_id="docs-1")])
        # The chain continues from the stored head after a restart.
        assert nxt[0].expected_hash((await again.read())[0].hash) == nxt[0].hash
        async with again._writer.execute("PRAGMA synchronous") as cur:
            assert (await cur.fetchone())[0] == 2  # FULL
    finally:
        await again.close()


async def test_close_writes_what_was_accepted_and_refuses_the_rest(tmp_path: Path) -> None:
    store = await EventStore.open(tmp_path / "events.db")
    pending = [asyncio.ensure_future(store.append(f"j-{i}", 0, [created(f"j-{i}")]))
               for i in range(50)]
    await asyncio.sleep(0)  # the appends are queued before close is asked for
    await store.close()
    assert all(not f.exception() for f in pending)
    with pytest.raises(StoreClosed):
        await store.append("late-1", 0, [created("late-1")])
    reopened = await EventStore.open(tmp_path / "events.db")
    try:
        assert reopened.last_seq == 50
    finally:
        await reopened.close()


async def test_notifier_wakes_subscribers_after_commit_in_order(store: EventStore) -> None:
    sub = store.notifier.subscribe(limit=100)
    await store.append("docs-1", 0, [created("docs-1")])
    await store.append("docs-1", 1, [JobDeleted(job_id="docs-1")])
    items = await sub.get()
    assert [getattr(i, "seq", None) for i in items] == [1, 2]
    # Everything a subscriber is told about is already readable from the log.
    assert len(await store.read()) == 2
    sub.close()


async def test_overflowing_subscriber_is_marked_not_blocking(store: EventStore) -> None:
    slow = store.notifier.subscribe(limit=3)
    fast = store.notifier.subscribe(limit=100)
    for i in range(5):
        await store.append(f"j-{i}", 0, [created(f"j-{i}")])
    assert slow.overflowed
    assert [getattr(i, "seq", None) for i in await fast.get()] == [1, 2, 3, 4, 5]
    slow.close()
    fast.close()


async def test_a_log_missing_acknowledged_events_is_refused(tmp_path: Path) -> None:
    # An older copy of events.db put back (or a truncated -wal) must not be served as if
    # complete: the acknowledged mark names what is missing.
    db = tmp_path / "events.db"
    store = await EventStore.open(db)
    await store.append("a", 0, [created("a")])
    await store.close()
    older = tmp_path / "older.db"
    shutil.copy(db, older)
    store = await EventStore.open(db)
    await store.append("b", 0, [created("b")])
    await store.append("c", 0, [created("c")])
    await store.close()
    shutil.copy(older, db)
    with pytest.raises(EventsMissing, match="seqs 2 to 3 are missing"):
        await EventStore.open(db)
    # A log with every acknowledged event opens; so does one whose mark was moved away.
    (tmp_path / "events.db-acked").rename(tmp_path / "accepted-loss")
    store = await EventStore.open(db)
    assert store.last_seq == 1
    await store.close()


async def test_a_damaged_log_fails_appends_and_the_writer_lives_on(tmp_path: Path) -> None:
    # The file damaged under the running server (a failing disk): the commit fails, and
    # so does reading the log's head back. The append must fail with a clear error and
    # /healthz must say the log cannot be written; before, the writer task died, every
    # later append waited for ever and /healthz still said all was well.
    db = tmp_path / "events.db"
    store = await EventStore.open(db)
    for i in range(300):
        await store.append("settings", None, [SettingsChanged(changes={"k": "v" * 400,
                                                                      "i": i})])
    await store._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    os.truncate(db, 8192)
    with pytest.raises(WriteFailed):
        await asyncio.wait_for(
            store.append("settings", None, [SettingsChanged(changes={"x": 1})]), 10)
    assert store.write_error is not None
    with pytest.raises(WriteFailed):  # the next one is answered too, not left waiting
        await asyncio.wait_for(
            store.append("settings", None, [SettingsChanged(changes={"x": 2})]), 10)
    await asyncio.wait_for(store.close(), 10)

"""Projector tests: incremental equals rebuild, idempotent, damaged files rebuilt."""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import closing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events.audit import open_readonly
from events.record import GENESIS_HASH, StoredEvent, chain_hash
from events.store import EventStore
from events.types import (
    Event,
    JobDeleted,
    JobDisabled,
    JobUpdated,
    RunCheckpointed,
    RunFailed,
    RunInterrupted,
    RunPaused,
    RunQueued,
    RunResumed,
    RunStarted,
    RunSucceeded,
    SettingsChanged,
    SnapshotPruned,
    VerifyFinished,
    canonical_json,
)
from storage.projection import STATE_FILE, Projection
from storage.projector import Projector
from storage.replay import replay_into
from tests.conftest import created, job_spec
from tests.projection_helpers import history, projection_files


def rebuilt(db: Path, out: Path) -> dict[str, bytes]:
    """Rebuild the projections from seq 0 into an empty directory and read them."""
    with closing(open_readonly(db)) as conn:
        replay_into(conn, out)
    return projection_files(out)


async def wait_projected(projector: Projector) -> None:
    """Wait until the projector has applied everything committed."""
    for _ in range(500):
        if projector.lag == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"projector still {projector.lag} events behind")


async def test_live_projection_shows_jobs_runs_and_settings(tmp_path: Path) -> None:
    store = await EventStore.open(tmp_path / "events.db")
    projector = Projector(store, tmp_path)
    await projector.start()
    try:
        await history(store, "docs-1", runs=4)
        await store.append("settings", 0, [SettingsChanged(changes={"max_concurrent_runs": 4})])
        await wait_projected(projector)
        job = yaml.safe_load((tmp_path / "jobs/docs-1.yaml").read_text())
        assert job["name"] == "DOCS-1" and job["enabled"] is True
        assert job["spec"]["sources"] == ["/home/a/docs"]
        # Most recent first; runs 0 and 3 failed.
        assert [r["state"] for r in job["runs"]] == ["failed", "succeeded", "succeeded",
                                                     "failed"]
        assert job["last_success"]["snapshot_id"] == "snap-2"
        assert job["runs"][0]["error"] == "disk full"
        assert job["totals"] == {"runs": 4, "succeeded": 2, "failed": 2, "cancelled": 0,
                                 "bytes": 3000}
        assert [s["id"] for s in job["snapshots"]] == ["snap-1", "snap-2"]
        text = (tmp_path / "settings.yaml").read_text()
        assert "max_concurrent_runs: 4" in text and "auto_resume: true" in text
        assert text.startswith("# Written by backup-manager")
    finally:
        await projector.stop()
        await store.close()


async def test_incremental_with_restarts_equals_rebuild_from_zero(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = await EventStore.open(data / "events.db")
    try:
        for phase, job in enumerate(["docs-1", "photos-2", "mail-3"]):
            projector = Projector(store, data)  # a restart of the server, each phase
            await projector.start()
            await history(store, job, runs=phase + 2)
            await store.append("docs-1", None, [JobUpdated(job_id="docs-1",
                                                           spec=job_spec(f"Docs v{phase}"))])
            await wait_projected(projector)
            await projector.stop()
        await store.append("photos-2", None, [JobDeleted(job_id="photos-2")])
        projector = Projector(store, data)
        await projector.start()  # catches up the delete on start
        await projector.stop()
    finally:
        await store.close()
    incremental = projection_files(data)
    assert "jobs/photos-2.yaml" not in incremental
    assert set(incremental) == {"jobs/docs-1.yaml", "jobs/mail-3.yaml", "settings.yaml"}
    assert rebuilt(data / "events.db", tmp_path / "rebuild") == incremental


async def test_applying_events_twice_changes_nothing(tmp_path: Path) -> None:
    store = await EventStore.open(tmp_path / "events.db")
    try:
        await history(store, "docs-1", runs=3)
        events = await store.read()
        projection = Projection(tmp_path)
        projection.apply(events)
        projection.flush()
        before = projection_files(tmp_path)
        # A crash after the files were written but before the position was: the position
        # is behind, so the same events are applied again on start.
        state = json.loads((tmp_path / STATE_FILE).read_text())
        state["seq"] = 0
        (tmp_path / STATE_FILE).write_text(json.dumps(state))
        projector = Projector(store, tmp_path)
        await projector.start()
        await projector.stop()
        assert projection_files(tmp_path) == before
        assert projector.seq == events[-1].seq
    finally:
        await store.close()


@pytest.mark.parametrize("damage", ["garbage", "deleted", "edited", "emptied"])
async def test_damaged_yaml_is_rebuilt_from_the_log_with_a_warning(
        tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    store = await EventStore.open(tmp_path / "events.db")
    try:
        projector = Projector(store, tmp_path)
        await projector.start()
        await history(store, "docs-1", runs=2)
        await history(store, "mail-2", runs=1)
        await wait_projected(projector)
        await projector.stop()
        good = projection_files(tmp_path)
        target = tmp_path / "jobs/docs-1.yaml"
        if damage == "garbage":
            target.write_bytes(b"\x00\xff: [unclosed\n  - {")
        elif damage == "deleted":
            target.unlink()
        elif damage == "edited":
            target.write_text(target.read_text().replace("name: DOCS-1", "name: hacked"))
        else:
            target.write_text("")
        caplog.set_level(logging.WARNING)
        projector = Projector(store, tmp_path)
        await projector.start()  # must not crash
        await projector.stop()
        assert projection_files(tmp_path) == good
        assert any("docs-1.yaml" in r.getMessage() and "rebuilding" in r.getMessage()
                   for r in caplog.records)
    finally:
        await store.close()


async def test_unreadable_position_file_rebuilds_everything(tmp_path: Path) -> None:
    store = await EventStore.open(tmp_path / "events.db")
    try:
        await history(store, "docs-1", runs=2)
        (tmp_path / STATE_FILE).write_text("{not json")
        projector = Projector(store, tmp_path)
        await projector.start()
        await projector.stop()
        assert projection_files(tmp_path) == rebuilt(tmp_path / "events.db", tmp_path / "r")
    finally:
        await store.close()


# --- property: any split of any history gives the same files as a rebuild ------------

JOBS = ["docs-1", "mail-2"]


def _event_strategy() -> st.SearchStrategy[tuple[str, Event]]:
    job = st.sampled_from(JOBS)
    run = st.sampled_from(["r-000000000001", "r-000000000002"])
    text = st.text(max_size=12)
    return st.one_of(
        job.map(lambda j: (j, created(j))),
        st.tuples(job, text).map(lambda t: (t[0], JobUpdated(job_id=t[0],
                                                             spec=job_spec(t[1] or "x")))),
        job.map(lambda j: (j, JobDisabled(job_id=j))),
        job.map(lambda j: (j, JobDeleted(job_id=j))),
        st.tuples(job, run).map(lambda t: (t[0], RunQueued(job_id=t[0], run_id=t[1]))),
        st.tuples(job, run).map(lambda t: (t[0], RunStarted(job_id=t[0], run_id=t[1]))),
        st.tuples(job, run, st.integers(0, 99)).map(
            lambda t: (t[0], RunCheckpointed(job_id=t[0], run_id=t[1],
                                             checkpoint={"done": t[2]}))),
        st.tuples(job, run, st.integers(0, 10**12)).map(
            lambda t: (t[0], RunSucceeded(job_id=t[0], run_id=t[1], snapshot_id=t[1][-4:],
                                          files=1, bytes=t[2], duration=0.25))),
        st.tuples(job, run, text).map(lambda t: (t[0], RunFailed(job_id=t[0], run_id=t[1],
                                                                 error=t[2]))),
        st.tuples(job, run).map(lambda t: (t[0], RunInterrupted(job_id=t[0], run_id=t[1]))),
        st.tuples(job, run).map(lambda t: (t[0], SnapshotPruned(job_id=t[0],
                                                                snapshot_id=t[1][-4:]))),
        st.tuples(job, run, st.booleans()).map(
            lambda t: (t[0], VerifyFinished(job_id=t[0], snapshot_id=t[1][-4:], ok=t[2]))),
        st.dictionaries(st.sampled_from(["max_concurrent_runs", "theme", "webhook_url"]),
                        st.one_of(st.integers(1, 8), text), max_size=2).map(
            lambda c: ("settings", SettingsChanged(changes=c))),
    )


def _stored(items: list[tuple[str, Event]]) -> list[StoredEvent]:
    versions: dict[str, int] = {}
    prev, out = GENESIS_HASH, []
    for seq, (stream, ev) in enumerate(items, start=1):
        versions[stream] = versions.get(stream, 0) + 1
        time = f"2026-01-01T00:00:{seq % 60:02d}.000000Z"
        payload = canonical_json(ev.payload())
        prev = chain_hash(prev, seq, stream, versions[stream], time, ev.type_name, payload)
        out.append(StoredEvent(seq, stream, versions[stream], time, ev.type_name, payload, prev))
    return out


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=st.lists(_event_strategy(), max_size=40),
       cuts=st.lists(st.integers(0, 40), max_size=4))
def test_any_split_with_reloads_equals_one_rebuild(tmp_path_factory: pytest.TempPathFactory,
                                                   items: list[tuple[str, Event]],
                                                   cuts: list[int]) -> None:
    events = _stored(items)
    inc = tmp_path_factory.mktemp("inc")
    for cut in sorted({*(min(c, len(events)) for c in cuts), len(events)}):
        projection, broken = Projection.load(inc)  # a restart between chunks
        assert broken == set()
        projection.apply(events[:cut])  # re-applying the earlier part must be a no-op
        projection.flush()
        assert projection.seq == cut
    full = tmp_path_factory.mktemp("full")
    once = Projection(full)
    once.apply(events)
    once.flush()
    assert projection_files(inc) == projection_files(full)


async def test_projector_reports_write_failures_and_recovers(tmp_path: Path) -> None:
    store = await EventStore.open(tmp_path / "events.db")
    projector = Projector(store, tmp_path)
    await projector.start()
    try:
        await history(store, "docs-1", runs=1)
        await wait_projected(projector)
        # jobs/ replaced by a plain file: every write of a job file now fails.
        jobs = tmp_path / "jobs"
        (jobs / "docs-1.yaml").unlink()
        jobs.rmdir()
        jobs.write_text("in the way")
        await store.append("mail-2", 0, [created("mail-2")])
        for _ in range(200):
            if projector.error is not None:
                break
            await asyncio.sleep(0.01)
        assert projector.error is not None and not projector.healthy
        jobs.unlink()
        for _ in range(300):
            if projector.healthy and projector.lag == 0:
                break
            await asyncio.sleep(0.01)
        assert projector.healthy and projector.lag == 0
        assert (tmp_path / "jobs" / "mail-2.yaml").exists()
    finally:
        await projector.stop()
        await store.close()


async def test_files_damaged_while_running_are_put_back(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = await EventStore.open(tmp_path / "events.db")
    projector = Projector(store, tmp_path, repair_interval=0.1)
    await projector.start()
    try:
        await history(store, "docs-1", runs=1)
        await wait_projected(projector)
        good = projection_files(tmp_path)
        caplog.set_level(logging.WARNING)
        (tmp_path / "jobs/docs-1.yaml").write_text("name: edited by hand\n")
        (tmp_path / "settings.yaml").unlink()
        for _ in range(300):
            if projection_files(tmp_path) == good:
                break
            await asyncio.sleep(0.01)
        assert projection_files(tmp_path) == good
        assert any("settings.yaml" in r.getMessage() for r in caplog.records)
    finally:
        await projector.stop()
        await store.close()


async def test_yaml_and_in_memory_state_agree_on_resumed_runs(tmp_path: Path) -> None:
    from core.state import State

    store = await EventStore.open(tmp_path / "events.db")
    state = State()
    store.notifier.add_listener(state.apply_all)
    projector = Projector(store, tmp_path)
    await projector.start()
    try:
        await store.append("docs-1", 0, [created("docs-1")])
        paused, cut = "r-00000000000a", "r-00000000000b"
        await store.append("docs-1", None, [
            RunQueued(job_id="docs-1", run_id=paused), RunStarted(job_id="docs-1", run_id=paused),
            RunPaused(job_id="docs-1", run_id=paused), RunResumed(job_id="docs-1", run_id=paused),
            RunQueued(job_id="docs-1", run_id=cut), RunStarted(job_id="docs-1", run_id=cut),
            RunInterrupted(job_id="docs-1", run_id=cut),
            RunResumed(job_id="docs-1", run_id=cut)])
        await wait_projected(projector)
        doc = yaml.safe_load((tmp_path / "jobs/docs-1.yaml").read_text())
        in_yaml = {r["run_id"]: r["state"] for r in doc["runs"]}
        # A paused run continues; an interrupted one waits in the queue again.
        assert in_yaml == {paused: "running", cut: "queued"}
        assert {r: state.runs[r].state for r in in_yaml} == in_yaml
    finally:
        await projector.stop()
        await store.close()


def test_non_backup_runs_make_no_snapshot_and_no_backup_totals() -> None:
    from core.state import State
    from storage.fold import fold_job

    backup, restore = "r-00000000000c", "r-00000000000d"
    events = _stored([
        ("docs-1", created("docs-1")),
        ("docs-1", RunQueued(job_id="docs-1", run_id=backup)),
        ("docs-1", RunStarted(job_id="docs-1", run_id=backup)),
        ("docs-1", RunSucceeded(job_id="docs-1", run_id=backup, snapshot_id="snap-1",
                                files=2, bytes=100)),
        ("docs-1", RunQueued(job_id="docs-1", run_id=restore, kind="restore",
                             params={"snapshot_id": "snap-1", "target": "/tmp/out",
                                     "path": None, "overwrite": False,
                                     "password": "hunter2"})),
        ("docs-1", RunStarted(job_id="docs-1", run_id=restore)),
        ("docs-1", RunSucceeded(job_id="docs-1", run_id=restore, snapshot_id="snap-1",
                                files=2, bytes=100)),
    ])
    doc = None
    for ev in events:
        doc = fold_job(doc, ev)
    assert doc is not None
    assert [s["id"] for s in doc["snapshots"]] == ["snap-1"]
    assert doc["totals"]["succeeded"] == 1 and doc["totals"]["bytes"] == 100
    assert doc["last_success"]["run_id"] == backup
    runs = {r["run_id"]: r for r in doc["runs"]}
    assert "kind" not in runs[backup]  # backup entries stay as they were
    assert runs[restore]["kind"] == "restore" and runs[restore]["state"] == "succeeded"
    assert runs[restore]["params"] == {"snapshot_id": "snap-1", "target": "/tmp/out",
                                       "path": None, "overwrite": False}
    state = State()
    state.apply_all(events)
    assert state.jobs["docs-1"].snapshots == ["snap-1"]
    assert state.runs[restore].kind == "restore" and state.runs[backup].kind == "backup"
    assert state.runs[restore].params["target"] == "/tmp/out"
    assert state.runs[restore].state == "succeeded"

"""Start-up at scale: the state snapshot, the tail-first chain check, a stop signal."""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from pathlib import Path

import pytest

from core import build as core_build
from core import snapshot
from core.build import CoreConfig, build_core
from core.snapshot import SNAPSHOT_FILE
from core.snapshots import StateSnapshots
from core.state import State
from events.store import ChainBroken, EventStore
from events.types import JobDeleted, RunQueued, RunStarted, RunSucceeded, SettingsChanged
from server import app as server_app
from server.health import chain_state, health_status, log_problems
from tests.cli_helpers import free_port, spawn_server
from tests.scale_helpers import ScaleData, build, build_sync
from tests.startup_helpers import (
    alter_row,
    full_replay,
    restart,
    start_and_stop,
    state_facts,
)


async def _tail(store: EventStore, job_id: str, run_id: str) -> None:
    """Events after a snapshot: a run queued and finished, settings, a job deleted."""
    await store.append(job_id, None, [RunQueued(job_id=job_id, run_id=run_id,
                                                trigger="manual"),
                                      RunStarted(job_id=job_id, run_id=run_id)])
    await store.append(job_id, None, [RunSucceeded(job_id=job_id, run_id=run_id,
                                                   snapshot_id="s-after", files=3, bytes=9,
                                                   duration=1.5)])
    await store.append("settings", None, [SettingsChanged(changes={"theme": "dark"})])


async def test_a_restart_uses_the_snapshot_and_folds_what_a_full_replay_folds(
        tmp_path: Path) -> None:
    data = await build(tmp_path / "data", jobs=30, events=2_000, queued=10)
    store = await EventStore.open(data.events_db)
    try:
        await start_and_stop(store, data.data_dir)  # a clean stop writes the snapshot
        await _tail(store, data.job_ids[-1], "r-after")
        await store.append(data.job_ids[3], None, [JobDeleted(job_id=data.job_ids[3])])

        again = build_core(store, CoreConfig(data.data_dir))
        await again.load()
        try:
            assert again.snapshots.written_seq == 2_000  # loaded from the snapshot...
            assert again.snapshots.folded == store.last_seq - 2_000  # ...plus the tail
            assert state_facts(again.state) == state_facts(await full_replay(store))
            assert again.state.runs["r-after"].state == "succeeded"
            assert data.job_ids[3] not in again.state.jobs
            assert len(again.state.active_runs()) == 10 + 20  # queued and interrupted
        finally:
            await again.stop()
    finally:
        await store.close()


async def _snapshot_at_head(store: EventStore, path: Path) -> State:
    keeper = StateSnapshots(store, State(), path)
    await keeper.load()
    assert await keeper.write()
    return keeper.state


async def test_a_snapshot_of_another_log_is_not_used(tmp_path: Path) -> None:
    data = await build(tmp_path / "data", jobs=20, events=1_000, queued=5)
    other, older = tmp_path / "other.db", tmp_path / "older.db"
    shutil.copy(data.events_db, other)
    shutil.copy(data.events_db, older)
    path = data.data_dir / SNAPSHOT_FILE
    store = await EventStore.open(data.events_db)
    try:
        await _tail(store, data.job_ids[0], "r-one")
        await _snapshot_at_head(store, path)
    finally:
        await store.close()
    # The log put back from a copy that went another way: same length, other events.
    store = await EventStore.open(other)
    try:
        await _tail(store, data.job_ids[1], "r-two")
        state = await restart(store, path, written_seq=0, folded=store.last_seq)
        assert "r-one" not in state.runs and "r-two" in state.runs
    finally:
        await store.close()
    # And a log that ends before the snapshot's seq (an older copy, put back as a person
    # would: without the mark of what the other one acknowledged).
    store = await EventStore.open(older)
    try:
        assert (await restart(store, path, written_seq=0, folded=1_000)).seq == 1_000
    finally:
        await store.close()


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "foreign", "version",
                                    "empty", "directory"])
async def test_a_damaged_or_foreign_snapshot_is_ignored(tmp_path: Path, damage: str) -> None:
    data = await build(tmp_path / "data", jobs=10, events=500, queued=3)
    path = data.data_dir / SNAPSHOT_FILE
    store = await EventStore.open(data.events_db)
    try:
        await _snapshot_at_head(store, path)
        raw = path.read_bytes()
        if damage == "flip":
            at = len(raw) // 2
            path.write_bytes(raw[:at] + bytes([raw[at] ^ 1]) + raw[at + 1:])
        elif damage == "truncate":
            path.write_bytes(raw[:len(raw) - 100])
        elif damage == "garbage":
            path.write_bytes(b"\x00\xff" * 1000)
        elif damage == "foreign":
            path.write_bytes(b'{"format": "something else"}\n{}\n')
        elif damage == "version":
            version = f'"version": {snapshot.VERSION}'.encode()
            assert version in raw
            path.write_bytes(raw.replace(version, b'"version": 99', 1))
        elif damage == "empty":
            path.write_bytes(b"")
        else:
            path.unlink()
            path.mkdir()
        await restart(store, path, written_seq=0, folded=500)  # never raises: a full replay
    finally:
        await store.close()


async def test_a_break_in_the_tail_refuses_the_start_one_in_the_old_part_is_found_behind(
        tmp_path: Path) -> None:
    data = await build(tmp_path / "data", jobs=10, events=600, queued=3)
    db = data.events_db
    intact = tmp_path / "intact.db"
    shutil.copy(db, intact)
    alter_row(db, 580)
    with pytest.raises(ChainBroken, match="damaged at seq 580"):
        await EventStore.open(db, foreground_check_max=100)  # the newest 100 first

    shutil.copy(intact, db)
    alter_row(db, 50)
    store = await EventStore.open(db, foreground_check_max=100)
    try:
        assert store.chain.tail_checked == 100  # the tail holds: the server may serve
        assert health_status(store, log_problems(store)) == "checking"
        await store.wait_chain_check()
        assert store.chain.state == "failed" and chain_state(store)["bad_seq"] == 50
        assert health_status(store, log_problems(store)) == "degraded"
        with pytest.raises(ChainBroken, match="damaged at seq 50"):
            await store.append("settings", None, [SettingsChanged(changes={"theme": "x"})])
    finally:
        await store.close()


def _wait_for_line(log: Path, text: str, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while text not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.02)


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory of 1,000 jobs and 100,000 events, no YAML and no snapshot yet."""
    data = tmp_path_factory.mktemp("large") / "data"
    build_sync(data, jobs=1_000, events=100_000, queued=900)
    return data


@pytest.mark.timeout(180)
@pytest.mark.parametrize("when", ["log open", "loading"])
def test_a_stop_signal_during_start_up_ends_the_server_within_a_second(
        tmp_path: Path, large: Path, when: str) -> None:
    data = tmp_path / "data"
    shutil.copytree(large, data)
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = spawn_server(data, free_port(), out)
        try:
            # "log open": the store just opened, the state about to load; "loading":
            # a moment later, folding the log (about 1-2 s of it here; a signal after
            # that would find the server serving, its start-up over).
            _wait_for_line(log, "open at seq 100000")
            if when == "loading":
                time.sleep(0.4)
            assert proc.poll() is None, log.read_text()
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=30)
            took = time.monotonic() - started
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert code == 0, log.read_text()[-3000:]
    assert "serving on" not in log.read_text(), log.read_text()[-3000:]  # still starting
    assert took < 1.0, (took, log.read_text()[-3000:])
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


async def test_a_snapshot_is_written_every_n_events_while_serving(tmp_path: Path) -> None:
    data = await build(tmp_path / "data", jobs=5, events=200, queued=2)
    path = data.data_dir / SNAPSHOT_FILE
    store = await EventStore.open(data.events_db)
    try:
        state = State()
        store.notifier.add_listener(state.apply_all)
        keeper = StateSnapshots(store, state, path, every_events=50, every_seconds=3600)
        await keeper.load()
        keeper.start()  # the load folded 200 events and found no snapshot: one at once
        for _ in range(200):
            if keeper.written_seq == 200:
                break
            await asyncio.sleep(0.01)
        assert keeper.written_seq == 200
        await store.append("settings", None,  # 60 events later: due again
                           [SettingsChanged(changes={"n": i}) for i in range(60)])
        for _ in range(200):
            if keeper.written_seq >= 250:
                break
            await asyncio.sleep(0.01)
        assert keeper.written_seq >= 250
        await keeper.stop(final=True)  # and the last one at a clean stop
        assert keeper.written_seq == store.last_seq == 260
        await restart(store, path, written_seq=260, folded=0)
    finally:
        await store.close()


async def test_healthz_stays_ok_while_the_projector_catches_up_and_a_stop_ends_its_load(
        tmp_path: Path) -> None:
    # Once the projector started behind the served pages, /healthz answered 503 ("the
    # YAML projector is not running") for as long as its files loaded: minutes on a
    # large data directory, and a service manager would restart a healthy server.
    data = await build(tmp_path / "data", jobs=30, events=2_000, queued=10)
    store = await EventStore.open(data.events_db)
    try:
        await start_and_stop(store, data.data_dir)  # the YAML files written for the next
        core = build_core(store, CoreConfig(data.data_dir))
        starting = asyncio.create_task(core.projector.start())
        await asyncio.sleep(0)  # start() is now loading the files in its thread
        assert core.projector.catching_up and core.projector.healthy
        await core.projector.stop()  # the load sees the flag between files
        assert starting.done() and core.projector.interrupted
        assert not core.projector.catching_up
    finally:
        await store.close()


@pytest.fixture
async def log_of_500(tmp_path: Path) -> ScaleData:
    """A log of 500 events, made large for a test by lowering a threshold below it."""
    return await build(tmp_path / "data", jobs=10, events=500, queued=3)


async def test_a_large_log_loads_without_its_projector_a_small_one_with_it(
        log_of_500: ScaleData, monkeypatch: pytest.MonkeyPatch) -> None:
    # At 1,000,000 events the YAML files take seconds to load: load() waited 0.5 s for
    # them in vain, and their load held the interpreter lock beside the rest of the start.
    data = log_of_500
    store = await EventStore.open(data.events_db)
    try:
        small = build_core(store, CoreConfig(data.data_dir))
        await small.load()
        assert small.projector.healthy  # started in load, and waited for
        await small.stop()
        monkeypatch.setattr(core_build, "PROJECTOR_WAIT_EVENTS", 100)  # 500 is large now
        large = build_core(store, CoreConfig(data.data_dir))
        await large.load()
        assert not large.projector.healthy and not large.projector.catching_up
        await large.stop()  # nothing to stop: it never started
        assert not large.projector.interrupted
    finally:
        await store.close()


async def test_a_large_logs_background_check_starts_a_moment_after_serving(
        log_of_500: ScaleData, monkeypatch: pytest.MonkeyPatch) -> None:
    # The walk of a million rows holds the interpreter lock beside the first pages.
    monkeypatch.setattr(server_app, "CHAIN_CHECK_DEFER_EVENTS", 100)
    monkeypatch.setattr(server_app, "CHAIN_CHECK_DELAY", 0.2)
    store = await EventStore.open(log_of_500.events_db, foreground_check_max=100,
                                  check_later=True)
    try:
        handle = server_app._start_chain_check(store)
        assert handle is not None and store.chain.state == "pending"
        assert health_status(store, log_problems(store)) == "checking"
        await asyncio.sleep(0.3)
        assert store.chain.state != "pending"  # the timer started it
        await store.wait_chain_check()
        assert store.chain.state == "passed"
        assert health_status(store, log_problems(store)) == "ok"
    finally:
        await store.close()

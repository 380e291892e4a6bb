"""Helpers for the start-up tests: fold a log from scratch, restart from a snapshot, alter a
row, compare states."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from core.build import CoreConfig, build_core
from core.snapshot import SNAPSHOT_FILE
from core.snapshots import StateSnapshots
from core.state import State
from events import sql
from events.store import EventStore


async def full_replay(store: EventStore) -> State:
    """The state folded from every event of the log, as a start without snapshot does."""
    state = State()
    async for page in store.iterate(since=0, verify=False):
        state.apply_all(page)
    return state


async def start_and_stop(store: EventStore, data_dir: Path) -> None:
    """Load a core as a first start does (no snapshot yet: every event is folded) and stop
    it cleanly, which writes the snapshot (and the YAML files) for the next start."""
    core = build_core(store, CoreConfig(data_dir))
    await core.load()
    assert (core.snapshots.folded, core.snapshots.written_seq) == (store.last_seq, 0)
    await core.stop()
    assert (data_dir / SNAPSHOT_FILE).is_file()
    assert core.snapshots.written_seq == store.last_seq


async def restart(store: EventStore, path: Path, written_seq: int, folded: int) -> State:
    """Load the state as a restart does (the snapshot file, then the log); check what it
    took from each and that it is what a full replay folds."""
    keeper = StateSnapshots(store, State(), path)
    await keeper.load()
    assert (keeper.written_seq, keeper.folded) == (written_seq, folded)
    assert state_facts(keeper.state) == state_facts(await full_replay(store))
    return keeper.state


def state_facts(state: State) -> dict[str, Any]:
    """Everything a State holds, comparable with ==."""
    return {"seq": state.seq, "finished_seq": state.finished_seq,
            "settings": state.settings, "jobs": state.jobs, "runs": state.runs,
            "active": [r.run_id for r in state.active_runs()]}


def alter_row(db: Path, seq: int) -> None:
    """Change one stored payload the way someone with file access would: the
    append-only triggers dropped, the row updated, the triggers put back."""
    conn = sqlite3.connect(db)
    try:
        conn.execute("DROP TRIGGER events_refuse_update")
        conn.execute("UPDATE events SET payload = replace(payload, '\"', ' \"') "
                     "WHERE seq = ?", (seq,))
        conn.executescript(sql.SCHEMA)
        conn.commit()
    finally:
        conn.close()

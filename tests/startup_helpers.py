"""Helpers for the start-up tests: fold a log from scratch, alter a row, compare states."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from core.state import State
from events import sql
from events.store import EventStore


async def full_replay(store: EventStore) -> State:
    """The state folded from every event of the log, as a start without snapshot does."""
    state = State()
    async for page in store.iterate(since=0, verify=False):
        state.apply_all(page)
    return state


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

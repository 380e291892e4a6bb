"""The replay tool (replay_into): the same bytes as the live projector, and safe when cut short."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from events import sql
from events.audit import iter_events, open_readonly
from events.types import (
    Event,
    JobDeleted,
    JobDisabled,
    JobEnabled,
    JobUpdated,
    RestoreFinished,
    RestoreStarted,
    RunCancelled,
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
from storage.replay import PAGE, replay_into
from tests.conftest import created, job_spec
from tests.projection_helpers import projection_files

JOBS = [f"job-{i:03d}" for i in range(40)]  # more files than one flush writes inline


def _random_event(rng: random.Random, job: str) -> Event:
    """One job event of any kind, on one of a few runs (so many runs end and are trimmed)."""
    run = f"r-{rng.randrange(30):012x}"
    snap = f"s-{rng.randrange(30)}"
    makers: list[Callable[[], Event]] = [
        lambda: RunQueued(job_id=job, run_id=run, trigger="schedule"),
        lambda: RunQueued(job_id=job, run_id=run, kind="restore", trigger="api",
                          params={"snapshot_id": snap, "password": "x"}),
        lambda: RunStarted(job_id=job, run_id=run),
        lambda: RunCheckpointed(job_id=job, run_id=run,
                                checkpoint={"files_done": rng.randrange(99), "phase": "copy"}),
        lambda: RunPaused(job_id=job, run_id=run),
        lambda: RunResumed(job_id=job, run_id=run),
        lambda: RunInterrupted(job_id=job, run_id=run),
        lambda: RunSucceeded(job_id=job, run_id=run, snapshot_id=snap, files=3,
                             bytes=rng.randrange(10**9), duration=1.5),
        lambda: RunFailed(job_id=job, run_id=run, error="disk: full"),
        lambda: RunCancelled(job_id=job, run_id=run),
        lambda: SnapshotPruned(job_id=job, snapshot_id=snap),
        lambda: VerifyFinished(job_id=job, snapshot_id=snap, ok=rng.random() < 0.5),
        lambda: RestoreStarted(job_id=job, snapshot_id=snap, target="/tmp/x", path=""),
        lambda: RestoreFinished(job_id=job, snapshot_id=snap, target="/tmp/x", files=1,
                                bytes=2, error=None),
        lambda: JobUpdated(job_id=job, spec=job_spec(f"Job {rng.randrange(9)}: v")),
        lambda: JobDisabled(job_id=job),
        lambda: JobEnabled(job_id=job),
        lambda: JobDeleted(job_id=job),
        lambda: created(job, name=f"again {job}"),
    ]
    return rng.choice(makers)()


def _write_log(db: Path, count: int, seed: int) -> None:
    """A log of `count` events in plain rows, with odd ones among them: a stream that is
    not a job, a type this version does not know, a payload with a field missing or one
    too many (the replay reads the rows as they are; no hash is checked)."""
    rng = random.Random(seed)
    versions: dict[str, int] = {}
    rows = []
    for seq in range(1, count + 1):
        odd = rng.random()
        stream = rng.choice(JOBS)
        if versions.get(stream, 0) == 0:
            type_name, payload = "JobCreated", created(stream, name=stream.upper()).payload()
        elif odd < 0.02:
            stream, type_name, payload = "settings", "SettingsChanged", SettingsChanged(
                changes={"max_concurrent_runs": rng.randrange(1, 5)}).payload()
        elif odd < 0.025:
            stream, type_name, payload = "not a job!", "RunQueued", {"job_id": "x"}
        elif odd < 0.03:
            type_name, payload = "FromTheFuture", {"job_id": stream, "new": 1}
        else:
            ev = _random_event(rng, stream)
            type_name, payload = ev.type_name, ev.payload()
            if odd < 0.035:
                payload.pop(sorted(payload)[-1])  # a field missing
            elif odd < 0.04:
                payload["added_later"] = [1, {"b": None}]  # a field from a newer version
        versions[stream] = versions.get(stream, 0) + 1
        time = f"2026-01-{1 + seq // 86400:02d}T{seq // 3600 % 24:02d}:{seq // 60 % 60:02d}:" \
               f"{seq % 60:02d}.{seq % 999_983:06d}Z"
        rows.append((seq, stream, versions[stream], time, type_name,
                     canonical_json(payload), "0" * 64))
    with closing(sqlite3.connect(db)) as conn:
        conn.executescript(sql.SCHEMA)
        conn.executemany(sql.INSERT_EVENT, rows)
        conn.commit()


@pytest.mark.parametrize("seed", [1, 2])
def test_replay_writes_the_bytes_the_live_projector_writes(tmp_path: Path, seed: int) -> None:
    db = tmp_path / "events.db"
    count = PAGE + 2_345  # more than one page of rows
    _write_log(db, count, seed)
    # The live projector's way: stored events, folded one by one and flushed in pieces.
    live = Projection(tmp_path / "live")
    with closing(open_readonly(db)) as conn:
        for n, ev in enumerate(iter_events(conn), start=1):
            live.apply([ev])
            if n % 3_001 == 0:
                live.flush()
        live.flush()
        replayed = replay_into(conn, tmp_path / "replayed")
    assert replayed.seq == live.seq == count
    files = projection_files(tmp_path / "replayed")
    assert files == projection_files(tmp_path / "live")
    assert len(files) > 2 * 8  # the flush wrote in batches on several threads
    assert (tmp_path / "replayed" / STATE_FILE).read_bytes() == \
        (tmp_path / "live" / STATE_FILE).read_bytes()


def test_a_replay_cut_short_leaves_whole_files_and_no_position(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    _write_log(db, 3_000, seed=3)
    with closing(open_readonly(db)) as conn:
        replay_into(conn, tmp_path / "whole")
    whole = projection_files(tmp_path / "whole")
    out = tmp_path / "out"
    # One file cannot be put in place (a folder is in its way): the replay fails there.
    blocked = sorted(whole)[len(whole) // 2]
    (out / blocked).mkdir(parents=True)
    with closing(open_readonly(db)) as conn, pytest.raises(OSError):
        replay_into(conn, out)
    assert not (out / STATE_FILE).exists()  # no position claims the files are complete
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    written = {p.relative_to(out).as_posix(): p.read_bytes()
               for p in out.rglob("*.yaml") if p.is_file()}
    assert written and set(written) < set(whole)
    assert all(data == whole[rel] for rel, data in written.items())  # each one whole
    # Once the way is clear, the replay writes everything, position last.
    (out / blocked).rmdir()
    with closing(open_readonly(db)) as conn:
        replay_into(conn, out)
    assert projection_files(out) == whole
    assert (out / STATE_FILE).read_bytes() == (tmp_path / "whole" / STATE_FILE).read_bytes()

"""The state snapshot's runs as columns: each run decodes to what it was, with containers
of its own, and a malformed column makes the snapshot unusable (a full replay follows)."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from core import snapshot, snapshot_columns
from core.state import RUN_FIELDS, RunView, State


def _run(n: int, **changes: Any) -> RunView:
    run = RunView(f"r-{n}", f"job-{n % 3}", "succeeded", "schedule", f"2026-01-01T00:00:{n:02d}Z",
                  n, checkpoint={"phase": "copy", "files_done": 5}, files=n, duration=1.5)
    run.__dict__.update(changes)
    return run


def _round_trip(runs: list[RunView]) -> list[RunView]:
    """Encode the runs to JSON text and back, as the snapshot file carries them."""
    rows = [tuple(run.__dict__.values()) for run in runs]
    chunk = json.loads(json.dumps(snapshot_columns.encode(rows)))
    state = State()
    state.add_run_columns(snapshot_columns.decode(chunk))
    return list(state.runs.values())


def test_runs_decode_as_they_were_with_containers_of_their_own() -> None:
    runs = [_run(n) for n in range(40)]
    # Values JSON tells apart but == does not (1, 1.0, True), nested and empty containers.
    runs[1].params = {"n": 1}
    runs[2].params = {"n": 1.0}
    runs[3].params = {"n": True}
    runs[4].checkpoint = {"nested": {"a": [1, 2]}}
    runs[5].checkpoint = {"nested": {"a": [1, 2]}}
    runs[6].warning_samples = ["a", "b"]
    runs[7].error, runs[7].state = "disk full", "failed"
    back = _round_trip(runs)
    assert [r.__dict__ for r in back] == [r.__dict__ for r in runs]
    assert [type(r.params.get("n")) for r in back[1:4]] == [int, float, bool]
    # Shared in the file, each run's own in memory: the runner hands a checkpoint on.
    assert back[10].checkpoint is not back[11].checkpoint
    assert back[10].params is not back[11].params
    assert back[4].checkpoint is not None and back[5].checkpoint is not None
    assert back[4].checkpoint["nested"] is not back[5].checkpoint["nested"]
    assert back[10].warning_samples is not back[11].warning_samples


def test_a_column_of_distinct_values_is_stored_plain_and_one_of_few_as_codes() -> None:
    runs = [_run(n, checkpoint={"last_path": f"/f/{n}"}) for n in range(20)]
    columns = snapshot_columns.encode([tuple(r.__dict__.values()) for r in runs])["columns"]
    assert isinstance(columns["checkpoint"], list)  # every run's differs
    assert isinstance(columns["job_id"], dict) and len(columns["job_id"]["values"]) == 3
    assert isinstance(columns["run_id"], list)  # never a dictionary field
    assert set(columns) == set(RUN_FIELDS)
    assert [r.__dict__ for r in _round_trip(runs)] == [r.__dict__ for r in runs]


def _rewrite_runs(path: Path, change: Any) -> None:
    """Change the first line of runs and put a right checksum over the new body: the
    columns themselves are what is wrong, as a faulty writer would leave them."""
    header_line, body = path.read_bytes().split(b"\n", 1)
    lines = body.split(b"\n")
    at = next(i for i, line in enumerate(lines) if line.startswith(b'["runs"'))
    kind, chunk = json.loads(lines[at])
    change(chunk["columns"])
    lines[at] = json.dumps([kind, chunk]).encode()
    body = b"\n".join(lines)
    header = json.loads(header_line)
    header.update(body_bytes=len(body), body_sha256=hashlib.sha256(body).hexdigest())
    path.write_bytes(json.dumps(header).encode() + b"\n" + body)


DAMAGES: dict[str, Any] = {
    "code past the end": lambda c: c["job_id"].update(
        codes=snapshot_columns._pack([0] * 9 + [7])),
    "odd codes": lambda c: c["state"].update(codes="AAA="),
    "not base64": lambda c: c["state"].update(codes="!!!!"),
    "short column": lambda c: c.update(files=c["files"][:-1]),
    "missing field": lambda c: c.pop("kind"),
    "not a column": lambda c: c.update(state=7),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_malformed_column_makes_the_snapshot_unusable(tmp_path: Path, damage: str) -> None:
    state = State()
    state.add_rows((), [tuple(_run(n).__dict__.values()) for n in range(10)])
    path = tmp_path / snapshot.SNAPSHOT_FILE
    snapshot.write(path, snapshot.capture(state), "h")
    assert snapshot.read(path, threading.Event()) is not None  # sound as written
    _rewrite_runs(path, DAMAGES[damage])
    with pytest.raises(snapshot.SnapshotUnusable):
        snapshot.read(path, threading.Event())

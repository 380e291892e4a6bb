"""A verified snapshot of the folded State at a seq, so a start folds only the log's tail.

The file (state-snapshot.json in the data directory) is one header line, then the body:
a line of settings and counters, then the jobs as JSON arrays of at most ROWS_PER_LINE
rows each, then the runs as columns (core/snapshot_columns.py), ROWS_PER_LINE runs a
line (parsing one line holds the interpreter for milliseconds, so a stop signal is seen
while a large snapshot loads). The header carries a format version,
a fingerprint of the fold (the State's fields and code: another version's snapshot is
never trusted), the seq, the hash of the event at that seq, and the SHA-256 and size of
the body. It is written whole or not at all (models/atomic.py) and read back after
writing. A start uses it only if the log holds that very event at that seq; anything
else (missing, damaged, foreign, of another log) is skipped for a full replay.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from core import snapshot_columns
from core import state as state_module
from core.state import JOB_FIELDS, RUN_FIELDS, State
from events import types as event_types
from models.atomic import write_atomic

SNAPSHOT_FILE = "state-snapshot.json"
FORMAT = "backup-manager state snapshot"
VERSION = 2  # 2: runs as columns
ROWS_PER_LINE = 10_000  # at most snapshot_columns.MAX_ROWS


class SnapshotUnusable(Exception):
    """The snapshot file cannot be used (the message says why); a full replay follows."""


class SnapshotStopped(Exception):
    """Reading was given up because the server is stopping."""


@dataclass(frozen=True)
class Captured:
    """A consistent copy of the State, taken on the event loop in one go."""

    seq: int
    finished_seq: int
    settings: dict[str, Any]
    jobs: list[tuple[Any, ...]]
    runs: list[tuple[Any, ...]]


@dataclass(frozen=True)
class Loaded:
    """A snapshot read back: the state it holds and the event it was taken at."""

    seq: int
    hash: str
    state: State


@cache
def fingerprint() -> str:
    """What a snapshot must have been folded by: the State's fields and its code."""
    try:
        # The fold, the decoding of the events it folds (a payload read differently by
        # a newer release must not be trusted from an older snapshot) and the columns.
        code = inspect.getsource(state_module) + inspect.getsource(event_types) + \
            inspect.getsource(snapshot_columns)
    except (OSError, TypeError):  # a build without sources: the fields alone
        code = ""
    text = json.dumps([VERSION, RUN_FIELDS, JOB_FIELDS, code])
    return hashlib.sha256(text.encode()).hexdigest()


def capture(state: State) -> Captured:
    """Copy what the snapshot holds; call on the event loop (apply runs there too)."""
    return Captured(state.seq, state.finished_seq, dict(state.settings), state.job_rows(),
                    state.run_rows())


def _lines(kind: str, rows: Sequence[tuple[Any, ...]]) -> Iterator[bytes]:
    for start in range(0, len(rows), ROWS_PER_LINE):
        part = rows[start:start + ROWS_PER_LINE]
        yield json.dumps([kind, snapshot_columns.encode(part) if kind == "runs" else part],
                         separators=(",", ":")).encode() + b"\n"


def encode(captured: Captured, event_hash: str) -> bytes:
    """The file's bytes (off the loop: a large state takes a while)."""
    meta = {"seq": captured.seq, "finished_seq": captured.finished_seq,
            "settings": captured.settings}
    body = b"".join([json.dumps(meta).encode() + b"\n", *_lines("jobs", captured.jobs),
                     *_lines("runs", captured.runs)])
    header = {"format": FORMAT, "version": VERSION, "fold": fingerprint(),
              "seq": captured.seq, "hash": event_hash, "rows": len(captured.runs),
              "body_sha256": hashlib.sha256(body).hexdigest(), "body_bytes": len(body)}
    return json.dumps(header).encode() + b"\n" + body


def write(path: Path, captured: Captured, event_hash: str) -> int:
    """Write the snapshot atomically and read it back; return its size in bytes."""
    data = encode(captured, event_hash)
    write_atomic(path, data, mode=0o600)
    # Read back what the disk holds: a snapshot that cannot be read is no snapshot.
    try:
        _split(path.read_bytes())
    except SnapshotUnusable as err:
        raise OSError(f"the snapshot {path} does not read back as written: {err}") from err
    return len(data)


def _split(data: bytes) -> tuple[dict[str, Any], bytes]:
    """The header and the body, the header checked against this version and the body."""
    end = data.find(b"\n")
    if end < 0:
        raise SnapshotUnusable("it has no header line")
    try:
        header = json.loads(data[:end])
    except ValueError as err:
        raise SnapshotUnusable(f"its header is not JSON ({err})") from err
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise SnapshotUnusable("it is not a state snapshot of this program")
    if header.get("version") != VERSION or header.get("fold") != fingerprint():
        raise SnapshotUnusable("it was written by another version of this program")
    body = data[end + 1:]
    if len(body) != header.get("body_bytes") or \
            hashlib.sha256(body).hexdigest() != header.get("body_sha256"):
        raise SnapshotUnusable("its content does not match its checksum (damaged)")
    if not isinstance(header.get("seq"), int) or not isinstance(header.get("hash"), str):
        raise SnapshotUnusable("its header names no seq and hash")
    return header, body


def read(path: Path, stop: threading.Event) -> Loaded | None:
    """Read and check a snapshot into a new State (a thread); None if there is none.

    SnapshotUnusable says why a file cannot be used, SnapshotStopped that `stop` was set.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise SnapshotUnusable(f"it cannot be read ({err.strerror or err})") from err
    header, body = _split(data)
    del data
    lines = body.splitlines()
    state = State()
    try:
        meta = json.loads(lines[0])
        state.settings = dict(meta["settings"])
        state.seq, state.finished_seq = int(meta["seq"]), int(meta["finished_seq"])
        if state.seq != header["seq"]:
            raise SnapshotUnusable("its header and body name different seqs")
        for line in lines[1:]:
            if stop.is_set():
                raise SnapshotStopped()
            kind, rows = json.loads(line)
            if kind == "jobs":
                state.add_rows(rows, ())
            elif kind == "runs":
                state.add_run_columns(snapshot_columns.decode(rows))
            else:
                raise SnapshotUnusable(f"it holds rows of an unknown kind {kind!r}")
    except (ValueError, KeyError, TypeError, IndexError) as err:
        raise SnapshotUnusable(f"its content is not a state ({err})") from err
    if len(state.runs) != header.get("rows"):
        raise SnapshotUnusable("it holds fewer runs than its header says")
    return Loaded(state.seq, header["hash"], state)

"""Pure folds of events into the job and settings documents that the YAML files show.

A fold takes the current document (or None) and one stored event and returns the new
document. It changes the document in place (copying every document per event would make
a replay of a million events crawl) and never reads the clock or the disk, so a rebuild
from seq 0 gives the same documents as applying the events one at a time.
"""

from __future__ import annotations

import copy
import re
from typing import Any, Protocol, assert_never

from events.types import (
    AnyEvent,
    AnyRunEvent,
    Event,
    JobCreated,
    JobDeleted,
    JobDisabled,
    JobEnabled,
    JobUpdated,
    RestoreFinished,
    RestoreStarted,
    RunCancelled,
    RunCheckpointed,
    RunDiscarded,
    RunEvent,
    RunFailed,
    RunInterrupted,
    RunPaused,
    RunQueued,
    RunResumed,
    RunStarted,
    RunSucceeded,
    SettingsChanged,
    SnapshotPruned,
    UnknownEvent,
    VerifyFinished,
)
from models.runs import TERMINAL_STATES
from models.settings import DEFAULT_SETTINGS

Doc = dict[str, Any]


class FoldEvent(Protocol):
    """What a fold reads of a stored event (a StoredEvent, or a replay's lighter row)."""

    @property
    def seq(self) -> int: ...
    @property
    def stream(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def time(self) -> str: ...
    @property
    def event(self) -> AnyEvent: ...


# What each fold does with each event type (tests/test_event_dispatch.py holds them to it).
JOB_HANDLED: frozenset[type[Event]] = frozenset({
    JobCreated, JobUpdated, JobEnabled, JobDisabled, JobDeleted, RunQueued, RunStarted,
    RunCheckpointed, RunPaused, RunResumed, RunSucceeded, RunFailed, RunCancelled,
    RunInterrupted, RunDiscarded, SnapshotPruned, RestoreStarted, RestoreFinished,
    VerifyFinished})
JOB_IGNORED: frozenset[type[Event]] = frozenset({SettingsChanged, UnknownEvent})
SETTINGS_HANDLED: frozenset[type[Event]] = frozenset({SettingsChanged})
SETTINGS_IGNORED: frozenset[type[Event]] = JOB_HANDLED | {UnknownEvent}

# Terminal runs beyond this many are dropped from the YAML file (the log keeps them all);
# runs that are still active are never dropped.
RUNS_KEPT = 20

# Run params are public (snapshot id, target, path, overwrite), but the YAML files are
# meant to be shared: a key that looks like it could hold a secret is never written.
_SECRET_KEY = re.compile(r"pass|secret|token|key|cred|auth", re.IGNORECASE)


def initial_settings() -> Doc:
    """The settings document before any SettingsChanged event."""
    return {"settings": copy.deepcopy(DEFAULT_SETTINGS), "updated": None, "version": 0,
            "last_seq": 0}


def fold_settings(doc: Doc, ev: FoldEvent) -> Doc:
    """Apply one settings-stream event to the settings document."""
    e = ev.event
    if isinstance(e, SettingsChanged):  # nothing else belongs on the settings stream
        doc["settings"].update(e.changes)
        doc["updated"] = ev.time
    doc["version"], doc["last_seq"] = ev.version, ev.seq
    return doc


def _new_job(ev: FoldEvent, e: JobCreated) -> Doc:
    spec = dict(e.spec)
    return {
        "id": ev.stream,
        "name": spec.pop("name", ev.stream),
        "enabled": bool(spec.pop("enabled", True)),
        "spec": spec,
        "created": ev.time,
        "updated": ev.time,
        "runs": [],
        "last_success": None,
        "snapshots": [],
        "totals": {"runs": 0, "succeeded": 0, "failed": 0, "cancelled": 0, "bytes": 0},
        "version": ev.version,
        "last_seq": ev.seq,
    }


def _find_run(doc: Doc, run_id: str) -> Doc | None:
    for run in doc["runs"]:
        if run["run_id"] == run_id:
            return run  # type: ignore[no-any-return]
    return None


def _trim_runs(doc: Doc) -> None:
    """Drop ended runs beyond the RUNS_KEPT most recent (the document never holds more)."""
    kept: list[Doc] = []
    terminal = 0
    for run in doc["runs"]:  # most recent first
        if run["state"] in TERMINAL_STATES:
            terminal += 1
            if terminal > RUNS_KEPT:
                continue
        kept.append(run)
    doc["runs"] = kept


def _fold_run(doc: Doc, ev: FoldEvent, e: AnyRunEvent) -> None:
    if isinstance(e, RunQueued):
        entry: Doc = {"run_id": e.run_id, "state": "queued", "trigger": e.trigger,
                      "queued": ev.time}
        if e.kind != "backup":  # only then: files of backup runs stay as they were
            entry["kind"] = e.kind
            params = {k: v for k, v in (e.params or {}).items() if not _SECRET_KEY.search(k)}
            if params:
                entry["params"] = params
        doc["runs"].insert(0, entry)
        doc["totals"]["runs"] += 1
        return
    run = _find_run(doc, e.run_id)
    if run is None:  # a run older than the kept window: the log still has it
        return
    if isinstance(e, RunCheckpointed):
        run["checkpoint"] = e.checkpoint
        run["checkpointed"] = ev.time
        return
    run["state"] = e.next_run_state(run["state"])
    match e:
        case RunStarted():
            run.setdefault("started", ev.time)
        case RunInterrupted(reason=reason):
            run["interrupted"] = {"time": ev.time, "reason": reason}
        case RunResumed():
            run.pop("interrupted", None)
        case RunSucceeded() | RunFailed() | RunCancelled() | RunPaused() | RunDiscarded():
            pass  # endings below, once the entry is tidied
        case _:
            assert_never(e)
    ended = run["state"] in TERMINAL_STATES
    if ended:
        run["finished"] = ev.time
        run.pop("checkpoint", None)
        run.pop("checkpointed", None)
        run.pop("interrupted", None)
    match e:
        case RunSucceeded():
            _succeeded(doc, run, ev, e)
        case RunFailed(error=error):
            run["error"] = error
            doc["totals"]["failed"] += 1
        case RunCancelled():
            doc["totals"]["cancelled"] += 1
        case _:
            pass
    if ended:  # only an ending can leave more than RUNS_KEPT ended runs to drop
        _trim_runs(doc)


def _succeeded(doc: Doc, run: Doc, ev: FoldEvent, e: RunSucceeded) -> None:
    stats = {"snapshot_id": e.snapshot_id, "files": e.files, "bytes": e.bytes,
             "duration": e.duration}
    run.update(stats)
    if e.warnings:  # only then: files of runs without warnings stay as they were
        run["warnings"] = e.warnings
        run["warning_samples"] = list(e.warning_samples)
    if run.get("kind", "backup") != "backup":
        return  # a restore, verify or prune makes no snapshot and no backup totals
    doc["totals"]["succeeded"] += 1
    doc["totals"]["bytes"] += int(e.bytes or 0)
    doc["last_success"] = {"run_id": e.run_id, "finished": ev.time,
                           "snapshot_id": e.snapshot_id}
    doc["snapshots"].append({"id": e.snapshot_id, "run_id": e.run_id, "created": ev.time,
                             "files": e.files, "bytes": e.bytes})


def _snapshot(doc: Doc, snapshot_id: str) -> Doc | None:
    return next((s for s in doc["snapshots"] if s["id"] == snapshot_id), None)


def fold_job(doc: Doc | None, ev: FoldEvent) -> Doc | None:
    """Apply one job-stream event to a job document; None means the job does not exist."""
    e = ev.event
    if isinstance(e, JobCreated):
        return _new_job(ev, e)
    if doc is None:  # events of a deleted (or never created) job change nothing
        return None
    # Run events first: they are nearly all of a long log.
    match e:
        case RunEvent():
            _fold_run(doc, ev, e)
        case JobDeleted():
            return None
        case JobUpdated(spec=spec):
            spec = dict(spec)
            doc["name"] = spec.pop("name", doc["name"])
            doc["enabled"] = bool(spec.pop("enabled", doc["enabled"]))
            doc["spec"] = spec
            doc["updated"] = ev.time
        case JobEnabled() | JobDisabled():
            doc["enabled"] = isinstance(e, JobEnabled)
            doc["updated"] = ev.time
        case SnapshotPruned(snapshot_id=snapshot_id):
            doc["snapshots"] = [s for s in doc["snapshots"] if s["id"] != snapshot_id]
        case VerifyFinished(snapshot_id=snapshot_id):
            snap = _snapshot(doc, snapshot_id)
            if snap is not None:
                snap["verified"] = {"time": ev.time, "ok": bool(e.ok),
                                    "problems": list(e.problems)[:20]}
        case RestoreStarted(snapshot_id=snapshot_id):
            doc["last_restore"] = {"snapshot_id": snapshot_id, "target": e.target,
                                   "path": e.path, "started": ev.time, "state": "running"}
        case RestoreFinished(snapshot_id=snapshot_id):
            restore = doc.get("last_restore") or {"snapshot_id": snapshot_id}
            restore.update({"target": e.target, "finished": ev.time, "files": e.files,
                            "bytes": e.bytes, "state": "failed" if e.error else "succeeded",
                            "error": e.error})
            doc["last_restore"] = restore
        case JobCreated() | SettingsChanged() | UnknownEvent():
            pass  # created above; settings have their own stream; unknown: skipped
        case _:
            assert_never(e)
    doc["version"], doc["last_seq"] = ev.version, ev.seq
    return doc

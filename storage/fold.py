"""Pure folds of events into the job and settings documents that the YAML files show.

A fold takes the current document (or None) and one stored event and returns the new
document. It changes the document in place (copying every document per event would make
a replay of a million events crawl) and never reads the clock or the disk, so a rebuild
from seq 0 gives the same documents as applying the events one at a time.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from events.record import StoredEvent
from models.runs import RUN_STATE_EVENTS, TERMINAL_STATES, next_run_state
from models.settings import DEFAULT_SETTINGS

Doc = dict[str, Any]

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


def fold_settings(doc: Doc, ev: StoredEvent) -> Doc:
    """Apply one settings-stream event to the settings document."""
    if ev.type == "SettingsChanged":
        doc["settings"].update(ev.payload.get("changes", {}))
        doc["updated"] = ev.time
    doc["version"], doc["last_seq"] = ev.version, ev.seq
    return doc


def _new_job(ev: StoredEvent) -> Doc:
    spec = dict(ev.payload.get("spec", {}))
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
    kept: list[Doc] = []
    terminal = 0
    for run in doc["runs"]:  # most recent first
        if run["state"] in TERMINAL_STATES:
            terminal += 1
            if terminal > RUNS_KEPT:
                continue
        kept.append(run)
    doc["runs"] = kept


def _fold_run(doc: Doc, ev: StoredEvent) -> None:
    p = ev.payload
    run_id = p.get("run_id", "")
    if ev.type == "RunQueued":
        entry: Doc = {"run_id": run_id, "state": "queued",
                      "trigger": p.get("trigger", "manual"), "queued": ev.time}
        kind = p.get("kind", "backup")
        if kind != "backup":  # only then: files of backup runs stay as they were
            entry["kind"] = kind
            params = {k: v for k, v in (p.get("params") or {}).items()
                      if not _SECRET_KEY.search(k)}
            if params:
                entry["params"] = params
        doc["runs"].insert(0, entry)
        doc["totals"]["runs"] += 1
        _trim_runs(doc)
        return
    run = _find_run(doc, run_id)
    if run is None:  # a run older than the kept window: the log still has it
        return
    if ev.type == "RunCheckpointed":
        run["checkpoint"] = p.get("checkpoint", {})
        run["checkpointed"] = ev.time
        return
    run["state"] = next_run_state(run["state"], ev.type)
    if ev.type == "RunStarted":
        run.setdefault("started", ev.time)
    elif ev.type == "RunInterrupted":
        run["interrupted"] = {"time": ev.time, "reason": p.get("reason", "crash")}
    elif ev.type == "RunResumed":
        run.pop("interrupted", None)
    if run["state"] in TERMINAL_STATES:
        run["finished"] = ev.time
        run.pop("checkpoint", None)
        run.pop("checkpointed", None)
        run.pop("interrupted", None)
    if ev.type == "RunSucceeded":
        stats = {"snapshot_id": p.get("snapshot_id"), "files": p.get("files", 0),
                 "bytes": p.get("bytes", 0), "duration": p.get("duration", 0.0)}
        run.update(stats)
        if p.get("warnings"):  # only then: files of runs without warnings stay as they were
            run["warnings"] = p["warnings"]
            run["warning_samples"] = list(p.get("warning_samples", []))
        if run.get("kind", "backup") != "backup":
            return  # a restore, verify or prune makes no snapshot and no backup totals
        doc["totals"]["succeeded"] += 1
        doc["totals"]["bytes"] += int(stats["bytes"] or 0)
        doc["last_success"] = {"run_id": run_id, "finished": ev.time,
                               "snapshot_id": stats["snapshot_id"]}
        doc["snapshots"].append({"id": stats["snapshot_id"], "run_id": run_id,
                                 "created": ev.time, "files": stats["files"],
                                 "bytes": stats["bytes"]})
    elif ev.type == "RunFailed":
        run["error"] = p.get("error", "")
        doc["totals"]["failed"] += 1
    elif ev.type == "RunCancelled":
        doc["totals"]["cancelled"] += 1
    _trim_runs(doc)


def _fold_snapshot(doc: Doc, ev: StoredEvent) -> None:
    p = ev.payload
    snapshot_id = p.get("snapshot_id")
    if ev.type == "SnapshotPruned":
        doc["snapshots"] = [s for s in doc["snapshots"] if s["id"] != snapshot_id]
        return
    snap = next((s for s in doc["snapshots"] if s["id"] == snapshot_id), None)
    if ev.type == "VerifyFinished":
        if snap is not None:
            snap["verified"] = {"time": ev.time, "ok": bool(p.get("ok")),
                                "problems": list(p.get("problems", []))[:20]}
    elif ev.type == "RestoreStarted":
        doc["last_restore"] = {"snapshot_id": snapshot_id, "target": p.get("target"),
                               "path": p.get("path"), "started": ev.time, "state": "running"}
    elif ev.type == "RestoreFinished":
        restore = doc.get("last_restore") or {"snapshot_id": snapshot_id}
        restore.update({"target": p.get("target"), "finished": ev.time,
                        "files": p.get("files", 0), "bytes": p.get("bytes", 0),
                        "state": "failed" if p.get("error") else "succeeded",
                        "error": p.get("error")})
        doc["last_restore"] = restore


def fold_job(doc: Doc | None, ev: StoredEvent) -> Doc | None:
    """Apply one job-stream event to a job document; None means the job does not exist."""
    if ev.type == "JobCreated":
        return _new_job(ev)
    if doc is None:  # events of a deleted (or never created) job change nothing
        return None
    if ev.type == "JobDeleted":
        return None
    if ev.type == "JobUpdated":
        spec = dict(ev.payload.get("spec", {}))
        doc["name"] = spec.pop("name", doc["name"])
        doc["enabled"] = bool(spec.pop("enabled", doc["enabled"]))
        doc["spec"] = spec
        doc["updated"] = ev.time
    elif ev.type in ("JobEnabled", "JobDisabled"):
        doc["enabled"] = ev.type == "JobEnabled"
        doc["updated"] = ev.time
    elif ev.type in RUN_STATE_EVENTS or ev.type == "RunCheckpointed":
        _fold_run(doc, ev)
    elif ev.type in ("SnapshotPruned", "VerifyFinished", "RestoreStarted", "RestoreFinished"):
        _fold_snapshot(doc, ev)
    doc["version"], doc["last_seq"] = ev.version, ev.seq
    return doc

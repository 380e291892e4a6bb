"""Event types: frozen dataclasses with past-tense names, one per state change.

Each type has a stable string name (its class name) that is stored in the log; renaming
a class would orphan old events, so names never change once released.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True)
class Event:
    """Base of every event type; the payload is the dataclass fields."""

    type_name: ClassVar[str] = "Event"

    def payload(self) -> dict[str, Any]:
        """Return the fields of this event as a plain dict for storage."""
        # Shallow on purpose: asdict() deep-copies every nested value, which showed up as
        # the single writer's biggest cost under 100 concurrent appenders.
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


_REGISTRY: dict[str, type[Event]] = {}


def event_type(cls: type[Event]) -> type[Event]:
    """Register an event class under its class name so it can be read back from the log."""
    cls.type_name = cls.__name__
    if cls.__name__ in _REGISTRY:
        raise ValueError(f"event type {cls.__name__} registered twice")
    _REGISTRY[cls.__name__] = cls
    return cls


def event_class(type_name: str) -> type[Event] | None:
    """Return the event class registered under a name, or None for an unknown one."""
    return _REGISTRY.get(type_name)


def event_from_payload(type_name: str, payload: dict[str, Any]) -> Event:
    """Rebuild an event object from its stored name and payload."""
    cls = _REGISTRY.get(type_name)
    if cls is None:
        raise KeyError(f"unknown event type {type_name!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in payload.items() if k in names})


def canonical_json(value: Any) -> str:
    """Serialise to JSON with sorted keys and no spaces, so equal values hash equal."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


# --- jobs ---------------------------------------------------------------------------


@event_type
@dataclass(frozen=True)
class JobCreated(Event):
    """A person defined a new backup job with this spec."""

    job_id: str
    spec: dict[str, Any]


@event_type
@dataclass(frozen=True)
class JobUpdated(Event):
    """A job's spec was changed; `spec` is the whole new spec."""

    job_id: str
    spec: dict[str, Any]


@event_type
@dataclass(frozen=True)
class JobEnabled(Event):
    """A job was switched on: its schedule runs it again."""

    job_id: str


@event_type
@dataclass(frozen=True)
class JobDisabled(Event):
    """A job was switched off: its schedule no longer runs it."""

    job_id: str


@event_type
@dataclass(frozen=True)
class JobDeleted(Event):
    """A job was deleted; its snapshots stay where they are."""

    job_id: str


# --- runs ---------------------------------------------------------------------------


@event_type
@dataclass(frozen=True)
class RunQueued(Event):
    """A run was asked for (by a person, the schedule or recovery) and waits for a slot.

    `kind` is what the run does: "backup", "restore", "verify" or "prune"; `params` holds
    what a non-backup run needs (a restore: snapshot_id, target, path, overwrite; a
    verify: snapshot_id). Both default so events written before they existed decode as
    backups.
    """

    job_id: str
    run_id: str
    trigger: str = "manual"
    kind: str = "backup"
    params: dict[str, Any] = field(default_factory=dict)


@event_type
@dataclass(frozen=True)
class RunStarted(Event):
    """A run got its slot and its engine started."""

    job_id: str
    run_id: str


@event_type
@dataclass(frozen=True)
class RunCheckpointed(Event):
    """A run recorded what it needs to resume after a crash without redoing work."""

    job_id: str
    run_id: str
    checkpoint: dict[str, Any] = field(default_factory=dict)


@event_type
@dataclass(frozen=True)
class RunPaused(Event):
    """A run stopped at a safe point and holds until resumed."""

    job_id: str
    run_id: str


@event_type
@dataclass(frozen=True)
class RunResumed(Event):
    """A paused or interrupted run continues from where it stopped."""

    job_id: str
    run_id: str


@event_type
@dataclass(frozen=True)
class RunSucceeded(Event):
    """A run finished and its snapshot is complete (listed again after the backup).

    `warnings` counts what the run skipped or could not keep (an unreadable file, a
    FIFO); `warning_samples` holds the first of them. Both default so events written
    before they existed still decode.
    """

    job_id: str
    run_id: str
    snapshot_id: str
    files: int = 0
    bytes: int = 0
    duration: float = 0.0
    warnings: int = 0
    warning_samples: list[str] = field(default_factory=list)


@event_type
@dataclass(frozen=True)
class RunFailed(Event):
    """A run stopped on an error; no snapshot of it looks complete."""

    job_id: str
    run_id: str
    error: str


@event_type
@dataclass(frozen=True)
class RunCancelled(Event):
    """A person cancelled a run; its partial snapshot was removed."""

    job_id: str
    run_id: str


@event_type
@dataclass(frozen=True)
class RunInterrupted(Event):
    """A run was cut off and can be resumed or discarded.

    `reason`: "crash" or "shutdown" (resumed by the next start as the settings say), or
    "crash_while_paused" or "shutdown_while_paused" (a person paused it: it waits for
    someone to resume it, across restarts).
    """

    job_id: str
    run_id: str
    reason: str = "crash"


@event_type
@dataclass(frozen=True)
class RunDiscarded(Event):
    """A person discarded an interrupted run; its partial snapshot was cleaned up."""

    job_id: str
    run_id: str


# --- snapshots ----------------------------------------------------------------------


@event_type
@dataclass(frozen=True)
class SnapshotPruned(Event):
    """A snapshot was removed by the job's retention policy."""

    job_id: str
    snapshot_id: str


@event_type
@dataclass(frozen=True)
class RestoreStarted(Event):
    """A restore of a snapshot (or a path in it) into a target began."""

    job_id: str
    snapshot_id: str
    target: str
    path: str | None = None


@event_type
@dataclass(frozen=True)
class RestoreFinished(Event):
    """A restore ended; `error` is None when every file was restored."""

    job_id: str
    snapshot_id: str
    target: str
    files: int = 0
    bytes: int = 0
    error: str | None = None


@event_type
@dataclass(frozen=True)
class VerifyFinished(Event):
    """A snapshot was checked against its manifest; `problems` lists what did not match."""

    job_id: str
    snapshot_id: str
    ok: bool
    problems: list[str] = field(default_factory=list)


# --- settings -----------------------------------------------------------------------


@event_type
@dataclass(frozen=True)
class SettingsChanged(Event):
    """A person changed global settings; `changes` holds only the changed keys."""

    changes: dict[str, Any]


TERMINAL_RUN_EVENTS = frozenset(
    {"RunSucceeded", "RunFailed", "RunCancelled", "RunDiscarded"}
)

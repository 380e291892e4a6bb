"""Event types: frozen dataclasses with past-tense names, one per state change.

Each type has a stable string name (its class name) that is stored in the log; renaming
a class would orphan old events, so names never change once released.

What an event means to the rest of the app lives on its class, so a reader asks the
event instead of keeping its own list of type names: the state a run goes to
(`run_state`, `next_run_state`), whether it wakes the runner or the scheduler, which page
topics it refreshes, and whether it is job activity (restores, verifies, prunes).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

from models.runs import TERMINAL_STATES

# The htmx triggers pages listen to (`bm-... from:body`), refreshed by events (and
# `<topic>-<job id>` for a job's own page).
JOBS, RUNS, SNAPSHOTS, SETTINGS = "bm-jobs", "bm-runs", "bm-snapshots", "bm-settings"


@dataclass(frozen=True)
class Event:
    """Base of every event type; the payload is the dataclass fields."""

    type_name: ClassVar[str] = "Event"
    # The state a run is in after this event (None: the event does not move a run).
    run_state: ClassVar[str | None] = None
    # Whether the runner looks for a run to start, or the scheduler re-plans.
    wakes_runner: ClassVar[bool] = False
    wakes_scheduler: ClassVar[bool] = False
    # The page topics to refresh (a checkpoint refreshes nothing: progress has its own).
    topics: ClassVar[tuple[str, ...]] = ()
    # Shown among a job's restores, verifies and prunes.
    activity: ClassVar[bool] = False

    def payload(self) -> dict[str, Any]:
        """Return the fields of this event as a plain dict for storage."""
        # Shallow on purpose: asdict() deep-copies every nested value, which showed up as
        # the single writer's biggest cost under 100 concurrent appenders.
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def next_run_state(self, previous: str) -> str:
        """The state a run in `previous` is in after this event."""
        return self.run_state or previous


_REGISTRY: dict[str, type[Event]] = {}
_FIELDS: dict[type[Event], frozenset[str]] = {}
# Classes whose instances may be filled without __init__ (no __post_init__), by name.
_DIRECT: dict[str, tuple[type[Event], frozenset[str]]] = {}


def event_type(cls: type[Event]) -> type[Event]:
    """Register an event class under its class name so it can be read back from the log."""
    cls.type_name = cls.__name__
    if cls.__name__ in _REGISTRY:
        raise ValueError(f"event type {cls.__name__} registered twice")
    _REGISTRY[cls.__name__] = cls
    _FIELDS[cls] = frozenset(f.name for f in dataclasses.fields(cls))
    if not hasattr(cls, "__post_init__"):
        _DIRECT[cls.__name__] = (cls, _FIELDS[cls])
    return cls


def event_class(type_name: str) -> type[Event] | None:
    """Return the event class registered under a name, or None for an unknown one."""
    return _REGISTRY.get(type_name)


def event_classes() -> tuple[type[Event], ...]:
    """Every registered event class, in the order they are defined."""
    return tuple(_REGISTRY.values())


@dataclass(frozen=True)
class UnknownEvent(Event):
    """An event this version cannot read (a type from a newer version): every fold skips it."""

    name: str
    data: dict[str, Any] = field(default_factory=dict)


UnknownEvent.type_name = "UnknownEvent"


def event_from_payload(type_name: str, payload: dict[str, Any]) -> AnyEvent:
    """Rebuild an event object from its stored name and payload (UnknownEvent if unreadable)."""
    direct = _DIRECT.get(type_name)
    if direct is not None and payload.keys() == direct[1]:
        # Every field there, as this version writes them: fill the frozen instance at once.
        # The generated __init__ sets each field through object.__setattr__, which made
        # a replay of a long log a fifth slower.
        event = object.__new__(direct[0])
        event.__dict__.update(payload)
        return event  # type: ignore[return-value]
    cls = _REGISTRY.get(type_name)
    if cls is None:
        return UnknownEvent(type_name, payload)
    names = _FIELDS[cls]
    try:  # fields an older version did not write take their defaults; newer ones are dropped
        return cls(**{k: v for k, v in payload.items() if k in names})  # type: ignore[return-value]
    except TypeError:  # a field this version needs is missing
        return UnknownEvent(type_name, payload)


def canonical_json(value: Any) -> str:
    """Serialise to JSON with sorted keys and no spaces, so equal values hash equal."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


# --- jobs ---------------------------------------------------------------------------


@event_type
@dataclass(frozen=True)
class JobCreated(Event):
    """A person defined a new backup job with this spec."""

    topics = (JOBS,)
    wakes_scheduler = True

    job_id: str
    spec: dict[str, Any]


@event_type
@dataclass(frozen=True)
class JobUpdated(Event):
    """A job's spec was changed; `spec` is the whole new spec."""

    topics = (JOBS,)
    wakes_scheduler = True
    wakes_runner = True  # its destination may have changed, freeing another job's

    job_id: str
    spec: dict[str, Any]


@event_type
@dataclass(frozen=True)
class JobEnabled(Event):
    """A job was switched on: its schedule runs it again."""

    topics = (JOBS,)
    wakes_scheduler = True

    job_id: str


@event_type
@dataclass(frozen=True)
class JobDisabled(Event):
    """A job was switched off: its schedule no longer runs it."""

    topics = (JOBS,)
    wakes_scheduler = True

    job_id: str


@event_type
@dataclass(frozen=True)
class JobDeleted(Event):
    """A job was deleted; its snapshots stay where they are."""

    topics = (JOBS,)
    wakes_scheduler = True

    job_id: str


# --- runs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RunEvent(Event):
    """Base of the events of one run (not stored itself)."""

    job_id: str
    run_id: str

    topics: ClassVar[tuple[str, ...]] = (RUNS,)


@event_type
@dataclass(frozen=True)
class RunQueued(RunEvent):
    """A run was asked for (by a person, the schedule or recovery) and waits for a slot.

    `kind` is what the run does: "backup", "restore", "verify" or "prune"; `params` holds
    what a non-backup run needs (a restore: snapshot_id, target, path, overwrite; a
    verify: snapshot_id). Both default so events written before they existed decode as
    backups.
    """

    run_state = "queued"
    wakes_runner = True
    wakes_scheduler = True

    trigger: str = "manual"
    kind: str = "backup"
    params: dict[str, Any] = field(default_factory=dict)


@event_type
@dataclass(frozen=True)
class RunStarted(RunEvent):
    """A run got its slot and its engine started."""

    run_state = "running"


@event_type
@dataclass(frozen=True)
class RunCheckpointed(RunEvent):
    """A run recorded what it needs to resume after a crash without redoing work."""

    topics = ()

    checkpoint: dict[str, Any] = field(default_factory=dict)


@event_type
@dataclass(frozen=True)
class RunPaused(RunEvent):
    """A run stopped at a safe point and holds until resumed."""

    run_state = "paused"


@event_type
@dataclass(frozen=True)
class RunResumed(RunEvent):
    """A paused or interrupted run continues from where it stopped."""

    wakes_runner = True

    def next_run_state(self, previous: str) -> str:
        """A paused run holds its slot and simply continues; an interrupted one goes back
        to the queue and waits for a slot like any other."""
        return "running" if previous == "paused" else "queued"


@event_type
@dataclass(frozen=True)
class RunSucceeded(RunEvent):
    """A run finished and its snapshot is complete (listed again after the backup).

    `warnings` counts what the run skipped or could not keep (an unreadable file, a
    FIFO); `warning_samples` holds the first of them. Both default so events written
    before they existed still decode.
    """

    run_state = "succeeded"
    wakes_runner = True
    wakes_scheduler = True
    topics = (RUNS, SNAPSHOTS)

    snapshot_id: str
    files: int = 0
    bytes: int = 0
    duration: float = 0.0
    warnings: int = 0
    warning_samples: list[str] = field(default_factory=list)


@event_type
@dataclass(frozen=True)
class RunFailed(RunEvent):
    """A run stopped on an error; no snapshot of it looks complete."""

    run_state = "failed"
    wakes_runner = True
    wakes_scheduler = True

    error: str


@event_type
@dataclass(frozen=True)
class RunCancelled(RunEvent):
    """A person cancelled a run; its partial snapshot was removed."""

    run_state = "cancelled"
    wakes_runner = True
    wakes_scheduler = True


@event_type
@dataclass(frozen=True)
class RunInterrupted(RunEvent):
    """A run was cut off and can be resumed or discarded.

    `reason`: "crash" or "shutdown" (resumed by the next start as the settings say), or
    "crash_while_paused" or "shutdown_while_paused" (a person paused it: it waits for
    someone to resume it, across restarts).
    """

    run_state = "interrupted"
    wakes_runner = True

    reason: str = "crash"


@event_type
@dataclass(frozen=True)
class RunDiscarded(RunEvent):
    """A person discarded an interrupted run; its partial snapshot was cleaned up."""

    run_state = "discarded"
    wakes_scheduler = True


# --- snapshots ----------------------------------------------------------------------


@event_type
@dataclass(frozen=True)
class SnapshotPruned(Event):
    """A snapshot was removed by the job's retention policy."""

    topics = (RUNS, SNAPSHOTS)
    activity = True

    job_id: str
    snapshot_id: str


@event_type
@dataclass(frozen=True)
class RestoreStarted(Event):
    """A restore of a snapshot (or a path in it) into a target began."""

    topics = (SNAPSHOTS,)
    activity = True

    job_id: str
    snapshot_id: str
    target: str
    path: str | None = None


@event_type
@dataclass(frozen=True)
class RestoreFinished(Event):
    """A restore ended; `error` is None when every file was restored."""

    topics = (SNAPSHOTS,)
    activity = True

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

    topics = (SNAPSHOTS,)
    activity = True

    job_id: str
    snapshot_id: str
    ok: bool
    problems: list[str] = field(default_factory=list)


# --- settings -----------------------------------------------------------------------


@event_type
@dataclass(frozen=True)
class SettingsChanged(Event):
    """A person changed global settings; `changes` holds only the changed keys."""

    topics = (SETTINGS,)
    wakes_runner = True  # the number of runs at once may have grown

    changes: dict[str, Any]


# Every event a fold may meet: a `match` over it ending in `assert_never` makes mypy
# check that each type is handled or explicitly ignored.
AnyRunEvent = (
    RunQueued | RunStarted | RunCheckpointed | RunPaused | RunResumed | RunSucceeded
    | RunFailed | RunCancelled | RunInterrupted | RunDiscarded
)
AnyEvent = (
    JobCreated | JobUpdated | JobEnabled | JobDisabled | JobDeleted | AnyRunEvent
    | SnapshotPruned | RestoreStarted | RestoreFinished | VerifyFinished | SettingsChanged
    | UnknownEvent
)

TERMINAL_RUN_EVENTS: frozenset[type[Event]] = frozenset(
    cls for cls in _REGISTRY.values() if cls.run_state in TERMINAL_STATES)
ACTIVITY_EVENTS: frozenset[type[Event]] = frozenset(
    cls for cls in _REGISTRY.values() if cls.activity)


def next_run_state(previous: str, event: Event) -> str:
    """The state a run is in after an event (unchanged by events that do not move runs)."""
    return event.next_run_state(previous)


def topic_map() -> dict[str, list[str]]:
    """Each event type's page topics, by type name (what the browser refreshes)."""
    return {name: list(cls.topics) for name, cls in _REGISTRY.items()}

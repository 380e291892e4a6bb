"""Event types: frozen dataclasses with past-tense names, one per state change.

Each type has a stable string name (its class name) that is stored in the log; renaming
a class would orphan old events, so names never change once released.

What an event means to the rest of the app lives on its class, so a reader asks the
event instead of keeping its own list of type names: the state a run goes to
(`run_state`, `next_run_state`), whether it wakes the runner or the scheduler, which page
topics it refreshes, and whether it is job activity (restores, verifies, prunes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

# The base, the registry and decoding are re-exported (`as` names): readers import the
# whole vocabulary of events from here.
from events.registry import JOBS, RUNS, SETTINGS, SNAPSHOTS, decode_event, event_type
from events.registry import Event as Event
from events.registry import UnknownEvent as UnknownEvent
from events.registry import canonical_json as canonical_json
from events.registry import event_class as event_class
from events.registry import event_classes as event_classes
from events.registry import topic_map as topic_map
from models.runs import TERMINAL_STATES

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
    cls for cls in event_classes() if cls.run_state in TERMINAL_STATES)
ACTIVITY_EVENTS: frozenset[type[Event]] = frozenset(
    cls for cls in event_classes() if cls.activity)


def next_run_state(previous: str, event: Event) -> str:
    """The state a run is in after an event (unchanged by events that do not move runs)."""
    return event.next_run_state(previous)


def event_from_payload(type_name: str, payload: dict[str, Any]) -> AnyEvent:
    """Rebuild an event object from its stored name and payload (UnknownEvent if unreadable)."""
    return decode_event(type_name, payload)  # type: ignore[return-value]

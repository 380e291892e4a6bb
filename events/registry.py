"""The base of every event type, the registry of types by name, and decoding from the log.

Each type has a stable string name (its class name) that is stored in the log; renaming
a class would orphan old events, so names never change once released. The event classes
themselves are in events/types.py.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

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


def decode_event(type_name: str, payload: dict[str, Any]) -> Event:
    """Rebuild an event object from its stored name and payload (UnknownEvent if unreadable)."""
    direct = _DIRECT.get(type_name)
    if direct is not None and payload.keys() == direct[1]:
        # Every field there, as this version writes them: fill the frozen instance at once.
        # The generated __init__ sets each field through object.__setattr__, which made
        # a replay of a long log a fifth slower.
        event = object.__new__(direct[0])
        event.__dict__.update(payload)
        return event
    cls = _REGISTRY.get(type_name)
    if cls is None:
        return UnknownEvent(type_name, payload)
    names = _FIELDS[cls]
    try:  # fields an older version did not write take their defaults; newer ones are dropped
        return cls(**{k: v for k, v in payload.items() if k in names})
    except TypeError:  # a field this version needs is missing
        return UnknownEvent(type_name, payload)


def canonical_json(value: Any) -> str:
    """Serialise to JSON with sorted keys and no spaces, so equal values hash equal."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def topic_map() -> dict[str, list[str]]:
    """Each event type's page topics, by type name (what the browser refreshes)."""
    return {name: list(cls.topics) for name, cls in _REGISTRY.items()}

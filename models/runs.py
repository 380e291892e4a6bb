"""A run's states and how each run event moves it: one rule for every reader of the log."""

from __future__ import annotations

ACTIVE_STATES = frozenset({"queued", "running", "paused", "interrupted"})
TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled", "discarded"})

_STATE_BY_EVENT = {
    "RunQueued": "queued",
    "RunStarted": "running",
    "RunPaused": "paused",
    "RunSucceeded": "succeeded",
    "RunFailed": "failed",
    "RunCancelled": "cancelled",
    "RunInterrupted": "interrupted",
    "RunDiscarded": "discarded",
}
RUN_STATE_EVENTS = frozenset({*_STATE_BY_EVENT, "RunResumed"})


def next_run_state(previous: str, event_type: str) -> str:
    """The state a run is in after an event of this type (unchanged for other events)."""
    if event_type == "RunResumed":
        # A paused run holds its slot and simply continues; an interrupted one goes back
        # to the queue and waits for a slot like any other.
        return "running" if previous == "paused" else "queued"
    return _STATE_BY_EVENT.get(event_type, previous)


# Why a run was cut off (RunInterrupted.reason), as a person reads it. A run that was
# paused when it was cut off stays interrupted until someone resumes it.
INTERRUPT_REASONS = {
    "crash": "cut off by a crash",
    "shutdown": "stopped by a shutdown",
    "crash_while_paused": "paused, then cut off by a crash; it waits for you to resume it",
    "shutdown_while_paused": "paused when the server stopped; it waits for you to resume it",
}
PAUSED_REASONS = frozenset({"crash_while_paused", "shutdown_while_paused"})

"""A run's states (each run event says which state it leads to: events/types.py)."""

from __future__ import annotations

ACTIVE_STATES = frozenset({"queued", "running", "paused", "interrupted"})
TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled", "discarded"})

# Why a run was cut off (RunInterrupted.reason), as a person reads it. A run that was
# paused when it was cut off stays interrupted until someone resumes it.
INTERRUPT_REASONS = {
    "crash": "cut off by a crash",
    "shutdown": "stopped by a shutdown",
    "crash_while_paused": "paused, then cut off by a crash; it waits for you to resume it",
    "shutdown_while_paused": "paused when the server stopped; it waits for you to resume it",
}
PAUSED_REASONS = frozenset({"crash_while_paused", "shutdown_while_paused"})

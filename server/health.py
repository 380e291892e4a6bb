"""The event log's health in words: for /healthz and for the banner on every page.

/healthz answers (decided for issue 12):
- "ok" (200): the whole chain was checked and holds, the log and projections write.
- "checking" (200): a large log's chain is still being checked in the background (see
  events/store.py FOREGROUND_CHECK_MAX); the server works meanwhile, `chain_check` shows
  how far it got. A monitor that wants certainty waits for "ok".
- "degraded" (503): something is wrong and `problems` says what, in words: the chain is
  broken at a seq (commands are refused until the log is put back), the log cannot be
  written (disk full, with since when), or the projections cannot be written.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from events.store import EventStore
from server.keys import STORE


def chain_state(store: EventStore) -> dict[str, Any]:
    """The start-up check's progress, with any fault found since by a read."""
    state = store.chain.as_dict()
    fault = store.chain_fault
    if fault is not None:
        state.update(state="failed", bad_seq=fault.seq, error=str(fault))
    return state


def log_problems(store: EventStore) -> list[str]:
    """What is wrong with the event log right now, one sentence each (empty when fine)."""
    problems = []
    fault = store.chain_fault
    if fault is not None:
        problems.append(f"the event log is damaged at seq {fault.seq} ({fault.reason}): "
                        "commands are refused; stop the server, run `backup-manager "
                        "events verify` and put back events.db from a backup")
    elif store.chain.state == "error":
        problems.append("the check of the event log's hash chain could not finish; see "
                        "the application log")
    if store.write_error is not None:
        problems.append(f"{store.write_error} (since {store.write_error_since}); what "
                        "cannot be recorded is retried, free space in the data directory")
    return problems


def health_status(store: EventStore, problems: list[str]) -> str:
    """ok, checking (the chain check still runs) or degraded (problems say why)."""
    if problems:
        return "degraded"
    return "ok" if store.chain.state == "passed" else "checking"


async def log_banner(request: web.Request) -> dict[str, Any]:
    """Page context: the damaged seq (or a write failure) for the banner in base.html."""
    store = request.app.get(STORE)
    if store is None:  # a page rendered before the log opened (an early error page)
        return {"log_fault": None, "log_write_error": None}
    return {"log_fault": store.chain_fault, "log_write_error": store.write_error,
            "log_write_error_since": store.write_error_since}

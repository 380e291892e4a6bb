"""How a backup run ends: the engine run in its worker thread, the new snapshot confirmed
in its destination, its warnings made fit to store, and appends that wait out a full disk.

A run is `succeeded` only when the snapshot it made can be listed again (issue 12, item
3); skipped files are part of its result, not only its log (item 9); and an outcome that
cannot be written (a full data directory) is retried until it lands (item 2).
"""

from __future__ import annotations

import asyncio
import logging
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from core.waits import wait_a_while
from engines.base import BackupResult, BackupSpec, EngineError, Reporter, RunControl
from events.store import ChainBroken, EventStore, StoreClosed, StoreError
from events.types import Event, canonical_json

log = logging.getLogger(__name__)

WARNING_SAMPLES = 10  # warnings a run keeps in its events; the run log has them all
SAMPLE_CHARS = 300  # one warning's length as stored
RETRY_FIRST = 0.25  # seconds before the first retry of an append that failed
RETRY_MAX = 5.0  # the longest wait between two retries: space back, outcome soon after


class CannotStart(EngineError):
    """A run could not even begin: a source or the destination missing, a binary missing."""


ERROR_CHARS = 2000  # a stored error message's length


def error_text(text: str) -> str:
    """An error message as the log can store it (a file name in it may not be UTF-8)."""
    return printable(text, ERROR_CHARS)


class NotConfirmed(EngineError):
    """The backup returned, but its snapshot cannot be found in the destination."""


def run_engine(engine: Any, spec: BackupSpec, control: RunControl, reporter: Reporter,
               resume: Mapping[str, Any] | None) -> tuple[BackupResult, set[str] | None]:
    """Check the run can begin, back up, then confirm the snapshot (in a worker thread).

    Returns the result and the ids the destination listed just after (None when a
    resumed run adopted a snapshot made before a crash).
    """
    try:
        engine.check_ready(spec)
        spec.check_sources()
        spec.check_destination()
    except EngineError as err:
        raise CannotStart(str(err)) from err
    adopted = finished_before_crash(engine, spec, resume)
    if adopted is not None:
        return adopted, None
    result: BackupResult = engine.backup(spec, control, reporter, resume)
    return result, confirm_snapshot(engine, spec, result.snapshot_id)


def confirm_snapshot(engine: Any, spec: BackupSpec, snapshot_id: str) -> set[str]:
    """Raise NotConfirmed unless the destination lists the snapshot; return what it lists.

    An engine can return after its destination vanished or was damaged under it (a
    repository deleted mid-run, a manifest removed); listing again, as a restore would,
    is what tells a snapshot that exists from one that only was reported.
    """
    try:
        listed = engine.snapshots(spec)
    except EngineError as err:
        raise NotConfirmed(f"snapshot {snapshot_id} could not be confirmed: the destination "
                           f"{spec.destination} cannot be listed after the backup: {err}"
                           ) from err
    ids = {snap.id for snap in listed}
    if snapshot_id not in ids:
        raise NotConfirmed(f"snapshot {snapshot_id} is not in the destination "
                           f"{spec.destination} after the backup (was it removed or "
                           "damaged while the run ended?); nothing of this run can be "
                           "restored")
    return ids


def finished_before_crash(engine: Any, spec: BackupSpec,
                          resume: Mapping[str, Any] | None) -> BackupResult | None:
    """The snapshot a resumed run had already completed, if the crash came after that.

    A kill between putting the snapshot in place and recording RunSucceeded leaves a
    complete snapshot no run claims; running again would make a second one. The
    checkpoint names the snapshot the run was making, so the run takes it as its result.
    """
    snapshot_id = (resume or {}).get("snapshot_id")
    if not isinstance(snapshot_id, str) or not snapshot_id:
        return None
    try:
        listed = engine.snapshots(spec)
    except EngineError:
        return None  # cannot tell (a busy restic repository): resume the normal way
    for snap in listed:
        if snap.id == snapshot_id:
            engine.tidy(spec)  # what the cut-off finalising would have removed
            return BackupResult(snap.id, snap.files, snap.size, 0.0)
    return None


def printable(text: str, limit: int = SAMPLE_CHARS) -> str:
    """A warning as it can be stored and shown: valid UTF-8, no control or bidi marks.

    Warnings name files, and a file name may hold bytes that are not UTF-8 (kept by
    Python as lone surrogates, which the log refuses) or U+202E, which would show the
    name reversed on a page.
    """
    try:  # bytes a file name held (surrogateescape) shown as \xNN, as in messages
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    out = "".join(f"\\u{ord(ch):04x}" if unicodedata.category(ch) in ("Cc", "Cf") else ch
                  for ch in text[:limit])
    return out if len(text) <= limit else out + "…"


def warning_samples(warnings: Sequence[str]) -> list[str]:
    """The first warnings of a run, as stored in its RunSucceeded."""
    return [printable(w) for w in warnings[:WARNING_SAMPLES]]


def storable(event: Event) -> bool:
    """Whether the log can store an event at all (a retry cannot fix one it refuses)."""
    try:
        canonical_json(event.payload()).encode("utf-8")
    except (TypeError, ValueError):
        return False
    return True


async def append_until_stored(store: EventStore, stream: str, events: list[Event],
                              stopping: Callable[[], bool], wake: asyncio.Event) -> bool:
    """Append, retrying with backoff while the log cannot write (a full data directory).

    A log that cannot write now (a full disk, reported like a closed log) is retried; a
    broken hash chain or an event the log refuses as it is are not (no retry mends
    them): they, and the app stopping, end the retries with False (the next start's
    recovery then deals with the run). `wake` cuts a wait short.
    """
    delay, failures = RETRY_FIRST, 0
    while True:
        try:
            await store.append(stream, None, events)
            if failures:
                log.warning("recorded %s for %s after %d failed attempts", _names(events),
                            stream, failures)
            return True
        except ChainBroken as err:
            log.error("could not record %s for %s: %s", _names(events), stream, err)
            return False
        except StoreClosed as err:  # a full disk shows as StoreClosed's kin: retried too
            failures += 1
            if failures == 1 or failures % 50 == 0:
                log.error("could not record %s for %s (attempt %d; retrying until it can "
                          "be written): %s", _names(events), stream, failures, err)
        except StoreError as err:  # refused as it is (cannot be stored): no retry mends it
            log.error("could not record %s for %s: %s", _names(events), stream, err)
            return False
        if stopping():
            return False
        await wait_a_while(wake, delay)
        delay = min(delay * 2, RETRY_MAX)


def _names(events: Sequence[Event]) -> str:
    return ", ".join(e.type_name for e in events)

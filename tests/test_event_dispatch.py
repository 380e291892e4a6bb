"""Every event type is handled or explicitly ignored by each reader of the log, as declared.

The declarations (HANDLED and IGNORED in core/state.py and storage/fold.py, the classes'
wakes_runner and wakes_scheduler) are held to what the folds do: one event of each type,
applied after a small history, changes the state or document exactly when declared.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import re
import typing
from pathlib import Path
from typing import Any

import pytest

from core.commands import Commands
from core.runlog import RunLogs
from core.runner import Runner
from core.scheduler import WAKE_EVENTS, Scheduler
from core.state import HANDLED, IGNORED, State
from events.record import GENESIS_HASH, StoredEvent, chain_hash
from events.store import EventStore
from events.types import (
    AnyEvent,
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
    canonical_json,
    event_classes,
    event_from_payload,
    next_run_state,
)
from models.ids import SETTINGS_STREAM
from storage.fold import (
    JOB_HANDLED,
    JOB_IGNORED,
    SETTINGS_HANDLED,
    SETTINGS_IGNORED,
    Doc,
    fold_job,
    fold_settings,
    initial_settings,
)
from tests.conftest import job_spec

JOB = "docs-1"
EVERY = frozenset(event_classes()) | {UnknownEvent}

# A job with a finished backup (snap-1), a queued run, a running one and an interrupted one.
HISTORY: list[Event] = [
    JobCreated(job_id=JOB, spec=job_spec()),
    RunQueued(job_id=JOB, run_id="r-done"), RunStarted(job_id=JOB, run_id="r-done"),
    RunSucceeded(job_id=JOB, run_id="r-done", snapshot_id="snap-1", files=1, bytes=10),
    RunQueued(job_id=JOB, run_id="r-queued"),
    RunQueued(job_id=JOB, run_id="r-going"), RunStarted(job_id=JOB, run_id="r-going"),
    RunQueued(job_id=JOB, run_id="r-cut"), RunStarted(job_id=JOB, run_id="r-cut"),
    RunInterrupted(job_id=JOB, run_id="r-cut"),
]

# One event of each type, each where it makes a difference if it makes any.
SAMPLES: dict[type[Event], Event] = {
    JobCreated: JobCreated(job_id=JOB, spec=job_spec("Again")),
    JobUpdated: JobUpdated(job_id=JOB, spec=job_spec("Renamed")),
    JobEnabled: JobEnabled(job_id=JOB),
    JobDisabled: JobDisabled(job_id=JOB),
    JobDeleted: JobDeleted(job_id=JOB),
    RunQueued: RunQueued(job_id=JOB, run_id="r-new"),
    RunStarted: RunStarted(job_id=JOB, run_id="r-queued"),
    RunCheckpointed: RunCheckpointed(job_id=JOB, run_id="r-going", checkpoint={"done": 3}),
    RunPaused: RunPaused(job_id=JOB, run_id="r-going"),
    RunResumed: RunResumed(job_id=JOB, run_id="r-cut"),
    RunSucceeded: RunSucceeded(job_id=JOB, run_id="r-going", snapshot_id="snap-2"),
    RunFailed: RunFailed(job_id=JOB, run_id="r-going", error="disk full"),
    RunCancelled: RunCancelled(job_id=JOB, run_id="r-going"),
    RunInterrupted: RunInterrupted(job_id=JOB, run_id="r-going"),
    RunDiscarded: RunDiscarded(job_id=JOB, run_id="r-cut"),
    SnapshotPruned: SnapshotPruned(job_id=JOB, snapshot_id="snap-1"),
    RestoreStarted: RestoreStarted(job_id=JOB, snapshot_id="snap-1", target="/tmp/out"),
    RestoreFinished: RestoreFinished(job_id=JOB, snapshot_id="snap-1", target="/tmp/out"),
    VerifyFinished: VerifyFinished(job_id=JOB, snapshot_id="snap-1", ok=True),
    SettingsChanged: SettingsChanged(changes={"max_concurrent_runs": 3}),
    UnknownEvent: UnknownEvent(name="FutureThingHappened", data={"job_id": JOB}),
}


def stored(items: list[tuple[str, Event]]) -> list[StoredEvent]:
    """Stored events as the log would hand them out (fresh objects: nothing decoded yet)."""
    versions: dict[str, int] = {}
    prev, out = GENESIS_HASH, []
    for seq, (stream, ev) in enumerate(items, start=1):
        versions[stream] = versions.get(stream, 0) + 1
        time = f"2026-01-01T00:00:{seq:02d}.000000Z"
        name = ev.name if isinstance(ev, UnknownEvent) else ev.type_name
        payload = canonical_json(ev.data if isinstance(ev, UnknownEvent) else ev.payload())
        prev = chain_hash(prev, seq, stream, versions[stream], time, name, payload)
        out.append(StoredEvent(seq, stream, versions[stream], time, name, payload, prev))
    return out


def stream_of(ev: Event) -> str:
    return SETTINGS_STREAM if isinstance(ev, SettingsChanged) else JOB


def with_sample(cls: type[Event]) -> list[StoredEvent]:
    sample = SAMPLES[cls]
    return stored([(JOB, e) for e in HISTORY] + [(stream_of(sample), sample)])


def state_view(state: State) -> dict[str, Any]:
    """What State holds, without the positions every event moves."""
    jobs = {j: {k: copy.deepcopy(v) for k, v in vars(job).items() if k != "version"}
            for j, job in state.jobs.items()}
    return {"jobs": jobs, "runs": {r: run.as_dict() for r, run in state.runs.items()},
            "active": [r.run_id for r in state.active_runs()], "settings": state.settings}


def doc_view(doc: Doc | None) -> Doc | None:
    return None if doc is None else {k: v for k, v in doc.items()
                                     if k not in ("version", "last_seq")}


def test_every_event_type_is_handled_or_ignored_by_each_fold() -> None:
    assert set(typing.get_args(AnyEvent)) == EVERY  # what mypy checks the matches against
    for handled, ignored in ((HANDLED, IGNORED), (JOB_HANDLED, JOB_IGNORED),
                             (SETTINGS_HANDLED, SETTINGS_IGNORED)):
        assert handled | ignored == EVERY
        assert not handled & ignored


def test_state_apply_changes_what_it_handles_and_nothing_else() -> None:
    base = State()
    base.apply_all(stored([(JOB, e) for e in HISTORY]))
    for cls in EVERY:
        state = State()
        state.apply_all(with_sample(cls))
        changed = state_view(state) != state_view(base)
        assert changed == (cls in HANDLED), cls.__name__


def test_fold_job_changes_what_it_handles_and_nothing_else() -> None:
    base: Doc | None = None
    for ev in stored([(JOB, e) for e in HISTORY]):
        base = fold_job(base, ev)
    for cls in EVERY:
        sample = SAMPLES[cls]
        doc: Doc | None = None
        for ev in stored([(JOB, e) for e in HISTORY] + [(JOB, sample)]):  # all on the job
            doc = fold_job(doc, ev)
        assert (doc_view(doc) != doc_view(base)) == (cls in JOB_HANDLED), cls.__name__


def test_fold_settings_changes_what_it_handles_and_nothing_else() -> None:
    base = doc_view(initial_settings())
    for cls in EVERY:
        [ev] = stored([(SETTINGS_STREAM, SAMPLES[cls])])
        doc = fold_settings(initial_settings(), ev)
        assert (doc_view(doc) != base) == (cls in SETTINGS_HANDLED), cls.__name__


async def test_runner_and_scheduler_wake_for_the_events_that_say_so(tmp_path: Path) -> None:
    assert {cls for cls in EVERY if cls.wakes_scheduler} == WAKE_EVENTS
    store = await EventStore.open(tmp_path / "events.db")
    try:
        state = State()  # no job: a discard finds nothing to clean up
        logs = RunLogs(tmp_path / "logs")
        runner = Runner(store, state, logs)
        scheduler = Scheduler(state, Commands(store, state))
        for cls in EVERY:
            [ev] = stored([(stream_of(SAMPLES[cls]), SAMPLES[cls])])
            runner._wake.clear()
            scheduler._wake.clear()
            runner._on_events([ev])
            scheduler.on_events([ev])
            assert runner._wake.is_set() == cls.wakes_runner, cls.__name__
            assert scheduler._wake.is_set() == cls.wakes_scheduler, cls.__name__
        await asyncio.sleep(0)
        logs.close()
    finally:
        await store.close()


def test_the_run_state_each_event_leads_to() -> None:
    states = {cls.__name__: cls.run_state for cls in event_classes() if cls.run_state}
    assert states == {"RunQueued": "queued", "RunStarted": "running", "RunPaused": "paused",
                      "RunSucceeded": "succeeded", "RunFailed": "failed",
                      "RunCancelled": "cancelled", "RunInterrupted": "interrupted",
                      "RunDiscarded": "discarded"}
    resumed = SAMPLES[RunResumed]
    # A paused run holds its slot and continues; an interrupted one queues again.
    assert next_run_state("paused", resumed) == "running"
    assert next_run_state("interrupted", resumed) == "queued"
    assert next_run_state("running", SAMPLES[RunCheckpointed]) == "running"


def test_a_stored_event_is_decoded_once_into_its_class() -> None:
    for cls, sample in SAMPLES.items():
        [ev] = stored([(stream_of(sample), sample)])
        assert ev.event is ev.event
        assert type(ev.event) is cls and ev.event == sample, cls.__name__


def test_old_new_and_unknown_payloads_decode() -> None:
    # Written before kind and params existed: a backup.
    old = event_from_payload("RunQueued", {"job_id": JOB, "run_id": "r-1"})
    assert old == RunQueued(job_id=JOB, run_id="r-1", kind="backup", params={})
    # A field a newer version added is dropped; a newer type, or one missing a field this
    # version needs, is an UnknownEvent the folds skip.
    newer = event_from_payload("RunStarted", {"job_id": JOB, "run_id": "r-1", "host": "b"})
    assert newer == RunStarted(job_id=JOB, run_id="r-1")
    assert event_from_payload("Teleported", {"x": 1}) == UnknownEvent("Teleported", {"x": 1})
    assert event_from_payload("RunFailed", {"job_id": JOB}) == UnknownEvent(
        "RunFailed", {"job_id": JOB})
    # Decoded events are frozen like constructed ones.
    decoded = event_from_payload("RunStarted", {"job_id": JOB, "run_id": "r-1"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(decoded, "run_id", "r-2")  # noqa: B010 (what a careless reader might do)


async def test_pages_carry_the_topic_map_of_the_event_classes(app_client: Any) -> None:
    html = await (await app_client.get("/")).text()
    found = re.search(r'<body[^>]*\sdata-topics="([^"]*)"', html)
    assert found is not None
    served = json.loads(found.group(1).replace("&#34;", '"').replace("&quot;", '"'))
    assert served == {cls.type_name: list(cls.topics) for cls in event_classes()}
    # What web/static/app.js's own copy said before the map moved to the classes.
    assert served["RunCheckpointed"] == []
    assert served["RunSucceeded"] == served["SnapshotPruned"] == ["bm-runs", "bm-snapshots"]
    assert served["RunResumed"] == ["bm-runs"] and served["JobDeleted"] == ["bm-jobs"]
    assert served["VerifyFinished"] == ["bm-snapshots"]
    assert served["SettingsChanged"] == ["bm-settings"]


def test_every_activity_event_has_its_own_markup_on_the_job_page() -> None:
    """The job page includes partials/activity/<type>.html: one for each activity type."""
    folder = Path(__file__).resolve().parent.parent / "web/templates/partials/activity"
    activity = {cls.type_name for cls in event_classes() if cls.activity}
    assert activity == {"RestoreStarted", "RestoreFinished", "VerifyFinished",
                        "SnapshotPruned"}
    assert {p.stem for p in folder.glob("*.html")} == activity

"""Runs that are not backups: restore, verify and prune, one function per kind.

The runner starts them under the same limits as backups (one run per destination, so a
job's backup and its restore never meet) and hands them here. Each runs its engine off
the loop with the run's own RunControl (pause, cancel and shutdown work as for a
backup) and reporter (live progress), writes the run's log, and ends with RunSucceeded,
RunFailed or RunInterrupted; a cancel was recorded by the command that asked for it.
The events the job page's activity and the YAML fold read (RestoreStarted,
RestoreFinished, VerifyFinished, SnapshotPruned) are written as before.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.active import ActiveRun
from core.outcome import error_text, warning_samples
from core.pruning import backup_spec
from core.restore_leftovers import sweep_restore_leftovers, written_names
from core.state import RunView
from engines.base import Cancelled, EngineError, Interrupted, Progress, Reporter
from engines.registry import get_engine
from events.types import (
    Event,
    RestoreFinished,
    RestoreStarted,
    RunCheckpointed,
    RunFailed,
    RunInterrupted,
    RunStarted,
    RunSucceeded,
    VerifyFinished,
)

if TYPE_CHECKING:
    from core.runner import Runner

log = logging.getLogger(__name__)

PROBLEMS_KEPT = 50  # problems a VerifyFinished keeps; the run log has them all
PROBLEMS_IN_ERROR = 10  # problems named in a failed verify run's error


@dataclass(frozen=True)
class Done:
    """What an operation run did: the snapshot it worked on, its figures, a log line."""

    snapshot_id: str
    files: int
    bytes: int
    summary: str
    events: tuple[Event, ...] = ()  # appended with RunSucceeded, in one batch
    warnings: tuple[str, ...] = ()  # what could not be kept as it was (a file's owner)


class OperationFailed(EngineError):
    """An operation failed; its own events (RestoreFinished, VerifyFinished) go with
    RunFailed in one batch, so nothing reads one without the other."""

    def __init__(self, message: str, events: list[Event]) -> None:
        super().__init__(message)
        self.events = events


Operation = Callable[["Runner", ActiveRun, Mapping[str, Any]], Awaitable[Done]]


def run_label(run: RunView) -> str:
    """How a person reads a run: "Restore of <snapshot>", "Prune", "Backup"."""
    snapshot = str(run.params.get("snapshot_id") or "")
    if run.kind in ("restore", "verify"):
        return f"{run.kind.capitalize()} of {snapshot}"
    return run.kind.capitalize()


async def execute_operation(runner: Runner, active: ActiveRun) -> None:
    """Run a restore, verify or prune to its end and record how it ended."""
    run = active.run
    spec = dict(runner.state.jobs[run.job_id].spec)
    began = time.monotonic()
    try:
        await runner.store.append(run.job_id, None,
                                  [RunStarted(job_id=run.job_id, run_id=run.run_id)])
        runner.logs.write(run.run_id, f"started: {run_label(run).lower()} "
                                      f"({spec['engine']}"
                                      f"{', resumed' if run.resumes else ''})")
        done = await BY_KIND[run.kind](runner, active, spec)
        await _end(runner, run, list(done.events), RunSucceeded(
            job_id=run.job_id, run_id=run.run_id, snapshot_id=done.snapshot_id,
            files=done.files, bytes=done.bytes,
            duration=round(time.monotonic() - began, 3), warnings=len(done.warnings),
            warning_samples=warning_samples(done.warnings)))
        runner.logs.write(run.run_id, f"succeeded: {done.summary}")
    except Cancelled:
        runner.logs.write(run.run_id, "cancelled")
    except Interrupted:
        reason = ("shutdown_while_paused" if runner.state_of(run) == "paused"
                  else "shutdown")
        await runner.record(run.job_id, [RunInterrupted(job_id=run.job_id,
                                                        run_id=run.run_id, reason=reason)])
        runner.logs.write(run.run_id, "interrupted by shutdown; " + (
            "it waits for a resume" if reason != "shutdown" else
            "it starts again on the next start"))
    except EngineError as err:
        events = err.events if isinstance(err, OperationFailed) else []
        await _fail(runner, run, error_text(str(err)), events)
    except Exception as err:  # never leave a run hanging in "running"
        log.exception("run %s crashed", run.run_id)
        await _fail(runner, run, error_text(f"internal error: {err}"), [])


async def _fail(runner: Runner, run: RunView, error: str, events: list[Event]) -> None:
    await _end(runner, run, events, RunFailed(job_id=run.job_id, run_id=run.run_id,
                                             error=error))
    runner.logs.write(run.run_id, f"FAILED {error}")


async def _end(runner: Runner, run: RunView, events: list[Event], outcome: Event) -> None:
    """Record the operation's own events and how the run ended, unless a cancel that
    landed after the engine's last safe point already ended it."""
    if runner.state_of(run) == "cancelled":
        outcome_events = events
        runner.logs.write(run.run_id, "cancelled as it ended")
    else:
        outcome_events = [*events, outcome]
    if outcome_events:
        await runner.record(run.job_id, outcome_events)


# --- restore ------------------------------------------------------------------------------


class _RestoreReporter:
    """The run's reporter, recording RestoreStarted when the engine begins writing.

    Every engine reports the "restoring" phase only after it has checked the snapshot,
    the path and the target. With RestoreStarted goes a checkpoint saying the target
    is being written and since when: a restart after a crash then overwrites what the
    first attempt wrote, and its temporary names can be told from a person's files.
    """

    def __init__(self, runner: Runner, run: RunView, inner: Reporter, event: RestoreStarted,
                 since: float) -> None:
        self.runner, self.run, self.inner, self.event = runner, run, inner, event
        self.since = since
        self.loop = asyncio.get_running_loop()
        self.recorded = False
        self.warnings: list[str] = []

    def progress(self, progress: Progress) -> None:
        """Pass progress on; on the first "restoring" report, record the start first."""
        if not self.recorded and progress.phase == "restoring":
            self.recorded = True
            checkpoint = RunCheckpointed(job_id=self.run.job_id, run_id=self.run.run_id,
                                         checkpoint={"writing": True, "since": self.since})
            # Waited for, from the engine's thread: Started is in the log before Finished.
            asyncio.run_coroutine_threadsafe(self.runner.store.append(
                self.run.job_id, None, [self.event, checkpoint]), self.loop).result(timeout=60)
        self.inner.progress(progress)

    def checkpoint(self, state: Mapping[str, Any]) -> None:
        """Restores keep no checkpoint of their own."""

    def warning(self, message: str) -> None:
        """Keep a warning in the run's log and its result."""
        self.warnings.append(message)
        self.inner.warning(message)


async def restore(runner: Runner, active: ActiveRun, spec: Mapping[str, Any]) -> Done:
    """Restore a snapshot (or a path in it) into the target the run was queued with,
    unless another restore is writing the same folders now (see _WRITING)."""
    run = active.run
    target = Path(str(run.params["target"]))
    real = await asyncio.to_thread(os.path.realpath, target)  # a hung mount: off the loop
    _claim_target(run.run_id, target, real, spec, run.params.get("path") or None)
    try:
        return await _restore(runner, active, spec)
    finally:
        del _WRITING[run.run_id]


async def _restore(runner: Runner, active: ActiveRun, spec: Mapping[str, Any]) -> Done:
    run = active.run
    params = run.params
    snapshot_id, target = str(params["snapshot_id"]), Path(str(params["target"]))
    path = params.get("path") or None
    checkpoint = dict(runner.checkpoint_of(run))
    overwrite = bool(params.get("overwrite"))
    since = float(checkpoint.get("since") or time.time())
    if checkpoint.get("writing"):
        # A first attempt was cut off while writing: what is there now is its own work
        # (its check found nothing to overwrite), so this attempt replaces it.
        overwrite = True
        swept = await asyncio.to_thread(sweep_restore_leftovers, target,
                                        written_names(spec, path), since)
        runner.logs.write(run.run_id, "a first attempt was cut off; restoring again over "
                                      f"what it wrote ({swept} temporary name(s) removed)")
    started = RestoreStarted(job_id=run.job_id, snapshot_id=snapshot_id, target=str(target),
                             path=path)
    reporter = _RestoreReporter(runner, run, runner.reporter_of(run), started, since)
    try:
        result = await asyncio.to_thread(
            get_engine(spec["engine"]).restore, backup_spec(spec, run.job_id), snapshot_id,
            target, active.control, reporter, path, overwrite)
    except Interrupted:
        raise  # recovery records the restore as cut off when it does not start again
    except Cancelled:
        if reporter.recorded:  # it had begun writing into the target: say how it ended
            await runner.record(run.job_id, [RestoreFinished(
                job_id=run.job_id, snapshot_id=snapshot_id, target=str(target),
                error="cancelled; the target may hold part of the files")])
        raise
    except Exception as err:
        if not reporter.recorded:
            raise  # refused before writing anything: no RestoreFinished
        error = error_text(str(err))
        raise OperationFailed(error, [RestoreFinished(
            job_id=run.job_id, snapshot_id=snapshot_id, target=str(target),
            error=error)]) from err
    finished = RestoreFinished(job_id=run.job_id, snapshot_id=snapshot_id, target=str(target),
                               files=result.files, bytes=result.bytes)
    return Done(snapshot_id, result.files, result.bytes,
                f"restored {result.files} files ({result.bytes} bytes) from {snapshot_id} "
                f"into {target}",
                (finished,) if reporter.recorded else (started, finished),
                tuple(reporter.warnings))


# Restores writing now, in this process: run id -> the real paths each writes
# (target/<source name>, or target/<path>). Two jobs have two destinations, so their
# restores may run at once; each checks its target before writing, so two writing the
# same folder name into one target would both pass and the later one would silently
# replace the other's files though neither allowed overwriting.
_WRITING: dict[str, frozenset[str]] = {}


def _claim_target(run_id: str, target: Path, real: str, spec: Mapping[str, Any],
                  path: str | None) -> None:
    """Record what this restore writes (under `real`, the target's real path), or raise
    EngineError naming the restore already writing there (checked and recorded with no
    await between, so of two starting at once one wins)."""
    mine = (frozenset({os.path.normpath(os.path.join(real, path.lstrip("/")))}) if path
            else frozenset(os.path.join(real, name) for name in written_names(spec, None)))
    for other, theirs in _WRITING.items():
        clash = next((a for a in mine for b in theirs if _overlap(a, b)), None)
        if clash is not None:
            raise EngineError(f"restore target {target} is being written by another "
                              f"restore (run {other}), which restores into {clash} too; "
                              "wait for it to end, then restore again (with overwrite if "
                              "this one should replace what it wrote)")
    _WRITING[run_id] = mine


def _overlap(a: str, b: str) -> bool:
    """Whether one path is the other or inside it."""
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


# --- verify -------------------------------------------------------------------------------


async def verify(runner: Runner, active: ActiveRun, spec: Mapping[str, Any]) -> Done:
    """Verify a snapshot; problems found end the run failed, naming them."""
    run = active.run
    snapshot_id = str(run.params["snapshot_id"])
    result = await asyncio.to_thread(get_engine(spec["engine"]).verify,
                                     backup_spec(spec, run.job_id), snapshot_id,
                                     active.control, runner.reporter_of(run))
    problems = [error_text(p) for p in result.problems]
    finished = VerifyFinished(job_id=run.job_id, snapshot_id=snapshot_id, ok=result.ok,
                              problems=problems[:PROBLEMS_KEPT])
    for problem in problems:
        runner.logs.write(run.run_id, f"PROBLEM {problem}")
    if not result.ok:
        raise OperationFailed(f"verify of {snapshot_id} found {len(problems)} problem(s): "
                              + "; ".join(problems[:PROBLEMS_IN_ERROR]), [finished])
    return Done(snapshot_id, result.files_checked, 0,
                f"snapshot {snapshot_id} is intact ({result.files_checked} files checked)",
                (finished,))


# --- prune --------------------------------------------------------------------------------


async def prune(runner: Runner, active: ActiveRun, spec: Mapping[str, Any]) -> Done:
    """Apply the job's retention now (or the default one)."""
    run = active.run
    if runner.store.chain.state != "passed":
        # As after a backup: nothing is deleted on the word of an unchecked log.
        raise EngineError("the event log's check has not passed yet; nothing is pruned "
                          "until it has, try again in a moment")
    if runner.pruning.policy(spec).keeps_everything:
        return Done("", 0, 0, "the retention policy keeps every snapshot; nothing pruned")
    removed = await runner.pruning.apply(run, spec)
    return Done("", len(removed), 0, f"pruned {len(removed)} snapshot(s)")


BY_KIND: dict[str, Operation] = {"restore": restore, "verify": verify, "prune": prune}


async def discard_operation(runner: Runner, run: RunView, spec: Mapping[str, Any]) -> None:
    """An interrupted operation a person gave up: sweep a restore's temporary names."""
    checkpoint = run.checkpoint or {}
    if run.kind != "restore" or not checkpoint.get("writing"):
        runner.logs.write(run.run_id, "discarded")
        return
    target = Path(str(run.params["target"]))
    swept = await asyncio.to_thread(sweep_restore_leftovers, target,
                                    written_names(spec, run.params.get("path") or None),
                                    float(checkpoint.get("since") or 0.0))
    runner.logs.write(run.run_id, f"discarded; {swept} temporary name(s) the cut-off restore "
                                  f"left in {target} removed (the files it restored stay)")

"""How a backup run's success is recorded: never over a pause, held until resumed.

Moved out of core.runner (which starts runs) so the runner stays one page; the
behaviour is issue 12's: a run paused after its last safe point keeps its complete
snapshot until a person resumes (success recorded) or cancels it (snapshot removed).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from core.active import ActiveRun
from core.outcome import RETRY_FIRST, RETRY_MAX
from core.waits import wait_a_while
from events.store import ChainBroken, ConcurrencyError, StoreClosed, StoreError
from events.types import RunCheckpointed, RunInterrupted, RunSucceeded

if TYPE_CHECKING:
    from core.runner import Runner

log = logging.getLogger(__name__)


async def record_success(runner: Runner, active: ActiveRun, event: RunSucceeded) -> str:
    """Append RunSucceeded only onto a log that shows the run running, not paused.

    A pause that lands after the engine's last safe point holds the run here, with
    its complete snapshot, until it is resumed; a cancel then removes the snapshot,
    a shutdown leaves it interrupted for a person to resume. The append names the
    stream version it checked, so a pause committed in between is seen, not
    overwritten. Returns the outcome: succeeded, cancelled, interrupted, unrecorded.
    """
    run = active.run
    delay, failures, held = RETRY_FIRST, 0, False
    while True:
        state = runner.state_of(run)
        if state == "paused":
            if not held:
                held = True
                # Named in the checkpoint: a resume after a crash adopts the snapshot.
                await runner.record(run.job_id, [RunCheckpointed(
                    job_id=run.job_id, run_id=run.run_id,
                    checkpoint={**runner.checkpoint_of(run),
                                "snapshot_id": event.snapshot_id})])
                runner.logs.write(run.run_id, f"paused with snapshot {event.snapshot_id} "
                                            "complete; success is recorded on resume")
            state = await state_when_not_paused(runner, active)
        if state == "cancelled":
            await runner.pruning.remove_held(run, event.snapshot_id)
            return "cancelled"
        if state == "paused":  # the app is stopping while the run is held
            recorded = await runner.record(run.job_id, [RunInterrupted(
                job_id=run.job_id, run_id=run.run_id, reason="shutdown_while_paused")])
            runner.logs.write(run.run_id, "interrupted by shutdown while paused; it waits "
                                        "for a resume")
            return "interrupted" if recorded else "unrecorded"
        try:
            await runner.store.append(run.job_id, runner.store.stream_version(run.job_id),
                                    [event])
            return "succeeded"
        except ConcurrencyError:
            continue  # something (a pause, a cancel) landed since the check: look again
        except ChainBroken as err:  # no retry mends it; the banner says what to do
            log.error("could not record RunSucceeded of run %s: %s", run.run_id, err)
            return "unrecorded"
        except StoreClosed as err:  # a full disk: retried until space is back
            failures += 1
            if failures == 1 or failures % 50 == 0:
                log.error("could not record RunSucceeded of run %s (attempt %d; "
                          "retrying until it can be written): %s", run.run_id,
                          failures, err)
        except StoreError as err:  # refused as it is: a retry would loop for ever
            log.error("could not record RunSucceeded of run %s: %s", run.run_id, err)
            return "unrecorded"
        if runner.stopping:
            return "unrecorded"  # the next start resumes it and adopts the snapshot
        await wait_a_while(runner.stop_wake, delay)
        delay = min(delay * 2, RETRY_MAX)

async def state_when_not_paused(runner: Runner, active: ActiveRun) -> str:
    """The run's state as the log shows it, waiting while it is paused (until stop)."""
    while True:
        active.changed.clear()
        state = runner.state_of(active.run)
        if state != "paused" or runner.stopping:
            return state
        await active.changed.wait()

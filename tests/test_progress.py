"""Progress that does not lie: no ETA while counting or too early, a rate that follows."""

from __future__ import annotations

import time

import pytest

from engines.base import Cancelled, Interrupted, ProgressMeter, RunControl
from tests.engine_helpers import RecordingReporter


def test_no_eta_while_totals_are_still_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    reporter = RecordingReporter()
    meter = ProgressMeter(reporter, interval=0.0)
    meter.update(phase="copying", counting=True, bytes_total=1000)
    for _ in range(10):
        clock[0] += 1
        meter.add(nbytes=50)
    assert all(p.eta is None for p in reporter.progress_updates)
    assert reporter.progress_updates[-1].rate == pytest.approx(50, rel=0.2)
    meter.update(counting=False)
    assert reporter.progress_updates[-1].eta == pytest.approx(500 / 50, rel=0.2)


def test_no_eta_in_the_first_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    reporter = RecordingReporter()
    meter = ProgressMeter(reporter, interval=0.0)
    meter.update(phase="copying", counting=False, bytes_total=10_000)
    clock[0] = 0.6
    meter.add(nbytes=5000)
    assert reporter.progress_updates[-1].rate and reporter.progress_updates[-1].eta is None
    clock[0] = 2.5
    meter.add(nbytes=100)
    assert reporter.progress_updates[-1].eta is not None


def test_updates_are_throttled() -> None:
    reporter = RecordingReporter()
    meter = ProgressMeter(reporter, interval=10.0)
    for _ in range(1000):
        meter.add(files=1, nbytes=1)
    assert len(reporter.progress_updates) == 1
    meter.update(force=True, phase="done")
    assert reporter.progress_updates[-1].files_done == 1000


def test_control_cancel_and_interrupt_raise_at_safe_points() -> None:
    control = RunControl()
    control.safe_point()
    control.interrupt()
    with pytest.raises(Interrupted):
        control.safe_point()
    cancelled = RunControl()
    cancelled.pause()
    cancelled.cancel()  # a paused run can still be cancelled
    with pytest.raises(Cancelled):
        cancelled.safe_point()

"""Pause, resume, cancel and interrupt: the flags a caller sets and an engine obeys."""

from __future__ import annotations

import threading

from engines.errors import Cancelled, Interrupted


class RunControl:
    """Pause, resume and cancel flags, shared between the caller and the worker thread."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._paused = False
        self._cancelled = False
        self._interrupted = False

    def pause(self) -> None:
        """Ask the run to hold at its next safe point."""
        with self._cond:
            self._paused = True
            self._cond.notify_all()

    def resume(self) -> None:
        """Let a paused run continue."""
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def cancel(self) -> None:
        """Ask the run to stop as soon as it can and remove its partial output."""
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()

    def interrupt(self) -> None:
        """Ask the run to stop at its next safe point and keep its partial output."""
        with self._cond:
            self._interrupted = True
            self._cond.notify_all()

    @property
    def interrupted(self) -> bool:
        """Whether an interrupt (shutdown) was asked for."""
        return self._interrupted

    @property
    def paused(self) -> bool:
        """Whether a pause was asked for and not yet lifted."""
        return self._paused

    @property
    def cancelled(self) -> bool:
        """Whether cancel was asked for."""
        return self._cancelled

    def safe_point(self) -> None:
        """Called by engines between units of work: hold while paused, raise if cancelled."""
        with self._cond:
            while self._paused and not self._cancelled and not self._interrupted:
                self._cond.wait()
            if self._cancelled:
                raise Cancelled("the run was cancelled")
            if self._interrupted:
                raise Interrupted("the run was interrupted; it can resume from its checkpoint")

    def wait_for_change(self, timeout: float) -> None:
        """Sleep until pause/resume/cancel is asked for, or the timeout passes."""
        with self._cond:
            self._cond.wait(timeout)

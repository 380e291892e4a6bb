"""Errors a command raises; the server maps each to one HTTP status in one place."""

from __future__ import annotations


class CommandError(ValueError):
    """A command was refused; the message says why and nothing was appended."""


class NotFound(CommandError):
    """The job, run or snapshot named does not exist."""


class Conflict(CommandError):
    """The command does not fit the current state (a run already going, ...)."""


class Invalid(CommandError):
    """The input is not valid; `errors` maps fields to messages for inline display."""

    def __init__(self, message: str, errors: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or {}

"""Engine options as records: a name, a type, a default, help text and a check.

Each engine lists its options in engines.registry; a job's options are checked there when
the job is saved, not when it runs. The checks are pure functions of the value.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Check = Callable[[Any], str | None]  # returns what is wrong, or None


@dataclass(frozen=True)
class Option:
    """One engine option: what it is called, what it takes, and how it is checked."""

    name: str
    type: str  # what a person types, for the form's help ("a whole number", ...)
    help: str
    check: Check
    default: Any = None  # None: unset (the engine's own behaviour), never checked
    required: bool = False
    # A file whose first line is a password: core.pathcheck reads it when the job is
    # saved (off the event loop), so a job that cannot open its repository is refused.
    secret_file: bool = False

    def describe(self) -> str:
        """The option as the job form's help shows it: name, help, default."""
        text = f"{self.name} ({self.type}): {self.help}"
        if self.required:
            return f"{text}; required"
        if self.default is not None:
            shown = str(self.default).lower() if isinstance(self.default, bool) \
                else str(self.default)
            return f"{text}; default {shown}"
        return text


def whole(low: int, high: int) -> Check:
    """A whole number from low to high (a bool is not a number here)."""
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            return f"must be a whole number from {low} to {high}"
        return None
    return check


def flag(value: Any) -> str | None:
    """True or false, as a bool or as the words a form sends."""
    if isinstance(value, bool) or (isinstance(value, str) and value.lower() in
                                   ("true", "false", "yes", "no", "1", "0", "on", "off")):
        return None
    return "must be true or false"


def abs_path(value: Any) -> str | None:
    """An absolute path (its existence is core.pathcheck's to judge, off the event loop)."""
    if not isinstance(value, str) or not posixpath.isabs(value) or "\x00" in value:
        return "must be an absolute path"
    return None


def one_of(*choices: str) -> Check:
    """One of a few words."""
    def check(value: Any) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"
    return check


def text(value: Any) -> str | None:
    """Some text that is not only spaces."""
    return None if isinstance(value, str) and value.strip() else "must be some text"

"""What an engine raises: every message is meant for a person, never a traceback."""

from __future__ import annotations


class EngineError(Exception):
    """A backup, restore, verify or prune could not be done; the message says why."""


class SourceMissing(EngineError):
    """A source does not exist."""


class SourceUnreadable(EngineError):
    """A source exists but cannot be read."""


class DestinationInsideSource(EngineError):
    """The destination lies inside a source, so the backup would back itself up."""


class DestinationNotWritable(EngineError):
    """The destination cannot be created or written."""


class DiskFull(EngineError):
    """The destination ran out of space; nothing partial looks complete."""


class BinaryMissing(EngineError):
    """The program an engine runs (rsync, restic) is not installed."""


class SnapshotNotFound(EngineError):
    """No complete snapshot has that id."""


class RestoreConflict(EngineError):
    """The restore target already has files and overwriting was not asked for."""


class Cancelled(EngineError):
    """The run was cancelled; its partial output was removed."""


class Interrupted(EngineError):
    """The run was stopped at a safe point (shutdown); its partial output is kept to resume."""

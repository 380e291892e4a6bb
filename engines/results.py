"""What an engine's operations return."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class BackupResult:
    """A finished backup: its snapshot and what it holds."""

    snapshot_id: str
    files: int
    bytes: int
    duration: float
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Snapshot:
    """A complete snapshot as listed by its engine."""

    id: str
    time: datetime
    files: int
    size: int


@dataclass(frozen=True)
class RestoreResult:
    """A finished restore."""

    files: int
    bytes: int


@dataclass(frozen=True)
class VerifyResult:
    """A verification: ok, or the problems found."""

    ok: bool
    problems: tuple[str, ...] = ()
    files_checked: int = 0

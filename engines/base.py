"""The engine contract in one import: everything an engine implements, raises and reports.

Each concern lives in its own module; this one only gathers them so a caller (or an
engine) can write `from engines.base import BackupSpec, RunControl, EngineError`:

- engines/contract.py: BackupSpec (what to back up and where), Snapshot, the Engine ABC
- engines/control.py: RunControl (pause, resume, cancel, interrupt)
- engines/progress.py: Progress, Reporter, NullReporter, CollectingReporter, ProgressMeter
- engines/results.py: BackupResult, RestoreResult, VerifyResult
- engines/errors.py: EngineError and the errors a person reads
- engines/ratelimit.py: RateLimiter (the `bwlimit` option); engines/hostenv.py: host_environ
"""

from __future__ import annotations

from engines.contract import BackupSpec, Engine, Snapshot
from engines.control import RunControl
from engines.errors import (
    BinaryMissing,
    Cancelled,
    DestinationInsideSource,
    DestinationNotWritable,
    DiskFull,
    EngineError,
    Interrupted,
    RestoreConflict,
    SnapshotNotFound,
    SourceMissing,
    SourceUnreadable,
)
from engines.hostenv import host_environ
from engines.progress import (
    CollectingReporter,
    NullReporter,
    Progress,
    ProgressMeter,
    Reporter,
)
from engines.ratelimit import RateLimiter, bwlimit_option
from engines.results import BackupResult, RestoreResult, VerifyResult

__all__ = [
    "BackupResult", "BackupSpec", "BinaryMissing", "Cancelled", "CollectingReporter",
    "DestinationInsideSource", "DestinationNotWritable", "DiskFull", "Engine",
    "EngineError", "Interrupted", "NullReporter", "Progress", "ProgressMeter",
    "RateLimiter", "Reporter", "RestoreConflict", "RestoreResult", "RunControl",
    "Snapshot", "SnapshotNotFound", "SourceMissing", "SourceUnreadable", "VerifyResult",
    "bwlimit_option", "host_environ",
]

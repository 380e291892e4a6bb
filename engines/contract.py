"""The contract every engine implements: what it is asked (BackupSpec) and how (Engine).

An engine runs in a worker thread (or drives a subprocess from one); it never touches
the event loop. It reports progress and checkpoints through a Reporter
(engines/progress.py) and obeys a RunControl (engines/control.py) for pause, resume and
cancel.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from engines.control import RunControl
from engines.destinations import DestinationKind, LocalFolder
from engines.errors import (
    DestinationInsideSource,
    DestinationNotWritable,
    EngineError,
    SourceMissing,
    SourceUnreadable,
)
from engines.progress import Reporter
from engines.results import BackupResult, RestoreResult, Snapshot, VerifyResult
from models.retention import Retention, snapshots_to_keep

__all__ = ["BackupSpec", "Engine", "Snapshot"]


@dataclass(frozen=True)
class BackupSpec:
    """What to back up and where: the engine-facing part of a job."""

    sources: tuple[Path, ...]
    destination: Path  # the local folder the engine writes (for a local destination)
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    # The job the snapshots belong to: every snapshot records it, and listing, retention
    # and restore only ever see their own job's snapshots (issue 12, item 1). Empty for
    # callers outside a job (benchmarks), which then see every snapshot.
    job_id: str = ""
    # The destination exactly as the job gives it, and how its engine reads it (from
    # engines.registry): a remote one (a repository URL) is not a local folder to check.
    location: str = ""
    kind: DestinationKind = field(default_factory=LocalFolder)

    @classmethod
    def build(cls, sources: Sequence[str | Path], destination: str | Path,
              include: Sequence[str] = (), exclude: Sequence[str] = (),
              options: Mapping[str, Any] | None = None, job_id: str = "",
              kind: DestinationKind | None = None) -> BackupSpec:
        """Make a spec from plain values (paths as strings are fine)."""
        return cls(tuple(Path(s) for s in sources), Path(destination), tuple(include),
                   tuple(exclude), dict(options or {}), job_id, str(destination),
                   kind or LocalFolder())

    @property
    def is_local(self) -> bool:
        """Whether the destination is a folder on this machine (not a remote repository)."""
        return not self.kind.is_remote(self.location or str(self.destination))

    def source_names(self) -> dict[str, Path]:
        """Map each source's top-level name in a snapshot to its path."""
        names: dict[str, Path] = {}
        for src in self.sources:
            name = src.name or "root"
            if name in names:
                raise EngineError(f"sources {names[name]} and {src} have the same name "
                                  f"{name!r}; a snapshot keeps each source under its name")
            names[name] = src
        return names

    def check_sources(self) -> None:
        """Raise a clear error unless every source exists, is readable and is absolute."""
        if not self.sources:
            raise SourceMissing("a job needs at least one source")
        for src in self.sources:
            if not src.is_absolute():
                raise SourceMissing(f"source {src} is not an absolute path")
            if not src.exists() and not src.is_symlink():
                raise SourceMissing(f"source {src} does not exist")
            # effective_ids: with the real uid unprivileged, plain access() ignores
            # capabilities, and a service reading sources with CAP_DAC_READ_SEARCH (the
            # systemd unit in deploy/) would be refused what it can in fact read.
            if not os.access(src, os.R_OK, effective_ids=True) or (
                    src.is_dir() and not os.access(src, os.X_OK, effective_ids=True)):
                raise SourceUnreadable(f"source {src} cannot be read (permission denied)")
        self.source_names()

    def check_destination(self) -> None:
        """Raise a clear error if a local destination is inside a source or not writable.

        A remote destination is checked by the engine when it opens it.
        """
        if not self.is_local:
            return
        dest = self.destination
        if not dest.is_absolute():
            raise DestinationNotWritable(f"destination {dest} is not an absolute path")
        real_dest = Path(os.path.realpath(dest))
        for src in self.sources:
            real_src = Path(os.path.realpath(src))
            if real_dest == real_src or real_src in real_dest.parents:
                raise DestinationInsideSource(f"destination {dest} is inside source {src}")
        try:
            dest.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise DestinationNotWritable(
                f"destination {dest} cannot be created: {err.strerror}") from err
        if not os.access(dest, os.W_OK | os.X_OK, effective_ids=True):
            raise DestinationNotWritable(f"destination {dest} is not writable")


class Engine(ABC):
    """A backup engine: back up, list, restore, verify and prune snapshots."""

    name: ClassVar[str]
    # Whether an interrupted backup continues its partial output (True) or starts over.
    resumes_partial: ClassVar[bool] = True

    def check_ready(self, spec: BackupSpec) -> None:  # noqa: B027 - optional hook
        """Raise a clear error if something the engine needs is missing (a binary)."""

    @abstractmethod
    def backup(self, spec: BackupSpec, control: RunControl, reporter: Reporter,
               resume: Mapping[str, Any] | None = None) -> BackupResult:
        """Make a new snapshot; with `resume` (a checkpoint) continue an interrupted one."""

    @abstractmethod
    def snapshots(self, spec: BackupSpec) -> list[Snapshot]:
        """List complete snapshots, oldest first."""

    @abstractmethod
    def restore(self, spec: BackupSpec, snapshot_id: str, target: Path, control: RunControl,
                reporter: Reporter, path: str | None = None,
                overwrite: bool = False) -> RestoreResult:
        """Restore a snapshot, or one path in it, into target."""

    @abstractmethod
    def verify(self, spec: BackupSpec, snapshot_id: str, control: RunControl,
               reporter: Reporter) -> VerifyResult:
        """Check a snapshot against its manifest (or the repository's own check)."""

    @abstractmethod
    def delete_snapshots(self, spec: BackupSpec, snapshot_ids: Sequence[str]) -> None:
        """Remove complete snapshots."""

    @abstractmethod
    def discard_partial(self, spec: BackupSpec, resume: Mapping[str, Any] | None = None) -> None:
        """Remove what an interrupted backup left behind."""

    def tidy(self, spec: BackupSpec) -> None:  # noqa: B027 - optional: most have nothing
        """Remove leftovers of killed attempts that cannot belong to a run still going."""

    def prune(self, spec: BackupSpec, policy: Retention, hold: Collection[str] = ()
              ) -> list[str]:
        """Remove the snapshots a retention policy does not keep; return their ids.

        Snapshots in `hold` stay whatever the policy says (a restore waits for them).
        """
        snaps = self.snapshots(spec)
        keep = snapshots_to_keep(((s.id, s.time) for s in snaps), policy)
        doomed = [s.id for s in snaps if s.id not in keep and s.id not in hold]
        if doomed:
            self.delete_snapshots(spec, doomed)
        return doomed

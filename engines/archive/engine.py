"""Archive engine: one compressed tar (.tar.zst, or .tar.gz) and one manifest per run.

The files in the destination are named in names.py (<id>.tar.zst, <id>.manifest.json,
<id>.tar.zst.partial). The archive is written by write.py: a pax-format tar (what tarfile
writes), compressed as one zstd frame per few MB of tar, which zstd, GNU tar and the
reader here take as one stream.

A snapshot exists when its archive (final name) and its manifest both exist. A run
writes the archive under the .partial name and fsyncs it, writes the manifest, and only
then renames the archive into place and fsyncs the directory: a half archive never looks
complete. Deleting goes the other way (manifest first), so a half-deleted snapshot is
not listed either.

What an archive keeps (issue 12): content (sparse files are read and restored with their
holes), mode, mtime, owner and group (restored where the server may chown: root or
CAP_CHOWN), hard links inside the sources (hard-link members; links again on restore),
`user.*` extended attributes and POSIX ACLs (pax SCHILY.xattr records, as GNU tar writes
them), and names that are not UTF-8 (as their bytes). Each manifest records its job, and
a job lists, prunes, restores and verifies only its own archives (and those from before
archives recorded their job). Restores write under short temporary names and sweep what
a killed restore left (target.py).

Crash recovery: a half-written zstd or gzip stream cannot be continued reliably, so this
engine starts over instead of resuming (`resumes_partial = False`). Each run checkpoints
{"engine": "archive", "partial": <file name>, "snapshot_id": <id>} before it writes
anything; `backup(resume=checkpoint)` and `discard_partial` remove that partial archive
(and a manifest written just before the crash), and the new run begins from scratch.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engines.archive.errors import destination_error
from engines.archive.names import (
    EXTENSIONS,
    MANIFEST,
    archive_file,
    being_written,
    belongs,
    complete_snapshots,
    compression_option,
    dir_names,
    listing,
    locate,
    manifest_file,
    parse_name,
    remove_all,
    time_from_id,
)
from engines.archive.restore import restore_archive
from engines.archive.verify import verify_archive
from engines.archive.write import write_archive
from engines.contract import BackupSpec, Engine
from engines.control import RunControl
from engines.errors import DestinationNotWritable, SnapshotNotFound
from engines.manifest import ManifestError, check_snapshot_id, unique_snapshot_id
from engines.manifest_stream import ManifestWriter, listed_manifest
from engines.progress import CollectingReporter, ProgressMeter, Reporter
from engines.results import BackupResult, RestoreResult, Snapshot, VerifyResult
from engines.scan import walk
from models.atomic import fsync_dir, remove_durable

# Pause and cancel are checked between entries and every this many bytes inside one.
SAFE_POINT_BYTES = 4 << 20


class ArchiveEngine(Engine):
    """Backs up to one compressed tarball plus a manifest per run; restarts after a crash."""

    name = "archive"
    resumes_partial = False

    # --- backup ---------------------------------------------------------------------

    def backup(self, spec: BackupSpec, control: RunControl, reporter: Reporter,
               resume: Mapping[str, Any] | None = None) -> BackupResult:
        """Write a new archive and manifest; with `resume`, drop the old partial and start over."""
        started = time.monotonic()
        compression, level = compression_option(spec.options)  # before anything is created
        spec.check_sources()
        spec.check_destination()
        dest = spec.destination
        if resume is not None:
            self.discard_partial(spec, resume)
        now = datetime.now(UTC)
        snapshot_id = unique_snapshot_id({n.snapshot_id for n in listing(dest)}, now)
        partial = archive_file(dest, snapshot_id, compression, partial=True)
        final = archive_file(dest, snapshot_id, compression)
        manifest_path = manifest_file(dest, snapshot_id)
        reporter.checkpoint({"engine": self.name, "partial": partial.name,
                             "snapshot_id": snapshot_id})
        collector = CollectingReporter(reporter)
        meter = ProgressMeter(collector)
        meter.update(force=True, phase="scanning", counting=True)
        # The walk is a stream written as it is read (memory flat in the number of
        # files); the totals count up with it until it ends.
        entries = walk(spec, control, collector)
        meter.update(force=True, phase="archiving", counting=True, files_total=0,
                     bytes_total=0)
        try:
            raw = open(partial, "xb", buffering=0)  # noqa: SIM115 - closed below, on every path
        except OSError as err:
            raise destination_error(err, dest) from err
        # From here on everything this run created goes if it does not finish.
        ours = [partial, manifest_path, final]
        try:
            with raw:
                # Held while it is written, so that a discard without a checkpoint (which
                # cannot tell whose a partial is) leaves another run's archive alone.
                with contextlib.suppress(OSError):  # no locks there (some network mounts)
                    fcntl.flock(raw.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                # The manifest is written entry by entry beside the archive (format 2),
                # under a temporary name until committed: neither is ever held whole.
                manifest = ManifestWriter(
                    manifest_path, snapshot_id, self.name,
                    now.isoformat().replace("+00:00", "Z"),
                    {name: str(path) for name, path in spec.source_names().items()},
                    spec.job_id)
                with manifest:
                    write_archive(raw, compression, level, entries, control, collector, meter,
                                  SAFE_POINT_BYTES, manifest)
                    os.fsync(raw.fileno())
                    meter.update(force=True, phase="finalising", current_file="")
                    # The last chance to hold or stop: after this the snapshot is visible.
                    control.safe_point()
                    manifest.commit()
            os.replace(partial, final)
            fsync_dir(dest)
        except OSError as err:
            remove_all(ours, dest)
            raise destination_error(err, dest) from err
        except BaseException:
            remove_all(ours, dest)
            raise
        meter.update(force=True, phase="done", current_file="")
        return BackupResult(snapshot_id, manifest.files, manifest.bytes,
                            time.monotonic() - started, tuple(collector.warnings))

    # --- listing and deleting --------------------------------------------------------

    def snapshots(self, spec: BackupSpec) -> list[Snapshot]:
        """List complete archives (archive and manifest both present), oldest first."""
        dest = spec.destination
        found: list[Snapshot] = []
        for snapshot_id in complete_snapshots(dest, spec.job_id):
            try:
                # Checked whole, its entries not held (format 2; format 1 is read whole).
                manifest = listed_manifest(manifest_file(dest, snapshot_id))
                when = manifest.time
                snap = Snapshot(snapshot_id, when if when.tzinfo else when.replace(tzinfo=UTC),
                                manifest.files, manifest.size)
            except (ManifestError, ValueError, KeyError, TypeError, AttributeError):
                # Still listed (its time read from its id) so that verify can name the
                # damage and prune can remove it.
                snap = Snapshot(snapshot_id, time_from_id(snapshot_id), 0, 0)
            found.append(snap)
        return sorted(found, key=lambda s: (s.time, s.id))

    def delete_snapshots(self, spec: BackupSpec, snapshot_ids: Sequence[str]) -> None:
        """Remove snapshots: the manifest first, then the archive, so half-deleted is unlisted."""
        dest = spec.destination
        present = {n.snapshot_id for n in listing(dest) if n.kind != "partial"
                   and belongs(dest, n.snapshot_id, spec.job_id)}
        for snapshot_id in snapshot_ids:
            if check_snapshot_id(snapshot_id) not in present:
                raise SnapshotNotFound(f"snapshot {snapshot_id} is not in {dest}")
        for snapshot_id in snapshot_ids:
            try:
                remove_durable(manifest_file(dest, snapshot_id))
                for compression in EXTENSIONS:
                    remove_durable(archive_file(dest, snapshot_id, compression))
            except OSError as err:
                raise DestinationNotWritable(f"snapshot {snapshot_id} cannot be removed from "
                                             f"{dest}: {err.strerror or err}") from err

    def discard_partial(self, spec: BackupSpec, resume: Mapping[str, Any] | None = None) -> None:
        """Remove what an interrupted run left: its partial archive and a manifest without one.

        With a checkpoint only that run's leftovers go (another job may share the
        destination); without one, every partial archive no run is writing goes.
        """
        dest = spec.destination
        names = listing(dest)
        if resume is None:
            doomed = [n for n in names
                      if n.kind == "partial" and not being_written(dest / n.file_name)]
        else:
            parsed = parse_name(str(resume.get("partial", "")))
            doomed = [parsed] if parsed and parsed.kind == "partial" else []
            if not doomed and isinstance(resume.get("snapshot_id"), str):
                doomed = [n for n in names
                          if n.kind == "partial" and n.snapshot_id == resume["snapshot_id"]]
        finished = {n.snapshot_id for n in names if n.kind == "archive"}
        paths = [dest / n.file_name for n in doomed]
        # A crash between writing the manifest and renaming the archive leaves a manifest
        # that belongs to no archive; stale temp files of that manifest go too.
        for snapshot_id in {n.snapshot_id for n in doomed} - finished:
            paths.append(manifest_file(dest, snapshot_id))
            paths.extend(dest / n for n in dir_names(dest)
                         if n.startswith(f".{snapshot_id}{MANIFEST}.") and n.endswith(".tmp"))
        try:
            for path in paths:
                path.unlink(missing_ok=True)
            if paths:
                fsync_dir(dest)
        except OSError as err:
            raise DestinationNotWritable(f"cannot remove the unfinished archive in {dest}: "
                                         f"{err.strerror or err}") from err

    # --- restore and verify ------------------------------------------------------------

    def restore(self, spec: BackupSpec, snapshot_id: str, target: Path, control: RunControl,
                reporter: Reporter, path: str | None = None,
                overwrite: bool = False) -> RestoreResult:
        """Restore a snapshot, or the entries under `path` in it, to target/<path>."""
        return restore_archive(locate(spec, snapshot_id), target, control, reporter, path,
                               overwrite, SAFE_POINT_BYTES)

    def verify(self, spec: BackupSpec, snapshot_id: str, control: RunControl,
               reporter: Reporter) -> VerifyResult:
        """Read the whole archive and check every entry, hash and size against the manifest."""
        return verify_archive(locate(spec, snapshot_id), control, reporter, SAFE_POINT_BYTES)

"""Archive engine: one compressed tar (.tar.zst, or .tar.gz) and one manifest per run.

Layout in the destination, for a snapshot id such as 2026-11-24T025312Z:

    <id>.tar.zst            the archive (<id>.tar.gz with options {"compression": "gzip"})
    <id>.manifest.json      every entry: type, size, mtime, mode, blake3 (or sha256) or target
    <id>.tar.zst.partial    an archive still being written, or left behind by a crash

The archive is written by engines/tarwrite.py: a pax-format tar (what tarfile writes),
compressed as one zstd frame per few MB of tar, which zstd, GNU tar and the reader here
take as one stream.

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
a killed restore left (engines/archive_restore.py).

Crash recovery: a half-written zstd or gzip stream cannot be continued reliably, so this
engine starts over instead of resuming (`resumes_partial = False`). Each run checkpoints
{"engine": "archive", "partial": <file name>, "snapshot_id": <id>} before it writes
anything; `backup(resume=checkpoint)` and `discard_partial` remove that partial archive
(and a manifest written just before the crash), and the new run begins from scratch.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gzip
import os
import stat
import tarfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

import zstandard

from engines.archive_restore import TargetWriter, check_links, expected_kind
from engines.base import (
    BackupResult,
    BackupSpec,
    CollectingReporter,
    DestinationNotWritable,
    DiskFull,
    Engine,
    EngineError,
    ProgressMeter,
    Reporter,
    RestoreConflict,
    RestoreResult,
    RunControl,
    Snapshot,
    SnapshotNotFound,
    VerifyResult,
)
from engines.fsmeta import shown
from engines.fsutil import is_disk_full
from engines.manifest import (
    CONTENT_HASHES,
    SNAPSHOT_ID_RE,
    Manifest,
    ManifestError,
    belongs_to_job,
    check_rel_path,
    check_snapshot_id,
    content_hash,
    unique_snapshot_id,
)
from engines.scan import scan
from engines.tarwrite import write_archive
from models.atomic import fsync_dir, remove_durable

CHUNK = 1 << 20
# Pause and cancel are checked between entries and every this many bytes inside one.
SAFE_POINT_BYTES = 4 << 20
EXTENSIONS = {"zstd": ".tar.zst", "gzip": ".tar.gz"}
LEVELS = {"zstd": (1, 22, 3), "gzip": (1, 9, 6)}  # lowest, highest, default
PARTIAL = ".partial"
MANIFEST = ".manifest.json"
MAX_PROBLEMS = 50


class ArchiveEngine(Engine):
    """Backs up to one compressed tarball plus a manifest per run; restarts after a crash."""

    name = "archive"
    resumes_partial = False

    # --- backup ---------------------------------------------------------------------

    def backup(self, spec: BackupSpec, control: RunControl, reporter: Reporter,
               resume: Mapping[str, Any] | None = None) -> BackupResult:
        """Write a new archive and manifest; with `resume`, drop the old partial and start over."""
        started = time.monotonic()
        compression, level = _compression(spec.options)  # before anything is created
        spec.check_sources()
        spec.check_destination()
        dest = spec.destination
        if resume is not None:
            self.discard_partial(spec, resume)
        now = datetime.now(UTC)
        snapshot_id = unique_snapshot_id({n.snapshot_id for n in _listing(dest)}, now)
        partial = _archive_path(dest, snapshot_id, compression, partial=True)
        final = _archive_path(dest, snapshot_id, compression)
        manifest_path = _manifest_path(dest, snapshot_id)
        reporter.checkpoint({"engine": self.name, "partial": partial.name,
                             "snapshot_id": snapshot_id})
        collector = CollectingReporter(reporter)
        meter = ProgressMeter(collector)
        meter.update(force=True, phase="scanning", counting=True)
        entries = scan(spec, control, collector)
        files = [e for e in entries if e.kind == "file"]
        meter.update(force=True, phase="archiving", counting=False, files_total=len(files),
                     bytes_total=sum(e.size for e in files))
        try:
            raw = open(partial, "xb", buffering=0)  # noqa: SIM115 - closed below, on every path
        except OSError as err:
            raise _destination_error(err, dest) from err
        # From here on everything this run created goes if it does not finish.
        ours = [partial, manifest_path, final]
        try:
            with raw:
                # Held while it is written, so that a discard without a checkpoint (which
                # cannot tell whose a partial is) leaves another run's archive alone.
                with contextlib.suppress(OSError):  # no locks there (some network mounts)
                    fcntl.flock(raw.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                records = write_archive(raw, compression, level, entries, control, collector,
                                        meter, SAFE_POINT_BYTES)
                os.fsync(raw.fileno())
            meter.update(force=True, phase="finalising", current_file="")
            # The last chance to hold or stop: after this the snapshot becomes visible.
            control.safe_point()
            manifest = Manifest(snapshot_id, self.name, now.isoformat().replace("+00:00", "Z"),
                                {name: str(path) for name, path in spec.source_names().items()},
                                records, job_id=spec.job_id)
            manifest.write(manifest_path)
            os.replace(partial, final)
            fsync_dir(dest)
        except OSError as err:
            _remove_all(ours, dest)
            raise _destination_error(err, dest) from err
        except BaseException:
            _remove_all(ours, dest)
            raise
        meter.update(force=True, phase="done", current_file="")
        return BackupResult(snapshot_id, manifest.files, manifest.size,
                            time.monotonic() - started, tuple(collector.warnings))

    # --- listing and deleting --------------------------------------------------------

    def snapshots(self, spec: BackupSpec) -> list[Snapshot]:
        """List complete archives (archive and manifest both present), oldest first."""
        dest = spec.destination
        found: list[Snapshot] = []
        for snapshot_id in _complete(dest, spec.job_id):
            try:
                manifest = Manifest.read(_manifest_path(dest, snapshot_id))
                when = manifest.time
                snap = Snapshot(snapshot_id, when if when.tzinfo else when.replace(tzinfo=UTC),
                                manifest.files, manifest.size)
            except (ManifestError, ValueError, KeyError, TypeError, AttributeError):
                # Still listed (its time read from its id) so that verify can name the
                # damage and prune can remove it.
                snap = Snapshot(snapshot_id, _time_from_id(snapshot_id), 0, 0)
            found.append(snap)
        return sorted(found, key=lambda s: (s.time, s.id))

    def delete_snapshots(self, spec: BackupSpec, snapshot_ids: Sequence[str]) -> None:
        """Remove snapshots: the manifest first, then the archive, so half-deleted is unlisted."""
        dest = spec.destination
        present = {n.snapshot_id for n in _listing(dest) if n.kind != "partial"
                   and _belongs(dest, n.snapshot_id, spec.job_id)}
        for snapshot_id in snapshot_ids:
            if check_snapshot_id(snapshot_id) not in present:
                raise SnapshotNotFound(f"snapshot {snapshot_id} is not in {dest}")
        for snapshot_id in snapshot_ids:
            try:
                remove_durable(_manifest_path(dest, snapshot_id))
                for compression in EXTENSIONS:
                    remove_durable(_archive_path(dest, snapshot_id, compression))
            except OSError as err:
                raise DestinationNotWritable(f"snapshot {snapshot_id} cannot be removed from "
                                             f"{dest}: {err.strerror or err}") from err

    def discard_partial(self, spec: BackupSpec, resume: Mapping[str, Any] | None = None) -> None:
        """Remove what an interrupted run left: its partial archive and a manifest without one.

        With a checkpoint only that run's leftovers go (another job may share the
        destination); without one, every partial archive no run is writing goes.
        """
        dest = spec.destination
        names = _listing(dest)
        if resume is None:
            doomed = [n for n in names
                      if n.kind == "partial" and not _being_written(dest / n.file_name)]
        else:
            parsed = _parse_name(str(resume.get("partial", "")))
            doomed = [parsed] if parsed and parsed.kind == "partial" else []
            if not doomed and isinstance(resume.get("snapshot_id"), str):
                doomed = [n for n in names
                          if n.kind == "partial" and n.snapshot_id == resume["snapshot_id"]]
        finished = {n.snapshot_id for n in names if n.kind == "archive"}
        paths = [dest / n.file_name for n in doomed]
        # A crash between writing the manifest and renaming the archive leaves a manifest
        # that belongs to no archive; stale temp files of that manifest go too.
        for snapshot_id in {n.snapshot_id for n in doomed} - finished:
            paths.append(_manifest_path(dest, snapshot_id))
            paths.extend(dest / n for n in _names(dest)
                         if n.startswith(f".{snapshot_id}{MANIFEST}.") and n.endswith(".tmp"))
        try:
            for path in paths:
                path.unlink(missing_ok=True)
            if paths:
                fsync_dir(dest)
        except OSError as err:
            raise DestinationNotWritable(f"cannot remove the unfinished archive in {dest}: "
                                         f"{err.strerror or err}") from err

    # --- restore ----------------------------------------------------------------------

    def restore(self, spec: BackupSpec, snapshot_id: str, target: Path, control: RunControl,
                reporter: Reporter, path: str | None = None,
                overwrite: bool = False) -> RestoreResult:
        """Restore a snapshot, or the entries under `path` in it, to target/<path>."""
        archive, compression, manifest_path = _locate(spec, snapshot_id)
        index = _index(Manifest.read(manifest_path))
        prefix = check_rel_path(path) if path else ""
        wanted = {p: e for p, e in index.items()
                  if not prefix or p == prefix or p.startswith(prefix + "/")}
        if not wanted:
            raise EngineError(f"{prefix!r} is not in snapshot {snapshot_id}")
        if not target.is_absolute():
            raise EngineError(f"restore target {target} is not an absolute path")
        _check_conflicts(target, wanted.values(), overwrite)  # before anything is written
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise _target_error(err, target) from err
        files = [e for e in wanted.values() if e["type"] == "file"]
        meter = ProgressMeter(reporter)
        meter.update(force=True, phase="restoring", counting=False, files_total=len(files),
                     bytes_total=sum(e["size"] for e in files))
        pacer = _Pacer(meter, control)
        problems: list[str] = []
        seen: set[str] = set()
        try:
            writer = TargetWriter(target, overwrite, reporter.warning, paths=wanted)
            try:
                with _read_archive(archive, compression) as (tar, _):
                    run = _RestoreRun(tar, writer, wanted, meter, pacer, problems, seen)
                    # Stop reading once everything wanted is out (a sub-path near the start
                    # of a big archive should not cost a full read).
                    while len(seen) < len(wanted) and (member := tar.next()) is not None:
                        control.safe_point()
                        run.member(member, _entry_for_member(member, index))
                writer.finish()
            finally:
                writer.close()
        except (_ArchiveDamaged, tarfile.TarError) as err:
            raise EngineError(f"archive {archive} is damaged or cannot be read ({err}); the "
                              "restore stopped part way, run verify for details") from err
        except OSError as err:
            raise _target_error(err, target) from err
        missing = [p for p in wanted if p not in seen]
        if missing:
            problems.append(f"{_count(missing, 'entry', 'entries')} listed in the manifest "
                            f"are not in the archive: {_some(missing)}")
        meter.update(force=True, phase="done", current_file="")
        if problems:
            raise EngineError(f"the restore into {target} finished with problems: "
                              + "; ".join(problems[:5]))
        return RestoreResult(run.files, run.bytes)

    # --- verify -------------------------------------------------------------------------

    def verify(self, spec: BackupSpec, snapshot_id: str, control: RunControl,
               reporter: Reporter) -> VerifyResult:
        """Read the whole archive and check every entry, hash and size against the manifest."""
        archive, compression, manifest_path = _locate(spec, snapshot_id)
        try:
            manifest = Manifest.read(manifest_path)
            index = _index(manifest)
        except ManifestError as err:
            return VerifyResult(False, (str(err),))
        problems: list[str] = []
        if manifest.snapshot_id != snapshot_id:
            problems.append(f"the manifest is for snapshot {manifest.snapshot_id!r}")
        files = [e for e in index.values() if e["type"] == "file"]
        meter = ProgressMeter(reporter)
        meter.update(force=True, phase="verifying", counting=False, files_total=len(files),
                     bytes_total=sum(e["size"] for e in files))
        pacer = _Pacer(meter, control)
        seen: set[str] = set()
        checked = 0
        try:
            with _read_archive(archive, compression) as (tar, counter):
                while (member := tar.next()) is not None:
                    control.safe_point()
                    checked += _verify_member(tar, member, index, seen, problems, meter, pacer)
                problems.extend(_end_problems(tar, counter))
            if compression == "zstd" and not problems:
                problems.extend(_zstd_frame_problems(archive))
        except (_ArchiveDamaged, tarfile.TarError) as err:
            problems.append(f"the archive is damaged: {err}")
        missing = [p for p in index if p not in seen]
        if missing:
            problems.append(f"{_count(missing, 'entry', 'entries')} listed in the manifest "
                            f"are not in the archive: {_some(missing)}")
        meter.update(force=True, phase="done", current_file="")
        if len(problems) > MAX_PROBLEMS:
            problems[MAX_PROBLEMS:] = [f"... and {len(problems) - MAX_PROBLEMS} more problems"]
        return VerifyResult(not problems, tuple(problems), checked)


# --- names in the destination ------------------------------------------------------------


@dataclass(frozen=True)
class _Name:
    """A file name this engine owns in a destination, taken apart."""

    file_name: str
    snapshot_id: str
    kind: str  # "archive", "partial" or "manifest"
    compression: str  # "" for a manifest


def _parse_name(name: str) -> _Name | None:
    """Take a destination file name apart, or None if it is not one of ours."""
    if name.endswith(MANIFEST):
        snapshot_id, kind, compression = name[: -len(MANIFEST)], "manifest", ""
    else:
        is_partial = name.endswith(PARTIAL)
        stem = name[: -len(PARTIAL)] if is_partial else name
        found = [(c, ext) for c, ext in EXTENSIONS.items() if stem.endswith(ext)]
        if not found:
            return None
        compression, ext = found[0]
        snapshot_id, kind = stem[: -len(ext)], "partial" if is_partial else "archive"
    if not SNAPSHOT_ID_RE.match(snapshot_id):
        return None
    return _Name(name, snapshot_id, kind, compression)


def _names(dest: Path) -> list[str]:
    """Every name in the destination (none if it does not exist yet)."""
    try:
        return os.listdir(dest)
    except FileNotFoundError:
        return []
    except OSError as err:
        raise EngineError(f"destination {dest} cannot be read: {err.strerror or err}") from err


def _listing(dest: Path) -> list[_Name]:
    """The archives, partial archives and manifests in the destination."""
    return [parsed for name in _names(dest) if (parsed := _parse_name(name))]


def _complete(dest: Path, job_id: str = "") -> dict[str, str]:
    """Complete snapshots (archive and manifest both present): id -> compression.

    With a job id, only that job's: another job's archive in the same destination is
    never listed, pruned, restored or verified as this one's (issue 12, item 1).
    """
    names = _listing(dest)
    manifests = {n.snapshot_id for n in names if n.kind == "manifest"}
    return {n.snapshot_id: n.compression for n in names
            if n.kind == "archive" and n.snapshot_id in manifests
            and _belongs(dest, n.snapshot_id, job_id)}


def _belongs(dest: Path, snapshot_id: str, job_id: str) -> bool:
    """Whether an archive is the job's; one damaged past its manifest's head is still
    listed, for verify and prune (see manifest.belongs_to_job)."""
    return belongs_to_job(_manifest_path(dest, snapshot_id), job_id)


def _archive_path(dest: Path, snapshot_id: str, compression: str,
                  partial: bool = False) -> Path:
    return dest / f"{snapshot_id}{EXTENSIONS[compression]}{PARTIAL if partial else ''}"


def _manifest_path(dest: Path, snapshot_id: str) -> Path:
    return dest / f"{snapshot_id}{MANIFEST}"


def _locate(spec: BackupSpec, snapshot_id: str) -> tuple[Path, str, Path]:
    """The archive, its compression and its manifest for a complete snapshot."""
    compression = _complete(spec.destination, spec.job_id).get(check_snapshot_id(snapshot_id))
    if compression is None:
        raise SnapshotNotFound(f"snapshot {snapshot_id} of this job is not in "
                               f"{spec.destination}")
    return (_archive_path(spec.destination, snapshot_id, compression), compression,
            _manifest_path(spec.destination, snapshot_id))


def _time_from_id(snapshot_id: str) -> datetime:
    """When a snapshot started, read from its id (ids are UTC times)."""
    return datetime.strptime(snapshot_id[:18], "%Y-%m-%dT%H%M%SZ").replace(tzinfo=UTC)


def _being_written(path: Path) -> bool:
    """Whether a run (of this job or another sharing the destination) is writing a partial."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False  # no locks there: as before, it goes
    finally:
        os.close(fd)
    return False


def _remove_all(paths: Iterable[Path], dest: Path) -> None:
    """Best-effort removal of a failed run's files (the run's own error is what matters)."""
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        fsync_dir(dest)


# --- errors -------------------------------------------------------------------------------


def _destination_error(err: OSError, dest: Path) -> EngineError:
    """A person-readable error for a failed write to the destination."""
    reason = err.strerror or str(err)
    if is_disk_full(err):
        return DiskFull(f"destination {dest} is full ({reason}); the unfinished archive was "
                        "removed, free some space and run the backup again")
    if err.errno == errno.EFBIG:
        # The file system (or a size limit on this process) caps the archive's size:
        # the same remedy as a full disk, another place to write it.
        return DiskFull(f"destination {dest} is full for an archive this large ({reason}); "
                        "the unfinished archive was removed")
    return DestinationNotWritable(f"cannot write the archive in {dest}: {reason}")


def _target_error(err: OSError, target: Path) -> EngineError:
    """A person-readable error for a failed write into a restore target."""
    reason = err.strerror or str(err)
    where = f"{target} ({err.filename})" if err.filename else str(target)
    if is_disk_full(err) or err.errno == errno.EFBIG:
        return DiskFull(f"restore target {where} is full ({reason})")
    return EngineError(f"cannot write into restore target {where}: {reason}")


class _ArchiveDamaged(Exception):
    """The compressed stream could not be read (internal; becomes a problem or an error)."""


# --- options and what goes in ---------------------------------------------------------------


def _compression(options: Mapping[str, Any]) -> tuple[str, int]:
    """The compression and level a job asks for, or a clear error."""
    name = options.get("compression") or "zstd"
    if name not in EXTENSIONS:
        raise EngineError(f"archive compression must be one of {', '.join(EXTENSIONS)}, "
                          f"not {name!r}")
    low, high, default = LEVELS[name]
    level = options.get("level")
    if level is None:
        level = default
    if isinstance(level, bool) or not isinstance(level, int) or not low <= level <= high:
        raise EngineError(f"{name} level must be a whole number from {low} to {high}, "
                          f"not {level!r}")
    return name, level


class _Pacer:
    """Counts bytes into the progress meter and stops at a safe point every few MB."""

    def __init__(self, meter: ProgressMeter, control: RunControl) -> None:
        self.meter = meter
        self.control = control
        self._since_safe_point = 0

    def __call__(self, nbytes: int) -> None:
        self.meter.add(nbytes=nbytes)
        self._since_safe_point += nbytes
        if self._since_safe_point >= SAFE_POINT_BYTES:
            self._since_safe_point = 0
            self.control.safe_point()


# --- reading an archive ----------------------------------------------------------------------


class _Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


class _CountingReader:
    """The decompressed tar stream as tarfile reads it: counts bytes, names damage."""

    def __init__(self, inner: _Readable) -> None:
        self._inner = inner
        self.total = 0

    def read(self, size: int = -1, /) -> bytes:
        """Read decompressed bytes; a broken stream becomes _ArchiveDamaged."""
        try:
            data = self._inner.read(size)
        except (OSError, EOFError, zlib.error, zstandard.ZstdError) as err:
            raise _ArchiveDamaged(str(err) or type(err).__name__) from err
        self.total += len(data)
        return data

    def write(self, data: bytes, /) -> int:
        """Not writable (tarfile's file protocol asks for the method)."""
        raise OSError("the archive is open for reading")

    def tell(self) -> int:
        """How many decompressed bytes were read."""
        return self.total

    def seek(self, pos: int, /) -> int:
        """Not seekable (tarfile's stream mode never seeks)."""
        raise OSError("the archive stream cannot seek")

    def close(self) -> None:
        """Nothing to do: the raw file is closed by its owner."""


@contextlib.contextmanager
def _read_archive(path: Path, compression: str
                  ) -> Iterator[tuple[tarfile.TarFile, _CountingReader]]:
    """Open an archive as a tar stream, decompressing as it is read (never all in memory)."""
    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except OSError as err:
        raise _ArchiveDamaged(f"cannot open it: {err.strerror or err}") from err
    with raw:
        inner: _Readable
        if compression == "zstd":
            inner = zstandard.ZstdDecompressor().stream_reader(raw, read_size=CHUNK,
                                                               read_across_frames=True)
        else:
            inner = gzip.GzipFile(filename="", mode="rb", fileobj=raw)
        counter = _CountingReader(inner)
        with tarfile.open(fileobj=counter, mode="r|", bufsize=CHUNK) as tar:
            yield tar, counter


def _member_kind(member: tarfile.TarInfo) -> str:
    if member.islnk():
        return "hardlink"
    if member.isreg():
        return "file"
    if member.isdir():
        return "dir"
    if member.issym():
        return "symlink"
    return "special file"


def _member_data(tar: tarfile.TarFile, member: tarfile.TarInfo) -> IO[bytes]:
    data = tar.extractfile(member)
    if data is None:  # only for non-files, which callers never pass
        raise _ArchiveDamaged(f"{member.name!r} has no data")
    return data


def _hash_stream(data: IO[bytes], entry: Mapping[str, Any], pacer: _Pacer,
                 sink: Callable[[bytes], object] | None = None) -> tuple[int, str]:
    """Read a member to its end: its size and hash, by the entry's algorithm (and each
    chunk to sink)."""
    digest = CONTENT_HASHES[_algorithm(entry)]()
    size = 0
    while chunk := data.read(CHUNK):
        digest.update(chunk)
        if sink is not None:
            sink(chunk)
        size += len(chunk)
        pacer(len(chunk))
    return size, digest.hexdigest()


def _metadata_problems(member: tarfile.TarInfo, entry: Mapping[str, Any]) -> list[str]:
    """How a member's mode, mtime or link target differ from its manifest entry."""
    problems = []
    if member.mode & 0o7777 != entry["mode"]:
        problems.append(f"{member.name}: mode {member.mode & 0o7777:o} in the archive, "
                        f"{entry['mode']:o} in the manifest")
    if int(member.mtime) != entry["mtime_ns"] // 1_000_000_000:
        problems.append(f"{member.name}: modification time differs from the manifest")
    if entry["type"] == "symlink" and member.linkname != entry["target"]:
        problems.append(f"{member.name}: link target {member.linkname!r} in the archive, "
                        f"{entry['target']!r} in the manifest")
    if member.islnk() and member.linkname != entry.get("link"):
        problems.append(f"{member.name}: a hard link to {member.linkname!r} in the archive, "
                        f"to {entry.get('link')!r} in the manifest")
    if (isinstance(entry.get("uid"), int) and isinstance(entry.get("gid"), int)
            and (member.uid, member.gid) != (entry["uid"], entry["gid"])):
        problems.append(f"{member.name}: owner {member.uid}:{member.gid} in the archive, "
                        f"{entry['uid']}:{entry['gid']} in the manifest")
    return problems


def _content_problems(name: str, entry: Mapping[str, Any], size: int, digest: str) -> list[str]:
    """How a file's content differs from its manifest entry."""
    if size != entry["size"]:
        return [f"{name}: {size} bytes in the archive, {entry['size']} in the manifest"]
    algorithm, expected = content_hash(entry) or ("sha256", "")
    if digest != expected:
        return [f"{name}: content does not match the manifest ({algorithm} differs)"]
    return []


def _algorithm(entry: Mapping[str, Any]) -> str:
    """The hash a (shape-checked) file entry was made with."""
    found = content_hash(entry)
    return "sha256" if found is None else found[0]


def _verify_member(tar: tarfile.TarFile, member: tarfile.TarInfo,
                   index: Mapping[str, Mapping[str, Any]], seen: set[str], problems: list[str],
                   meter: ProgressMeter, pacer: _Pacer) -> int:
    """Check one member against the manifest; return 1 if it was a file that was read."""
    entry = index.get(member.name)
    if entry is None:
        problems.append(f"{member.name!r} is in the archive but not in the manifest")
        return 0
    if member.name in seen:
        problems.append(f"{member.name} is in the archive twice")
        return 0
    seen.add(member.name)
    kind = _member_kind(member)
    if kind != expected_kind(entry):
        problems.append(f"{member.name}: a {kind} in the archive, a {expected_kind(entry)} in "
                        "the manifest")
        return 0
    problems.extend(_metadata_problems(member, entry))
    if kind == "hardlink" and member.linkname not in seen:
        problems.append(f"{member.name}: a hard link to {member.linkname!r}, which is not "
                        "before it in the archive")
    if kind != "file":
        return 0
    meter.update(current_file=member.name)
    size, digest = _hash_stream(_member_data(tar, member), entry, pacer)
    problems.extend(_content_problems(member.name, entry, size, digest))
    meter.add(files=1)
    return 1


def _end_problems(tar: tarfile.TarFile, counter: _CountingReader) -> list[str]:
    """Read to the end of the stream (zstd and gzip check their checksum there) and check
    the tar ends as written: two zero blocks, padded to whole records."""
    while counter.read(CHUNK):
        pass
    if (counter.total < tar.offset + 2 * tarfile.BLOCKSIZE
            or counter.total % tarfile.RECORDSIZE):
        return ["the archive ends early: its end-of-archive marker is missing"]
    return []


_ZSTD_MAGIC = 0xFD2FB528
_ZSTD_SKIPPABLE = 0x184D2A50  # the low 4 bits vary


def _zstd_frame_problems(path: Path) -> list[str]:
    """Walk the zstd frames' block headers to the last byte.

    A stream cut short by up to its 4-byte checksum still decompresses in full, and
    python-zstandard's stream reader does not report the unfinished frame; this does.
    """
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            pos = 0
            while pos < size:
                fh.seek(pos)
                head = fh.read(8)
                magic = int.from_bytes(head[:4], "little")
                if len(head) >= 8 and magic & 0xFFFFFFF0 == _ZSTD_SKIPPABLE:
                    pos += 8 + int.from_bytes(head[4:8], "little")
                    continue
                if len(head) < 5 or magic != _ZSTD_MAGIC:
                    return [f"the archive has bytes that are not zstd at offset {pos}"]
                descriptor = head[4]
                single_segment = descriptor >> 5 & 1
                pos += (5 + (0 if single_segment else 1) + (0, 1, 2, 4)[descriptor & 3]
                        + (single_segment, 2, 4, 8)[descriptor >> 6])
                last = 0
                while not last:
                    fh.seek(pos)
                    block = int.from_bytes(fh.read(3).ljust(3, b"\xff"), "little")
                    last, kind, block_size = block & 1, block >> 1 & 3, block >> 3
                    pos += 3 + (1 if kind == 1 else block_size)  # kind 1: one byte repeated
                    if pos > size:
                        break
                pos += 4 * (descriptor >> 2 & 1)  # the content checksum, when written
    except OSError as err:
        return [f"the archive cannot be read: {err.strerror or err}"]
    if pos != size:
        return ["the archive ends early: its compressed stream is cut short"]
    return []


# --- restoring --------------------------------------------------------------------------------


def _index(manifest: Manifest) -> dict[str, dict[str, Any]]:
    """The manifest's entries by path, after checking each is well formed and safe to restore.

    A manifest is data from disk: a path that leaves the snapshot, or an entry under a
    symlink (`a -> /etc`, then `a/passwd`), is refused here, before anything is written.
    """
    index: dict[str, dict[str, Any]] = {}
    for entry in manifest.entries:
        if not isinstance(entry, dict):
            raise ManifestError("the manifest has an entry that is not an object")
        path, kind = entry.get("path"), entry.get("type")
        if not isinstance(path, str) or not _is_snapshot_path(path):
            raise ManifestError(f"the manifest lists {path!r}, which is not a safe path "
                                "inside the snapshot")
        if kind not in ("file", "dir", "symlink"):
            raise ManifestError(f"the manifest gives {path!r} an unknown type {kind!r}")
        numbers = [entry.get(k) for k in ("size", "mtime_ns", "mode")]
        if any(isinstance(n, bool) or not isinstance(n, int) for n in numbers):
            raise ManifestError(f"the manifest entry for {path!r} lacks size, mtime or mode")
        if kind == "file" and content_hash(entry) is None:
            raise ManifestError(f"the manifest entry for {path!r} has no content hash")
        if kind == "symlink" and not isinstance(entry.get("target"), str):
            raise ManifestError(f"the manifest entry for {path!r} has no link target")
        if path in index:
            raise ManifestError(f"the manifest lists {path!r} twice")
        index[path] = entry
    check_links(index)
    for path in index:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            parent = index.get("/".join(parts[:depth]))
            if parent is not None and parent["type"] != "dir":
                raise ManifestError(f"the manifest lists {path!r} under a {parent['type']}; "
                                    "restoring it would write outside the target")
    return index


def _is_snapshot_path(path: str) -> bool:
    """Whether path is a plain, normalised path inside a snapshot (no '..', not absolute)."""
    try:
        return path != "" and check_rel_path(path) == path
    except EngineError:
        return False


def _entry_for_member(member: tarfile.TarInfo,
                      index: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """The manifest entry a member stands for; refuse a member that could escape the target."""
    name = member.name
    if name.startswith("/") or ".." in name.split("/") or "\x00" in name:
        raise EngineError(f"the archive holds {name!r}, which points outside the restore "
                          "target; restore refused (the archive may have been tampered with)")
    entry = index.get(name)
    if entry is None:
        raise EngineError(f"the archive holds {name!r}, which its manifest does not list; "
                          "restore refused (the archive may have been tampered with)")
    kind = _member_kind(member)
    if kind != expected_kind(entry):
        raise EngineError(f"{name!r} is a {kind} in the archive but a {expected_kind(entry)} "
                          "in the manifest; restore refused (the archive may have been "
                          "tampered with)")
    return entry


class _RestoreRun:
    """Restores the members of one archive stream that a restore wants, in stream order.

    A hard link whose first name is not wanted (a sub-path restore) gets that file's
    content itself, written when the first name's member goes by, and any further
    wanted names of it link to it.
    """

    def __init__(self, tar: tarfile.TarFile, writer: TargetWriter,
                 wanted: Mapping[str, dict[str, Any]], meter: ProgressMeter, pacer: _Pacer,
                 problems: list[str], seen: set[str]) -> None:
        self.tar, self.writer, self.wanted = tar, writer, wanted
        self.meter, self.pacer, self.problems, self.seen = meter, pacer, problems, seen
        self.files = self.bytes = 0
        self.written: dict[str, str] = {}  # a file's path in the snapshot -> in the target
        self.stand_in: dict[str, str] = {}  # an unwanted first name -> the name taking it
        for path, entry in wanted.items():
            link = entry.get("link")
            if link and link not in wanted:
                self.stand_in.setdefault(link, path)

    def member(self, member: tarfile.TarInfo, entry: dict[str, Any]) -> None:
        """Restore one member, if it is wanted (or stands in for one that is)."""
        name = member.name
        if name not in self.wanted:
            if name in self.stand_in and member.isreg():
                self._file(member, self.wanted[self.stand_in[name]], name)
            return
        if name in self.seen:
            if self.written.get(self.wanted[name].get("link") or "") == name:
                return  # its content came with its first name's member
            raise EngineError(f"the archive holds {shown(name)!r} twice; restore refused")
        self.problems.extend(_metadata_problems(member, entry))
        if entry["type"] == "dir":
            self.seen.add(name)
            self.writer.directory(member, entry)
        elif entry["type"] == "symlink":
            self.seen.add(name)
            self.writer.symlink(member, entry)
        elif member.islnk():
            self.seen.add(name)
            source = self.written.get(member.linkname)
            if source is None:
                self.problems.append(f"{shown(name)}: a hard link to {shown(member.linkname)}"
                                     ", which was not restored")
                return
            self.writer.hardlink(member, entry, source)
            self.files, self.bytes = self.files + 1, self.bytes + entry["size"]
            self.meter.add(files=1, nbytes=entry["size"])
        else:
            self._file(member, entry, name)

    def _file(self, member: tarfile.TarInfo, entry: dict[str, Any], source: str) -> None:
        """Write a file member's data to the entry's path."""
        self.seen.add(entry["path"])
        self.meter.update(current_file=shown(entry["path"]))
        data = _member_data(self.tar, member)
        size, digest = self.writer.file(
            member, entry, lambda sink: _hash_stream(data, entry, self.pacer, sink))
        self.problems.extend(_content_problems(shown(entry["path"]), entry, size, digest))
        self.written[source] = entry["path"]
        self.files, self.bytes = self.files + 1, self.bytes + size
        self.meter.add(files=1)


def _check_conflicts(target: Path, entries: Iterable[Mapping[str, Any]],
                     overwrite: bool) -> None:
    """Refuse, before writing anything, a restore that would replace what is in target."""
    clashes: list[str] = []
    blocked: list[str] = []
    for entry in entries:
        try:
            st = os.lstat(target / entry["path"])
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as err:
            raise EngineError(f"restore target {target / entry['path']} cannot be checked: "
                              f"{err.strerror or err}") from err
        if stat.S_ISDIR(st.st_mode):
            if entry["type"] != "dir":
                blocked.append(entry["path"])
        else:
            clashes.append(entry["path"])
    if blocked:
        raise RestoreConflict(f"{_count(blocked, 'path', 'paths')} to restore already exist in "
                              f"{target} as directories ({_some(blocked)}); restore does not "
                              "replace a directory with a file, remove them first")
    if clashes and not overwrite:
        raise RestoreConflict(f"{_count(clashes, 'path', 'paths')} to restore already exist in "
                              f"{target} ({_some(clashes)}); choose overwrite or another target")


# --- wording -------------------------------------------------------------------------------


def _count(items: Sequence[object], one: str, many: str) -> str:
    return f"{len(items)} {one if len(items) == 1 else many}"


def _some(paths: Sequence[str], limit: int = 5) -> str:
    """A few paths for a message, and how many more there are."""
    shown = ", ".join(paths[:limit])
    return shown if len(paths) <= limit else f"{shown} and {len(paths) - limit} more"

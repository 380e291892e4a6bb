"""Restore: stream an archive and write the wanted members into a target."""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from engines.archive.compare import content_problems, metadata_problems
from engines.archive.errors import ArchiveDamaged, counted, some_paths, target_error
from engines.archive.index import checked_index, entry_for_member, read_manifest
from engines.archive.names import Stored
from engines.archive.read import Pacer, hash_stream, member_data, read_archive
from engines.archive.target import TargetWriter
from engines.control import RunControl
from engines.errors import EngineError, RestoreConflict
from engines.fsmeta import shown
from engines.manifest import check_rel_path
from engines.progress import ProgressMeter, Reporter
from engines.results import RestoreResult


def restore_archive(stored: Stored, target: Path, control: RunControl, reporter: Reporter,
                    path: str | None, overwrite: bool, safe_point_bytes: int) -> RestoreResult:
    """Restore a snapshot, or the entries under `path` in it, to target/<path>."""
    index = checked_index(read_manifest(stored.manifest))
    prefix = check_rel_path(path) if path else ""
    wanted = index if not prefix else {p: e for p, e in index.items()
                                       if p == prefix or p.startswith(prefix + "/")}
    if not wanted:
        raise EngineError(f"{prefix!r} is not in snapshot {stored.snapshot_id}")
    if not target.is_absolute():
        raise EngineError(f"restore target {target} is not an absolute path")
    _check_conflicts(target, wanted.values(), overwrite)  # before anything is written
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise target_error(err, target) from err
    files = [e for e in wanted.values() if e["type"] == "file"]
    meter = ProgressMeter(reporter)
    meter.update(force=True, phase="restoring", counting=False, files_total=len(files),
                 bytes_total=sum(e["size"] for e in files))
    pacer = Pacer(meter, control, safe_point_bytes)
    problems: list[str] = []
    seen: set[str] = set()
    try:
        writer = TargetWriter(target, overwrite, reporter.warning, paths=wanted)
        try:
            with read_archive(stored.archive, stored.compression) as (tar, _):
                run = _RestoreRun(tar, writer, wanted, meter, pacer, problems, seen)
                # Stop reading once everything wanted is out (a sub-path near the start
                # of a big archive should not cost a full read).
                while len(seen) < len(wanted) and (member := tar.next()) is not None:
                    control.safe_point()
                    run.member(member, entry_for_member(member, index))
            writer.finish()
        finally:
            writer.close()
    except (ArchiveDamaged, tarfile.TarError) as err:
        raise EngineError(f"archive {stored.archive} is damaged or cannot be read ({err}); "
                          "the restore stopped part way, run verify for details") from err
    except OSError as err:
        raise target_error(err, target) from err
    missing = [p for p in wanted if p not in seen]
    if missing:
        problems.append(f"{counted(missing, 'entry', 'entries')} listed in the manifest "
                        f"are not in the archive: {some_paths(missing)}")
    meter.update(force=True, phase="done", current_file="")
    if problems:
        raise EngineError(f"the restore into {target} finished with problems: "
                          + "; ".join(problems[:5]))
    return RestoreResult(run.files, run.bytes)


class _RestoreRun:
    """Restores the members of one archive stream that a restore wants, in stream order.

    A hard link whose first name is not wanted (a sub-path restore) gets that file's
    content itself, written when the first name's member goes by, and any further
    wanted names of it link to it.
    """

    def __init__(self, tar: tarfile.TarFile, writer: TargetWriter,
                 wanted: Mapping[str, dict[str, Any]], meter: ProgressMeter, pacer: Pacer,
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
        self.problems.extend(metadata_problems(member, entry))
        if entry["type"] == "dir":
            self.seen.add(entry["path"])  # the index's string (== name), not another
            self.writer.directory(member, entry)
        elif entry["type"] == "symlink":
            self.seen.add(entry["path"])  # the index's string (== name), not another
            self.writer.symlink(member, entry)
        elif member.islnk():
            self.seen.add(entry["path"])  # the index's string (== name), not another
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
        data = member_data(self.tar, member)
        size, digest = self.writer.file(
            member, entry, lambda sink: hash_stream(data, entry, self.pacer, sink))
        self.problems.extend(content_problems(shown(entry["path"]), entry, size, digest))
        self.written[source] = entry["path"]
        self.files, self.bytes = self.files + 1, self.bytes + size
        self.meter.add(files=1)


def _check_conflicts(target: Path, entries: Iterable[Mapping[str, Any]],
                     overwrite: bool) -> None:
    """Refuse, before writing anything, a restore that would replace what is in target."""
    clashes: list[str] = []
    blocked: list[str] = []
    # Folders found missing: nothing under them can clash, so it is not looked up (the
    # manifest lists each folder before what it holds; into an empty target that is one
    # lookup in all, not one per entry).
    missing: set[str] = set()
    for entry in entries:
        path = entry["path"]
        if path.rpartition("/")[0] in missing:
            if entry["type"] == "dir":
                missing.add(path)
            continue
        try:
            st = os.lstat(target / path)
        except (FileNotFoundError, NotADirectoryError):
            if entry["type"] == "dir":
                missing.add(path)
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
        raise RestoreConflict(f"{counted(blocked, 'path', 'paths')} to restore already exist "
                              f"in {target} as directories ({some_paths(blocked)}); restore "
                              "does not replace a directory with a file, remove them first")
    if clashes and not overwrite:
        raise RestoreConflict(f"{counted(clashes, 'path', 'paths')} to restore already exist "
                              f"in {target} ({some_paths(clashes)}); choose overwrite or "
                              "another target")

"""Restore: stream an archive and write the wanted members into a target."""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

from engines.archive.compare import content_problems, metadata_problems
from engines.archive.errors import ArchiveDamaged, counted, some_paths, target_error
from engines.archive.index import read_manifest
from engines.archive.names import Stored
from engines.archive.plan import Indexed, Lockstep, Plan, make_plan
from engines.archive.read import Pacer, hash_stream, member_data, next_member, read_archive
from engines.archive.target import TargetWriter
from engines.control import RunControl
from engines.errors import EngineError
from engines.fsmeta import shown
from engines.manifest import ManifestError, check_rel_path
from engines.manifest_stream import StreamedManifest, is_streamed
from engines.progress import ProgressMeter, Reporter
from engines.results import RestoreResult


def restore_archive(stored: Stored, target: Path, control: RunControl, reporter: Reporter,
                    path: str | None, overwrite: bool, safe_point_bytes: int) -> RestoreResult:
    """Restore a snapshot, or the entries under `path` in it, to target/<path>."""
    prefix = check_rel_path(path) if path else ""
    if not target.is_absolute():
        raise EngineError(f"restore target {target} is not an absolute path")
    # A format 2 manifest is read twice, entry by entry, through one open file (never
    # held: memory stays flat in the number of files); format 1 is read whole.
    streamed_format = is_streamed(stored.manifest)  # ManifestError if missing or damaged
    try:
        fh = open(stored.manifest, "rb")  # noqa: SIM115 - closed by the with below
    except OSError as err:
        raise ManifestError(f"manifest {shown(stored.manifest)} cannot be read: "
                            f"{err.strerror or err}") from err
    with fh:
        source: Lockstep | Indexed
        if streamed_format:
            streamed = StreamedManifest(stored.manifest, fh)
            plan = make_plan(streamed.entries(), prefix, target, overwrite,
                             stored.snapshot_id)  # before anything is written
            source = Lockstep(streamed.entries())
        else:
            listed = read_manifest(stored.manifest).entries
            plan = make_plan(listed, prefix, target, overwrite, stored.snapshot_id)
            source = Indexed(listed)
        return _restore(stored, target, control, reporter, plan, source, overwrite,
                        safe_point_bytes)


def _restore(stored: Stored, target: Path, control: RunControl, reporter: Reporter,
             plan: Plan, source: Lockstep | Indexed, overwrite: bool,
             safe_point_bytes: int) -> RestoreResult:
    """Stream the archive and write the wanted members (the plan is checked)."""
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise target_error(err, target) from err
    meter = ProgressMeter(reporter)
    meter.update(force=True, phase="restoring", counting=False, files_total=plan.files,
                 bytes_total=plan.bytes)
    pacer = Pacer(meter, control, safe_point_bytes)
    problems: list[str] = []
    try:
        writer = TargetWriter(target, overwrite, reporter.warning, paths=plan.sweep)
        try:
            with read_archive(stored.archive, stored.compression) as (tar, _):
                run = _RestoreRun(tar, writer, plan, meter, pacer, problems)
                # Stop reading once everything wanted is out (a sub-path near the start
                # of a big archive should not cost a full read).
                while run.done < plan.wanted and (member := next_member(tar)) is not None:
                    control.safe_point()
                    run.member(member, source.entry(member))
            writer.finish()
        finally:
            writer.close()
    except (ArchiveDamaged, tarfile.TarError) as err:
        raise EngineError(f"archive {stored.archive} is damaged or cannot be read ({err}); "
                          "the restore stopped part way, run verify for details") from err
    except OSError as err:
        raise target_error(err, target) from err
    if run.done < plan.wanted:
        missing = [e["path"] for e in source.unmatched()
                   if plan.wants(e["path"]) and e["path"] not in run.stood_in]
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

    def __init__(self, tar: tarfile.TarFile, writer: TargetWriter, plan: Plan,
                 meter: ProgressMeter, pacer: Pacer, problems: list[str]) -> None:
        self.tar, self.writer, self.plan = tar, writer, plan
        self.meter, self.pacer, self.problems = meter, pacer, problems
        self.files = self.bytes = 0
        self.done = 0  # wanted entries restored (or refused with a problem)
        # Where a first name of hard links went in the target (only those the plan names).
        self.written: dict[str, str] = {}
        self.stood_in: set[str] = set()  # later names already written by their stand-in

    def member(self, member: tarfile.TarInfo, entry: dict[str, Any]) -> None:
        """Restore one member, if it is wanted (or stands in for one that is)."""
        name = member.name
        if not self.plan.wants(name):
            stand_in = self.plan.stand_in.get(name)
            if stand_in is not None and member.isreg():
                self.stood_in.add(stand_in["path"])
                self.done += 1
                self._file(member, stand_in, name)
            return
        if name in self.stood_in:
            return  # its content came with its first name's member
        self.done += 1
        self.problems.extend(metadata_problems(member, entry))
        if entry["type"] == "dir":
            self.writer.directory(member, entry)
        elif entry["type"] == "symlink":
            self.writer.symlink(member, entry)
        elif member.islnk():
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
        self.meter.update(current_file=shown(entry["path"]))
        data = member_data(self.tar, member)
        size, digest = self.writer.file(
            member, entry, lambda sink: hash_stream(data, entry, self.pacer, sink))
        self.problems.extend(content_problems(shown(entry["path"]), entry, size, digest))
        if source in self.plan.leaders or source in self.plan.stand_in:
            self.written[source] = entry["path"]
        self.files, self.bytes = self.files + 1, self.bytes + size
        self.meter.add(files=1)

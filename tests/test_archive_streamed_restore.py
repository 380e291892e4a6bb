"""Issue 14: an archive restore reads its manifest alongside the archive, never held whole.

A format 2 manifest is read twice, entry by entry: once to check it and the target before
anything is written, then in step with the archive's members. These tests pin what that
must keep: the checks in any order, members in the manifest's order only, hard links
into a sub-path, memory that does not grow with the files, and no write through a
symlink already in the target.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from engines.archive import ArchiveEngine
from engines.base import BackupSpec, EngineError, RunControl
from engines.manifest import ManifestError
from engines.manifest_stream import ManifestWriter
from engines.progress import Progress
from tests.engine_helpers import RecordingReporter, tree_signature, write

SID = "2026-01-01T000000Z"
MTIME = 1_700_000_000


def _restore(spec: BackupSpec, sid: str, target: Path, path: str | None = None,
             overwrite: bool = False) -> None:
    ArchiveEngine().restore(spec, sid, target, RunControl(), RecordingReporter(), path,
                            overwrite)


def _entry(path: str, kind: str, data: bytes = b"", target: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"path": path, "type": kind, "size": len(data),
                           "mtime_ns": MTIME * 10**9, "mode": 0o755 if kind == "dir" else 0o644}
    if kind == "file":
        out["sha256"] = hashlib.sha256(data).hexdigest()
    if kind == "symlink":
        out["target"] = target
    return out


def _plant(dest: Path, members: list[tuple[str, str, bytes, str]],
           entries: list[dict[str, Any]]) -> None:
    """A .tar.gz of these (name, kind, data, link target) members and a format 2
    manifest of these entries, in the order given: a tampered pair."""
    dest.mkdir(parents=True, exist_ok=True)
    kinds = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE}
    with tarfile.open(dest / f"{SID}.tar.gz", "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data, link in members:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mtime = kinds[kind], link, MTIME
            info.mode, info.size = (0o755 if kind == "dir" else 0o644), len(data)
            tar.addfile(info, io.BytesIO(data) if kind == "file" else None)
    with ManifestWriter(dest / f"{SID}.manifest.json", SID, "archive",
                        "2026-01-01T00:00:00Z", {"src": "/src"}) as manifest:
        for entry in entries:
            manifest.add(entry)
        manifest.commit()


def test_members_out_of_the_manifests_order_are_refused(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    spec = BackupSpec.build([tmp_path / "src"], dest)
    _plant(dest, [("src", "dir", b"", ""), ("src/b.txt", "file", b"b", ""),
                  ("src/a.txt", "file", b"a", "")],
           [_entry("src", "dir"), _entry("src/a.txt", "file", b"a"),
            _entry("src/b.txt", "file", b"b")])
    with pytest.raises(EngineError, match=r"where its manifest lists 'src/a\.txt'"):
        _restore(spec, SID, tmp_path / "out")
    assert not (tmp_path / "out" / "src" / "b.txt").exists()


def test_an_entry_listed_before_the_symlink_it_is_under_is_refused(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    spec = BackupSpec.build([tmp_path / "src"], dest)
    outside = tmp_path / "outside"
    members = [("src", "dir", b"", ""), ("src/a/passwd", "file", b"x", ""),
               ("src/a", "symlink", b"", str(outside))]
    _plant(dest, members, [_entry("src", "dir"), _entry("src/a/passwd", "file", b"x"),
                           _entry("src/a", "symlink", target=str(outside))])
    with pytest.raises(ManifestError, match="under 'src/a', a symlink"):
        _restore(spec, SID, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_sub_path_gets_the_content_of_a_hard_link_whose_first_name_is_outside_it(
        tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "a" / "first.bin", b"shared content\n")
    os.makedirs(src / "b")
    os.link(src / "a" / "first.bin", src / "b" / "second.bin")
    os.link(src / "a" / "first.bin", src / "b" / "third.bin")
    spec = BackupSpec.build([src], tmp_path / "dest")
    sid = ArchiveEngine().backup(spec, RunControl(), RecordingReporter()).snapshot_id
    out = tmp_path / "out"
    _restore(spec, sid, out, path="src/b")
    assert sorted(os.listdir(out / "src" / "b")) == ["second.bin", "third.bin"]
    second, third = out / "src" / "b" / "second.bin", out / "src" / "b" / "third.bin"
    assert second.read_bytes() == third.read_bytes() == b"shared content\n"
    assert second.stat().st_ino == third.stat().st_ino
    assert not (out / "src" / "a").exists()


class _Held(RecordingReporter):
    """Records how much memory the restore holds when it reports that it is done."""

    held = 0

    def progress(self, progress: Progress) -> None:
        if progress.phase == "done":  # not recorded: the list would grow with the run
            # Less the read-ahead's chunks (bounded by engines.archive.read.AHEAD).
            snapshot = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(False, "*/engines/archive/read.py")])
            self.held = sum(stat.size for stat in snapshot.statistics("filename"))


def _held_at_the_end(tmp_path: Path, files: int) -> int:
    src = tmp_path / f"src{files}"
    for i in range(files):
        write(src / f"d{i % 10}" / f"f{i:05d}", b"x" * (i % 50))
    spec = BackupSpec.build([src], tmp_path / f"dest{files}")
    sid = ArchiveEngine().backup(spec, RunControl(), RecordingReporter()).snapshot_id
    reporter = _Held()
    tracemalloc.start()
    try:
        ArchiveEngine().restore(spec, sid, tmp_path / f"out{files}", RunControl(), reporter)
    finally:
        tracemalloc.stop()
    return reporter.held


def test_a_restore_holds_nothing_per_file(tmp_path: Path) -> None:
    # Each entry held as a dict and each member as a TarInfo (as before) was about 1 KB a
    # file by the end of the restore: 1,300 more files, 1.5 MB more.
    grown = _held_at_the_end(tmp_path, 1500) - _held_at_the_end(tmp_path, 200)
    assert grown < 100_000, f"{grown} bytes more held for 1,300 more files"


def test_overwrite_never_sets_mode_or_times_through_a_symlink_in_the_target(
        tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "deep" / "f.txt", b"f\n")
    os.chmod(src / "deep", 0o777)
    spec = BackupSpec.build([src], tmp_path / "dest")
    sid = ArchiveEngine().backup(spec, RunControl(), RecordingReporter()).snapshot_id
    outside = tmp_path / "outside"
    outside.mkdir()
    os.chmod(outside, 0o700)
    os.utime(outside, ns=(123 * 10**9, 123 * 10**9))
    target = tmp_path / "target"
    (target / "src").mkdir(parents=True)
    os.symlink(outside, target / "src" / "deep")
    _restore(spec, sid, target, overwrite=True)
    st = os.stat(outside)
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o700, 123 * 10**9)
    assert os.listdir(outside) == []
    assert not (target / "src" / "deep").is_symlink()
    assert tree_signature(target / "src") == tree_signature(src)

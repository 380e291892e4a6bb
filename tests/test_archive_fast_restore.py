"""Issue 14: the faster archive restore keeps every guarantee of the slower one.

Folders are held open between files (a bounded number), folders the restore made are not
looked into again, tarfile's per-member filter is gone (our own checks stay), and the
archive is read ahead on a thread. And the restic engine finds its new snapshot by the
file's own hash instead of another restic run.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import blake3
import pytest

from engines.archive import ArchiveEngine
from engines.archive.target import _OPEN_FOLDERS
from engines.base import BackupSpec, EngineError, RestoreConflict, RunControl
from engines.manifest import Manifest
from engines.manifest_stream import is_streamed
from engines.restic.confirm import snapshot_file_intact
from tests.engine_helpers import RecordingReporter, tree_signature, write


def _backup(spec: BackupSpec) -> str:
    return ArchiveEngine().backup(spec, RunControl(), RecordingReporter()).snapshot_id


def _restore(spec: BackupSpec, sid: str, target: Path, path: str | None = None,
             overwrite: bool = False) -> None:
    ArchiveEngine().restore(spec, sid, target, RunControl(), RecordingReporter(), path,
                            overwrite)


def test_more_folders_than_are_held_open_and_a_deep_one_restore_exactly(
        tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(_OPEN_FOLDERS + 20):  # more folders than the writer keeps open
        write(src / f"d{i:03d}" / "f.txt", f"file {i}\n".encode())
    deep = src.joinpath(*[f"l{i}" for i in range(_OPEN_FOLDERS + 10)])
    write(deep / "bottom.txt", b"at the bottom\n")
    # A hard link from the last folder back to the first: its folder was closed long ago.
    os.link(src / "d000" / "f.txt", deep / "link.txt")
    spec = BackupSpec.build([src], tmp_path / "dest")
    sid = _backup(spec)
    _restore(spec, sid, tmp_path / "out")
    assert tree_signature(tmp_path / "out" / "src") == tree_signature(src)
    out = tmp_path / "out" / "src"
    assert os.stat(out / "d000" / "f.txt").st_ino == os.stat(
        out.joinpath(*deep.relative_to(src).parts) / "link.txt").st_ino
    # Into the same target again: every folder exists now, every file clashes.
    with pytest.raises(RestoreConflict):
        _restore(spec, sid, tmp_path / "out")
    _restore(spec, sid, tmp_path / "out", overwrite=True)
    assert tree_signature(out) == tree_signature(src)


def test_a_sub_path_restore_into_folders_it_makes_and_ones_that_exist(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "a" / "b" / "c.txt", b"c\n")
    write(src / "a" / "b" / "d.txt", b"d\n")
    spec = BackupSpec.build([src], tmp_path / "dest")
    sid = _backup(spec)
    target = tmp_path / "out"
    write(target / "src" / "a" / "keep.txt", b"the user's\n")
    _restore(spec, sid, target, path="src/a/b")
    assert (target / "src" / "a" / "b" / "c.txt").read_bytes() == b"c\n"
    assert (target / "src" / "a" / "keep.txt").read_bytes() == b"the user's\n"
    assert sorted(os.listdir(target / "src" / "a" / "b")) == ["c.txt", "d.txt"]


def _plant(dest: Path, sid: str, members: list[tuple[str, bytes]]) -> None:
    """An archive with these file members and a manifest listing them (a tampered pair)."""
    dest.mkdir(parents=True, exist_ok=True)
    entries = []
    with tarfile.open(dest / f"{sid}.tar.gz", "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
            entries.append({"path": name, "type": "file", "size": len(data),
                            "mtime_ns": 1_700_000_000 * 10**9, "mode": 0o644,
                            "sha256": hashlib.sha256(data).hexdigest()})
    Manifest(sid, "archive", "2026-01-01T00:00:00Z", {"src": "/src"}, entries).write(
        dest / f"{sid}.manifest.json")


def test_a_tampered_archive_with_an_escaping_name_is_still_refused(tmp_path: Path) -> None:
    dest, sid = tmp_path / "dest", "2026-01-01T000000Z"
    spec = BackupSpec.build([tmp_path / "src"], dest)
    target = tmp_path / "work" / "target"
    for name in ("src/../../x", "/abs/x"):
        _plant(dest, sid, [("src/ok.txt", b"ok"), (name, b"pwned")])
        with pytest.raises(EngineError):
            _restore(spec, sid, target)
    assert not (tmp_path / "work" / "x").exists() and not (tmp_path / "x").exists()
    assert not Path("/abs/x").exists()


def test_restic_snapshot_file_is_found_only_when_intact(tmp_path: Path) -> None:
    content = b"an encrypted snapshot, as far as this check knows"
    full = hashlib.sha256(content).hexdigest()
    (tmp_path / "snapshots").mkdir()
    assert "no snapshot file" in snapshot_file_intact(tmp_path, full[:8])
    (tmp_path / "snapshots" / full).write_bytes(content)
    assert snapshot_file_intact(tmp_path, full[:8]) == ""
    assert snapshot_file_intact(tmp_path, full) == ""
    (tmp_path / "snapshots" / full).write_bytes(content[:-1] + b"!")
    assert "damaged" in snapshot_file_intact(tmp_path, full[:8])
    assert "cannot be read" in snapshot_file_intact(tmp_path / "nowhere", full[:8])


def test_a_backup_streams_its_manifest_in_scan_order_with_every_hash(tmp_path: Path) -> None:
    # A large file's hash is set on the hashing thread and a later hard-link name takes
    # its first name's: entries wait for theirs, and still come out in scan order.
    src = tmp_path / "src"
    write(src / "a-big.bin", os.urandom(3 << 20))
    os.link(src / "a-big.bin", src / "b-link.bin")
    for i in range(50):
        write(src / "c" / f"{i:02d}.txt", f"small {i}\n".encode())
    spec = BackupSpec.build([src], tmp_path / "dest")
    result = ArchiveEngine().backup(spec, RunControl(), RecordingReporter())
    path = tmp_path / "dest" / f"{result.snapshot_id}.manifest.json"
    assert is_streamed(path)  # format 2: written entry by entry, never held whole
    entries = Manifest.read(path).entries
    assert [e["path"] for e in entries] == (
        ["src", "src/a-big.bin", "src/b-link.bin", "src/c"]
        + [f"src/c/{i:02d}.txt" for i in range(50)])
    big, link = entries[1], entries[2]
    assert big["blake3"] == blake3.blake3((src / "a-big.bin").read_bytes()).hexdigest()
    assert link["link"] == "src/a-big.bin" and link["blake3"] == big["blake3"]
    assert (result.files, result.bytes) == (52, 2 * (3 << 20) + sum(
        len(f"small {i}\n") for i in range(50)))
    assert ArchiveEngine().verify(spec, result.snapshot_id, RunControl(),
                                  RecordingReporter()).ok
    listed = ArchiveEngine().snapshots(spec)
    assert [(s.id, s.files, s.size) for s in listed] == [
        (result.snapshot_id, result.files, result.bytes)]
    _restore(spec, result.snapshot_id, tmp_path / "out")
    assert tree_signature(tmp_path / "out" / "src") == tree_signature(src)


def test_an_archive_with_a_whole_manifest_from_before_still_lists_and_restores(
        tmp_path: Path) -> None:
    # Archives made before issue 14 carry a format 1 manifest (one JSON document).
    dest, sid = tmp_path / "dest", "2026-01-01T000000Z"
    spec = BackupSpec.build([tmp_path / "src"], dest)
    _plant(dest, sid, [("src/a.txt", b"from an older release\n")])
    assert not is_streamed(dest / f"{sid}.manifest.json")
    assert [(s.id, s.files) for s in ArchiveEngine().snapshots(spec)] == [(sid, 1)]
    _restore(spec, sid, tmp_path / "out")
    assert (tmp_path / "out" / "src" / "a.txt").read_bytes() == b"from an older release\n"

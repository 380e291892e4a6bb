"""Streamed manifests (format 2): old snapshots still restore, damage is refused, and
writing or reading 100,000 entries holds memory flat (issue 14)."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engines.base import BackupSpec, RunControl
from engines.manifest import Manifest, ManifestError, read_head
from engines.manifest_stream import ManifestWriter, StreamedManifest, is_streamed
from engines.mirror import MirrorEngine
from engines.previndex import PreviousFiles
from engines.rsync import RsyncEngine
from engines.treestore import manifest_path
from tests.engine_helpers import RecordingReporter, make_tree, tree_signature, write


def _entry(i: int) -> dict[str, Any]:
    return {"path": f"src/d{i % 97:02d}/f{i:06d}.dat", "type": "file", "size": i,
            "mtime_ns": 1_700_000_000_000_000_000 + i, "mode": 0o644, "uid": 1000,
            "gid": 1000, "ctime_ns": 1_700_000_000_000_000_000 + i, "ino": 10_000 + i,
            "sha256": f"{i:064x}"}


def _light(i: int) -> dict[str, Any]:
    """A file entry with only what restore needs (fewer allocations under tracemalloc)."""
    return {"path": f"src/f{i:06d}", "type": "file", "size": 1, "sha256": "0" * 64}


def _write(path: Path, count: int, make: Callable[[int], dict[str, Any]] = _entry) -> None:
    with ManifestWriter(path, "2026-01-01T000000Z", "mirror", "2026-01-01T00:00:00Z",
                        {"src": "/data/src"}, "job-1") as writer:
        writer.add({"path": "src", "type": "dir", "mode": 0o755, "mtime_ns": 1})
        for i in range(count):
            writer.add(make(i))
        writer.commit()


def _write_light(path: Path, count: int) -> None:
    _write(path, count, _light)


def _read(path: Path, count: int) -> None:
    seen = sum(1 for _ in StreamedManifest(path).entries())
    assert seen == count + 1


def _peak(action: Callable[[Path, int], None], path: Path, count: int) -> int:
    """The most memory Python allocated at once while the action ran."""
    tracemalloc.start()
    try:
        action(path, count)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_writing_and_reading_100000_entries_holds_memory_flat(tmp_path: Path) -> None:
    small, large = tmp_path / "small.manifest.json", tmp_path / "large.manifest.json"
    peaks = {}
    for path, count in ((small, 10_000), (large, 100_000)):
        peaks[count] = (_peak(_write_light, path, count), _peak(_read, path, count))
    # Ten times the entries, the same memory: about the I/O buffers, not the entries
    # (held as dicts, as format 1 was, they took about 100 MB).
    for index in (0, 1):
        assert peaks[100_000][index] < 1 << 20, peaks
        assert peaks[100_000][index] < peaks[10_000][index] * 1.2 + (64 << 10), peaks
    _write(small, 1_000)
    manifest = Manifest.read(small)  # the whole-document reader reads format 2 too
    assert (manifest.files, manifest.size) == (1_000, sum(range(1_000)))
    assert manifest.entries[5] == _entry(4)
    assert json.loads(small.read_bytes())["files"] == 1_000  # still one JSON document
    assert read_head(small)["job_id"] == "job-1"


@pytest.mark.parametrize("damage", ["flip", "truncate", "drop-line", "append"])
def test_a_damaged_streamed_manifest_is_refused_before_any_entry_is_used(
        tmp_path: Path, damage: str) -> None:
    path = tmp_path / "m.manifest.json"
    _write(path, 50)
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    elif damage == "truncate":
        data = data[: len(data) - 30]
    elif damage == "drop-line":
        lines = bytes(data).split(b"\n")
        data = bytearray(b"\n".join(lines[:3] + lines[4:]))
    else:
        data += b"{}\n"
    path.write_bytes(bytes(data))
    with pytest.raises(ManifestError):
        StreamedManifest(path)
    with pytest.raises(ManifestError):
        Manifest.read(path)


def test_previous_files_give_back_what_the_manifest_said() -> None:
    entry = {**_entry(7), "xattrs": {"user.a": "eA=="}, "ino": (1 << 64) - 1,
             "mtime_ns": -5}
    # Written before ctime, inode and owner were recorded.
    old: dict[str, Any] = {"path": "src/old", "type": "file", "size": 3, "mtime_ns": 9,
                           "mode": 0o600, "sha256": "a" * 64}
    index = PreviousFiles([entry, old, {"path": "src", "type": "dir", "mode": 0o755,
                                        "mtime_ns": 1}])
    assert index.get(entry["path"]) == entry
    assert index.get("src/old") == old
    assert index.get("src") is None and len(index) == 2
    many = PreviousFiles(_entry(i) for i in range(5_000))
    assert all(many.get(_entry(i)["path"]) == _entry(i) for i in range(0, 5_000, 7))
    assert many.get("src/d00/f999999.dat") is None
    odd = {**old, "path": "src/\udcff name"}  # not UTF-8 on disk
    assert PreviousFiles([odd]).get(odd["path"]) == odd


def _as_format_1(dest: Path, snap_id: str) -> None:
    """Rewrite a snapshot's manifest the way releases before issue 14 wrote it."""
    path = manifest_path(dest, snap_id)
    Manifest.read(path).write(path)
    assert not is_streamed(path)
    assert json.loads(path.read_bytes())["format"] == 1


@pytest.mark.parametrize("engine", [MirrorEngine, RsyncEngine])
def test_a_snapshot_with_an_old_format_manifest_lists_restores_and_is_linked_against(
        tmp_path: Path, engine: type[MirrorEngine] | type[RsyncEngine]) -> None:
    src = make_tree(tmp_path / "src", small_files=20, large_bytes=70_000)
    spec = BackupSpec.build([src], tmp_path / "dest", job_id="job-1")
    first = engine().backup(spec, RunControl(), RecordingReporter()).snapshot_id
    assert is_streamed(manifest_path(spec.destination, first))
    _as_format_1(spec.destination, first)
    listed = engine().snapshots(spec)
    assert [s.id for s in listed] == [first] and listed[0].files > 20
    engine().restore(spec, first, tmp_path / "out", RunControl(), RecordingReporter())
    assert tree_signature(tmp_path / "out" / "src") == tree_signature(src)
    # The next run reads the old manifest for its quick check: unchanged files are
    # hard links to the old snapshot's.
    write(src / "new.txt", b"new\n")
    second = engine().backup(spec, RunControl(), RecordingReporter()).snapshot_id
    old, new = spec.destination / first / "src", spec.destination / second / "src"
    assert (old / "run.sh").stat().st_ino == (new / "run.sh").stat().st_ino
    engine().restore(spec, second, tmp_path / "out2", RunControl(), RecordingReporter(),
                     path="src/deep")
    assert (tmp_path / "out2" / "src" / "deep" / "er" / "est" / "leaf.txt").read_bytes() \
        == b"leaf\n"

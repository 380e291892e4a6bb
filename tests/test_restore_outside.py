"""A restore never changes anything outside its target, whatever symlinks stand in it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from engines.archive import ArchiveEngine
from engines.base import BackupSpec, RunControl
from engines.contract import Engine
from engines.mirror import MirrorEngine
from engines.rsync import RsyncEngine
from tests.engine_helpers import RecordingReporter, write

ENGINES: dict[str, Callable[[], Engine]] = {
    "mirror": MirrorEngine, "rsync": RsyncEngine, "archive": ArchiveEngine}


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_overwrite_replaces_a_symlink_to_an_outside_folder_and_leaves_that_folder_alone(
        tmp_path: Path, name: str) -> None:
    # The snapshot has an (empty) folder where the target now holds a symlink to a
    # folder outside it. Restoring with overwrite used to chmod and utime that outside
    # folder through the link: the folder's own mode and times must stay as they were.
    src = tmp_path / "src"
    write(src / "f.txt", b"data\n")
    (src / "d").mkdir(mode=0o700)
    os.utime(src / "d", ns=(10**18, 10**18))
    engine = ENGINES[name]()
    spec = BackupSpec.build([src], tmp_path / "dest", job_id="job-1")
    snapshot = engine.backup(spec, RunControl(), RecordingReporter()).snapshot_id
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o755)
    os.utime(outside, ns=(2 * 10**18, 2 * 10**18))
    before = outside.stat()
    target = tmp_path / "target"
    (target / "src").mkdir(parents=True)
    (target / "src" / "d").symlink_to(outside)
    engine.restore(spec, snapshot, target, RunControl(), RecordingReporter(), overwrite=True)
    after = outside.stat()
    assert (after.st_mode, after.st_mtime_ns) == (before.st_mode, before.st_mtime_ns)
    restored = target / "src" / "d"
    assert not restored.is_symlink() and restored.is_dir()
    assert (restored.stat().st_mode & 0o7777, restored.stat().st_mtime_ns) == (0o700, 10**18)
    assert (target / "src" / "f.txt").read_bytes() == b"data\n"


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_files_of_a_folder_replacing_a_symlink_land_in_the_target(tmp_path: Path,
                                                                    name: str) -> None:
    # With files under the folder, nothing is written where the old link pointed.
    src = tmp_path / "src"
    write(src / "d" / "inner.txt", b"inner\n")
    engine = ENGINES[name]()
    spec = BackupSpec.build([src], tmp_path / "dest", job_id="job-1")
    snapshot = engine.backup(spec, RunControl(), RecordingReporter()).snapshot_id
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "target"
    (target / "src").mkdir(parents=True)
    (target / "src" / "d").symlink_to(outside)
    engine.restore(spec, snapshot, target, RunControl(), RecordingReporter(), overwrite=True)
    assert list(outside.iterdir()) == []
    assert not (target / "src" / "d").is_symlink()
    assert (target / "src" / "d" / "inner.txt").read_bytes() == b"inner\n"

"""What only the mirror engine promises: hard links, resume without re-copying, warnings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engines.base import BackupSpec, Interrupted, Progress, RunControl
from engines.mirror import MirrorEngine
from engines.mirror import engine as mirror_engine_module
from tests.engine_helpers import (
    RecordingReporter,
    make_tree,
    tree_signature,
    walk_deleting_on_second_call,
    write,
)


def test_unchanged_files_are_hard_links_to_the_previous_snapshot(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    spec = BackupSpec.build([src], tmp_path / "dest")
    engine = MirrorEngine()
    first = engine.backup(spec, RunControl(), RecordingReporter())
    write(src / "run.sh", b"#!/bin/sh\necho changed\n", mode=0o755, mtime=1_800_000_000)
    second = engine.backup(spec, RunControl(), RecordingReporter())
    a = spec.destination / first.snapshot_id / "src"
    b = spec.destination / second.snapshot_id / "src"
    assert os.stat(a / "big.bin").st_ino == os.stat(b / "big.bin").st_ino
    assert os.stat(a / "run.sh").st_ino != os.stat(b / "run.sh").st_ino
    assert (a / "run.sh").read_bytes() != (b / "run.sh").read_bytes()


class _InterruptAfter(RunControl):
    """Interrupts at the 25th safe point: about a dozen files in (one thread)."""

    calls = 0

    def safe_point(self) -> None:
        self.calls += 1
        if self.calls == 25:
            self.interrupt()
        super().safe_point()


def _interrupted_run(src: Path, dest: Path, file_bytes: int) -> tuple[BackupSpec, Path,
                                                                         dict[str, object]]:
    """40 files in src, a one-thread mirror run of them interrupted a dozen files in: the
    spec, its partial snapshot's copy of src, and its last checkpoint."""
    for i in range(40):
        write(src / f"f{i:02d}.bin", os.urandom(file_bytes), mtime=1_700_000_000 + i)
    checkpoints: list[dict[str, object]] = []

    class KeepCheckpoints(RecordingReporter):
        def checkpoint(self, state: object) -> None:
            checkpoints.append(dict(state))  # type: ignore[call-overload]

    spec = BackupSpec.build([src], dest, options={"threads": 1})
    with pytest.raises(Interrupted):
        MirrorEngine().backup(spec, _InterruptAfter(), KeepCheckpoints())
    partial = dest / f"{checkpoints[0]['snapshot_id']}.partial" / "src"
    return spec, partial, checkpoints[-1]


def test_interrupted_run_keeps_its_work_and_resumes_without_recopying(tmp_path: Path) -> None:
    src = tmp_path / "src"
    spec, partial, checkpoint = _interrupted_run(src, tmp_path / "dest", 256 * 1024)
    engine = MirrorEngine()
    done_before = {p.name: p.stat().st_ino for p in partial.iterdir()
                   if not p.name.startswith(".bm-")}
    write(src / "added-after-crash.txt", b"new\n")
    (src / "f39.bin").unlink()
    assert 10 <= len(done_before) < 40
    assert engine.snapshots(spec) == []
    result = engine.backup(spec, RunControl(), RecordingReporter(), resume=checkpoint)
    final = spec.destination / result.snapshot_id / "src"
    # Files finished before the interruption are the very same inodes: not copied again.
    assert all(final.joinpath(n).stat().st_ino == ino for n, ino in done_before.items())
    assert tree_signature(final) == tree_signature(src)
    assert not any(n.endswith((".partial", ".journal")) for n in os.listdir(spec.destination))


def test_a_file_deleted_as_a_resumed_run_starts_is_not_left_in_its_snapshot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A resumed run used to list the source once to clear its partial of what the source
    # no longer has, then again to copy: a file already copied before the interruption
    # and deleted between the two stayed in the snapshot, missing from its manifest
    # (verify then failed the snapshot).
    src = tmp_path / "src"
    spec, partial, checkpoint = _interrupted_run(src, tmp_path / "dest", 64 * 1024)
    engine = MirrorEngine()
    assert (partial / "f00.bin").exists() and (partial / "f01.bin").exists()  # copied
    (src / "f01.bin").unlink()  # gone before the resume: the partial's copy must go
    # The source changes between a first and a second walk of the resumed run.
    monkeypatch.setattr(mirror_engine_module, "walk", walk_deleting_on_second_call(src / "f00.bin"))
    result = engine.backup(spec, RunControl(), RecordingReporter(), resume=checkpoint)
    final = spec.destination / result.snapshot_id / "src"
    assert tree_signature(final) == tree_signature(src)
    assert not (final / "f01.bin").exists()
    verify = engine.verify(spec, result.snapshot_id, RunControl(), RecordingReporter())
    assert verify.ok, verify.problems


def test_a_file_vanishing_mid_run_is_a_warning(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(30):
        write(src / f"f{i:02d}.txt", b"x" * 100)
    spec = BackupSpec.build([src], tmp_path / "dest", options={"threads": 1})

    class DeleteOnCopy(RecordingReporter):
        def progress(self, progress: Progress) -> None:
            super().progress(progress)
            if progress.phase == "copying":
                (src / "f29.txt").unlink(missing_ok=True)

    reporter = DeleteOnCopy()
    result = MirrorEngine().backup(spec, RunControl(), reporter)
    assert result.files == 29
    assert any("f29.txt vanished" in w for w in result.warnings)
    assert reporter.warnings == list(result.warnings)


def test_two_sources_land_side_by_side_and_same_names_are_refused(tmp_path: Path) -> None:
    a = make_tree(tmp_path / "a" / "docs", small_files=3, large_bytes=10)
    b = tmp_path / "b" / "photos"
    write(b / "p.jpg", b"jpeg")
    spec = BackupSpec.build([a, b], tmp_path / "dest")
    result = MirrorEngine().backup(spec, RunControl(), RecordingReporter())
    snap = spec.destination / result.snapshot_id
    assert sorted(os.listdir(snap)) == ["docs", "photos"]
    clash = BackupSpec.build([a, tmp_path / "c" / "docs"], tmp_path / "dest2")
    (tmp_path / "c" / "docs").mkdir(parents=True)
    with pytest.raises(Exception, match="same name"):
        MirrorEngine().backup(clash, RunControl(), RecordingReporter())

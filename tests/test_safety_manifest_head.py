"""A manifest head too long or too damaged to read never makes a snapshot every job's.

Two jobs pointed at one destination by hand (data from before issue 12): a job of 32
sources with long paths writes a manifest head far over 64 KiB; it must still be read
as that job's, or the other job lists, prunes and deletes it as its own.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engines.archive import ArchiveEngine
from engines.base import BackupSpec, Engine, RunControl, SnapshotNotFound
from engines.mirror import MirrorEngine
from models.retention import Retention
from tests.engine_helpers import RecordingReporter, write


def long_sources(root: Path, count: int = 32) -> list[Path]:
    """`count` source folders whose paths are about 3,000 characters each."""
    deep = root
    for level in range(14):
        deep = deep / (f"{level:02d}" + "d" * 198)
    sources = [deep / f"source-{n:02d}" for n in range(count)]
    for src in sources:
        write(src / "f.txt", src.name.encode())
    return sources


@pytest.mark.parametrize("engine", [MirrorEngine(), ArchiveEngine()],
                         ids=["mirror", "archive"])
def test_a_long_manifest_head_stays_its_jobs_and_out_of_another_jobs_prune(
        tmp_path: Path, engine: Engine) -> None:
    dest = tmp_path / "shared"
    job_a = BackupSpec.build(long_sources(tmp_path / "a"), dest, job_id="job-a")
    write(tmp_path / "b" / "data" / "g.txt", b"B\n")
    job_b = BackupSpec.build([tmp_path / "b" / "data"], dest, job_id="job-b")
    a_snap = engine.backup(job_a, RunControl(), RecordingReporter()).snapshot_id
    assert a_snap is not None
    b_snap = engine.backup(job_b, RunControl(), RecordingReporter()).snapshot_id
    # B's listing and retention (keep 1) see only B's snapshot: A's survives.
    assert [s.id for s in engine.snapshots(job_b)] == [b_snap]
    assert engine.prune(job_b, Retention(keep_last=1)) == []
    with pytest.raises(SnapshotNotFound):
        engine.delete_snapshots(job_b, [a_snap])
    assert [s.id for s in engine.snapshots(job_a)] == [a_snap]
    result = engine.verify(job_a, a_snap, RunControl(), RecordingReporter())
    assert result.ok, result.problems


def manifest_of(dest: Path, snap_id: str) -> Path:
    """The manifest file of a snapshot, whichever engine wrote it."""
    return next(p for p in dest.rglob("*manifest*.json") if snap_id in str(p))


@pytest.mark.parametrize("engine", [MirrorEngine(), ArchiveEngine()],
                         ids=["mirror", "archive"])
def test_a_snapshot_whose_head_cannot_be_read_is_not_another_jobs_to_delete(
        tmp_path: Path, engine: Engine) -> None:
    dest = tmp_path / "shared"
    write(tmp_path / "a" / "data" / "f.txt", b"A\n")
    write(tmp_path / "b" / "data" / "g.txt", b"B\n")
    job_a = BackupSpec.build([tmp_path / "a" / "data"], dest, job_id="job-a")
    job_b = BackupSpec.build([tmp_path / "b" / "data"], dest, job_id="job-b")
    a_snap = engine.backup(job_a, RunControl(), RecordingReporter()).snapshot_id
    assert a_snap is not None
    manifest = manifest_of(dest, a_snap)
    manifest.write_bytes(b"{damaged" + manifest.read_bytes()[8:])
    engine.backup(job_b, RunControl(), RecordingReporter())
    # Whose it is cannot be read, so B may not delete or prune it as its own.
    with pytest.raises(SnapshotNotFound):
        engine.delete_snapshots(job_b, [a_snap])
    assert engine.prune(job_b, Retention(keep_last=1)) == []
    assert manifest.exists()
    # Outside any job (the CLI) it is still seen, so it can be named and removed by hand.
    engine.delete_snapshots(BackupSpec.build([], dest), [a_snap])
    assert not manifest.exists()

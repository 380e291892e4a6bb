"""The contract every engine passes: the same tests, run against each real engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from engines.base import (
    BackupResult,
    BackupSpec,
    Cancelled,
    DestinationInsideSource,
    DiskFull,
    Progress,
    RestoreConflict,
    RunControl,
    SourceMissing,
)
from engines.registry import ENGINE_NAMES, get_engine
from models.retention import Retention
from tests.cli_helpers import REPO
from tests.engine_contract_helpers import (
    damage_snapshot,
    engine_spec,
    kill_tree,
    small_filesystem,
)
from tests.engine_helpers import (
    RecordingReporter,
    make_tree,
    mutate_tree,
    tree_signature,
    write,
)

pytestmark = pytest.mark.parametrize("engine_name", ENGINE_NAMES)


def backup(engine_name: str, spec: BackupSpec,
           reporter: RecordingReporter | None = None) -> BackupResult:
    """Run one backup to completion."""
    return get_engine(engine_name).backup(spec, RunControl(), reporter or RecordingReporter())


def restore(engine_name: str, spec: BackupSpec, snapshot_id: str, target: Path,
            path: str | None = None, overwrite: bool = False) -> Path:
    """Restore a snapshot into target; return target."""
    get_engine(engine_name).restore(spec, snapshot_id, target, RunControl(),
                                    RecordingReporter(), path=path, overwrite=overwrite)
    return target


def leftovers(dest: Path) -> list[str]:
    """Names in the destination that belong to an unfinished snapshot."""
    return sorted(n for n in os.listdir(dest) if n.endswith((".partial", ".tmp")))


def test_backup_then_restore_is_byte_for_byte(engine_name: str, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    spec = engine_spec(engine_name, [src], tmp_path / "dest", tmp_path)
    reporter = RecordingReporter()
    result = backup(engine_name, spec, reporter)
    assert result.files == sum(1 for k in tree_signature(src).values() if k[0] == "file")
    out = restore(engine_name, spec, result.snapshot_id, tmp_path / "restore")
    assert tree_signature(out / "src") == tree_signature(src)
    snaps = get_engine(engine_name).snapshots(spec)
    assert [s.id for s in snaps] == [result.snapshot_id]
    assert snaps[0].files == result.files and snaps[0].size >= 6 * 1024 * 1024
    # Progress told the truth: totals known by the end, and they match what was done.
    final = [p for p in reporter.progress_updates if not p.counting and p.bytes_total]
    assert final, "no progress with known totals"
    assert final[-1].bytes_done == final[-1].bytes_total or final[-1].phase == "done"
    assert all(p.eta is None for p in reporter.progress_updates if p.counting)


def test_incremental_restores_new_state_and_old_snapshot_stays(engine_name: str,
                                                               tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    spec = engine_spec(engine_name, [src], tmp_path / "dest", tmp_path)
    first = backup(engine_name, spec)
    before = tree_signature(src)
    time.sleep(1.05)  # snapshot ids and times have one-second resolution
    mutate_tree(src)
    second = backup(engine_name, spec)
    assert second.snapshot_id != first.snapshot_id
    assert tree_signature(restore(engine_name, spec, second.snapshot_id,
                                  tmp_path / "new") / "src") == tree_signature(src)
    assert tree_signature(restore(engine_name, spec, first.snapshot_id,
                                  tmp_path / "old") / "src") == before


def test_restore_of_a_sub_path(engine_name: str, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    spec = engine_spec(engine_name, [src], tmp_path / "dest", tmp_path)
    result = backup(engine_name, spec)
    out = restore(engine_name, spec, result.snapshot_id, tmp_path / "r", path="src/deep")
    assert tree_signature(out / "src" / "deep") == tree_signature(src / "deep")
    assert not (out / "src" / "big.bin").exists()


def test_restore_refuses_to_overwrite_unless_asked(engine_name: str, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    spec = engine_spec(engine_name, [src], tmp_path / "dest", tmp_path)
    result = backup(engine_name, spec)
    target = tmp_path / "r"
    write(target / "src" / "run.sh", b"mine, keep me\n")
    with pytest.raises(RestoreConflict, match="already exist"):
        restore(engine_name, spec, result.snapshot_id, target)
    assert (target / "src" / "run.sh").read_bytes() == b"mine, keep me\n"
    assert not (target / "src" / "big.bin").exists()  # refused before writing anything
    restore(engine_name, spec, result.snapshot_id, target, overwrite=True)
    assert tree_signature(target / "src") == tree_signature(src)


def _big_source(root: Path) -> Path:
    for i in range(3):
        write(root / f"large-{i}.bin", os.urandom(48 * 1024 * 1024))
    for i in range(50):
        write(root / "small" / f"s{i}.txt", f"small {i}\n".encode())
    return root


def test_pause_holds_then_resume_finishes(engine_name: str, tmp_path: Path) -> None:
    src = _big_source(tmp_path / "src")
    spec = engine_spec(engine_name, [src], tmp_path / "dest", tmp_path)
    control = RunControl()
    reporter = RecordingReporter()
    moving = threading.Event()

    class PauseOnFirstBytes(RecordingReporter):
        def progress(self, progress: Progress) -> None:
            reporter.progress(progress)
            copying = progress.phase not in ("starting", "scanning")
            if (copying or progress.bytes_done > 0) and not moving.is_set():
                control.pause()
                moving.set()

    results: list[BackupResult] = []
    worker = threading.Thread(target=lambda: results.append(
        get_engine(engine_name).backup(spec, control, PauseOnFirstBytes())))
    worker.start()
    assert moving.wait(60), "no progress before the pause"
    time.sleep(0.4)  # let an engine driving a subprocess reach its hold
    held_at = len(reporter.progress_updates), reporter.progress_updates[-1].bytes_done
    time.sleep(0.8)
    assert not results, "the run finished while paused"
    assert reporter.progress_updates[-1].bytes_done == held_at[1]
    control.resume()
    worker.join(120)
    assert results and results[0].files == 53
    out = restore(engine_name, spec, results[0].snapshot_id, tmp_path / "r")
    assert tree_signature(out / "src") == tree_signature(src)


def test_cancel_stops_and_leaves_nothing_that_looks_complete(engine_name: str,
                                                             tmp_path: Path) -> None:
    src = _big_source(tmp_path / "src")
    dest = tmp_path / "dest"
    spec = engine_spec(engine_name, [src], dest, tmp_path)
    control = RunControl()

    class CancelOnFirstBytes(RecordingReporter):
        def progress(self, progress: Progress) -> None:
            if progress.phase not in ("starting", "scanning") or progress.bytes_done > 0:
                control.cancel()

    started = time.monotonic()
    with pytest.raises(Cancelled):
        get_engine(engine_name).backup(spec, control, CancelOnFirstBytes())
    assert time.monotonic() - started < 30
    assert get_engine(engine_name).snapshots(spec) == []
    assert leftovers(dest) == []


def test_killed_worker_resumes_to_the_same_result(engine_name: str, tmp_path: Path) -> None:
    src = _big_source(tmp_path / "src")
    dest = tmp_path / "dest"
    spec = engine_spec(engine_name, [src], dest, tmp_path)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({"engine": engine_name, "sources": [str(src)],
                                     "destination": str(dest), "options": dict(spec.options)}))
    cmd = [sys.executable, "-m", "tests.engine_worker", "backup", str(spec_file)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    checkpoint = None
    for line in proc.stdout:
        msg = json.loads(line)
        if msg["kind"] == "checkpoint":
            checkpoint = msg["state"]
        if msg["kind"] == "progress" and msg["bytes_done"] > 40 * 1024 * 1024 and checkpoint:
            break
        assert msg["kind"] not in ("result", "error"), msg
    kill_tree(proc)
    assert get_engine(engine_name).snapshots(spec) == []  # nothing half-done is listed
    (tmp_path / "checkpoint.json").write_text(json.dumps(checkpoint))
    resumed = subprocess.run([*cmd, "--resume", str(tmp_path / "checkpoint.json")], cwd=REPO,
                             capture_output=True, text=True, timeout=300, check=False)
    last = json.loads(resumed.stdout.splitlines()[-1])
    assert last["kind"] == "result", resumed.stdout[-2000:]
    snaps = get_engine(engine_name).snapshots(spec)
    assert [s.id for s in snaps] == [last["snapshot_id"]]
    out = restore(engine_name, spec, last["snapshot_id"], tmp_path / "r")
    assert tree_signature(out / "src") == tree_signature(src)


def test_verify_passes_then_catches_a_flipped_byte(engine_name: str, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    dest = tmp_path / "dest"
    spec = engine_spec(engine_name, [src], dest, tmp_path)
    result = backup(engine_name, spec)
    engine = get_engine(engine_name)
    assert engine.verify(spec, result.snapshot_id, RunControl(), RecordingReporter()).ok
    damage_snapshot(engine_name, dest, result.snapshot_id)
    verdict = engine.verify(spec, result.snapshot_id, RunControl(), RecordingReporter())
    assert not verdict.ok and verdict.problems


def test_prune_keeps_exactly_what_the_policy_says(engine_name: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "a.txt", b"version 0\n")
    spec = engine_spec(engine_name, [src], tmp_path / "dest", tmp_path)
    ids = []
    for i in range(4):
        write(src / "a.txt", f"version {i}\n".encode(), mtime=1_700_000_000 + i)
        ids.append(backup(engine_name, spec).snapshot_id)
        time.sleep(1.05)
    engine = get_engine(engine_name)
    # A snapshot held (a queued restore waits for it) stays whatever the policy says.
    assert engine.prune(spec, Retention(keep_last=2), hold={ids[0]}) == [ids[1]]
    assert [s.id for s in engine.snapshots(spec)] == [ids[0], *ids[2:]]
    removed = engine.prune(spec, Retention(keep_last=2))
    assert sorted(removed) == [ids[0]]
    assert [s.id for s in engine.snapshots(spec)] == ids[2:]
    out = restore(engine_name, spec, ids[3], tmp_path / "r")
    assert (out / "src" / "a.txt").read_bytes() == b"version 3\n"


def test_clear_errors_for_bad_sources_and_destinations(engine_name: str,
                                                       tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", small_files=3, large_bytes=10)
    engine = get_engine(engine_name)
    missing = engine_spec(engine_name, [tmp_path / "nope"], tmp_path / "dest", tmp_path)
    with pytest.raises(SourceMissing, match="does not exist"):
        engine.backup(missing, RunControl(), RecordingReporter())
    inside = engine_spec(engine_name, [src], src / "backups", tmp_path)
    with pytest.raises(DestinationInsideSource, match="inside source"):
        engine.backup(inside, RunControl(), RecordingReporter())
    assert not (src / "backups").exists()


def test_full_disk_fails_clearly_then_succeeds_once_space_is_freed(
        engine_name: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "fits.bin", os.urandom(2 * 1024 * 1024))
    write(src / "too-big.bin", os.urandom(12 * 1024 * 1024))
    with small_filesystem(tmp_path / "small", "8m") as dest_fs:
        dest = dest_fs / "dest"
        spec = engine_spec(engine_name, [src], dest, tmp_path)
        engine = get_engine(engine_name)
        with pytest.raises(DiskFull, match="full"):
            engine.backup(spec, RunControl(), RecordingReporter())
        assert engine.snapshots(spec) == []
        assert leftovers(dest) == []
        (src / "too-big.bin").unlink()
        result = engine.backup(spec, RunControl(), RecordingReporter())
        out = restore(engine_name, spec, result.snapshot_id, tmp_path / "r")
        assert tree_signature(out / "src") == tree_signature(src)

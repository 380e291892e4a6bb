"""The archive engine on its own: what the shared contract cannot see (its files on disk,
gzip, hostile archives, damage, mid-file pause and cancel, a killed run, a full disk)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3
import pytest
import zstandard

import engines.archive.engine as archive_module
from engines.archive import ArchiveEngine
from engines.base import (
    BackupResult,
    BackupSpec,
    Cancelled,
    EngineError,
    Interrupted,
    Progress,
    RestoreConflict,
    RunControl,
    SnapshotNotFound,
)
from engines.manifest import Manifest
from models.retention import Retention
from tests.cli_helpers import REPO
from tests.engine_helpers import (
    BASE_MTIME,
    RecordingReporter,
    make_tree,
    mutate_tree,
    tree_signature,
    write,
)

BIG = 2_000_000


def backup(spec: BackupSpec, reporter: RecordingReporter | None = None,
           control: RunControl | None = None) -> BackupResult:
    """Run one backup to completion."""
    return ArchiveEngine().backup(spec, control or RunControl(), reporter or RecordingReporter())


def restore(spec: BackupSpec, snapshot_id: str, target: Path, path: str | None = None,
            overwrite: bool = False) -> Path:
    """Restore into target; return target."""
    ArchiveEngine().restore(spec, snapshot_id, target, RunControl(), RecordingReporter(),
                            path=path, overwrite=overwrite)
    return target


def names(dest: Path) -> list[str]:
    """What is in the destination directory."""
    return sorted(os.listdir(dest))


class HookReporter(RecordingReporter):
    """Records, then calls hook(progress). Until the hook says it fired, each update while
    archiving or restoring waits out the meter's 0.2 s throttle, so the next bytes are
    reported at once."""

    def __init__(self, hook: Callable[[Progress], bool]) -> None:
        super().__init__()
        self.hook = hook
        self.fired = threading.Event()

    def progress(self, progress: Progress) -> None:
        """Record, run the hook, and slow down until it fires."""
        super().progress(progress)
        if self.fired.is_set():
            return
        if self.hook(progress):
            self.fired.set()
        elif progress.phase in ("archiving", "restoring"):
            time.sleep(0.21)


def inside_big_file(progress: Progress) -> bool:
    """Whether the run is part way through src/big.bin."""
    return progress.current_file == "src/big.bin" and 0 < progress.bytes_done < BIG


def small_source(root: Path) -> Path:
    """A source whose first file is a 2 MB big.bin, then a few small ones."""
    write(root / "big.bin", os.urandom(BIG))
    for name in ("m.txt", "z.txt"):
        write(root / name, f"{name}\n".encode())
    return root


# --- backup and restore ---------------------------------------------------------------


@pytest.mark.parametrize(("compression", "suffix"), [("zstd", ".tar.zst"), ("gzip", ".tar.gz")])
def test_backup_then_restore_is_byte_for_byte(tmp_path: Path, compression: str,
                                              suffix: str) -> None:
    src = make_tree(tmp_path / "src", large_bytes=BIG)
    dest = tmp_path / "dest"
    spec = BackupSpec.build([src], dest, options={"compression": compression, "level": 3})
    reporter = RecordingReporter()
    result = backup(spec, reporter)
    sid = result.snapshot_id
    assert names(dest) == [f"{sid}.manifest.json", f"{sid}{suffix}"]
    assert reporter.checkpoints == [{"engine": "archive", "partial": f"{sid}{suffix}.partial",
                                     "snapshot_id": sid}]
    # The archive is a plain tar that standard tools read, named by snapshot-relative path.
    raw = (dest / f"{sid}{suffix}").read_bytes()
    tar_bytes = (zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)).read()
                 if compression == "zstd" else gzip.decompress(raw))
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        assert tar.getmember("src/big.bin").size == BIG
        assert tar.getmember("src/link-to-run").linkname == "run.sh"
    manifest = Manifest.read(dest / f"{sid}.manifest.json").by_path()
    assert manifest["src/big.bin"]["blake3"] == blake3.blake3(
        (src / "big.bin").read_bytes()).hexdigest()
    assert manifest["src/absolute-link"] == {
        "path": "src/absolute-link", "type": "symlink", "size": 0, "target": "/etc/hostname",
        "mode": manifest["src/absolute-link"]["mode"],
        "mtime_ns": (src / "absolute-link").lstat().st_mtime_ns,
        "uid": (src / "absolute-link").lstat().st_uid,
        "gid": (src / "absolute-link").lstat().st_gid}
    out = restore(spec, sid, tmp_path / "restore")
    assert tree_signature(out / "src") == tree_signature(src)
    # Directory modes and file mtimes come back to the nanosecond, from the manifest.
    assert (out / "src" / "big.bin").stat().st_mtime_ns == (src / "big.bin").stat().st_mtime_ns
    assert (out / "src" / "deep").stat().st_mode & 0o777 == 0o750
    [snap] = ArchiveEngine().snapshots(spec)
    assert (snap.id, snap.files, snap.size) == (sid, result.files, result.bytes)
    assert result.files == sum(1 for k in tree_signature(src).values() if k[0] == "file")
    final = reporter.progress_updates[-1]
    assert final.phase == "done" and final.bytes_done == final.bytes_total == result.bytes
    assert all(p.eta is None for p in reporter.progress_updates if p.counting)


def test_bad_compression_options_are_refused_clearly(tmp_path: Path) -> None:
    src = small_source(tmp_path / "src")
    for options, message in (({"compression": "lz4"}, "compression must be one of"),
                             ({"level": 99}, "zstd level must be"),
                             ({"compression": "gzip", "level": "9"}, "gzip level must be")):
        with pytest.raises(EngineError, match=message):
            backup(BackupSpec.build([src], tmp_path / "dest", options=options))
    assert not (tmp_path / "dest").exists()


def test_incremental_new_snapshot_has_new_state_and_old_one_stays(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", large_bytes=BIG)
    spec = BackupSpec.build([src], tmp_path / "dest")
    first = backup(spec)
    before = tree_signature(src)
    mutate_tree(src)
    second = backup(spec)  # same second: the id gets a -2 suffix, no need to sleep
    assert second.snapshot_id != first.snapshot_id
    assert [s.id for s in ArchiveEngine().snapshots(spec)] == [first.snapshot_id,
                                                              second.snapshot_id]
    new = restore(spec, second.snapshot_id, tmp_path / "new")
    assert tree_signature(new / "src") == tree_signature(src)
    old = restore(spec, first.snapshot_id, tmp_path / "old")
    assert tree_signature(old / "src") == before


def test_restore_of_a_sub_path(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", large_bytes=BIG)
    spec = BackupSpec.build([src], tmp_path / "dest")
    sid = backup(spec).snapshot_id
    out = restore(spec, sid, tmp_path / "r", path="src/deep/")
    assert tree_signature(out / "src" / "deep") == tree_signature(src / "deep")
    assert sorted(os.listdir(out / "src")) == ["deep"]
    one = restore(spec, sid, tmp_path / "one", path="src/ünïcødé ✓/日本語 file.txt")
    assert (one / "src" / "ünïcødé ✓" / "日本語 file.txt").read_bytes() == "grüße\n".encode()
    with pytest.raises(EngineError, match="is not in snapshot"):
        restore(spec, sid, tmp_path / "x", path="src/nope")
    with pytest.raises(EngineError, match="not a path inside the snapshot"):
        restore(spec, sid, tmp_path / "x", path="src/../../etc")
    with pytest.raises(SnapshotNotFound):
        restore(spec, "2001-01-01T000000Z", tmp_path / "x")
    with pytest.raises(EngineError, match="is not a snapshot id"):
        restore(spec, "../../etc", tmp_path / "x")


def test_restore_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", large_bytes=BIG)
    spec = BackupSpec.build([src], tmp_path / "dest")
    sid = backup(spec).snapshot_id
    target = tmp_path / "r"
    write(target / "src" / "run.sh", b"mine, keep me\n")
    with pytest.raises(RestoreConflict, match=r"already exist.*src/run\.sh"):
        restore(spec, sid, target)
    assert (target / "src" / "run.sh").read_bytes() == b"mine, keep me\n"
    assert sorted(os.listdir(target / "src")) == ["run.sh"]  # refused before writing anything
    restore(spec, sid, target, overwrite=True)
    assert tree_signature(target / "src") == tree_signature(src)
    # A directory where the snapshot has a file is never deleted, overwrite or not.
    (target / "src" / "secret.txt").unlink()
    (target / "src" / "secret.txt").mkdir()
    with pytest.raises(RestoreConflict, match="as directories"):
        restore(spec, sid, target, overwrite=True)


def test_files_that_change_during_the_run_are_warned_about(tmp_path: Path) -> None:
    src = small_source(tmp_path / "src")
    spec = BackupSpec.build([src], tmp_path / "dest")
    original = (src / "big.bin").read_bytes()

    def shrink_and_delete(progress: Progress) -> bool:
        if inside_big_file(progress):
            with open(src / "big.bin", "r+b") as fh:  # shrinks under the reader's feet
                fh.truncate(10)
            (src / "z.txt").unlink()
            return True
        return False

    reporter = HookReporter(shrink_and_delete)
    result = backup(spec, reporter)
    assert reporter.fired.is_set()
    assert any("shrank" in w and "big.bin" in w for w in result.warnings)
    assert any("vanished" in w and "z.txt" in w for w in result.warnings)
    assert result.warnings == tuple(reporter.warnings)
    # The archive stays well formed: the file keeps its announced size, zero-padded.
    engine = ArchiveEngine()
    assert engine.verify(spec, result.snapshot_id, RunControl(), RecordingReporter()).ok
    out = restore(spec, result.snapshot_id, tmp_path / "r")
    restored = (out / "src" / "big.bin").read_bytes()
    assert len(restored) == BIG and restored[:1 << 20] == original[:1 << 20]
    assert restored.rstrip(b"\0") != original and not (out / "src" / "z.txt").exists()


def test_a_name_that_is_not_utf8_is_backed_up_and_restored(tmp_path: Path) -> None:
    src = small_source(tmp_path / "src")
    bad = src / os.fsdecode(b"caf\xe9.txt")  # Latin-1 name, as old systems left them
    bad.write_bytes(b"old\n")
    spec = BackupSpec.build([src], tmp_path / "dest")
    result = backup(spec)
    assert result.warnings == ()
    out = restore(spec, result.snapshot_id, tmp_path / "r") / "src"
    assert b"caf\xe9.txt" in os.listdir(os.fsencode(out))
    assert tree_signature(out) == tree_signature(src)


# --- hostile archives ------------------------------------------------------------------


def plant_snapshot(dest: Path, snapshot_id: str, members: list[tarfile.TarInfo],
                   entries: list[dict[str, Any]], data: dict[str, bytes] | None = None) -> None:
    """Write a hand-made .tar.zst and manifest, as someone with access to the disk could."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member in members:
            content = (data or {}).get(member.name)
            if content is not None:
                member.size = len(content)
            tar.addfile(member, io.BytesIO(content) if content is not None else None)
    dest.mkdir(parents=True, exist_ok=True)
    compressed = zstandard.ZstdCompressor(write_checksum=True).compress(buf.getvalue())
    (dest / f"{snapshot_id}.tar.zst").write_bytes(compressed)
    Manifest(snapshot_id, "archive", "2026-01-01T00:00:00Z", {"src": "/src"},
             entries).write(dest / f"{snapshot_id}.manifest.json")


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    """A tar member as an attacker would write it."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = kind, linkname, 0o644, BASE_MTIME
    return info


def entry(path: str, kind: str, content: bytes = b"", target: str = "") -> dict[str, Any]:
    """A manifest entry matching member()."""
    out: dict[str, Any] = {"path": path, "type": kind, "size": len(content),
                           "mtime_ns": BASE_MTIME * 1_000_000_000, "mode": 0o644}
    if kind == "file":
        out["sha256"] = hashlib.sha256(content).hexdigest()
    if kind == "symlink":
        out["target"] = target
    return out


def test_a_member_named_dot_dot_is_refused(tmp_path: Path) -> None:
    dest, target = tmp_path / "dest", tmp_path / "work" / "target"
    spec = BackupSpec.build([tmp_path / "src"], dest)
    # The manifest looks innocent; the archive also holds ../x.
    plant_snapshot(dest, "2026-01-01T000000Z",
                   [member("src", tarfile.DIRTYPE), member("../x"), member("src/ok.txt")],
                   [entry("src", "dir"), entry("src/ok.txt", "file", b"ok")],
                   {"../x": b"pwned", "src/ok.txt": b"ok"})
    with pytest.raises(EngineError, match="points outside the restore target"):
        restore(spec, "2026-01-01T000000Z", target)
    # The manifest lists ../x too: refused before anything is written.
    plant_snapshot(dest, "2026-01-02T000000Z", [member("../x")], [entry("../x", "file", b"x")],
                   {"../x": b"x"})
    with pytest.raises(EngineError, match="not a safe path"):
        restore(spec, "2026-01-02T000000Z", tmp_path / "work" / "other")
    assert not (tmp_path / "work" / "x").exists() and not (tmp_path / "x").exists()
    assert not (tmp_path / "work" / "other").exists()
    verdict = ArchiveEngine().verify(spec, "2026-01-01T000000Z", RunControl(),
                                     RecordingReporter())
    assert not verdict.ok and any("'../x'" in p for p in verdict.problems)


def test_an_archive_hashed_with_sha256_before_still_verifies_and_restores(
        tmp_path: Path) -> None:
    # Archives made before the engine hashed with BLAKE3 carry sha256 in their manifest.
    dest, sid = tmp_path / "dest", "2026-01-01T000000Z"
    spec = BackupSpec.build([tmp_path / "src"], dest)
    content = b"written by an older release\n"
    plant_snapshot(dest, sid, [member("src", tarfile.DIRTYPE), member("src/a.txt")],
                   [entry("src", "dir"), entry("src/a.txt", "file", content)],
                   {"src/a.txt": content})
    assert ArchiveEngine().verify(spec, sid, RunControl(), RecordingReporter()).ok
    assert (restore(spec, sid, tmp_path / "out") / "src" / "a.txt").read_bytes() == content
    plant_snapshot(dest, sid, [member("src", tarfile.DIRTYPE), member("src/a.txt")],
                   [entry("src", "dir"), entry("src/a.txt", "file", content)],
                   {"src/a.txt": content.replace(b"older", b"elder")})
    verdict = ArchiveEngine().verify(spec, sid, RunControl(), RecordingReporter())
    assert not verdict.ok
    assert verdict.problems == ("src/a.txt: content does not match the manifest "
                                "(sha256 differs)",)


def test_a_symlink_then_a_file_through_it_is_refused(tmp_path: Path) -> None:
    dest, target, outside = tmp_path / "dest", tmp_path / "target", tmp_path / "etc"
    outside.mkdir()
    spec = BackupSpec.build([tmp_path / "src"], dest)
    members = [member("src", tarfile.DIRTYPE), member("src/a", tarfile.SYMTYPE, str(outside)),
               member("src/a/passwd")]
    # An honest manifest for a dishonest archive: refused as soon as it is read.
    plant_snapshot(dest, "2026-01-01T000000Z", members,
                   [entry("src", "dir"), entry("src/a", "symlink", target=str(outside)),
                    entry("src/a/passwd", "file", b"root::0:0")], {"src/a/passwd": b"root::0:0"})
    with pytest.raises(EngineError, match="under a symlink"):
        restore(spec, "2026-01-01T000000Z", target)
    assert not target.exists()
    # A manifest that says src/a is a directory, over an archive where it is a symlink.
    plant_snapshot(dest, "2026-01-02T000000Z", members,
                   [entry("src", "dir"), entry("src/a", "dir"),
                    entry("src/a/passwd", "file", b"root::0:0")], {"src/a/passwd": b"root::0:0"})
    with pytest.raises(EngineError, match="is a symlink in the archive but a dir"):
        restore(spec, "2026-01-02T000000Z", target)
    assert os.listdir(outside) == []


def test_a_symlink_already_in_the_target_is_never_written_through(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", small_files=5, large_bytes=1000)
    spec = BackupSpec.build([src], tmp_path / "dest")
    sid = backup(spec).snapshot_id
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "target"
    target.mkdir()
    os.symlink(outside, target / "src")
    with pytest.raises(RestoreConflict):
        restore(spec, sid, target)
    # A sub-path below it: the conflict check cannot see through, the writer refuses.
    with pytest.raises(EngineError, match="will not write through it"):
        restore(spec, sid, target, path="src/deep")
    assert os.listdir(outside) == []
    # Overwrite replaces the symlink itself with the directory, and never follows it.
    restore(spec, sid, target, overwrite=True)
    assert os.listdir(outside) == []
    assert not (target / "src").is_symlink()
    assert tree_signature(target / "src") == tree_signature(src)


# --- pause, cancel, interrupt, crash ------------------------------------------------------


def run_in_thread(spec: BackupSpec, control: RunControl, reporter: RecordingReporter
                  ) -> tuple[threading.Thread, list[BackupResult]]:
    """Start a backup in a worker thread, as the runner does."""
    results: list[BackupResult] = []
    worker = threading.Thread(target=lambda: results.append(backup(spec, reporter, control)),
                              daemon=True)
    worker.start()
    return worker, results


def test_pause_holds_then_resume_finishes(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", large_bytes=BIG)
    spec = BackupSpec.build([src], tmp_path / "dest")
    control = RunControl()

    def pause_at_once(progress: Progress) -> bool:
        control.pause()
        return True

    reporter = HookReporter(pause_at_once)
    worker, results = run_in_thread(spec, control, reporter)
    assert reporter.fired.wait(10)
    time.sleep(0.1)
    held = len(reporter.progress_updates)
    time.sleep(0.5)
    assert worker.is_alive() and not results
    assert len(reporter.progress_updates) == held
    control.resume()
    worker.join(30)
    assert results
    out = restore(spec, results[0].snapshot_id, tmp_path / "r")
    assert tree_signature(out / "src") == tree_signature(src)


def test_pause_inside_a_big_file_holds_there(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive_module, "SAFE_POINT_BYTES", 256 * 1024)
    src = small_source(tmp_path / "src")
    spec = BackupSpec.build([src], tmp_path / "dest")
    control = RunControl()

    def pause_in_big_file(progress: Progress) -> bool:
        if inside_big_file(progress):
            control.pause()
            return True
        return False

    reporter = HookReporter(pause_in_big_file)
    worker, results = run_in_thread(spec, control, reporter)
    assert reporter.fired.wait(10)
    time.sleep(0.5)
    assert worker.is_alive() and not results
    assert reporter.progress_updates[-1].bytes_done < BIG  # held part way through the file
    control.resume()
    worker.join(30)
    assert results and results[0].files == 3
    assert tree_signature(restore(spec, results[0].snapshot_id, tmp_path / "r") / "src"
                          ) == tree_signature(src)


def test_cancel_inside_a_big_file_leaves_nothing(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive_module, "SAFE_POINT_BYTES", 256 * 1024)
    src = small_source(tmp_path / "src")
    dest = tmp_path / "dest"
    spec = BackupSpec.build([src], dest)
    control = RunControl()

    def cancel_in_big_file(progress: Progress) -> bool:
        if inside_big_file(progress):
            control.cancel()
            return True
        return False

    reporter = HookReporter(cancel_in_big_file)
    with pytest.raises(Cancelled):
        backup(spec, reporter, control)
    assert reporter.fired.is_set()
    assert max(p.bytes_done for p in reporter.progress_updates) < BIG
    assert names(dest) == []
    assert ArchiveEngine().snapshots(spec) == []


def test_cancel_inside_a_restore_leaves_no_half_file(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive_module, "SAFE_POINT_BYTES", 256 * 1024)
    src = small_source(tmp_path / "src")
    spec = BackupSpec.build([src], tmp_path / "dest")
    sid = backup(spec).snapshot_id
    control = RunControl()

    def cancel_in_big_file(progress: Progress) -> bool:
        if inside_big_file(progress):
            control.cancel()
            return True
        return False

    reporter = HookReporter(cancel_in_big_file)
    with pytest.raises(Cancelled):
        ArchiveEngine().restore(spec, sid, tmp_path / "r", control, reporter)
    assert reporter.fired.is_set()
    assert os.listdir(tmp_path / "r" / "src") == []  # no temp file, no half big.bin


def test_interrupt_stops_and_removes_the_useless_partial(tmp_path: Path) -> None:
    src = small_source(tmp_path / "src")
    dest = tmp_path / "dest"
    spec = BackupSpec.build([src], dest)
    control = RunControl()

    def interrupt_on_archiving(progress: Progress) -> bool:
        if progress.phase == "archiving":
            control.interrupt()
            return True
        return False

    reporter = HookReporter(interrupt_on_archiving)
    with pytest.raises(Interrupted):
        backup(spec, reporter, control)
    # The archive engine restarts after an interruption, so the partial is no use.
    assert names(dest) == [] and reporter.checkpoints


KILLED_BACKUP = r"""
import json, sys, time
from engines.archive import ArchiveEngine
from engines.base import BackupSpec, RunControl

class Reporter:
    def progress(self, p):
        if p.current_file == "src/big.bin" and p.bytes_done > 0:
            print("writing", flush=True)
            time.sleep(600)  # part way through big.bin until the SIGKILL comes
        elif p.phase == "archiving":
            time.sleep(0.21)  # so the meter reports the first bytes at once
    def checkpoint(self, state):
        print(json.dumps(dict(state)), flush=True)
    def warning(self, message):
        pass

ArchiveEngine().backup(BackupSpec.build([sys.argv[1]], sys.argv[2]), RunControl(), Reporter())
"""


def test_killed_worker_leaves_an_unlisted_partial_then_a_new_run_succeeds(
        tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", large_bytes=BIG)
    dest = tmp_path / "dest"
    spec = BackupSpec.build([src], dest)
    first = backup(spec)  # a finished snapshot must survive the crash and the clean-up
    proc = subprocess.Popen([sys.executable, "-c", KILLED_BACKUP, str(src), str(dest)],
                            cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    try:
        checkpoint = json.loads(proc.stdout.readline())
        assert proc.stdout.readline().strip() == "writing"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
    assert (dest / checkpoint["partial"]).exists()
    assert [s.id for s in ArchiveEngine().snapshots(spec)] == [first.snapshot_id]
    result = ArchiveEngine().backup(spec, RunControl(), RecordingReporter(), resume=checkpoint)
    sid = result.snapshot_id
    assert names(dest) == sorted([f"{first.snapshot_id}.manifest.json",
                                  f"{first.snapshot_id}.tar.zst", f"{sid}.manifest.json",
                                  f"{sid}.tar.zst"])
    assert tree_signature(restore(spec, sid, tmp_path / "r") / "src") == tree_signature(src)


def test_discard_partial_removes_only_unfinished_work(tmp_path: Path) -> None:
    src = small_source(tmp_path / "src")
    dest = tmp_path / "dest"
    spec = BackupSpec.build([src], dest)
    kept = backup(spec).snapshot_id
    # A crash after the manifest was written but before the rename, and an older partial.
    (dest / "2026-01-01T000000Z.tar.zst.partial").write_bytes(b"half")
    (dest / "2026-01-01T000000Z.manifest.json").write_bytes(b"{}")
    (dest / "2025-01-01T000000Z.tar.gz.partial").write_bytes(b"older")
    (dest / "notes.txt").write_bytes(b"not ours")
    engine = ArchiveEngine()
    engine.discard_partial(spec, {"engine": "archive", "snapshot_id": "2026-01-01T000000Z",
                                  "partial": "2026-01-01T000000Z.tar.zst.partial"})
    assert "2026-01-01T000000Z.manifest.json" not in names(dest)
    assert "2025-01-01T000000Z.tar.gz.partial" in names(dest)  # another run's: not this one's
    engine.discard_partial(spec, {"partial": "../../etc/passwd.tar.zst.partial"})  # ignored
    engine.discard_partial(spec)
    assert names(dest) == sorted([f"{kept}.manifest.json", f"{kept}.tar.zst", "notes.txt"])


# --- verify, prune, delete --------------------------------------------------------------------


def flip(path: Path, offset: int) -> None:
    """Flip one bit of the byte at offset."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_verify_passes_then_catches_damage(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", large_bytes=BIG)
    dest = tmp_path / "dest"
    spec = BackupSpec.build([src], dest)
    sid = backup(spec).snapshot_id
    engine = ArchiveEngine()

    def check() -> tuple[bool, tuple[str, ...]]:
        verdict = engine.verify(spec, sid, RunControl(), RecordingReporter())
        return verdict.ok, verdict.problems

    good = engine.verify(spec, sid, RunControl(), RecordingReporter())
    assert good.ok and good.files_checked == backup_files(src)
    archive = dest / f"{sid}.tar.zst"
    pristine = archive.read_bytes()
    flip(archive, len(pristine) // 2)
    ok, problems = check()
    assert not ok and any("damaged" in p for p in problems), problems
    archive.write_bytes(pristine[:-3])  # only the end cut: all data still decompresses
    ok, problems = check()
    assert not ok and "ends early" in problems[0]
    archive.write_bytes(pristine)
    assert check() == (True, ())
    manifest_path = dest / f"{sid}.manifest.json"
    text = manifest_path.read_text()
    digest = blake3.blake3((src / "run.sh").read_bytes()).hexdigest()
    manifest_path.write_text(text.replace(digest, ("0" if digest[0] != "0" else "1")
                                          + digest[1:]))
    ok, problems = check()
    # The manifest's own checksum notices the edited hash before any file is compared.
    assert not ok and "does not match its checksum" in problems[0], problems
    manifest_path.write_text(text[: len(text) // 2])
    ok, problems = check()
    assert not ok and "manifest" in problems[0] and "damaged" in problems[0]
    assert [s.id for s in engine.snapshots(spec)] == [sid]  # listed, so it can be seen
    with pytest.raises(SnapshotNotFound):
        engine.verify(spec, "2001-01-01T000000Z", RunControl(), RecordingReporter())


def backup_files(src: Path) -> int:
    """How many regular files a backup of src holds."""
    return sum(1 for k in tree_signature(src).values() if k[0] == "file")


def test_prune_keeps_the_newest_and_delete_goes_manifest_first(tmp_path: Path) -> None:
    src = tmp_path / "src"
    spec = BackupSpec.build([src], tmp_path / "dest")
    ids = []
    for i in range(4):
        write(src / "a.txt", f"version {i}\n".encode(), mtime=BASE_MTIME + i)
        ids.append(backup(spec).snapshot_id)
    engine = ArchiveEngine()
    assert [s.id for s in engine.snapshots(spec)] == ids
    assert engine.prune(spec, Retention(keep_last=2)) == ids[:2]
    assert [s.id for s in engine.snapshots(spec)] == ids[2:]
    assert names(tmp_path / "dest") == sorted(f"{i}{suffix}" for i in ids[2:]
                                              for suffix in (".manifest.json", ".tar.zst"))
    out = restore(spec, ids[3], tmp_path / "r")
    assert (out / "src" / "a.txt").read_bytes() == b"version 3\n"
    with pytest.raises(SnapshotNotFound):
        engine.delete_snapshots(spec, [ids[2], "2001-01-01T000000Z"])
    assert len(engine.snapshots(spec)) == 2  # nothing deleted when one id is unknown
    # A delete that stopped half way (manifest gone, archive left) is not listed.
    (tmp_path / "dest" / f"{ids[2]}.manifest.json").unlink()
    assert [s.id for s in engine.snapshots(spec)] == [ids[3]]
    engine.delete_snapshots(spec, [ids[2]])  # and can be finished
    assert names(tmp_path / "dest") == [f"{ids[3]}.manifest.json", f"{ids[3]}.tar.zst"]


# --- a full disk ------------------------------------------------------------------------------

FULL_DISK_BACKUP = r"""
import json, os, sys
from engines.archive import ArchiveEngine
from engines.base import BackupSpec, EngineError, NullReporter, RunControl

if sys.argv[3] == "rlimit":
    import resource, signal
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
src, dest = sys.argv[1], sys.argv[2]
spec = BackupSpec.build([src], dest)
engine, out = ArchiveEngine(), {}
try:
    engine.backup(spec, RunControl(), NullReporter())
    out["error"] = None
except EngineError as err:
    out["error"], out["message"] = type(err).__name__, str(err)
out["left"], out["listed"] = sorted(os.listdir(dest)), len(engine.snapshots(spec))
os.unlink(os.path.join(src, "big.bin"))  # free the space the archive needed
sid = engine.backup(spec, RunControl(), NullReporter()).snapshot_id
out["verified"] = engine.verify(spec, sid, RunControl(), NullReporter()).ok
print(json.dumps(out))
"""


def isolated_tmpfs_prefix(probe: Path) -> list[str] | None:
    """A command prefix that runs its command with a private 1 MB tmpfs mounted at the
    path given as $0, in a mount namespace of its own (no clean-up needed), or None."""
    shell = ["sh", "-c", 'mount -t tmpfs -o size=1m tmpfs "$0" && exec "$@"']
    for unshare in (["unshare", "--mount"], ["unshare", "--user", "--map-root-user", "--mount"]):
        try:
            ok = subprocess.run([*unshare, *shell, str(probe), "true"], capture_output=True,
                                timeout=10, check=False).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if ok:
            return [*unshare, *shell]
    return None


def run_full_disk(prefix: list[str], src: Path, dest: Path, mode: str) -> dict[str, Any]:
    """Run FULL_DISK_BACKUP in its own process and return what it printed."""
    done = subprocess.run([*prefix, sys.executable, "-c", FULL_DISK_BACKUP, str(src), str(dest),
                           mode], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_a_full_disk_fails_clearly_and_leaves_nothing(tmp_path: Path) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    prefix = isolated_tmpfs_prefix(mount)
    if prefix is None:
        pytest.skip("cannot mount a private tmpfs here (needs unshare and mount rights)")
    src = small_source(tmp_path / "src")  # 2 MB of random bytes for a 1 MB file system
    out = run_full_disk([*prefix, str(mount)], src, mount / "dest", "tmpfs")
    assert out["error"] == "DiskFull" and "is full (No space left on device)" in out["message"]
    assert out["left"] == [] and out["listed"] == 0
    assert out["verified"] is True


def test_a_file_size_limit_fails_like_a_full_disk(tmp_path: Path) -> None:
    src = small_source(tmp_path / "src")
    out = run_full_disk([], src, tmp_path / "dest", "rlimit")
    assert out["error"] == "DiskFull" and "File too large" in out["message"]
    assert out["left"] == [] and out["listed"] == 0
    assert out["verified"] is True

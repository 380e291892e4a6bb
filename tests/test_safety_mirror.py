"""Issue 12, mirror engine and tree restores: what a person with one copy would expect.

Two jobs in one destination keep apart, names at the 255-byte limit, sparse files, a
change that kept size and mtime, names that are not UTF-8, and owner, hard links,
extended attributes and ACLs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engines.base import (
    BackupResult,
    BackupSpec,
    DiskFull,
    Interrupted,
    RunControl,
    SnapshotNotFound,
)
from engines.filecopy import TMP_LEN, restore_tmp
from engines.manifest import Manifest, sha256_file
from engines.mirror import MirrorEngine
from engines.mirror.journal import Journal as _Journal
from engines.rsync import RsyncEngine
from engines.treestore import manifest_path
from models.retention import Retention
from tests.engine_helpers import RecordingReporter, tree_signature, write
from tests.fs_helpers import IS_ROOT, small_tmpfs


def backup(spec: BackupSpec) -> str:
    """Back up with the mirror engine; return the snapshot id."""
    return MirrorEngine().backup(spec, RunControl(), RecordingReporter()).snapshot_id


def restore(spec: BackupSpec, snap_id: str, target: Path) -> RecordingReporter:
    """Restore a whole snapshot into target."""
    reporter = RecordingReporter()
    MirrorEngine().restore(spec, snap_id, target, RunControl(), reporter)
    return reporter


# --- item 1: two jobs pointed at one destination by hand -----------------------------------


def test_two_jobs_in_one_destination_never_see_or_prune_each_other(tmp_path: Path) -> None:
    dest = tmp_path / "shared"
    a_src, b_src = tmp_path / "a" / "data", tmp_path / "b" / "data"
    write(a_src / "only-in-a.txt", b"A's file\n")
    write(b_src / "only-in-b.txt", b"B's file\n")
    job_a = BackupSpec.build([a_src], dest, job_id="job-a")
    job_b = BackupSpec.build([b_src], dest, job_id="job-b")
    engine = MirrorEngine()
    a_snap = backup(job_a)
    b_snap = backup(job_b)
    assert engine.latest(job_b) is not None and engine.latest(job_b)[0] == b_snap  # type: ignore[index]
    # B's retention (keep 1) sees only B's snapshot, so A's only snapshot survives it.
    assert engine.prune(job_b, Retention(keep_last=1)) == []
    assert [s.id for s in engine.snapshots(job_a)] == [a_snap]
    assert [s.id for s in engine.snapshots(job_b)] == [b_snap]
    # A cannot restore, verify or delete B's snapshot, even by naming it.
    with pytest.raises(SnapshotNotFound):
        engine.restore(job_a, b_snap, tmp_path / "out-x", RunControl(), RecordingReporter())
    with pytest.raises(SnapshotNotFound):
        engine.delete_snapshots(job_a, [b_snap])
    restore(job_a, a_snap, tmp_path / "out-a")
    assert (tmp_path / "out-a" / "data" / "only-in-a.txt").read_bytes() == b"A's file\n"
    assert not (tmp_path / "out-a" / "data" / "only-in-b.txt").exists()
    # A second run of B prunes B's older snapshot only.
    b_second = backup(job_b)
    assert engine.prune(job_b, Retention(keep_last=1)) == [b_snap]
    assert [s.id for s in engine.snapshots(job_a)] == [a_snap]
    assert [s.id for s in engine.snapshots(job_b)] == [b_second]
    assert Manifest.read(manifest_path(dest, a_snap)).job_id == "job-a"


def test_snapshots_from_before_job_ids_are_still_listed(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "f.txt", b"old\n")
    old = backup(BackupSpec.build([src], tmp_path / "dest"))  # no job: as older versions
    assert "job_id" not in json.loads(manifest_path(tmp_path / "dest", old).read_bytes())
    job = BackupSpec.build([src], tmp_path / "dest", job_id="job-1")
    assert [s.id for s in MirrorEngine().snapshots(job)] == [old]
    new = backup(job)
    assert [s.id for s in MirrorEngine().snapshots(job)] == [old, new]
    # The old snapshot is the hard-link base of the new one: nothing copied twice.
    assert MirrorEngine().latest(job)[0] == new  # type: ignore[index]


# --- item 4: names at the 255-byte limit -----------------------------------------------------


def test_names_of_248_to_255_bytes_back_up_and_restore(tmp_path: Path) -> None:
    src = tmp_path / "src"
    cjk = "漢" * 85  # 255 bytes in UTF-8
    assert len(cjk.encode()) == 255
    names = [cjk, "a" * 248, "b" * 255, "漢" * 82 + "ab"]  # 255, 248, 255, 248 bytes
    for i, name in enumerate(names):
        write(src / name, f"content {i}\n".encode())
    (src / ("d" * 255)).mkdir()
    write(src / ("d" * 255) / cjk, b"nested\n")
    os.symlink(cjk, src / ("l" * 255))
    spec = BackupSpec.build([src], tmp_path / "dest")
    first = backup(spec)
    write(src / cjk, b"changed, so copied again\n", mtime=1_800_000_000)
    second = backup(spec)
    out = tmp_path / "out"
    restore(spec, second, out)
    assert tree_signature(out / "src") == tree_signature(src)
    assert MirrorEngine().verify(spec, first, RunControl(), RecordingReporter()).ok
    assert len(".bm-00000000") == TMP_LEN


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")
def test_rsync_snapshots_with_255_byte_names_restore_too(tmp_path: Path) -> None:
    # rsync restores through the same tree code as mirror.
    src = tmp_path / "src"
    write(src / ("漢" * 85), b"long name\n")
    os.symlink("x", src / ("l" * 255))
    spec = BackupSpec.build([src], tmp_path / "dest")
    engine = RsyncEngine()
    snap = engine.backup(spec, RunControl(), RecordingReporter()).snapshot_id
    engine.restore(spec, snap, tmp_path / "out", RunControl(), RecordingReporter())
    assert tree_signature(tmp_path / "out" / "src") == tree_signature(src)


# --- item 6: sparse files --------------------------------------------------------------------


def test_a_10_gib_sparse_file_backs_up_and_restores_with_its_holes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    sparse = src / "disk.img"
    with open(sparse, "wb") as fh:
        fh.truncate(10 << 30)
        fh.seek(5 << 30)
        fh.write(b"hello!")
    with small_tmpfs(tmp_path / "dest", "64m") as dest, \
            small_tmpfs(tmp_path / "target", "64m") as target:
        spec = BackupSpec.build([src], dest)
        snap = backup(spec)  # a non-sparse copy would fail: disk full at 64 MiB
        copy = dest / snap / "src" / "disk.img"
        assert copy.stat().st_size == 10 << 30
        assert copy.stat().st_blocks * 512 < 1 << 20
        restore(spec, snap, target)
        restored = target / "src" / "disk.img"
        assert restored.stat().st_size == 10 << 30
        assert restored.stat().st_blocks * 512 < 1 << 20
        with open(restored, "rb") as fh:
            fh.seek((5 << 30) - 2)
            assert fh.read(10) == b"\0\0hello!\0\0"


# --- item 7: a change that kept size and mtime -----------------------------------------------


@pytest.mark.parametrize("checksum", [False, True])
def test_changed_content_with_the_same_size_and_mtime_is_backed_up(
        tmp_path: Path, checksum: bool) -> None:
    src = tmp_path / "src"
    write(src / "ledger.txt", b"balance: 100\n")
    write(src / "same.txt", b"untouched\n")
    spec = BackupSpec.build([src], tmp_path / "dest", options={"checksum": checksum})
    first = backup(spec)
    before = (src / "ledger.txt").stat()
    (src / "ledger.txt").write_bytes(b"balance: 999\n")  # same size
    os.utime(src / "ledger.txt", ns=(before.st_atime_ns, before.st_mtime_ns))
    second = backup(spec)
    snap = spec.destination / second / "src"
    assert (snap / "ledger.txt").read_bytes() == b"balance: 999\n"
    # The unchanged file is still shared with the first snapshot, not copied again.
    assert (snap / "same.txt").stat().st_ino == \
        (spec.destination / first / "src" / "same.txt").stat().st_ino
    out = tmp_path / "out"
    restore(spec, second, out)
    assert (out / "src" / "ledger.txt").read_bytes() == b"balance: 999\n"


def test_a_snapshot_from_before_ctime_was_recorded_is_not_trusted(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "f.txt", b"same size\n")
    spec = BackupSpec.build([src], tmp_path / "dest")
    first = backup(spec)
    # Rewrite the manifest as older versions wrote it: no ctime, inode or owner.
    path = manifest_path(spec.destination, first)
    old = Manifest.read(path)
    old.entries = [{k: v for k, v in e.items() if k not in ("ctime_ns", "ino", "dev")}
                   for e in old.entries]
    old.write(path)
    second = backup(spec)
    copies = [spec.destination / s / "src" / "f.txt" for s in (first, second)]
    assert copies[0].stat().st_ino != copies[1].stat().st_ino  # copied, not trusted
    third = backup(spec)  # now recorded: linked
    assert (spec.destination / third / "src" / "f.txt").stat().st_ino == \
        copies[1].stat().st_ino


def test_a_resumed_run_recopies_a_file_changed_since_it_was_copied(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(20):
        write(src / f"f{i:02d}.txt", b"version 1 %02d\n" % i)
    checkpoints: list[dict[str, object]] = []

    class InterruptAt(RunControl):
        """Interrupts at the 15th safe point, with some files done (one thread)."""

        calls = 0

        def safe_point(self) -> None:
            self.calls += 1
            if self.calls == 15:
                self.interrupt()
            super().safe_point()

    class Keep(RecordingReporter):
        def checkpoint(self, state: object) -> None:
            checkpoints.append(dict(state))  # type: ignore[call-overload]

    spec = BackupSpec.build([src], tmp_path / "dest", options={"threads": 1})
    with pytest.raises(Interrupted):
        MirrorEngine().backup(spec, InterruptAt(), Keep())
    partial = spec.destination / f"{checkpoints[0]['snapshot_id']}.partial" / "src"
    assert (partial / "f00.txt").read_bytes() == b"version 1 00\n"
    before = (src / "f00.txt").stat()
    (src / "f00.txt").write_bytes(b"version 2 00\n")  # same size, mtime put back
    os.utime(src / "f00.txt", ns=(before.st_atime_ns, before.st_mtime_ns))
    result = MirrorEngine().backup(spec, RunControl(), RecordingReporter(),
                                   resume=checkpoints[-1])
    final = spec.destination / result.snapshot_id / "src"
    assert (final / "f00.txt").read_bytes() == b"version 2 00\n"
    assert MirrorEngine().verify(spec, result.snapshot_id, RunControl(),
                                 RecordingReporter()).ok


# --- item 9: names that are not UTF-8, and what is still skipped -------------------------------


def test_names_that_are_not_utf8_are_backed_up_and_restored_byte_for_byte(
        tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    raw = os.fsencode(src)
    with open(raw + b"/caf\xe9.txt", "wb") as fh:  # latin-1, as old systems wrote it
        fh.write(b"latin-1 name\n")
    os.mkdir(raw + b"/\xff\xfe dir")
    with open(raw + b"/\xff\xfe dir/inner\x80.bin", "wb") as fh:
        fh.write(b"inside\n")
    os.symlink(b"caf\xe9.txt", raw + b"/link\xe9")
    os.mkfifo(raw + b"/pipe\xe9")
    reporter = RecordingReporter()
    spec = BackupSpec.build([src], tmp_path / "dest")
    result = MirrorEngine().backup(spec, RunControl(), reporter)
    assert result.files == 2
    # The FIFO is the one thing skipped, said in words, naming it; the text is valid UTF-8.
    assert len(result.warnings) == 1
    assert "pipe\\xe9" in result.warnings[0] and "named pipe" in result.warnings[0]
    result.warnings[0].encode("utf-8")
    manifest = Manifest.read(manifest_path(spec.destination, result.snapshot_id))
    assert os.fsdecode(b"src/caf\xe9.txt") in manifest.by_path()
    assert MirrorEngine().verify(spec, result.snapshot_id, RunControl(), RecordingReporter()).ok
    out = tmp_path / "out"
    restore(spec, result.snapshot_id, out)
    got = os.fsencode(out / "src")
    assert sorted(os.listdir(got)) == [b"caf\xe9.txt", b"link\xe9", b"\xff\xfe dir"]
    with open(got + b"/\xff\xfe dir/inner\x80.bin", "rb") as fh:
        assert fh.read() == b"inside\n"
    assert os.readlink(got + b"/link\xe9") == b"caf\xe9.txt"


@pytest.mark.skipif(not IS_ROOT, reason="needs root to run the backup as another user")
def test_an_unreadable_folder_and_file_are_warnings_that_name_them(tmp_path: Path) -> None:
    # The backup runs in a child that drops to `nobody`, as a non-root server would.
    base = Path(tempfile.mkdtemp(prefix="bm-unreadable-"))
    try:
        base.chmod(0o755)
        src, dest = base / "src", base / "dest"
        write(src / "ok.txt", b"fine\n")
        write(src / "secret.txt", b"root only\n", mode=0o600)
        write(src / "locked" / "inside.txt", b"root only\n")
        (src / "locked").chmod(0o700)
        dest.mkdir()
        os.chown(dest, NOBODY, NOBODY)
        spec = BackupSpec.build([src], dest, job_id="j")
        said = _as_nobody(lambda: MirrorEngine().backup(spec, RunControl(),
                                                       RecordingReporter()))
        assert said.get("error") is None, said
        assert said["files"] == 1
        assert sorted(said["warnings"]) == [
            f"{src}/secret.txt cannot be read (Permission denied); skipped",
            f"folder {src}/locked cannot be read (Permission denied); its contents were "
            "skipped"]
    finally:
        shutil.rmtree(base, ignore_errors=True)


NOBODY = 65534


def _as_nobody(run: Callable[[], BackupResult]) -> dict[str, Any]:
    """Run a backup in a forked child as uid/gid 65534; its files and warnings, or error."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
            result = run()
            out = {"files": result.files, "warnings": list(result.warnings)}
        except BaseException as err:  # anything at all is reported to the parent
            out = {"error": repr(err)}
        os.write(write_end, json.dumps(out).encode())
        os._exit(0)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 1 << 16):
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(pid, 0)
    return dict(json.loads(b"".join(chunks)))


# --- item 10: owner, hard links, extended attributes, ACLs -------------------------------------


def _xattrs_supported(path: Path) -> bool:
    try:
        os.setxattr(path, "user.probe", b"1")
    except OSError:
        return False
    os.removexattr(path, "user.probe")
    return True


@pytest.mark.skipif(not IS_ROOT, reason="keeping another user's ownership needs root "
                    "(CI runs as root)")
def test_owner_hard_links_xattrs_and_acls_survive_backup_and_restore(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "owned.txt", b"someone else's\n")
    os.chown(src / "owned.txt", 1234, 5678)
    write(src / "a.txt", b"one inode, two names\n")
    (src / "sub").mkdir()
    os.link(src / "a.txt", src / "sub" / "b.txt")
    if not _xattrs_supported(src / "a.txt"):
        pytest.skip("this filesystem has no user extended attributes")
    os.setxattr(src / "a.txt", "user.test", b"kept \x00 binary")
    setfacl = shutil.which("setfacl")
    if setfacl:
        subprocess.run([setfacl, "-m", "u:1234:r--", str(src / "owned.txt")], check=True)
        subprocess.run([setfacl, "-d", "-m", "g:5678:rwx", str(src / "sub")], check=True)
    os.utime(src / "sub", (1_700_000_000, 1_700_000_000))
    spec = BackupSpec.build([src], tmp_path / "dest")
    first = backup(spec)
    second = backup(spec)  # the unchanged run links everything: the same must hold
    out = tmp_path / "out"
    restore(spec, second, out)
    for root in (spec.destination / first / "src", spec.destination / second / "src",
                 out / "src"):
        owned = (root / "owned.txt").stat()
        assert (owned.st_uid, owned.st_gid) == (1234, 5678)
        a, b = (root / "a.txt").stat(), (root / "sub" / "b.txt").stat()
        assert a.st_ino == b.st_ino and a.st_nlink >= 2
        assert os.getxattr(root / "a.txt", "user.test") == b"kept \x00 binary"
        if setfacl:
            acl = os.getxattr(root / "owned.txt", "system.posix_acl_access")
            assert acl == os.getxattr(src / "owned.txt", "system.posix_acl_access")
            default = os.getxattr(root / "sub", "system.posix_acl_default")
            assert default == os.getxattr(src / "sub", "system.posix_acl_default")
            assert stat.S_IMODE((root / "owned.txt").stat().st_mode) == \
                stat.S_IMODE((src / "owned.txt").stat().st_mode)
    assert (spec.destination / first / "src" / "a.txt").stat().st_ino == \
        (spec.destination / second / "src" / "a.txt").stat().st_ino
    for snap in (first, second):
        assert MirrorEngine().verify(spec, snap, RunControl(), RecordingReporter()).ok
    assert tree_signature(out / "src") == tree_signature(src)


def test_the_resume_journal_ignores_a_torn_last_line_and_odd_names(tmp_path: Path) -> None:
    path = tmp_path / "x.journal"
    digest = "0" * 64
    odd = "src/a\u2028b" + os.fsdecode(b"\xff")
    path.write_bytes(f"5\t7\t{digest}\t{odd}\n".encode("utf-8", "surrogateescape")
                     + f"5\t7\t{digest}\tsrc/abc".encode()[:-1])  # killed mid-line
    journal = _Journal(path)
    journal.close()
    assert journal.done == {odd: (5, 7, digest)}


def test_a_restore_that_runs_out_of_space_leaves_no_temp_file(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "a-small.txt", b"fits\n")
    write(src / "b-big.bin", os.urandom(6 << 20))
    spec = BackupSpec.build([src], tmp_path / "dest")
    snap = backup(spec)
    with small_tmpfs(tmp_path / "target", "4m") as target:
        with pytest.raises(DiskFull, match="is full"):
            restore(spec, snap, target)
        left = [n for _d, _s, names in os.walk(target) for n in names]
        assert left == ["a-small.txt"]


def test_hashing_a_sparse_file_from_its_holes_gives_the_plain_digest(tmp_path: Path) -> None:
    path = tmp_path / "holey"
    with open(path, "wb") as fh:
        fh.truncate(64 << 20)  # a trailing hole too
        fh.seek(3 << 20)
        fh.write(os.urandom(100_000))
        fh.seek((40 << 20) + 17)
        fh.write(b"x")
    assert path.stat().st_blocks * 512 < path.stat().st_size
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_next_backup_finishes_a_delete_a_kill_cut_short(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "f.txt", b"data\n")
    spec = BackupSpec.build([src], tmp_path / "dest", job_id="j")
    first = backup(spec)
    dest = spec.destination
    os.replace(dest / first, dest / f"{first}.deleting")  # killed right after the rename
    # Something else of another id with a manifest (an archive put here by hand) stays.
    (dest / "2001-01-01T000000Z.tar.zst").write_bytes(b"not ours")
    (dest / "2001-01-01T000000Z.manifest.json").write_bytes(b"{}")
    second = backup(spec)
    assert sorted(os.listdir(dest)) == sorted([
        second, f"{second}.manifest.json", "2001-01-01T000000Z.tar.zst",
        "2001-01-01T000000Z.manifest.json"])


def test_restoring_again_removes_what_a_killed_restore_left(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "f.txt", b"data\n")
    spec = BackupSpec.build([src], tmp_path / "dest")
    snap = backup(spec)
    out = tmp_path / "out"
    restore(spec, snap, out)
    # A kill while f.txt was written leaves it under its temporary name.
    (out / "src" / "f.txt").rename(restore_tmp(out / "src" / "f.txt"))
    MirrorEngine().restore(spec, snap, out, RunControl(), RecordingReporter(), overwrite=True)
    assert sorted(os.listdir(out / "src")) == ["f.txt"]

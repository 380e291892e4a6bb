"""Issue 12, archive engine: what a person with one copy would expect of a .tar.zst backup.

Two jobs in one destination keep apart, names at the 255-byte limit, sparse files, names
that are not UTF-8, owner, hard links, extended attributes and ACLs, and a restore
killed part way.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from engines.archive import ArchiveEngine
from engines.archive.target import TargetWriter, temp_name
from engines.base import (
    BackupResult,
    BackupSpec,
    NullReporter,
    Progress,
    RunControl,
    SnapshotNotFound,
)
from engines.manifest import Manifest
from models.retention import Retention
from tests.cli_helpers import REPO
from tests.engine_helpers import RecordingReporter, tree_signature, write
from tests.fs_helpers import needs_root, small_tmpfs

# Big enough that writing it out would overflow the 16 MiB tmpfs many times over; 10 GiB
# works the same and took 6.6 s to back up and 10.4 s to restore here, too long for CI.
SPARSE_SIZE = 2 << 30
TEMP_NAME = re.compile(r"\.bm-[0-9a-f]{8}|\.restore-[0-9a-f]{16}\.tmp")


def backup(spec: BackupSpec) -> BackupResult:
    """Run one archive backup to completion."""
    return ArchiveEngine().backup(spec, RunControl(), RecordingReporter())


def restore(spec: BackupSpec, snap_id: str, target: Path, path: str | None = None,
            overwrite: bool = False) -> RecordingReporter:
    """Restore a snapshot (or one path in it) into target."""
    reporter = RecordingReporter()
    ArchiveEngine().restore(spec, snap_id, target, RunControl(), reporter, path, overwrite)
    return reporter


def verify_ok(spec: BackupSpec, snap_id: str) -> None:
    """Verify reads the whole archive back and finds nothing wrong."""
    result = ArchiveEngine().verify(spec, snap_id, RunControl(), RecordingReporter())
    assert result.ok, result.problems


def temp_files(root: Path) -> list[str]:
    """Every name under root that looks like a restore's temporary file."""
    return [os.path.join(d, n) for d, dirs, files in os.walk(root) for n in files + dirs
            if TEMP_NAME.fullmatch(n)]


# --- item 1: two jobs pointed at one destination by hand -----------------------------------


def test_two_jobs_in_one_destination_never_see_or_prune_each_other(tmp_path: Path) -> None:
    dest = tmp_path / "shared"
    a_src, b_src = tmp_path / "a" / "data", tmp_path / "b" / "data"
    write(a_src / "only-in-a.txt", b"A's file\n")
    write(b_src / "only-in-b.txt", b"B's file\n")
    job_a = BackupSpec.build([a_src], dest, job_id="job-a")
    job_b = BackupSpec.build([b_src], dest, job_id="job-b")
    engine = ArchiveEngine()
    a_snap = backup(job_a).snapshot_id
    b_snap = backup(job_b).snapshot_id
    # B's retention (keep 1) sees only B's archive, so A's only archive survives it.
    assert engine.prune(job_b, Retention(keep_last=1)) == []
    assert engine.prune(job_a, Retention(keep_last=1)) == []
    assert [s.id for s in engine.snapshots(job_a)] == [a_snap]
    assert [s.id for s in engine.snapshots(job_b)] == [b_snap]
    # A cannot restore, verify or delete B's archive, even by naming it.
    with pytest.raises(SnapshotNotFound):
        restore(job_a, b_snap, tmp_path / "out-x")
    with pytest.raises(SnapshotNotFound):
        engine.verify(job_a, b_snap, RunControl(), RecordingReporter())
    with pytest.raises(SnapshotNotFound):
        engine.delete_snapshots(job_a, [b_snap])
    restore(job_a, a_snap, tmp_path / "out-a")
    assert (tmp_path / "out-a" / "data" / "only-in-a.txt").read_bytes() == b"A's file\n"
    assert not (tmp_path / "out-a" / "data" / "only-in-b.txt").exists()
    # A second run of B prunes B's older archive only.
    b_second = backup(job_b).snapshot_id
    assert engine.prune(job_b, Retention(keep_last=1)) == [b_snap]
    assert [s.id for s in engine.snapshots(job_a)] == [a_snap]
    assert [s.id for s in engine.snapshots(job_b)] == [b_second]
    assert Manifest.read(dest / f"{a_snap}.manifest.json").job_id == "job-a"
    # Outside any job (the CLI, an old caller) everything is listed, as before.
    everything = BackupSpec.build([a_src], dest)
    assert {s.id for s in engine.snapshots(everything)} == {a_snap, b_second}


class _PauseWhenArchiving(NullReporter):
    """Pauses its run once the archive is about to be written (the partial exists next)."""

    def __init__(self, control: RunControl) -> None:
        self.control = control
        self.paused = False

    def progress(self, progress: Progress) -> None:
        if progress.phase == "archiving" and not self.paused:  # once: the test resumes it
            self.paused = True
            self.control.pause()


def test_discarding_without_a_checkpoint_spares_another_jobs_running_archive(
        tmp_path: Path) -> None:
    dest = tmp_path / "shared"
    write(tmp_path / "a" / "f.txt", b"A\n")
    job_a = BackupSpec.build([tmp_path / "a"], dest, job_id="job-a")
    job_b = BackupSpec.build([tmp_path / "a"], dest, job_id="job-b")
    write(dest / "2020-01-01T000000Z.tar.zst.partial", b"left by a crash")
    control = RunControl()
    results: list[BackupResult] = []
    runner = threading.Thread(target=lambda: results.append(
        ArchiveEngine().backup(job_a, control, _PauseWhenArchiving(control))))
    runner.start()
    try:
        deadline = time.monotonic() + 10
        while len(list(dest.glob("*.partial"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        ArchiveEngine().discard_partial(job_b, None)  # B's crashed run had no checkpoint
        # The crash's leftover went; A's archive being written stayed.
        assert [p.name for p in dest.glob("*.partial")] != [] and \
            not (dest / "2020-01-01T000000Z.tar.zst.partial").exists()
    finally:
        control.resume()
        runner.join(timeout=30)
    assert [s.id for s in ArchiveEngine().snapshots(job_a)] == [results[0].snapshot_id]
    verify_ok(job_a, results[0].snapshot_id)


def test_archives_from_before_job_ids_are_still_the_jobs(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "f.txt", b"old\n")
    old = backup(BackupSpec.build([src], tmp_path / "dest")).snapshot_id
    assert "job_id" not in (tmp_path / "dest" / f"{old}.manifest.json").read_text()
    job = BackupSpec.build([src], tmp_path / "dest", job_id="job-1")
    new = backup(job).snapshot_id
    assert [s.id for s in ArchiveEngine().snapshots(job)] == [old, new]


# --- item 4: names at the 255-byte limit -----------------------------------------------------


def test_a_255_byte_name_backs_up_restores_and_verifies(tmp_path: Path) -> None:
    long_name = "日" * 85  # 255 bytes in UTF-8, the most a Linux name may have
    assert len(os.fsencode(long_name)) == 255
    src = tmp_path / "src"
    write(src / long_name / long_name, b"deep\n")
    write(src / (long_name[:-1] + "x"), b"flat\n")  # 255 bytes too, beside it
    spec = BackupSpec.build([src], tmp_path / "dest")
    result = backup(spec)
    assert result.warnings == ()
    verify_ok(spec, result.snapshot_id)
    restore(spec, result.snapshot_id, tmp_path / "out")
    assert tree_signature(tmp_path / "out" / "src") == tree_signature(src)
    # Overwriting goes through the temporary name too.
    restore(spec, result.snapshot_id, tmp_path / "out", overwrite=True)
    assert tree_signature(tmp_path / "out" / "src") == tree_signature(src)
    assert len(temp_name(long_name)) == 12 and temp_files(tmp_path / "out") == []


# --- item 6: sparse files ---------------------------------------------------------------------


def _bytes_read() -> int:
    """Bytes this process has read through read system calls so far (Linux)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


@needs_root
def test_a_sparse_file_restores_sparse_onto_a_small_filesystem(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "disk.img", "wb") as fh:
        fh.truncate(SPARSE_SIZE)
        fh.seek(SPARSE_SIZE // 2)
        fh.write(b"hello\n")
    spec = BackupSpec.build([src], tmp_path / "dest")
    read_before = _bytes_read()
    result = backup(spec)
    assert _bytes_read() - read_before < 64 << 20  # the holes were not read
    archive_bytes = sum(p.stat().st_size for p in (tmp_path / "dest").iterdir())
    assert archive_bytes < 4 << 20  # zeros compress to nothing
    with small_tmpfs(tmp_path / "small", "16m") as small:
        restore(spec, result.snapshot_id, small / "out")
        out = small / "out" / "src" / "disk.img"
        st = out.stat()
        assert st.st_size == SPARSE_SIZE
        assert st.st_blocks * 512 <= 1 << 20  # a few blocks, not 2 GiB
        with open(out, "rb") as fh:
            fh.seek(SPARSE_SIZE // 2 - 2)
            assert fh.read(8) == b"\0\0hello\n"


# --- item 9: names that are not UTF-8, and what is still skipped ------------------------------


def test_a_name_that_is_not_utf8_round_trips_and_a_fifo_is_a_warning(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "plain.txt", b"plain\n")
    raw_src = os.fsencode(src)
    with open(raw_src + b"/caf\xe9.txt", "wb") as fh:
        fh.write(b"latin-1 name\n")
    os.mkdir(raw_src + b"/r\xe9pertoire")
    with open(raw_src + b"/r\xe9pertoire/inner", "wb") as fh:
        fh.write(b"inside\n")
    os.mkfifo(src / "pipe")
    spec = BackupSpec.build([src], tmp_path / "dest")
    result = backup(spec)
    assert len(result.warnings) == 1 and "pipe" in result.warnings[0]
    assert "FIFO" in result.warnings[0]
    verify_ok(spec, result.snapshot_id)
    restore(spec, result.snapshot_id, tmp_path / "out")
    raw_out = os.fsencode(tmp_path / "out" / "src")
    assert sorted(os.listdir(raw_out)) == [b"caf\xe9.txt", b"plain.txt", b"r\xe9pertoire"]
    with open(raw_out + b"/caf\xe9.txt", "rb") as fh:
        assert fh.read() == b"latin-1 name\n"
    with open(raw_out + b"/r\xe9pertoire/inner", "rb") as fh:
        assert fh.read() == b"inside\n"
    # A sub-path restore by its (surrogate-escaped) name works too.
    restore(spec, result.snapshot_id, tmp_path / "one", path="src/" + os.fsdecode(b"caf\xe9.txt"))
    assert os.listdir(os.fsencode(tmp_path / "one" / "src")) == [b"caf\xe9.txt"]


# --- item 10: owner, hard links, extended attributes, ACLs -----------------------------------


def _xattrs_supported(path: Path) -> bool:
    try:
        os.setxattr(path, "user.probe", b"1")
    except OSError:
        return False
    os.removexattr(path, "user.probe")
    return True


@needs_root
def test_owner_hard_links_xattrs_and_acls_are_kept(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "docs" / "report.txt", b"owned by someone else\n", mode=0o640)
    write(src / "setuid-tool", b"#!/bin/sh\n", mode=0o4755)
    os.link(src / "docs" / "report.txt", src / "report-link.txt")
    os.link(src / "docs" / "report.txt", src / "zz-second-link.txt")
    if not _xattrs_supported(src / "docs" / "report.txt"):
        pytest.skip("the test filesystem has no user extended attributes")
    os.setxattr(src / "docs" / "report.txt", "user.note", b"\xe8\x03 binary value")
    os.setxattr(src / "docs", "user.folder", b"dir attr")
    subprocess.run(["setfacl", "-m", "u:1234:r", str(src / "setuid-tool")], check=True)
    for path in (src / "docs" / "report.txt", src / "docs", src / "setuid-tool"):
        os.lchown(path, 1234, 2345)
    os.chmod(src / "setuid-tool", 0o4755)  # chown cleared the setuid bit
    acl = os.getxattr(src / "setuid-tool", "system.posix_acl_access")
    spec = BackupSpec.build([src], tmp_path / "dest")
    result = backup(spec)
    assert result.warnings == ()
    verify_ok(spec, result.snapshot_id)
    manifest = Manifest.read(tmp_path / "dest" / f"{result.snapshot_id}.manifest.json")
    by_path = manifest.by_path()
    assert by_path["src/report-link.txt"]["link"] == "src/docs/report.txt"
    assert by_path["src/docs/report.txt"]["uid"] == 1234

    out = tmp_path / "out"
    restore(spec, result.snapshot_id, out)
    report = out / "src" / "docs" / "report.txt"
    st = report.stat()
    assert (st.st_uid, st.st_gid, st.st_nlink) == (1234, 2345, 3)
    assert (out / "src" / "report-link.txt").stat().st_ino == st.st_ino
    assert (out / "src" / "zz-second-link.txt").stat().st_ino == st.st_ino
    assert os.getxattr(report, "user.note") == b"\xe8\x03 binary value"
    assert os.getxattr(out / "src" / "docs", "user.folder") == b"dir attr"
    tool = (out / "src" / "setuid-tool").stat()
    assert (tool.st_uid, tool.st_gid, tool.st_mode & 0o7777) == (1234, 2345, 0o4755)
    assert os.getxattr(out / "src" / "setuid-tool", "system.posix_acl_access") == acl
    assert tree_signature(out / "src") == tree_signature(src)

    # A sub-path holding only the later names still gets the content, linked once.
    restore(spec, result.snapshot_id, tmp_path / "part", path="src/report-link.txt")
    part = tmp_path / "part" / "src" / "report-link.txt"
    assert part.read_bytes() == b"owned by someone else\n"

    # GNU tar reads the same archive: owner, hard links and attributes included.
    gnu = tmp_path / "gnu"
    gnu.mkdir()
    archive = tmp_path / "dest" / f"{result.snapshot_id}.tar.zst"
    subprocess.run(["tar", "--zstd", "--xattrs", "--xattrs-include=*", "--acls",
                    "--same-owner", "-xpf", str(archive), "-C", str(gnu)], check=True,
                   timeout=60)
    g = (gnu / "src" / "docs" / "report.txt").stat()
    assert (g.st_uid, g.st_gid, g.st_nlink) == (1234, 2345, 3)
    assert os.getxattr(gnu / "src" / "docs" / "report.txt", "user.note") == \
        b"\xe8\x03 binary value"
    assert tree_signature(gnu / "src") == tree_signature(src)


_AS_NOBODY = r"""
import sys
from pathlib import Path
from engines.archive import ArchiveEngine
from engines.base import BackupSpec, NullReporter, RunControl

src, dest, target, snap_id = sys.argv[1:5]
ArchiveEngine().restore(BackupSpec.build([Path(src)], Path(dest)), snap_id, Path(target),
                        RunControl(), NullReporter())
"""


@needs_root
def test_a_server_that_may_not_chown_still_restores(tmp_path: Path) -> None:
    # As a server without CAP_CHOWN (a plain user, through setpriv): the restore succeeds,
    # the files are the server's, and a setuid file does not come back setuid.
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    shared = Path(tempfile.mkdtemp(prefix="bm-nochown-"))
    try:
        shared.chmod(0o755)
        src = shared / "src"
        write(src / "tool", b"#!/bin/sh\n", mode=0o4755)
        os.lchown(src / "tool", 1234, 2345)
        os.chmod(src / "tool", 0o4755)
        os.link(src / "tool", src / "tool-link")
        spec = BackupSpec.build([src], shared / "dest")
        snap_id = backup(spec).snapshot_id
        (shared / "out").mkdir(mode=0o777)
        (shared / "out").chmod(0o777)
        subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        sys.executable, "-c", _AS_NOBODY, str(src), str(shared / "dest"),
                        str(shared / "out"), snap_id], cwd=REPO, check=True, timeout=60)
        tool = (shared / "out" / "src" / "tool").stat()
        assert (tool.st_uid, tool.st_mode & 0o7777) == (65534, 0o755)
        assert (shared / "out" / "src" / "tool-link").stat().st_ino == tool.st_ino
    finally:
        shutil.rmtree(shared)


# --- item 13: a restore killed part way --------------------------------------------------------

_CHILD = r"""
import sys, time
from pathlib import Path
from engines.archive import ArchiveEngine
from engines.archive.target import temp_name
from engines.base import BackupSpec, NullReporter, RunControl

src, dest, target = (Path(a) for a in sys.argv[1:4])

class HoldWhenWriting(RunControl):
    def safe_point(self) -> None:
        # Once big.bin is being written under its temporary name, hold there to be killed.
        if (target / "src" / temp_name("big.bin")).is_file():
            print("writing", flush=True)
            time.sleep(120)

ArchiveEngine().restore(BackupSpec.build([src], dest), sys.argv[4], target,
                        HoldWhenWriting(), NullReporter())
"""


def test_a_killed_restore_leaves_no_temporary_files_after_the_next(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "a-small.txt", b"small\n")
    write(src / "big.bin", os.urandom(12 << 20))
    write(src / "sub" / "z.txt", b"last\n")
    spec = BackupSpec.build([src], tmp_path / "dest")
    snap_id = backup(spec).snapshot_id
    target = tmp_path / "target"
    # What the person had in the target before, including names close to ours.
    write(target / "mine.txt", b"keep me\n")
    write(target / "src" / ".bm-notmine", b"a file of the user's\n")
    write(target / "src" / ".bm-1234abcd.keep", b"another\n")
    os.mkdir(target / "src" / ".bm-0000cafe")  # a directory is never ours to remove
    # A user's own file named exactly like a temporary name, and the temporary file of
    # another restore writing a name this one does not write: neither is this restore's.
    write(target / "src" / ".bm-0123abcd", b"the user's own\n")
    write(target / "src" / temp_name("other.bin"), b"another restore's, half written\n")
    # What an older version's killed restore left behind.
    write(target / "src" / ".restore-0123456789abcdef.tmp", b"leftover\n")
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(src), str(tmp_path / "dest"),
                              str(target), snap_id], cwd=REPO, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "writing\n"
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    left = [e.name for e in os.scandir(target / "src")
            if re.fullmatch(r"\.bm-[0-9a-f]{8}", e.name) and e.is_file()]
    assert sorted(left) == sorted([temp_name("big.bin"), ".bm-0123abcd",
                                   temp_name("other.bin")]), "the kill left a temporary file"
    assert (target / "src" / temp_name("big.bin")).stat().st_size >= 4 << 20  # part way

    restore(spec, snap_id, target, overwrite=True)
    assert sorted(temp_files(target)) == sorted(
        str(target / "src" / n) for n in (".bm-0000cafe", ".bm-0123abcd", temp_name("other.bin")))
    assert (target / "mine.txt").read_bytes() == b"keep me\n"
    assert (target / "src" / ".bm-notmine").read_bytes() == b"a file of the user's\n"
    assert (target / "src" / ".bm-1234abcd.keep").read_bytes() == b"another\n"
    assert (target / "src" / ".bm-0123abcd").read_bytes() == b"the user's own\n"
    assert (target / "src" / temp_name("other.bin")).read_bytes() == \
        b"another restore's, half written\n"
    restored = tree_signature(target / "src")
    for name in (".bm-notmine", ".bm-1234abcd.keep", ".bm-0000cafe", ".bm-0123abcd",
                 temp_name("other.bin")):
        del restored[name]
    assert restored == tree_signature(src)


def test_a_restore_sweeps_only_the_temporary_names_of_what_it_writes(tmp_path: Path) -> None:
    # Told what it will write, the writer clears those entries' leftovers in a folder the
    # first time it enters it (a restore that stops early leaves none behind for them),
    # and nothing else: a user's ".bm-0123abcd" and another restore's file stay.
    target = tmp_path / "target"
    write(target / "src" / temp_name("late.txt"), b"a killed restore's\n")
    write(target / "src" / ".restore-0123456789abcdef.tmp", b"an older version's\n")
    write(target / "src" / ".bm-0123abcd", b"the user's own\n")
    write(target / "src" / temp_name("other.txt"), b"another restore's\n")
    writer = TargetWriter(target, True, lambda _: None, paths=["src/early.txt", "src/late.txt"])
    try:
        _, leaf = writer._parent("src/early.txt")  # what every write does first (its fd)
    finally:
        writer.close()
    assert leaf == "early.txt"
    assert sorted(os.listdir(target / "src")) == sorted([".bm-0123abcd", temp_name("other.txt")])

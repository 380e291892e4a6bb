"""Issue 12, rsync engine: what a person with one copy would expect of it.

Two jobs in one destination keep apart, names at the 255-byte limit, sparse files, a
change that kept size and mtime (and the checksum option), an unreadable folder as a
non-root server, names that are not UTF-8, special files, and owner, hard links,
extended attributes and ACLs (and a destination without the last two).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engines.base import BackupResult, BackupSpec, RunControl
from engines.manifest import Manifest, sha256_file
from engines.rsync import RsyncEngine
from engines.rsync.args import CopyOptions, Keeps, rsync_command
from engines.rsync.manifest import sha256_sparse
from engines.rsync.output import check_outcome
from engines.treestore import manifest_path
from tests.engine_helpers import RecordingReporter, tree_signature, write
from tests.fs_helpers import IS_ROOT, small_tmpfs

needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (CI runs as root)")
NOBODY = 65534


def backup(spec: BackupSpec, reporter: RecordingReporter | None = None) -> BackupResult:
    """Back up with the rsync engine."""
    return RsyncEngine().backup(spec, RunControl(), reporter or RecordingReporter())


def restore(spec: BackupSpec, snap_id: str, target: Path) -> RecordingReporter:
    """Restore a whole snapshot into target."""
    reporter = RecordingReporter()
    RsyncEngine().restore(spec, snap_id, target, RunControl(), reporter)
    return reporter


def verified(spec: BackupSpec, snap_id: str) -> bool:
    """Whether a snapshot verifies."""
    result = RsyncEngine().verify(spec, snap_id, RunControl(), RecordingReporter())
    assert result.ok, result.problems
    return result.ok


def next_second() -> None:
    """Snapshot ids have one-second resolution."""
    time.sleep(1.05)


# --- item 1: the job's own snapshots -----------------------------------------------------


def test_a_snapshot_names_its_job_and_links_only_to_its_own_jobs_snapshots(
        tmp_path: Path) -> None:
    dest = tmp_path / "shared"
    a_src, b_src = tmp_path / "a" / "data", tmp_path / "b" / "data"
    # The same name, size, mtime and content in both: a link across jobs would be taken.
    write(a_src / "same.txt", b"identical\n")
    write(b_src / "same.txt", b"identical\n")
    job_a = BackupSpec.build([a_src], dest, job_id="job-a")
    job_b = BackupSpec.build([b_src], dest, job_id="job-b")
    a1 = backup(job_a).snapshot_id
    next_second()
    b1 = backup(job_b).snapshot_id
    next_second()
    a2 = backup(job_a).snapshot_id
    assert Manifest.read(manifest_path(dest, a1)).job_id == "job-a"
    assert Manifest.read(manifest_path(dest, b1)).job_id == "job-b"

    def ino(snap: str) -> int:
        return (dest / snap / "data" / "same.txt").stat().st_ino

    assert ino(b1) != ino(a1)  # B's first run had no snapshot of its own to link to
    assert ino(a2) == ino(a1)  # A's second run linked to A's latest, not to B's newer one
    assert [s.id for s in RsyncEngine().snapshots(job_b)] == [b1]


# --- item 4: names at the 255-byte limit -----------------------------------------------------


def test_names_of_248_to_255_bytes_back_up_and_restore(tmp_path: Path) -> None:
    src = tmp_path / "src"
    cjk = "漢" * 85  # 255 bytes in UTF-8
    assert len(cjk.encode()) == 255
    names = [cjk, "a" * 248, "b" * 255, "漢" * 82 + "ab"]  # 255, 248, 255, 248 bytes
    for i, name in enumerate(names):
        write(src / name, f"content {i}\n".encode() * 1000)
    (src / ("d" * 255)).mkdir()
    write(src / ("d" * 255) / cjk, b"nested\n")
    os.symlink(cjk, src / ("l" * 255))
    spec = BackupSpec.build([src], tmp_path / "dest")
    first = backup(spec)
    assert first.warnings == ()
    assert tree_signature(spec.destination / first.snapshot_id / "src") == tree_signature(src)
    next_second()
    write(src / cjk, b"changed, so copied again\n", mtime=1_800_000_000)
    second = backup(spec)  # rsync writes the changed file under a temp name again
    out = tmp_path / "out"
    restore(spec, second.snapshot_id, out)
    assert tree_signature(out / "src") == tree_signature(src)
    assert verified(spec, first.snapshot_id) and verified(spec, second.snapshot_id)
    # rsync (3.5.0) names its temp file ".XXXXXX" for such a name, in --temp-dir: no
    # temp file is left in the snapshot (the signature above is exactly the source's).


def test_the_command_line_keeps_holes_links_owners_and_only_what_the_destination_holds(
        ) -> None:
    def argv(keeps: Keeps, checksum: bool = False, pass_checksum: bool = False) -> list[str]:
        return rsync_command("rsync", "/s/", "/t/", Path("/f"), Path("/w/tmp"), None,
                             CopyOptions(keeps, None, checksum), checksum=pass_checksum)

    full = argv(Keeps(xattrs=True, acls=True))
    for flag in ("--sparse", "--hard-links", "--archive", "--numeric-ids", "--xattrs",
                 "--acls", "--temp-dir=/w/tmp"):
        assert flag in full
    assert "--checksum" not in full
    bare = argv(Keeps(xattrs=False, acls=False))
    assert "--xattrs" not in bare and "--acls" not in bare
    assert "--checksum" in argv(Keeps(False, False), checksum=True)
    assert "--checksum" in argv(Keeps(False, False), pass_checksum=True)
    assert full[-3:] == ["--", "/s/", "/t/"]


# --- item 6: sparse files --------------------------------------------------------------------

SPARSE_SIZE = 1 << 30  # 64 times the filesystem it goes to; 10 GiB takes ~1 min (README)


def test_a_sparse_file_larger_than_the_destination_keeps_its_holes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    sparse = src / "disk.img"
    with open(sparse, "wb") as fh:
        fh.truncate(SPARSE_SIZE)
        fh.seek(SPARSE_SIZE // 2)
        fh.write(b"hello!")
    with small_tmpfs(tmp_path / "dest", "16m") as dest, \
            small_tmpfs(tmp_path / "target", "16m") as target:
        spec = BackupSpec.build([src], dest)
        snap = backup(spec).snapshot_id  # without --sparse: destination full
        copy = dest / snap / "src" / "disk.img"
        assert copy.stat().st_size == SPARSE_SIZE
        assert copy.stat().st_blocks * 512 < 1 << 20
        restore(spec, snap, target)
        restored = target / "src" / "disk.img"
        assert restored.stat().st_size == SPARSE_SIZE
        assert restored.stat().st_blocks * 512 < 1 << 20
        with open(restored, "rb") as fh:
            fh.seek(SPARSE_SIZE // 2 - 2)
            assert fh.read(10) == b"\0\0hello!\0\0"


@pytest.mark.parametrize("layout", ["data-hole-data", "hole-only", "hole-data-hole", "dense"])
def test_a_sparse_files_hash_skips_reading_holes_and_equals_the_plain_hash(
        tmp_path: Path, layout: str) -> None:
    path = tmp_path / "f"
    size = 64 << 20
    with open(path, "wb") as fh:
        fh.truncate(size)
        if layout == "data-hole-data":
            fh.write(os.urandom(100_000))
            fh.seek(size - 5000)
            fh.write(os.urandom(5000))
        elif layout == "hole-data-hole":
            fh.seek(size // 3 + 7)
            fh.write(b"hello!" * 50_000)
        elif layout == "dense":
            fh.write(os.urandom(size))
    seen: list[int] = []
    with open(path, "rb") as fh:
        digest = sha256_sparse(fh.fileno(), size, seen.append)
    assert digest == sha256_file(path)
    assert sum(seen) == size  # progress counts holes as done too


# --- item 7: a change that kept size and mtime -----------------------------------------------


def _rewrite_keeping_size_and_mtime(path: Path, data: bytes) -> None:
    before = path.stat()
    assert len(data) == before.st_size
    path.write_bytes(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_changed_content_with_the_same_size_and_mtime_is_backed_up(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "ledger.txt", b"balance: 100\n")
    write(src / "same.txt", b"untouched\n")
    write(src / "chmodded.txt", b"same content, new ctime\n")
    spec = BackupSpec.build([src], tmp_path / "dest")
    first = backup(spec).snapshot_id
    _rewrite_keeping_size_and_mtime(src / "ledger.txt", b"balance: 999\n")
    os.chmod(src / "chmodded.txt", 0o600)  # ctime moves; content and mode come back
    os.chmod(src / "chmodded.txt", 0o644)
    next_second()
    second = backup(spec).snapshot_id
    old, new = spec.destination / first / "src", spec.destination / second / "src"
    assert (new / "ledger.txt").read_bytes() == b"balance: 999\n"
    assert (old / "ledger.txt").read_bytes() == b"balance: 100\n"  # untouched by the copy
    # Unchanged files, even the one compared by content, are still shared, not copied.
    for name in ("same.txt", "chmodded.txt"):
        assert (new / name).stat().st_ino == (old / name).stat().st_ino
    assert verified(spec, first) and verified(spec, second)
    out = tmp_path / "out"
    restore(spec, second, out)
    assert (out / "src" / "ledger.txt").read_bytes() == b"balance: 999\n"


def _strip_identity(dest: Path, snap_id: str, fake: dict[str, os.stat_result] | None = None
                    ) -> None:
    """Rewrite a manifest as older versions wrote it (no source inode or ctime), or, with
    `fake`, claiming the given stat results as the sources' identities."""
    path = manifest_path(dest, snap_id)
    manifest = Manifest.read(path)
    for entry in manifest.entries:
        for key in ("ctime_ns", "ino", "dev"):
            entry.pop(key, None)
        st = (fake or {}).get(entry["path"])
        if st is not None:
            entry.update(ctime_ns=st.st_ctime_ns, ino=st.st_ino, dev=st.st_dev)
    manifest.write(path)


def test_a_manifest_without_source_identity_means_contents_are_compared(
        tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "ledger.txt", b"balance: 100\n")
    write(src / "same.txt", b"untouched\n")
    spec = BackupSpec.build([src], tmp_path / "dest")
    first = backup(spec).snapshot_id
    _strip_identity(spec.destination, first)  # as written before issue 12
    _rewrite_keeping_size_and_mtime(src / "ledger.txt", b"balance: 999\n")
    next_second()
    second = backup(spec).snapshot_id
    new, old = spec.destination / second / "src", spec.destination / first / "src"
    assert (new / "ledger.txt").read_bytes() == b"balance: 999\n"
    assert (new / "same.txt").stat().st_ino == (old / "same.txt").stat().st_ino
    entry = Manifest.read(manifest_path(spec.destination, second)).by_path()["src/same.txt"]
    st = (src / "same.txt").stat()
    assert (entry["ctime_ns"], entry["ino"], entry["uid"]) == \
        (st.st_ctime_ns, st.st_ino, st.st_uid)


@pytest.mark.parametrize("checksum", [False, True])
def test_the_checksum_option_compares_every_files_contents(tmp_path: Path,
                                                           checksum: bool) -> None:
    src = tmp_path / "src"
    write(src / "ledger.txt", b"balance: 100\n")
    spec = BackupSpec.build([src], tmp_path / "dest", options={"checksum": checksum})
    first = backup(spec).snapshot_id
    _rewrite_keeping_size_and_mtime(src / "ledger.txt", b"balance: 999\n")
    # A change no metadata shows (the previous manifest claims today's inode and ctime):
    # only comparing contents finds it.
    st = (src / "ledger.txt").stat()
    _strip_identity(spec.destination, first, {"src/ledger.txt": st})
    next_second()
    second = backup(spec).snapshot_id
    got = (spec.destination / second / "src" / "ledger.txt").read_bytes()
    assert got == (b"balance: 999\n" if checksum else b"balance: 100\n")


def test_a_bad_checksum_option_is_a_clear_error(tmp_path: Path) -> None:
    write(tmp_path / "src" / "a", b"a")
    spec = BackupSpec.build([tmp_path / "src"], tmp_path / "dest",
                            options={"checksum": "maybe"})
    with pytest.raises(Exception, match="option checksum must be true or false"):
        backup(spec)
    assert not spec.destination.exists()  # refused before anything was written


# --- item 9: what cannot be read, names that are not UTF-8, special files ---------------------


def _as_nobody(spec: BackupSpec) -> dict[str, Any]:
    """Run a backup in a child process that has become an unprivileged user (as a server
    without root runs): the kernel, not the test, decides what it can read."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no pytest from here on, only the engine
        os.close(read_end)
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            result = backup(spec)
            answer: dict[str, Any] = {"snapshot_id": result.snapshot_id,
                                      "warnings": list(result.warnings)}
        except BaseException as err:  # reported to the parent, which fails the test
            answer = {"error": f"{type(err).__name__}: {err}"}
        os.write(write_end, json.dumps(answer).encode())
        os._exit(0)
    os.close(write_end)
    chunks = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([read_end], [], [], 1.0)
            if ready:
                chunk = os.read(read_end, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    return dict(json.loads(b"".join(chunks)))


@contextlib.contextmanager
def _open_tree() -> Iterator[Path]:
    """A directory the unprivileged user can reach (pytest's own tmp is root's alone)."""
    root = Path(tempfile.mkdtemp(prefix="bm-rsync-safety-", dir="/tmp"))
    os.chmod(root, 0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@needs_root
def test_an_unreadable_folder_is_skipped_with_a_warning_as_a_non_root_server() -> None:
    with _open_tree() as root:
        src = root / "src"
        write(src / "open" / "a.txt", b"readable\n")
        write(src / "locked" / "hidden.txt", b"root's only\n")
        write(src / "private.txt", b"root's only\n", mode=0o600)
        os.chmod(src / "locked", 0o000)
        os.mkfifo(src / "pipe")
        dest = root / "dest"
        dest.mkdir()
        os.chown(dest, NOBODY, NOBODY)
        spec = BackupSpec.build([src], dest)
        answer = _as_nobody(spec)
        assert "error" not in answer, answer["error"]
        warnings = answer["warnings"]
        assert any(f"{src}/locked" in w and "cannot be read" in w for w in warnings)
        assert any(f"{src}/private.txt" in w and "Permission denied" in w for w in warnings)
        assert any(f"{src}/pipe" in w and "named pipe" in w for w in warnings)
        assert len(warnings) == 3, warnings
        snap = dest / answer["snapshot_id"] / "src"
        assert (snap / "open" / "a.txt").read_bytes() == b"readable\n"
        assert not (snap / "private.txt").exists()
        assert os.listdir(snap / "locked") == []
        assert stat.S_IMODE((snap / "locked").stat().st_mode) == 0  # as in the source
        assert verified(spec, answer["snapshot_id"])


def test_an_unreadable_file_still_fails_no_run_and_other_errors_still_do(
        tmp_path: Path) -> None:
    with pytest.raises(Exception, match="partial transfer due to error"):
        check_outcome(23, ['rsync: [receiver] mkstemp "/d/x" failed: Permission denied (13)'],
                      tmp_path)
    assert check_outcome(23, [
        'rsync: [sender] opendir "/s/locked" failed: Permission denied (13)',
        "rsync error: some files/attrs were not transferred (code 23)"], tmp_path) == \
        ["/s/locked cannot be read (Permission denied); skipped"]


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
    spec = BackupSpec.build([src], tmp_path / "dest")
    result = backup(spec)
    assert result.files == 2
    assert len(result.warnings) == 1  # the FIFO, named, in valid UTF-8
    assert "pipe\\xe9" in result.warnings[0] and "named pipe" in result.warnings[0]
    result.warnings[0].encode("utf-8")
    manifest = Manifest.read(manifest_path(spec.destination, result.snapshot_id))
    assert os.fsdecode(b"src/\xff\xfe dir/inner\x80.bin") in manifest.by_path()
    assert verified(spec, result.snapshot_id)
    next_second()
    second = backup(spec)  # linked to the first, names and all
    snaps = os.fsencode(spec.destination)
    name = b"/src/caf\xe9.txt"
    assert os.stat(snaps + b"/" + os.fsencode(second.snapshot_id) + name).st_ino == \
        os.stat(snaps + b"/" + os.fsencode(result.snapshot_id) + name).st_ino
    out = tmp_path / "out"
    restore(spec, second.snapshot_id, out)
    got = os.fsencode(out / "src")
    assert sorted(os.listdir(got)) == [b"caf\xe9.txt", b"link\xe9", b"\xff\xfe dir"]
    with open(got + b"/\xff\xfe dir/inner\x80.bin", "rb") as fh:
        assert fh.read() == b"inside\n"
    assert os.readlink(got + b"/link\xe9") == b"caf\xe9.txt"


# --- item 10: owner, hard links, extended attributes, ACLs -------------------------------------


def _xattrs_supported(path: Path) -> bool:
    try:
        os.setxattr(path, "user.probe", b"1")
    except OSError:
        return False
    os.removexattr(path, "user.probe")
    return True


def _rich_tree(src: Path) -> bool:
    """Owners, a hard link across folders, an xattr and ACLs; whether ACLs were set."""
    write(src / "owned.txt", b"someone else's\n")
    os.chown(src / "owned.txt", 1234, 5678)
    write(src / "a.txt", b"one inode, two names\n")
    (src / "sub").mkdir()
    os.link(src / "a.txt", src / "sub" / "b.txt")
    os.chown(src / "sub", 1234, 5678)
    if not _xattrs_supported(src / "a.txt"):
        pytest.skip("this filesystem has no user extended attributes")
    os.setxattr(src / "a.txt", "user.test", b"kept \x00 binary")
    os.setxattr(src, "user.top", b"on the source folder itself")
    setfacl = shutil.which("setfacl")
    if setfacl:
        subprocess.run([setfacl, "-m", "u:1234:r--", str(src / "owned.txt")], check=True)
        subprocess.run([setfacl, "-d", "-m", "g:5678:rwx", str(src / "sub")], check=True)
    os.utime(src / "sub", (1_700_000_000, 1_700_000_000))
    return setfacl is not None


@needs_root
def test_owner_hard_links_xattrs_and_acls_survive_backup_and_restore(tmp_path: Path) -> None:
    src = tmp_path / "src"
    acls = _rich_tree(src)
    spec = BackupSpec.build([src], tmp_path / "dest")
    first = backup(spec)
    assert first.warnings == ()
    next_second()
    second = backup(spec).snapshot_id  # the unchanged run links everything
    out = tmp_path / "out"
    restore(spec, second, out)
    for root in (spec.destination / first.snapshot_id / "src",
                 spec.destination / second / "src", out / "src"):
        for rel in ("owned.txt", "sub"):
            st = (root / rel).stat()
            assert (st.st_uid, st.st_gid) == (1234, 5678), (root, rel)
        a, b = (root / "a.txt").stat(), (root / "sub" / "b.txt").stat()
        assert a.st_ino == b.st_ino and a.st_nlink >= 2
        assert os.getxattr(root / "a.txt", "user.test") == b"kept \x00 binary"
        assert os.getxattr(root, "user.top") == b"on the source folder itself"
        if acls:
            acl = os.getxattr(root / "owned.txt", "system.posix_acl_access")
            assert acl == os.getxattr(src / "owned.txt", "system.posix_acl_access")
            default = os.getxattr(root / "sub", "system.posix_acl_default")
            assert default == os.getxattr(src / "sub", "system.posix_acl_default")
    manifest = Manifest.read(manifest_path(spec.destination, second)).by_path()
    assert manifest["src/sub/b.txt"]["link"] == "src/a.txt"
    assert (manifest["src/owned.txt"]["uid"], manifest["src/owned.txt"]["gid"]) == (1234, 5678)
    assert (spec.destination / first.snapshot_id / "src" / "a.txt").stat().st_ino == \
        (spec.destination / second / "src" / "a.txt").stat().st_ino
    assert verified(spec, first.snapshot_id) and verified(spec, second)
    assert tree_signature(out / "src") == tree_signature(src)


@contextlib.contextmanager
def _ramfs(path: Path) -> Iterator[Path]:
    """A ramfs (no extended attributes, no ACLs) mounted at path for the block."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "ramfs", "ramfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@needs_root
def test_a_destination_without_xattrs_or_acls_warns_and_the_restore_has_them(
        tmp_path: Path) -> None:
    src = tmp_path / "src"
    acls = _rich_tree(src)
    with _ramfs(tmp_path / "dest") as dest:
        spec = BackupSpec.build([src], dest)
        result = backup(spec)  # rsync -X/-A would fail every file here: not asked for
        # Named by the first file that has them: the source folder itself.
        assert any("cannot hold extended attributes" in w and f"copy of {src} " in w
                   for w in result.warnings)
        if acls:
            assert any("cannot hold ACLs" in w for w in result.warnings)
        assert len(result.warnings) == (2 if acls else 1), result.warnings
        snap = dest / result.snapshot_id / "src"
        assert os.listxattr(snap / "a.txt") == []
        assert (snap / "a.txt").stat().st_ino == (snap / "sub" / "b.txt").stat().st_ino
        assert verified(spec, result.snapshot_id)
        out = tmp_path / "out"
        restore(spec, result.snapshot_id, out)  # onto ext4: the manifest's values come back
        assert os.getxattr(out / "src" / "a.txt", "user.test") == b"kept \x00 binary"
        if acls:
            assert os.getxattr(out / "src" / "owned.txt", "system.posix_acl_access") == \
                os.getxattr(src / "owned.txt", "system.posix_acl_access")


def test_names_that_stop_being_one_file_are_restored_as_two(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "a.txt", b"shared\n")
    os.link(src / "a.txt", src / "b.txt")
    spec = BackupSpec.build([src], tmp_path / "dest")
    first = backup(spec).snapshot_id
    assert Manifest.read(manifest_path(spec.destination, first)).by_path()["src/b.txt"][
        "link"] == "src/a.txt"
    (src / "b.txt").unlink()
    shutil.copy2(src / "a.txt", src / "b.txt")  # same content, size and mtime: a copy now
    next_second()
    second = backup(spec).snapshot_id
    assert "link" not in Manifest.read(manifest_path(spec.destination, second)).by_path()[
        "src/b.txt"]
    out = tmp_path / "out"
    restore(spec, second, out)
    assert (out / "src" / "a.txt").stat().st_ino != (out / "src" / "b.txt").stat().st_ino
    assert (out / "src" / "b.txt").read_bytes() == b"shared\n"

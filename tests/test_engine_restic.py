"""The restic engine against the real restic: what is particular to restic, beyond the
contract suite (password handling, locks, resume reusing uploads, restic's output)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from engines.base import (
    BackupResult,
    BackupSpec,
    BinaryMissing,
    Cancelled,
    EngineError,
    Interrupted,
    Progress,
    ProgressMeter,
    RestoreConflict,
    RunControl,
    SnapshotNotFound,
)
from engines.restic import (
    BackupOutput,
    ResticEngine,
    restic_command,
    restic_env,
    restic_pattern,
)
from engines.restic import repo as restic_module
from engines.scan import scan
from models.retention import Retention
from tests.engine_helpers import (
    RecordingReporter,
    make_tree,
    mutate_tree,
    tree_signature,
    write,
)

PASSWORD = "Tr0ub4dor&3 correct horse"
MiB = 1 << 20

SpecFor = Callable[..., BackupSpec]


# --- fixtures: restic init costs seconds (it calibrates its key derivation), so one
# initialised repository is made per session and copied for each test ---------------------


@pytest.fixture(scope="session")
def template_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An empty, initialised repository and its password file."""
    base = tmp_path_factory.mktemp("restic-template")
    password_file = base / "password"
    password_file.write_text(PASSWORD + "\n")
    repo = base / "repo"
    subprocess.run(restic_command(repo, "init"), env=restic_env(password_file, base / "cache"),
                   check=True, capture_output=True)
    return repo, password_file


def new_spec(template: tuple[Path, Path], work: Path, sources: list[Path],
             **kw: Any) -> BackupSpec:
    """A spec backing sources up into a fresh copy of the template repository."""
    dest = work / "repo"
    if not dest.exists():
        shutil.copytree(template[0], dest)
    options = {"password_file": str(template[1]), "cache_dir": str(work / "cache"),
               **kw.pop("options", {})}
    return BackupSpec.build(sources, dest, options=options, **kw)


@pytest.fixture
def spec_for(template_repo: tuple[Path, Path], tmp_path: Path) -> Iterator[SpecFor]:
    """Build specs on a fresh repository; big test data is removed afterwards."""
    yield lambda sources, **kw: new_spec(template_repo, tmp_path, sources, **kw)
    for child in tmp_path.iterdir():  # keep old pytest temp dirs from filling the disk
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class BackedUp:
    """A repository with one snapshot of make_tree, shared by read-only tests."""

    spec: BackupSpec
    src: Path
    result: BackupResult


@pytest.fixture(scope="module")
def backed_up(template_repo: tuple[Path, Path],
              tmp_path_factory: pytest.TempPathFactory) -> BackedUp:
    """One backup of a generated tree (read-only for the tests that use it)."""
    work = tmp_path_factory.mktemp("restic-backed-up")
    src = make_tree(work / "src", large_bytes=2_000_000)
    spec = new_spec(template_repo, work, [src])
    return BackedUp(spec, src, ResticEngine().backup(spec, RunControl(), RecordingReporter()))


def restore(spec: BackupSpec, snapshot_id: str, target: Path, path: str | None = None,
            overwrite: bool = False) -> Path:
    """Restore with a fresh control and reporter; return the target."""
    ResticEngine().restore(spec, snapshot_id, target, RunControl(), RecordingReporter(),
                           path=path, overwrite=overwrite)
    return target


def big_source(root: Path, size: int = 64 * MiB) -> Path:
    """A source restic needs a moment for: one large random file and a few small ones."""
    write(root / "large.bin", os.urandom(size))
    for i in range(20):
        write(root / "small" / f"s{i}.txt", f"small {i}\n".encode())
    return root


def pack_bytes(repo: Path) -> int:
    """Bytes in the repository's pack files."""
    return sum(p.stat().st_size for p in (repo / "data").rglob("*") if p.is_file())


def pack_names(repo: Path) -> set[str]:
    """Names of the repository's pack files."""
    return {p.name for p in (repo / "data").rglob("*") if p.is_file()}


def lock_files(repo: Path) -> list[str]:
    """The repository's lock files."""
    return sorted(os.listdir(repo / "locks"))


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll until condition holds, or fail naming what did not happen."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


def restic_pid(reporter: RecordingReporter) -> int:
    """The restic pid from the run's checkpoint (waits for it)."""
    wait_until(lambda: any("pid" in c for c in reporter.checkpoints), 30, "restic to start")
    return int(next(c["pid"] for c in reporter.checkpoints if "pid" in c))


def process_state(pid: int) -> str:
    """A process's state letter (R, S, T for stopped, Z), or '' once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return ""


def in_thread(target: Callable[[], BackupResult]) -> tuple[threading.Thread, list[Any]]:
    """Run a backup in a thread; the list gets its result or its exception."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(target())
        except EngineError as err:
            outcome.append(err)

    thread = threading.Thread(target=run, daemon=True)  # a failing test must not hang pytest
    thread.start()
    return thread, outcome


# --- backup and restore -------------------------------------------------------------------


def test_restore_is_byte_for_byte_and_listed(backed_up: BackedUp, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    spec, src, result = backed_up.spec, backed_up.src, backed_up.result
    assert len(result.snapshot_id) == 8
    expected = tree_signature(src)
    assert result.files == sum(1 for sig in expected.values() if sig[0] == "file")
    out = restore(spec, result.snapshot_id, tmp_path / "r")
    assert tree_signature(out / "src") == expected
    assert sorted(os.listdir(out)) == ["src"]  # the staging directory is gone
    size = sum(sig[2] for sig in expected.values() if sig[0] == "file")
    listed = ResticEngine().snapshots(spec)
    assert [(s.id, s.files, s.size) for s in listed] == [(result.snapshot_id, result.files, size)]
    assert listed[0].time.utcoffset() is not None
    assert abs(time.time() - listed[0].time.timestamp()) < 600
    # Counted from `restic ls` (another process, or restic 0.14 without a backup summary):
    # the same numbers.
    monkeypatch.setattr(restic_module, "_STATS", {})
    assert ResticEngine().snapshots(spec) == listed


def test_restore_of_a_sub_path_and_clear_errors(backed_up: BackedUp, tmp_path: Path) -> None:
    spec, src, snap_id = backed_up.spec, backed_up.src, backed_up.result.snapshot_id
    out = restore(spec, snap_id, tmp_path / "deep", path="src/deep/er")
    assert tree_signature(out / "src" / "deep" / "er") == tree_signature(src / "deep" / "er")
    assert os.listdir(out / "src") == ["deep"] and os.listdir(out / "src" / "deep") == ["er"]
    out = restore(spec, snap_id, tmp_path / "one", path="src/ünïcødé ✓/日本語 file.txt")
    assert (out / "src" / "ünïcødé ✓" / "日本語 file.txt").read_bytes() == "grüße\n".encode()
    assert os.listdir(out / "src") == ["ünïcødé ✓"]
    with pytest.raises(SnapshotNotFound, match="not in snapshot"):
        restore(spec, snap_id, tmp_path / "x", path="src/no/such/thing")
    with pytest.raises(EngineError, match="not a path inside the snapshot"):
        restore(spec, snap_id, tmp_path / "x", path="src/../../etc")
    with pytest.raises(SnapshotNotFound, match="no snapshot 0123abcd"):
        restore(spec, "0123abcd", tmp_path / "x")
    with pytest.raises(SnapshotNotFound, match="not a restic snapshot id"):
        restore(spec, "--target=/etc", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_restore_refuses_to_overwrite_unless_asked(backed_up: BackedUp, tmp_path: Path) -> None:
    spec, src, snap_id = backed_up.spec, backed_up.src, backed_up.result.snapshot_id
    target = tmp_path / "r"
    write(target / "src" / "deep" / "er" / "est" / "leaf.txt", b"mine, keep me\n")
    with pytest.raises(RestoreConflict, match=r"1 file\(s\) to restore already exist"):
        restore(spec, snap_id, target)
    assert (target / "src" / "deep" / "er" / "est" / "leaf.txt").read_bytes() == b"mine, keep me\n"
    assert sorted(os.listdir(target / "src")) == ["deep"]  # refused before writing anything
    restore(spec, snap_id, target, overwrite=True)
    assert tree_signature(target / "src") == tree_signature(src)
    assert sorted(os.listdir(target)) == ["src"]


def test_incremental_restores_the_new_state_and_keeps_the_old(spec_for: SpecFor,
                                                             tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", large_bytes=2_000_000)
    spec = spec_for([src])
    engine = ResticEngine()
    first = engine.backup(spec, RunControl(), RecordingReporter())
    before = tree_signature(src)
    mutate_tree(src)
    second = engine.backup(spec, RunControl(), RecordingReporter())
    assert second.snapshot_id != first.snapshot_id
    assert tree_signature(restore(spec, second.snapshot_id, tmp_path / "new") / "src") \
        == tree_signature(src)
    assert tree_signature(restore(spec, first.snapshot_id, tmp_path / "old") / "src") == before


def test_include_exclude_and_two_sources_match_the_scan(spec_for: SpecFor,
                                                       tmp_path: Path) -> None:
    one = tmp_path / "a" / "docs"
    for name in ["keep.txt", "skip.tmp", "only-tmp/x.tmp", "cache/c.txt", "sub/cache",
                 "d*/f.txt", "dx/f.txt", "$HOME.tmp", "trailing", "trailing ",
                 "line\nbreak.tmp", "notes.md", "sub/deep/n.md"]:
        write(one / name, name.encode())
    two = tmp_path / "b" / "mail"
    write(two / "inbox.md", b"hello\n")
    write(two / "old.tmp", b"old\n")
    engine = ResticEngine()
    # Names with glob characters, `$`, a trailing space and a line break all need
    # escaping in restic's patterns; unescaped, each would exclude a kept sibling or
    # miss its target.
    excluding = spec_for([one, two], exclude=["*.tmp", "cache/", "d[*]", "trailing "])
    including = dataclasses.replace(excluding, exclude=(), include=("*.md", "sub/"))
    for spec, target in [(excluding, tmp_path / "r1"), (including, tmp_path / "r2")]:
        expected = {e.rel: e.kind for e in scan(spec, RunControl(), RecordingReporter())}
        result = engine.backup(spec, RunControl(), RecordingReporter())
        restore(spec, result.snapshot_id, target)
        assert restored_of(target) == expected
        assert result.files == sum(1 for kind in expected.values() if kind == "file")
    excluded_run = restored_of(tmp_path / "r1")
    assert {"docs/keep.txt", "docs/dx/f.txt", "docs/trailing", "docs/sub/cache",
            "docs/only-tmp", "mail/inbox.md"} <= excluded_run.keys()
    assert not {"docs/d*", "docs/trailing ", "docs/cache", "docs/$HOME.tmp",
                "docs/line\nbreak.tmp", "mail/old.tmp"} & excluded_run.keys()
    assert set(restored_of(tmp_path / "r2")) == {
        "docs", "docs/notes.md", "docs/sub", "docs/sub/cache", "docs/sub/deep",
        "docs/sub/deep/n.md", "mail", "mail/inbox.md"}


def restored_of(target: Path) -> dict[str, str]:
    """Every path under target, relative, with its kind (file, dir or symlink)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(target):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            kind = "symlink" if path.is_symlink() else "dir" if path.is_dir() else "file"
            out[path.relative_to(target).as_posix()] = kind
    return out


# --- progress and restic's output -------------------------------------------------------------


def test_progress_counts_until_the_scan_is_done_then_ends_at_the_totals(
        spec_for: SpecFor, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", large_bytes=2_000_000)
    reporter = RecordingReporter()
    spec = spec_for([src])
    result = ResticEngine().backup(spec, RunControl(), reporter)
    updates = reporter.progress_updates
    assert updates[0].counting and updates[0].phase == "scanning"
    assert all(u.eta is None for u in updates if u.counting)
    assert {u.phase for u in updates} <= {"scanning", "copying", "finalising", "done"}
    last = updates[-1]
    assert (last.phase, last.counting) == ("done", False)
    assert (last.files_done, last.files_total) == (result.files, result.files)
    assert (last.bytes_done, last.bytes_total) == (result.bytes, result.bytes)
    assert result.bytes == sum(s[2] for s in tree_signature(src).values() if s[0] == "file")
    first = reporter.checkpoints[0]
    assert first["engine"] == "restic" and first["repository"] == str(spec.destination)
    assert isinstance(first["pid"], int) and isinstance(first["started"], float)


def test_restic_output_lines_become_progress_and_warnings_never_errors() -> None:
    reporter = RecordingReporter()
    out = BackupOutput(ProgressMeter(reporter, interval=0), reporter, {"src": "/data/src"})
    out.feed(b"this is not json\n")
    out.feed(b"\xff\xfe\n")
    out.feed(b"[1, 2]\n")
    out.feed(b'{"message_type":"status"}\n')  # every field missing
    assert reporter.progress_updates[-1].counting
    assert reporter.progress_updates[-1].files_total == 0
    out.feed(b'{"message_type":"status","percent_done":0.5,"total_files":3,"files_done":1,'
             b'"total_bytes":"lots","bytes_done":50,"current_files":["/data/src/a/b.txt"]}\n')
    last = reporter.progress_updates[-1]
    assert (last.phase, last.counting, last.files_done) == ("scanning", True, 1)
    assert last.bytes_total == 0 and last.current_file == "src/a/b.txt"
    # restic 0.14 prints the end of the scan as a "status" with an action (at -vv).
    out.feed(b'{"message_type":"status","action":"scan_finished","item":"","duration":0.2,'
             b'"data_size":100,"total_files":3}\n')
    assert not reporter.progress_updates[-1].counting
    out.feed(b'{"message_type":"status","seconds_elapsed":1,"seconds_remaining":1,'
             b'"total_files":3,"files_done":2,"total_bytes":100,"bytes_done":70}\n')
    assert reporter.progress_updates[-1].phase == "copying"
    out.feed(b'{"message_type":"verbose_status","action":"new","item":"/data/src/x"}\n')
    assert out.feed_stderr(b'{"message_type":"error","error":{},"during":"archival",'
                           b'"item":"/data/src/gone.txt"}\n')
    assert not out.feed_stderr(b"Fatal: unable to save snapshot\n")
    out.feed(b'{"message_type":"summary","total_files_processed":3,"snapshot_id":"ab12cd34"}')
    assert out.summary is not None and out.summary["snapshot_id"] == "ab12cd34"
    assert reporter.progress_updates[-1].phase == "finalising"
    assert reporter.warnings == ["restic: this is not json", "restic: \ufffd\ufffd",
                                 "restic: [1, 2]", "src/gone.txt could not be read"]


def test_status_with_seconds_remaining_means_the_scan_is_done() -> None:
    reporter = RecordingReporter()
    out = BackupOutput(ProgressMeter(reporter, interval=0), reporter, {})
    out.feed(b'{"message_type":"status","seconds_remaining":4,"total_files":2,"files_done":1,'
             b'"total_bytes":10,"bytes_done":5}')
    assert reporter.progress_updates[-1] == Progress(
        phase="copying", counting=False, files_done=1, files_total=2, bytes_done=5,
        bytes_total=10, rate=None, eta=None)


# --- the password, the binary, the options ---------------------------------------------


def test_password_is_never_in_argv_and_ambient_settings_are_dropped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESTIC_PASSWORD", PASSWORD)
    monkeypatch.setenv("RESTIC_REPOSITORY", "/somewhere/else")
    argv = restic_command(tmp_path / "repo", "backup", "--json", "--", "/data")
    assert argv == ["restic", "--repo", str(tmp_path / "repo"), "backup", "--json", "--",
                    "/data"]
    env = restic_env(tmp_path / "pw", tmp_path / "cache")
    assert env["RESTIC_PASSWORD_FILE"] == str(tmp_path / "pw")
    assert env["RESTIC_CACHE_DIR"] == str(tmp_path / "cache")
    assert "RESTIC_PASSWORD" not in env and "RESTIC_REPOSITORY" not in env
    assert not any(PASSWORD in part for part in [*argv, *env.values()])


def test_restic_patterns_match_exactly_one_path() -> None:
    assert restic_pattern("/a/b*c?d[e]\\f") == "/a/b\\*c\\?d\\[e]\\\\f"
    assert restic_pattern("/a/$HOME", in_file=True) == "/a/$$HOME"
    assert restic_pattern("/a/trailing ", in_file=True) == "/a/trailing[ ]"
    assert restic_pattern("/a/trailing ") == "/a/trailing "


def test_missing_restic_is_a_clear_error(backed_up: BackedUp, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no restic on PATH
    engine = ResticEngine()
    with pytest.raises(BinaryMissing, match="restic is not installed; install it with "
                                            "apt-get install restic"):
        engine.check_ready(backed_up.spec)
    with pytest.raises(BinaryMissing, match="apt-get install restic"):
        engine.snapshots(backed_up.spec)
    with pytest.raises(BinaryMissing, match="apt-get install restic"):
        engine.backup(backed_up.spec, RunControl(), RecordingReporter())


def test_wrong_password_is_a_clear_error(backed_up: BackedUp, tmp_path: Path) -> None:
    other = tmp_path / "other-password"
    other.write_text("not the password\n")
    spec = dataclasses.replace(backed_up.spec, options={**backed_up.spec.options,
                                                        "password_file": str(other)})
    ResticEngine().check_ready(spec)  # the file itself is fine
    with pytest.raises(EngineError, match=f"password in {other} does not open the restic "
                                          "repository .* \\(wrong password\\)"):
        ResticEngine().snapshots(spec)


def test_password_file_option_is_required_and_checked(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", small_files=2, large_bytes=10)
    engine = ResticEngine()
    for options, message in [({}, "needs the password_file option"),
                             ({"password_file": str(tmp_path / "nope")}, "cannot be read"),
                             ({"password_file": str(tmp_path / "src" / "empty.txt")},
                              "is empty"),
                             ({"password_file": str(tmp_path / "src" / "run.sh"),
                               "read_data_subset": "half"}, "not a restic data subset")]:
        spec = BackupSpec.build([src], tmp_path / "repo", options=options)
        with pytest.raises(EngineError, match=message):
            engine.check_ready(spec)
        with pytest.raises(EngineError, match=message):
            engine.backup(spec, RunControl(), RecordingReporter())
    assert not (tmp_path / "repo").exists()


def test_repository_missing_or_not_empty(template_repo: tuple[Path, Path],
                                         tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", small_files=2, large_bytes=10)
    options = {"password_file": str(template_repo[1]), "cache_dir": str(tmp_path / "cache")}
    spec = BackupSpec.build([src], tmp_path / "repo", options=options)
    engine = ResticEngine()
    assert engine.snapshots(spec) == []
    with pytest.raises(EngineError, match=r"no restic repository at .*set the init option"):
        engine.backup(spec, RunControl(), RecordingReporter())
    with pytest.raises(SnapshotNotFound, match="no restic repository"):
        restore(spec, "0123abcd", tmp_path / "r")
    write(tmp_path / "repo" / "something.txt", b"not a repository\n")
    spec = BackupSpec.build([src], tmp_path / "repo", options={**options, "init": True})
    with pytest.raises(EngineError, match="not empty and holds no restic repository"):
        engine.backup(spec, RunControl(), RecordingReporter())


# --- pause, cancel, interrupt, kill ---------------------------------------------------------


def test_pause_stops_restic_and_resume_finishes(spec_for: SpecFor, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "first.txt", b"first\n")
    spec = spec_for([src])
    engine = ResticEngine()
    first = engine.backup(spec, RunControl(), RecordingReporter())
    big_source(src, 32 * MiB)
    control = RunControl()
    reporter = RecordingReporter()
    paused = threading.Event()

    class PauseOnResticsFirstUpdate(RecordingReporter):
        def progress(self, progress: Progress) -> None:
            reporter.progress(progress)
            if reporter.checkpoints and not paused.is_set():  # restic has started
                paused.set()
                control.pause()

        def checkpoint(self, state: Any) -> None:
            reporter.checkpoint(state)

    thread, outcome = in_thread(lambda: engine.backup(spec, control, PauseOnResticsFirstUpdate()))
    try:
        pid = restic_pid(reporter)
        wait_until(lambda: process_state(pid) == "T", 10, "restic to be stopped")
        time.sleep(0.2)  # what restic printed before it stopped has been read by now
        held = len(reporter.progress_updates)
        time.sleep(0.5)
        assert len(reporter.progress_updates) == held and not outcome
        # The password is in neither argv nor the environment of the running restic.
        assert PASSWORD.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert PASSWORD.encode() not in environ and b"RESTIC_PASSWORD_FILE=" in environ
        # A paused backup holds its lock: a check is told to wait (had the lock been taken
        # for a dead one and removed, the check would have run).
        with pytest.raises(EngineError, match="in use by another restic process"):
            engine.verify(spec, first.snapshot_id, RunControl(), RecordingReporter())
        control.resume()
        thread.join(60)
    finally:
        control.cancel()  # on failure: never leave a stopped restic behind
    assert isinstance(outcome[0], BackupResult) and outcome[0].files == 22
    out = restore(spec, outcome[0].snapshot_id, tmp_path / "r")
    assert tree_signature(out / "src") == tree_signature(src)


def test_cancel_leaves_no_snapshot_and_removes_the_upload(spec_for: SpecFor,
                                                         tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESTIC_PACK_SIZE", "4")  # packs land in the repository early
    src = tmp_path / "src"
    write(src / "first.txt", b"first\n")
    spec = spec_for([src])
    engine = ResticEngine()
    first = engine.backup(spec, RunControl(), RecordingReporter())
    packs = pack_names(spec.destination)
    big_source(src)
    control = RunControl()
    reporter = RecordingReporter()
    thread, outcome = in_thread(lambda: engine.backup(spec, control, reporter))
    restic_pid(reporter)
    wait_until(lambda: len(pack_names(spec.destination)) >= len(packs) + 2, 30,
               "restic to upload")
    control.cancel()
    thread.join(60)
    assert isinstance(outcome[0], Cancelled)
    assert [s.id for s in engine.snapshots(spec)] == [first.snapshot_id]
    assert pack_names(spec.destination) == packs
    assert lock_files(spec.destination) == []


def test_interrupt_keeps_the_upload_until_discarded(spec_for: SpecFor, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESTIC_PACK_SIZE", "4")
    spec = spec_for([big_source(tmp_path / "src")])
    engine = ResticEngine()
    control = RunControl()
    reporter = RecordingReporter()
    thread, outcome = in_thread(lambda: engine.backup(spec, control, reporter))
    pid = restic_pid(reporter)
    wait_until(lambda: len(pack_names(spec.destination)) >= 2, 30, "restic to upload")
    control.interrupt()
    thread.join(60)
    assert isinstance(outcome[0], Interrupted)
    assert process_state(pid) == ""
    assert pack_names(spec.destination)  # kept for a resume
    engine.discard_partial(spec, reporter.checkpoints[-1])
    assert pack_names(spec.destination) == set()
    assert lock_files(spec.destination) == []


def test_killed_restic_then_resume_reuses_what_was_uploaded(
        spec_for: SpecFor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESTIC_PACK_SIZE", "4")
    src = big_source(tmp_path / "src")
    source_bytes = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    spec = spec_for([src])
    engine = ResticEngine()
    reporter = RecordingReporter()
    thread, outcome = in_thread(lambda: engine.backup(spec, RunControl(), reporter))
    pid = restic_pid(reporter)
    wait_until(lambda: pack_bytes(spec.destination) >= 16 * MiB, 30, "restic to upload")
    os.kill(pid, signal.SIGKILL)
    thread.join(60)
    assert isinstance(outcome[0], EngineError)
    assert "stopped by signal SIGKILL" in str(outcome[0]) and "again to resume" in str(outcome[0])
    assert lock_files(spec.destination)  # the killed restic's lock is left behind
    result = engine.backup(spec, RunControl(), RecordingReporter(),
                           resume=reporter.checkpoints[-1])
    # The dead lock is gone (it would block every command that needs the repository to
    # itself: check, prune).
    assert lock_files(spec.destination) == []
    out = restore(spec, result.snapshot_id, tmp_path / "r")
    assert tree_signature(out / "src") == tree_signature(src)
    # What the killed run uploaded was indexed and reused, not uploaded a second time.
    assert pack_bytes(spec.destination) < source_bytes + 8 * MiB


def test_discard_stops_a_restic_a_crash_left_paused(spec_for: SpecFor, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESTIC_PACK_SIZE", "4")
    spec = spec_for([big_source(tmp_path / "src", 32 * MiB)])
    started = time.time()
    # What a crashed worker leaves behind: its restic, paused, holding a lock for good.
    orphan = subprocess.Popen(
        restic_command(spec.destination, "backup", "--json", str(tmp_path / "src")),
        env=restic_env(Path(spec.options["password_file"]), Path(spec.options["cache_dir"])),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: bool(pack_names(spec.destination)), 30, "restic to upload")
        os.kill(orphan.pid, signal.SIGSTOP)
        assert lock_files(spec.destination)
        ResticEngine().discard_partial(spec, {"engine": "restic", "started": started,
                                              "pid": orphan.pid})
        assert orphan.wait(10) == -signal.SIGKILL
        assert lock_files(spec.destination) == []
        assert pack_names(spec.destination) == set()
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()


# --- verify and prune -----------------------------------------------------------------------


def test_verify_passes_then_catches_a_flipped_byte_in_a_pack(backed_up: BackedUp,
                                                            tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(backed_up.spec.destination, repo)
    spec = dataclasses.replace(backed_up.spec, destination=repo, options={
        **backed_up.spec.options, "cache_dir": str(tmp_path / "cache")})
    engine = ResticEngine()
    reporter = RecordingReporter()
    verdict = engine.verify(spec, backed_up.result.snapshot_id, RunControl(), reporter)
    assert verdict.ok and verdict.problems == () and verdict.files_checked == \
        backed_up.result.files
    assert reporter.progress_updates[-1].phase == "done"
    biggest = max((p for p in (repo / "data").rglob("*") if p.is_file()),
                  key=lambda p: p.stat().st_size)
    data = bytearray(biggest.read_bytes())
    data[len(data) // 2] ^= 0x01
    biggest.chmod(0o600)
    biggest.write_bytes(bytes(data))
    verdict = engine.verify(spec, backed_up.result.snapshot_id, RunControl(),
                            RecordingReporter())
    assert not verdict.ok
    assert any("does not match" in p or "contains errors" in p for p in verdict.problems)


def test_prune_keeps_the_newest_two(spec_for: SpecFor, tmp_path: Path) -> None:
    src = tmp_path / "src"
    spec = spec_for([src])
    engine = ResticEngine()
    ids = []
    for i in range(4):
        write(src / "a.txt", f"version {i}\n".encode(), mtime=1_700_000_000 + i)
        ids.append(engine.backup(spec, RunControl(), RecordingReporter()).snapshot_id)
    removed = engine.prune(spec, Retention(keep_last=2))
    assert sorted(removed) == sorted(ids[:2])
    assert [s.id for s in engine.snapshots(spec)] == ids[2:]

"""The rsync engine beyond the contract: its output parser, exit codes, selection parity
with mirror, hard links, pause/cancel of the rsync process, and resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import engines.rsync.engine as rsync_engine
import engines.rsync.manifest as rsync_manifest
from engines.base import (
    BackupResult,
    BackupSpec,
    BinaryMissing,
    Cancelled,
    DiskFull,
    EngineError,
    Interrupted,
    Progress,
    RunControl,
)
from engines.child import process_alive
from engines.manifest import Manifest
from engines.mirror import MirrorEngine
from engines.rsync import RsyncEngine
from engines.rsync.args import RSYNC_MISSING
from engines.rsync.output import TransferTally, check_outcome, parse_item, parse_progress2
from engines.scan import Entry, scan
from engines.treestore import manifest_path
from tests.cli_helpers import REPO
from tests.engine_contract_helpers import descendants
from tests.engine_helpers import (
    RecordingReporter,
    make_tree,
    tree_signature,
    walk_deleting_on_second_call,
    write,
)

# --- the progress2 parser -----------------------------------------------------------------


def test_progress2_lines_as_rsync_prints_them() -> None:
    mid_file = parse_progress2("     21,233,664  70%   19.55MB/s    0:00:00  ")
    assert mid_file is not None and mid_file.bytes == 21_233_664 and mid_file.percent == 70
    assert mid_file.check is None and not mid_file.totals_final
    listing = parse_progress2("  1,234,567  45%   12.34MB/s    0:00:03 (xfr#12, ir-chk=1000/2345)")
    assert listing is not None
    assert (listing.bytes, listing.transfers, listing.check, listing.left, listing.total) == \
        (1_234_567, 12, "ir", 1000, 2345)
    assert not listing.totals_final
    final = parse_progress2("       30000004  99%  953.67MB/s    0:00:01 (xfr#2, to-chk=0/8)")
    assert final is not None and final.bytes == 30_000_004 and final.totals_final
    assert (final.left, final.total) == (0, 8)
    for other in ("", "created directory /x/y", "sending incremental file list",
                  "[bm-item]3:0:hf         :a", "total size is 30,000,006  speedup is 1.00"):
        assert parse_progress2(other) is None


def test_tally_splits_carriage_returns_and_moves_from_ir_chk_to_to_chk() -> None:
    # One read as it comes from the pipe: a line rewritten with \r, then finished with \n.
    stream = ("\r         32,768   0%    0.00kB/s    0:00:00  "
              "\r      5,000,000  40%   19.54MB/s    0:00:00  "
              "\r      8,000,000  64%   19.66MB/s    0:00:01 (xfr#1, ir-chk=1020/1030)\n"
              "[bm-item]8000000:8000371:>f+++++++++:big.bin\n"
              "\r      8,000,010  64%   19.66MB/s    0:00:01 (xfr#2, ir-chk=1011/1040)\n"
              "[bm-item]10:49:>f+++++++++:dir/small.txt\n"
              "[bm-item]4500000:0:hf         :unchanged.bin\n"
              "[bm-item]4096:0:cd+++++++++:dir/\n"
              "\r      8,000,010  64%   19.66MB/s    0:00:01 (xfr#2, to-chk=0/1040)\n")
    whole = TransferTally()
    seen: list[tuple[bool, int | None]] = []
    # Pieces of every size, cutting lines anywhere: the result must not depend on them.
    for size in (1, 7, 64, len(stream)):
        tally = TransferTally()
        for start in range(0, len(stream), size):
            tally.feed(stream[start:start + size])
            if size == 1:
                seen.append((tally.counting, tally.entries_total))
        tally.finish()
        assert (tally.files_done, tally.bytes_done, tally.counting, tally.entries_total) == \
            (3, 8_000_010 + 4_500_000, False, 1040)
        whole = tally
    assert whole.current_file == "unchanged.bin"
    assert whole.entries_checked == 1040
    # Counting (totals not final) while ir-chk showed, final from the first to-chk on.
    states = [s for i, s in enumerate(seen) if i == 0 or s != seen[i - 1]]
    assert states == [(True, None), (True, 1030), (True, 1040), (False, 1040)]


def test_tally_counts_a_line_only_once_it_is_complete() -> None:
    tally = TransferTally()
    tally.feed("[bm-item]100:0:hf         :half-a-na")
    assert tally.files_done == 0  # the name may go on
    tally.feed("me.txt\n")
    assert (tally.files_done, tally.current_file) == (1, "half-a-name.txt")
    tally.feed("\r  1,000   1%  0.00kB/s  0:00:00")  # no line end yet: kept until the end
    assert tally.progress_bytes == 0
    tally.finish()
    assert tally.progress_bytes == 1000


def test_item_lines() -> None:
    sent = parse_item("[bm-item]30000000:30003704:>f..t......:big")
    assert sent is not None and sent.is_file and sent.transferred and sent.length == 30_000_000
    linked = parse_item("[bm-item]3:0:hf         :sub/b: with colon")
    assert linked is not None and linked.is_file and not linked.transferred
    assert linked.name == "sub/b: with colon"
    directory = parse_item("[bm-item]4096:0:cd+++++++++:empty/")
    assert directory is not None and not directory.is_file
    escaped = parse_item("[bm-item]5:0:.f         :new\\#012line.txt")
    assert escaped is not None and escaped.name == "new\nline.txt"
    assert parse_item("created directory x") is None
    assert parse_item("[bm-item]garbage") is None


# --- exit codes and stderr -------------------------------------------------------------------


def test_exit_codes_become_warnings_or_clear_errors(tmp_path: Path) -> None:
    assert check_outcome(0, [], tmp_path) == []
    vanished = check_outcome(24, [
        'file has vanished: "/data/src/tmp/lock"',
        "rsync warning: some files vanished before they could be transferred (code 24) "
        "at main.c(1865) [sender=3.5.0]"], tmp_path)
    assert vanished == ["/data/src/tmp/lock vanished during the backup; skipped"]
    unreadable = check_outcome(23, [
        'rsync: [sender] link_stat "/data/src/gone" failed: No such file or directory (2)',
        'rsync: [sender] send_files failed to open "/data/src/a": Permission denied (13)',
        "rsync error: some files/attrs were not transferred (see previous errors) (code 23) "
        "at main.c(1394) [sender=3.5.0]"], tmp_path)
    assert unreadable == ["/data/src/gone vanished during the backup; skipped",
                          "/data/src/a cannot be read (Permission denied); skipped"]
    # The destination refusing a write is not a source file problem: the run fails.
    with pytest.raises(EngineError, match=r"partial transfer due to error \(exit code 23\): "
                       r'rsync: \[receiver\] mkstemp "/b/x" failed: Permission denied'):
        check_outcome(23, ['rsync: [receiver] mkstemp "/b/x" failed: Permission denied (13)',
                           "rsync error: some files/attrs were not transferred (code 23)"],
                      tmp_path)
    with pytest.raises(DiskFull, match=f"destination {tmp_path} is full"):
        check_outcome(11, [
            'rsync: [receiver] write failed on "/b/x": No space left on device (28)',
            "rsync error: error in file IO (code 11) at receiver.c(657) [receiver=3.5.0]",
            "rsync: [sender] write error: Broken pipe (32)"], tmp_path)
    with pytest.raises(EngineError, match="error in rsync protocol data stream"):
        check_outcome(12, ["rsync: connection unexpectedly closed"], tmp_path)
    with pytest.raises(EngineError, match="killed by signal SIGKILL"):
        check_outcome(-9, [], tmp_path)


def test_binary_missing_is_a_clear_error(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    write(src / "a.txt", b"a\n")
    spec = BackupSpec.build([src], tmp_path / "dest")
    monkeypatch.setenv("PATH", "")
    with pytest.raises(BinaryMissing) as err:
        RsyncEngine().check_ready(spec)
    assert str(err.value) == RSYNC_MISSING
    with pytest.raises(BinaryMissing, match="apt-get install rsync"):
        RsyncEngine().backup(spec, RunControl(), RecordingReporter())
    assert not (tmp_path / "dest").exists()  # nothing was started


# --- real backups ----------------------------------------------------------------------------


def run_backup(spec: BackupSpec, reporter: RecordingReporter | None = None,
               control: RunControl | None = None) -> BackupResult:
    """One rsync backup to completion."""
    return RsyncEngine().backup(spec, control or RunControl(), reporter or RecordingReporter())


def test_progress_counts_then_knows_totals_and_tells_the_truth(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(6):
        write(src / f"part-{i}.bin", os.urandom(512 << 10))
    for i in range(15):
        write(src / "small" / f"{i}.txt", f"{i}\n".encode() * 100)
    total = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    # Slow enough (~4 MB/s, under a second) that rsync reports between files.
    spec = BackupSpec.build([src], tmp_path / "dest", options={"bwlimit": 4000})
    reporter = RecordingReporter()
    run_backup(spec, reporter)
    updates = reporter.progress_updates
    counting = [i for i, p in enumerate(updates) if p.counting]
    known = [i for i, p in enumerate(updates) if not p.counting]
    assert counting and known and counting[0] < known[0]
    assert all(p.eta is None and p.bytes_total is None for p in updates if p.counting)
    copying = [p for p in updates if p.phase == "copying"]
    assert all(p.bytes_total == total and p.files_total == 21 for p in copying)
    assert any(0 < p.files_done < 21 for p in copying)
    done = [p.bytes_done for p in copying]
    assert done == sorted(done) and done[-1] == total
    assert any(0 < b < total for b in done), "no progress in the middle of the copy"
    assert updates[-1].phase == "done" and updates[-1].bytes_done == total


def test_unchanged_files_are_hard_links_and_are_not_hashed_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_tree(tmp_path / "src", small_files=30, large_bytes=1 << 20)
    spec = BackupSpec.build([src], tmp_path / "dest")
    first = run_backup(spec)
    time.sleep(1.05)  # snapshot ids have one-second resolution
    write(src / "big.bin", b"changed\n", mtime=1_700_009_000)
    hashed: list[str] = []
    real_hash = rsync_manifest.sha256_file

    def counting_hash(path: Path, on_chunk: Callable[[int], None]) -> str:
        hashed.append(path.name)
        return real_hash(path, on_chunk)

    monkeypatch.setattr(rsync_manifest, "sha256_file", counting_hash)
    reporter = RecordingReporter()
    second = run_backup(spec, reporter)
    old, new = tmp_path / "dest" / first.snapshot_id, tmp_path / "dest" / second.snapshot_id
    assert (new / "src/run.sh").stat().st_ino == (old / "src/run.sh").stat().st_ino
    assert (new / "src/deep/er/est/leaf.txt").stat().st_ino == \
        (old / "src/deep/er/est/leaf.txt").stat().st_ino
    assert (new / "src/big.bin").stat().st_ino != (old / "src/big.bin").stat().st_ino
    assert hashed == ["big.bin"]  # the others kept the previous manifest's hashes
    assert RsyncEngine().verify(spec, second.snapshot_id, RunControl(), RecordingReporter()).ok
    # The copy bar counts linked files as done, instead of stalling at the changed bytes.
    copying = [p for p in reporter.progress_updates if p.phase == "copying"]
    assert copying[-1].bytes_done == copying[-1].bytes_total == second.bytes


def _selection_tree(root: Path) -> Path:
    for rel in ("a.txt", "b.log", "c.pdf", "docs/x.pdf", "docs/sub/y.pdf", "docs/sub/z.txt",
                "node_modules/m.js", "lib/node_modules/n.txt", "tmp/t.txt", "lib/tmp/u.txt",
                "keep/any.bin", "keep/deep/k.bin", "tmp2", ".hidden/h.txt", ".dot.txt",
                "lib/deep/er/notes.txt", "lib/deep/er/skip.bin"):
        write(root / rel, rel.encode())
    (root / "empty").mkdir()
    (root / "keep" / "empty-kept").mkdir()
    os.symlink("a.txt", root / "link.txt")
    return root


@pytest.mark.parametrize(("include", "exclude"), [
    ((), ()),
    ((), ("tmp/", "*.log", "node_modules", "docs/sub")),
    (("*.txt", "docs/**/*.pdf", "keep/"), ("tmp/", "*.log", "node_modules")),
    (("lib/",), ("*.bin",)),
])
def test_include_exclude_select_what_mirror_selects(tmp_path: Path, include: tuple[str, ...],
                                                    exclude: tuple[str, ...]) -> None:
    src = _selection_tree(tmp_path / "src")
    picked = {}
    for engine in (MirrorEngine(), RsyncEngine()):
        spec = BackupSpec.build([src], tmp_path / engine.name, include, exclude)
        result = engine.backup(spec, RunControl(), RecordingReporter())
        manifest = Manifest.read(manifest_path(spec.destination, result.snapshot_id))
        picked[engine.name] = {e["path"]: (e["type"], e.get("size"), e.get("sha256"),
                                           e.get("target"), e["mode"])
                               for e in manifest.entries}
        assert tree_signature(spec.destination / result.snapshot_id).keys() == \
            picked[engine.name].keys()
    assert picked["rsync"] == picked["mirror"]
    assert len(picked["rsync"]) > 1


def test_a_file_that_vanishes_is_a_warning_not_a_failure(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    write(src / "stays.txt", b"here\n")
    write(src / "gone.txt", b"soon gone\n")
    def scan_then_delete(spec: BackupSpec, control: RunControl,
                         reporter: Any) -> Iterator[Entry]:
        yield from scan(spec, control, reporter)
        (src / "gone.txt").unlink()  # between the scan and rsync's own look

    monkeypatch.setattr(rsync_engine, "walk", scan_then_delete)
    spec = BackupSpec.build([src], tmp_path / "dest")
    reporter = RecordingReporter()
    result = run_backup(spec, reporter)
    assert result.warnings == (f"{src}/gone.txt vanished during the backup; skipped",)
    assert reporter.warnings == list(result.warnings)
    snap = tmp_path / "dest" / result.snapshot_id
    assert sorted(os.listdir(snap / "src")) == ["stays.txt"]
    assert RsyncEngine().verify(spec, result.snapshot_id, RunControl(), RecordingReporter()).ok


def test_odd_names_several_sources_and_a_single_file_source(tmp_path: Path) -> None:
    odd = tmp_path / "we[i]rd *:src"
    for name in ("-rf", "--help", "new\nline.txt", "back\\slash", "ünï ✓", "*", "a:b"):
        write(odd / name, name.encode())
    os.symlink("-rf", odd / "-link")
    lone = tmp_path / "other" / "lone file.txt"
    write(lone, b"just me\n")
    spec = BackupSpec.build([odd, lone], tmp_path / "dest dir:x")
    engine = RsyncEngine()
    first = run_backup(spec)
    assert first.files == 8
    out = tmp_path / "restore"
    engine.restore(spec, first.snapshot_id, out, RunControl(), RecordingReporter())
    assert tree_signature(out / odd.name) == tree_signature(odd)
    assert (out / lone.name).read_bytes() == b"just me\n"
    assert engine.verify(spec, first.snapshot_id, RunControl(), RecordingReporter()).ok
    time.sleep(1.05)
    second = run_backup(spec)  # the single file is linked too
    snaps = tmp_path / "dest dir:x"
    assert (snaps / second.snapshot_id / lone.name).stat().st_ino == \
        (snaps / first.snapshot_id / lone.name).stat().st_ino


# --- the rsync process: pause, cancel, interrupt and resume ------------------------------------


def _rsync_states() -> list[str]:
    """The state letter (R, S, T, ...) of every rsync process this test started."""
    states = []
    for pid in descendants(os.getpid()):
        try:
            stat_line = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if "(rsync)" in stat_line:
            states.append(stat_line.rsplit(")", 1)[1].split()[0])
    return states


def _wait_for(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


class _Trigger(RecordingReporter):
    """Records, and fires `action` once, on the first progress that `when` accepts."""

    def __init__(self, when: Callable[[Progress], bool], action: Callable[[], None]) -> None:
        super().__init__()
        self.when, self.action = when, action
        self.fired = threading.Event()

    def progress(self, progress: Progress) -> None:
        """Record, and fire the action once."""
        super().progress(progress)
        if not self.fired.is_set() and self.when(progress):
            self.fired.set()
            self.action()


def test_pause_stops_rsync_resume_continues_cancel_cleans_up(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "a.bin", os.urandom(4 << 20))
    write(src / "b.bin", os.urandom(4 << 20))
    dest = tmp_path / "dest"
    spec = BackupSpec.build([src], dest, options={"bwlimit": 4000})
    control = RunControl()
    reporter = _Trigger(lambda p: p.phase == "copying" and p.bytes_done > 0, control.pause)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            run_backup(spec, reporter, control)
        except BaseException as err:
            errors.append(err)

    worker = threading.Thread(target=work)
    worker.start()
    assert reporter.fired.wait(10)
    assert _wait_for(lambda: bool(_rsync_states()) and set(_rsync_states()) == {"T"}), \
        _rsync_states()
    held = reporter.progress_updates[-1].bytes_done
    time.sleep(0.5)
    assert reporter.progress_updates[-1].bytes_done == held < 8 << 20
    assert worker.is_alive()
    control.resume()
    assert _wait_for(lambda: "T" not in _rsync_states())
    assert _wait_for(lambda: reporter.progress_updates[-1].bytes_done > held)
    control.cancel()
    worker.join(15)
    assert not worker.is_alive() and len(errors) == 1 and isinstance(errors[0], Cancelled)
    assert _wait_for(lambda: not _rsync_states())
    assert os.listdir(dest) == []
    assert RsyncEngine().snapshots(spec) == []


def test_interrupt_keeps_the_partial_and_resume_does_not_copy_finished_files(
        tmp_path: Path) -> None:
    src = tmp_path / "src"
    for name in "abcd":
        write(src / f"{name}.bin", os.urandom(1 << 20))
    write(src / "z-gone-before-resume.txt", b"copied, then deleted from the source\n")
    dest = tmp_path / "dest"
    slow = BackupSpec.build([src], dest, options={"bwlimit": 3000})
    control = RunControl()
    # rsync names a file just before renaming it into place, so only once the second one
    # is named is the first one surely there.
    reporter = _Trigger(lambda p: p.phase == "copying" and p.files_done >= 2, control.interrupt)
    with pytest.raises(Interrupted):
        run_backup(slow, reporter, control)
    checkpoint = reporter.checkpoints[-1]
    assert checkpoint["engine"] == "rsync"
    partial = dest / checkpoint["partial"]
    assert partial.name == f"{checkpoint['snapshot_id']}.partial" and partial.is_dir()
    assert RsyncEngine().snapshots(slow) == []
    assert not _rsync_states()
    finished = {p.name: p.stat().st_ino for p in (partial / "src").iterdir()
                if p.stat().st_size == (src / p.name).stat().st_size}
    assert "a.bin" in finished and len(finished) < 5, finished

    (src / "z-gone-before-resume.txt").unlink()
    fast = BackupSpec.build([src], dest)
    resumed = RecordingReporter()
    result = RsyncEngine().backup(fast, RunControl(), resumed, resume=checkpoint)
    assert result.snapshot_id == checkpoint["snapshot_id"]
    snap = dest / result.snapshot_id / "src"
    for name, inode in finished.items():
        if name != "z-gone-before-resume.txt":
            assert (snap / name).stat().st_ino == inode, f"{name} was copied again"
    assert tree_signature(snap) == tree_signature(src)
    assert RsyncEngine().verify(fast, result.snapshot_id, RunControl(), RecordingReporter()).ok
    assert sorted(os.listdir(dest)) == [result.snapshot_id, f"{result.snapshot_id}.manifest.json"]


def test_a_file_deleted_as_a_resumed_rsync_run_starts_is_not_left_in_its_snapshot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A resumed run listed the source once to prune its partial, then again for rsync: a
    # file copied before the interruption and deleted between the two stayed in the
    # snapshot (and its manifest) though the source the run copied no longer had it.
    src = tmp_path / "src"
    for name in "abcd":
        write(src / f"{name}.bin", os.urandom(1 << 20))
    dest = tmp_path / "dest"
    control = RunControl()
    reporter = _Trigger(lambda p: p.phase == "copying" and p.files_done >= 2, control.interrupt)
    with pytest.raises(Interrupted):
        run_backup(BackupSpec.build([src], dest, options={"bwlimit": 3000}), reporter,
                   control)
    checkpoint = reporter.checkpoints[-1]
    assert (dest / checkpoint["partial"] / "src" / "a.bin").exists()
    # The source changes between a first and a second walk of the resumed run.
    monkeypatch.setattr(rsync_engine, "walk", walk_deleting_on_second_call(src / "a.bin"))
    fast = BackupSpec.build([src], dest)
    result = RsyncEngine().backup(fast, RunControl(), RecordingReporter(), resume=checkpoint)
    snap = dest / result.snapshot_id / "src"
    assert tree_signature(snap) == tree_signature(src)
    assert RsyncEngine().verify(fast, result.snapshot_id, RunControl(), RecordingReporter()).ok


def test_a_paused_rsync_dies_with_its_killed_worker_and_the_resume_completes(
        tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "big.bin", os.urandom(2 * 1024 * 1024))
    dest = tmp_path / "dest"
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({"engine": "rsync", "sources": [str(src)],
                                     "destination": str(dest),
                                     "options": {"bwlimit": 512}}))
    cmd = [sys.executable, "-m", "tests.engine_worker", "backup", str(spec_file)]
    worker = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    assert worker.stdin is not None and worker.stdout is not None
    checkpoint: dict[str, Any] = {}
    for line in worker.stdout:
        msg = json.loads(line)
        if msg["kind"] == "checkpoint" and "pid" in msg["state"]:
            checkpoint = msg["state"]
            break
    worker.stdin.write("pause\n")
    worker.stdin.flush()
    leftover = int(checkpoint["pid"])
    for _ in range(100):  # rsync is stopped (state T) once the pause lands
        if Path(f"/proc/{leftover}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "T":
            break
        time.sleep(0.02)
    worker.kill()  # the worker only, as in a crash
    worker.wait(timeout=10)
    # Its paused rsync goes with it (PDEATHSIG): nothing is left writing into the
    # partial snapshot (before, it stayed stopped for good until a resume found it).
    deadline = time.monotonic() + 5
    while process_alive(leftover) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not process_alive(leftover)
    (tmp_path / "checkpoint.json").write_text(json.dumps(checkpoint))
    resumed = subprocess.run([*cmd, "--resume", str(tmp_path / "checkpoint.json")], cwd=REPO,
                             capture_output=True, text=True, timeout=120, check=False)
    assert json.loads(resumed.stdout.splitlines()[-1])["kind"] == "result", resumed.stdout
    assert not process_alive(leftover)
    snaps = RsyncEngine().snapshots(BackupSpec.build([src], dest))
    assert len(snaps) == 1
    assert tree_signature(dest / snaps[0].id / "src") == tree_signature(src)

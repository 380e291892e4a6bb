"""Issue 12 for the restic engine, against the real restic: jobs sharing a repository keep
apart (item 1), a repository that vanishes mid-backup fails the run within seconds and a
snapshot restic cannot list is no success (item 3), no restic outlives a killed server
(item 13), and a missing password file is a clear error that shows no password."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from engines.base import BackupSpec, EngineError, RunControl, SnapshotNotFound
from engines.child import OWNER_ENV, owner_mark, process_alive, stop_orphans_on
from engines.restic import ResticEngine, restic_command, restic_env
from engines.restic.jobs import job_tag
from models.retention import Retention
from tests.cli_helpers import free_port, spawn_server, wait_served
from tests.engine_helpers import RecordingReporter, write

PASSWORD = "s3cret-horse battery staple"
MiB = 1 << 20
RESTIC = shutil.which("restic")
pytestmark = pytest.mark.skipif(RESTIC is None, reason="restic is not installed")


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An initialised empty repository (init costs seconds: made once, copied per test)."""
    base = tmp_path_factory.mktemp("restic-safety")
    password_file = base / "password"
    password_file.write_text(PASSWORD + "\n")
    repo = base / "repo"
    subprocess.run(restic_command(repo, "init"), env=restic_env(password_file, base / "cache"),
                   check=True, capture_output=True)
    return repo, password_file


@pytest.fixture
def repo(template: tuple[Path, Path], tmp_path: Path) -> Path:
    """A fresh copy of the template repository."""
    dest = tmp_path / "repo"
    shutil.copytree(template[0], dest)
    return dest


def spec(template: tuple[Path, Path], repo: Path, sources: list[Path], job_id: str = "",
         **options: Any) -> BackupSpec:
    """A spec of a job on `repo`."""
    return BackupSpec.build(sources, repo, options={
        "password_file": str(template[1]), "cache_dir": str(repo.parent / "cache"), **options},
        job_id=job_id)


def backup(s: BackupSpec) -> str:
    """One backup; its snapshot id."""
    return ResticEngine().backup(s, RunControl(), RecordingReporter()).snapshot_id


def restic_snapshots(template: tuple[Path, Path], repo: Path) -> list[dict[str, Any]]:
    """Every snapshot in the repository, as restic itself lists them."""
    out = subprocess.run(restic_command(repo, "--no-lock", "snapshots", "--json"),
                         env=restic_env(template[1], repo.parent / "cache"), check=True,
                         capture_output=True)
    return list(json.loads(out.stdout))


def restics_on(repo: Path) -> list[int]:
    """Pids of restic processes working on `repo` (by its path in their command line)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                argv = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if os.path.basename(argv[0]) == b"restic" and os.fsencode(repo) in argv:
                found.append(int(name))
    return [p for p in found if process_alive(p)]


def wait_for(condition: Callable[[], bool], within: float, what: str) -> float:
    """Poll until condition holds; the seconds it took, or fail naming what did not happen."""
    began = time.monotonic()
    while not condition():
        assert time.monotonic() - began < within, f"timed out after {within} s waiting for {what}"
        time.sleep(0.01)
    return time.monotonic() - began


# --- item 1: two jobs on one repository -------------------------------------------------


def test_two_jobs_on_one_repository_neither_lists_nor_forgets_the_others(
        template: tuple[Path, Path], repo: Path, tmp_path: Path) -> None:
    src_a, src_b = tmp_path / "a" / "photos", tmp_path / "b" / "photos"
    write(src_a / "mine.txt", b"job A's only copy\n")
    write(src_b / "other.txt", b"job B's data\n")
    job_a = spec(template, repo, [src_a], job_id="photos-a1b2c3")
    job_b = spec(template, repo, [src_b], job_id="photos-d4e5f6")
    engine, keep_one = ResticEngine(), Retention(keep_last=1)
    snap_a = backup(job_a)
    assert engine.prune(job_a, keep_one) == []
    snap_b = backup(job_b)
    # B's retention keeps one snapshot: its own. A's only snapshot is not B's to forget.
    assert engine.prune(job_b, keep_one) == []
    assert [s.id for s in engine.snapshots(job_a)] == [snap_a]
    assert [s.id for s in engine.snapshots(job_b)] == [snap_b]
    tags = {s["short_id"]: s.get("tags", []) for s in restic_snapshots(template, repo)}
    assert job_tag("photos-a1b2c3") in tags[snap_a] and job_tag("photos-d4e5f6") in tags[snap_b]
    # Neither can restore, verify or delete the other's snapshot by its id.
    with pytest.raises(SnapshotNotFound):
        engine.restore(job_a, snap_b, tmp_path / "out", RunControl(), RecordingReporter())
    assert not (tmp_path / "out" / "photos" / "other.txt").exists()
    with pytest.raises(SnapshotNotFound):
        engine.verify(job_a, snap_b, RunControl(), RecordingReporter())
    with pytest.raises(SnapshotNotFound):
        engine.delete_snapshots(job_a, [snap_b])
    # A second run of A prunes A's first snapshot only.
    write(src_a / "mine.txt", b"job A's second version\n")
    snap_a2 = backup(job_a)
    assert engine.prune(job_a, keep_one) == [snap_a]
    assert {s["short_id"] for s in restic_snapshots(template, repo)} == {snap_a2, snap_b}
    engine.restore(job_a, snap_a2, tmp_path / "back", RunControl(), RecordingReporter())
    assert (tmp_path / "back" / "photos" / "mine.txt").read_bytes() == b"job A's second version\n"


def test_untagged_snapshots_and_jobless_callers_see_as_before(
        template: tuple[Path, Path], repo: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "f.txt", b"made before jobs were tagged\n")
    # A snapshot without any job tag, as an older version (or restic by hand) made it.
    subprocess.run(restic_command(repo, "backup", str(src)),
                   env=restic_env(template[1], tmp_path / "cache"), check=True,
                   capture_output=True)
    old = restic_snapshots(template, repo)[0]["short_id"]
    tagged = backup(spec(template, repo, [src], job_id="job-1"))
    other = backup(spec(template, repo, [src], job_id="job-2"))
    engine = ResticEngine()
    assert [s.id for s in engine.snapshots(spec(template, repo, [src], job_id="job-1"))] \
        == [old, tagged]
    assert {s.id for s in engine.snapshots(spec(template, repo, [src]))} == {old, tagged, other}
    # An odd job id still makes one tag, which restic keeps as it is.
    odd = "a,b c"
    odd_id = backup(spec(template, repo, [src], job_id=odd))
    assert [s.id for s in engine.snapshots(spec(template, repo, [src], job_id=odd))] \
        == [old, odd_id]


# --- item 3: a repository that vanishes, a snapshot that cannot be listed ---------------


def test_repository_deleted_during_a_backup_fails_within_seconds(
        template: tuple[Path, Path], repo: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    # 64 GiB of holes: restic reads and chunks them for minutes (the repository stays
    # small, the zeros deduplicate), plenty of time to delete the repository under it.
    with open(src / "sparse.img", "wb") as fh:
        fh.truncate(64 << 30)
    s = spec(template, repo, [src], job_id="big-1")
    reporter = RecordingReporter()
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(ResticEngine().backup(s, RunControl(), reporter))
        except EngineError as err:
            outcome.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_for(lambda: any(p.bytes_done > 0 for p in reporter.progress_updates), 60,
             "restic to start reading")
    pid = next(c["pid"] for c in reporter.checkpoints if "pid" in c)
    shutil.rmtree(repo)
    deleted = time.monotonic()
    thread.join(30)
    took = time.monotonic() - deleted
    assert not thread.is_alive(), "the backup went on after its repository was deleted"
    print(f"the backup failed {took:.2f} s after its repository was deleted")
    assert took < 10, f"noticed {took:.1f} s after the repository was deleted"
    assert len(outcome) == 1 and isinstance(outcome[0], EngineError), outcome
    assert f"the repository {repo} vanished during the backup" in str(outcome[0])
    assert not process_alive(pid)
    # What restic re-created in the repository's place (data/, index/ ...) is gone again.
    assert not repo.exists() or os.listdir(repo) == []


def test_a_snapshot_restic_cannot_list_afterwards_is_no_success(
        template: tuple[Path, Path], repo: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "f.txt", b"x" * 1000)
    s = spec(template, repo, [src], job_id="lost-1")
    # Something removes every snapshot file the moment it appears (the repository's
    # config stays, so only the check after restic can tell).
    stop = threading.Event()

    def remove_snapshots() -> None:
        while not stop.is_set():
            for entry in os.scandir(repo / "snapshots"):
                if len(entry.name) == 64:
                    Path(entry.path).unlink(missing_ok=True)
            time.sleep(0.001)

    remover = threading.Thread(target=remove_snapshots, daemon=True)
    remover.start()
    try:
        with pytest.raises(EngineError, match="cannot be found in the repository"):
            backup(s)
    finally:
        stop.set()
        remover.join()
    assert ResticEngine().snapshots(s) == []


def test_a_missing_password_file_is_a_clear_error_and_no_restic_runs(
        template: tuple[Path, Path], repo: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    src = tmp_path / "src"
    write(src / "f.txt", b"data\n")
    missing = tmp_path / "gone" / "password"
    s = spec(template, repo, [src], job_id="pw-1", password_file=str(missing))
    engine = ResticEngine()
    for call in (lambda: engine.check_ready(s), lambda: backup(s)):
        with pytest.raises(EngineError) as err:
            call()
        assert str(err.value) == (f"the restic password file {missing} cannot be read (No "
                                  "such file or directory); create it or correct the job's "
                                  "password_file")
    assert restics_on(repo) == []
    assert restic_snapshots(template, repo) == []
    # A run with the password: restic has it by file, never in its command line.
    reporter = RecordingReporter()
    good = spec(template, repo, [src], job_id="pw-1")
    seen: list[bytes] = []
    engine_thread = threading.Thread(
        target=lambda: engine.backup(good, RunControl(), reporter), daemon=True)
    engine_thread.start()
    while engine_thread.is_alive():
        for pid in restics_on(repo):
            with contextlib.suppress(OSError):
                seen.append(Path(f"/proc/{pid}/cmdline").read_bytes())
        time.sleep(0.005)
    assert seen, "no restic command line was seen"
    assert not any(PASSWORD.encode() in argv for argv in seen)
    assert PASSWORD not in caplog.text


# --- item 13: no restic outlives a killed server ----------------------------------------


def api(port: int, method: str, path: str, body: Any = None, timeout: float = 60) -> Any:
    """One JSON request to a server process."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def slow_restic(bin_dir: Path) -> dict[str, str]:
    """An environment whose `restic` is the real one reading and writing at most 2 MB/s,
    so a check or a backup of a few MiB lasts long enough to kill the server during it."""
    bin_dir.mkdir()
    wrapper = bin_dir / "restic"
    wrapper.write_text(f'#!/bin/sh\nexec {RESTIC} --limit-download 2000 --limit-upload 2000 '
                       '"$@"\n')
    wrapper.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


@contextlib.contextmanager
def server_with_job(template: tuple[Path, Path], repo: Path, tmp_path: Path
                    ) -> Iterator[tuple[subprocess.Popen[str], int, str]]:
    """A server process with a restic job on `repo` (backing up 24 MiB of random data);
    whatever restic is left on `repo` is killed at the end."""
    src = tmp_path / "src"
    write(src / "random.bin", os.urandom(24 * MiB))
    data, port = tmp_path / "data", free_port()
    with open(tmp_path / "server.log", "w") as log:
        server = spawn_server(data, port, log, env=slow_restic(tmp_path / "bin"))
        try:
            assert wait_served(server, port), (tmp_path / "server.log").read_text()
            job = api(port, "POST", "/api/jobs", {
                "name": "Checked", "engine": "restic", "sources": [str(src)],
                "destination": str(repo), "options": {"password_file": str(template[1]),
                                                      "cache_dir": str(tmp_path / "cache")}})
            yield server, port, str(job["id"])
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
            for pid in restics_on(repo):  # only restic on this test's own repository
                os.kill(pid, signal.SIGKILL)


def restics_doing(repo: Path, command: str) -> list[int]:
    """Pids of restic processes running `command` (check, backup) on repo."""
    out = []
    for pid in restics_on(repo):
        with contextlib.suppress(OSError):
            if command.encode() in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
                out.append(pid)
    return out


def state_of(pid: int) -> str:
    """A process's state letter (T when stopped), '' once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def kill_and_time(server: subprocess.Popen[str], pids: list[int], what: str) -> float:
    """SIGKILL the server; the seconds until none of pids is alive (at most 3 s)."""
    os.kill(server.pid, signal.SIGKILL)
    server.wait()
    took = wait_for(lambda: not any(process_alive(p) for p in pids), 10,
                    f"the orphaned {what} to end")
    print(f"{what} ended {took:.2f} s after its server was killed")
    assert took < 3, f"{what} outlived its server by {took:.1f} s"
    return took


@pytest.mark.timeout(120)
def test_a_restic_check_dies_with_its_killed_server(
        template: tuple[Path, Path], repo: Path, tmp_path: Path) -> None:
    with server_with_job(template, repo, tmp_path) as (server, port, job_id):
        snap = backup(spec(template, repo, [tmp_path / "src"], job_id=job_id))

        def verify() -> None:
            with contextlib.suppress(OSError):  # the server is killed under the request
                api(port, "POST", f"/api/jobs/{job_id}/snapshots/{snap}/verify", {})

        threading.Thread(target=verify, daemon=True).start()
        wait_for(lambda: bool(restics_doing(repo, "check")), 60,
                 "the server's restic check to start")
        time.sleep(0.5)  # well inside the check: ~12 s of reading at 2 MB/s
        checks = restics_doing(repo, "check")
        assert checks
        kill_and_time(server, checks, "restic check")
        assert restics_on(repo) == []


@pytest.mark.timeout(120)
def test_a_paused_restic_backup_dies_with_its_killed_server(
        template: tuple[Path, Path], repo: Path, tmp_path: Path) -> None:
    """A stopped restic cannot even die of its broken pipe: only PDEATHSIG ends it."""
    with server_with_job(template, repo, tmp_path) as (server, port, job_id):
        run_id = api(port, "POST", f"/api/jobs/{job_id}/start", {})["run_id"]
        wait_for(lambda: bool(restics_doing(repo, "backup")), 60, "the restic backup")
        time.sleep(0.5)  # inside the upload: ~12 s at 2 MB/s
        pids = restics_doing(repo, "backup")
        assert pids
        assert api(port, "POST", f"/api/runs/{run_id}/pause", {})["state"] == "paused"
        wait_for(lambda: all(state_of(p) == "T" for p in pids), 10, "restic to stop")
        kill_and_time(server, pids, "paused restic backup")
        assert restics_on(repo) == []


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; killed (by their own pid) when it ends."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_leftovers_of_a_dead_server_are_stopped_and_nothing_else(
        template: tuple[Path, Path], repo: Path, tmp_path: Path,
        started: list[subprocess.Popen[bytes]]) -> None:
    src = tmp_path / "src"
    write(src / "random.bin", os.urandom(4 * MiB))
    s = spec(template, repo, [src], job_id="left-1")
    snap = backup(s)
    dead = subprocess.Popen(["true"])
    dead.wait()  # a server that no longer runs: its pid is free

    def reader(mark: dict[str, str]) -> subprocess.Popen[bytes]:
        # A real restic reading slowly (and holding no lock), like a check of a big
        # repository; started without PDEATHSIG, as by an older version.
        env = {k: v for k, v in restic_env(template[1], tmp_path / "cache").items()
               if k != OWNER_ENV}
        proc = subprocess.Popen(
            restic_command(repo, "--no-lock", "--limit-download", "100", "dump", snap,
                           f"{src}/random.bin", binary=str(RESTIC)),
            env={**env, **mark}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        started.append(proc)
        return proc

    orphan = reader({OWNER_ENV: f"{dead.pid}:1"})
    by_hand = reader({})  # someone's own restic: no mark
    ours = reader(owner_mark())  # this (live) process's
    wait_for(lambda: len(restics_on(repo)) == 3, 30, "the three restic processes")
    result = ResticEngine().verify(s, snap, RunControl(), RecordingReporter())
    assert result.ok, result.problems
    # wait, not poll: a killed process can still be exiting when the sweep returns.
    assert orphan.wait(10) is not None
    assert by_hand.poll() is None and ours.poll() is None
    # The mark names this server; the password is not in the environment, only its file.
    environ = Path(f"/proc/{ours.pid}/environ").read_bytes().split(b"\0")
    assert os.fsencode(f"{OWNER_ENV}={owner_mark()[OWNER_ENV]}") in environ
    assert not any(PASSWORD.encode() in e for e in environ)
    # At a server's start, its jobs' destinations are swept the same way.
    orphan = reader({OWNER_ENV: f"{dead.pid}:1"})
    wait_for(lambda: len(restics_on(repo)) == 3, 30, "the new leftover")
    assert stop_orphans_on([str(tmp_path / "elsewhere"), str(repo)]) == 1
    assert orphan.wait(10) is not None and by_hand.poll() is None and ours.poll() is None


def test_a_child_started_by_a_waiting_thread_survives_until_its_process_dies(
        tmp_path: Path) -> None:
    """PDEATHSIG fires when the starting thread ends: the engines' threads wait for their
    child, so it lives as long as needed, and dies at once with the process."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import subprocess, sys, threading, time\n"
        "from engines.child import die_with_parent\n"
        "def run():\n"
        "    p = subprocess.Popen(['sleep', '300'], preexec_fn=die_with_parent())\n"
        "    print(p.pid, flush=True)\n"
        "    p.wait()\n"
        "threading.Thread(target=run).start()\n"
        "time.sleep(300)\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                              cwd=Path(__file__).resolve().parent.parent,
                              env={**os.environ, "PYTHONPATH": str(
                                  Path(__file__).resolve().parent.parent)})
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        time.sleep(1.0)
        assert process_alive(child)  # its thread waits: it lives
        parent.kill()
        parent.wait()
        wait_for(lambda: not process_alive(child), 3, "the child to die with its parent")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_restore_asks_for_holes_exactly_when_this_restic_can_keep_them() -> None:
    """restic 0.15 added `restore --sparse`; 0.14 (Debian 12) fills holes on restore."""
    from engines.restic.cli import restore_keeps_holes

    assert RESTIC is not None
    out = subprocess.run([str(RESTIC), "version"], capture_output=True, text=True,
                         check=True).stdout
    major, minor = (int(x) for x in out.split()[1].split(".")[:2])
    assert restore_keeps_holes(str(RESTIC)) == ((major, minor) >= (0, 15))

"""engines.restic.output: restic's printed output read by pure parsers, on output recorded
from the real restic 0.14 (tests/data/restic-0.14/; the sources were under /tmp/rec)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from engines.base import DestinationNotWritable, DiskFull, EngineError, ProgressMeter
from engines.restic.cli import ResticRepo
from engines.restic.output import (
    BackupOutput,
    Listing,
    Node,
    as_count,
    check_progress,
    json_object,
    known_failure,
    parse_time,
    rel_in,
    restic_error,
    snapshot_roots,
)
from engines.restic.process import Finished, stderr_line
from tests.engine_helpers import RecordingReporter

DATA = Path(__file__).parent / "data" / "restic-0.14"
REPO = ResticRepo(Path("/tmp/rec/repo"), Path("/tmp/rec/pw"), None, False, None)


def _lines(name: str) -> list[bytes]:
    return (DATA / name).read_bytes().splitlines(keepends=True)


def _stderr(name: str) -> list[str]:
    return [line for raw in _lines(name) if (line := stderr_line(raw)) is not None]


def _feed(name: str, roots: dict[str, str]) -> tuple[BackupOutput, RecordingReporter]:
    reporter = RecordingReporter()
    output = BackupOutput(ProgressMeter(reporter), reporter, roots)
    for raw in _lines(name):
        output.feed(raw)
    return output, reporter


def test_a_backup_s_totals_summary_and_final_progress() -> None:
    output, reporter = _feed("backup.stdout", {"src": "/tmp/rec/src"})
    assert output.scan_finished  # 0.14 labels scan_finished a "status"
    assert output.summary is not None
    assert output.summary["snapshot_id"] == "a770fcc8"
    assert output.summary["total_files_processed"] == 3
    assert output.summary["total_bytes_processed"] == 3006
    state = output.meter.state
    # The scan's totals are final; the summary moved the run on to finalising.
    assert (state.files_total, state.bytes_total) == (3, 3006)
    assert state.phase == "finalising" and not state.counting
    assert reporter.warnings == []


def test_a_backup_with_an_unreadable_file_warns_with_the_app_s_path() -> None:
    roots = {"src": "/tmp/rec/nb/src"}
    output, reporter = _feed("backup-unreadable.stdout", roots)
    assert output.summary is not None and output.summary["snapshot_id"] == "2e9c3534"
    taken = [raw for raw in _lines("backup-unreadable.stderr") if output.feed_stderr(raw)]
    assert len(taken) == 1  # the JSON error; restic's plain warning is left for the tail
    assert reporter.warnings == ["src/secret could not be read"]
    assert _stderr("backup-unreadable.stderr")[-1] == \
        "Warning: at least one source file could not be read"


def test_lines_that_are_not_json_become_warnings_then_only_logs() -> None:
    reporter = RecordingReporter()
    output = BackupOutput(ProgressMeter(reporter), reporter, {})
    for n in range(25):
        output.feed(f"something odd {n}\n".encode())
    output.feed(b"\n")
    output.feed(b'{"message_type":"verbose_status","action":"new","item":"/x"}\n')
    assert reporter.warnings == [f"restic: something odd {n}" for n in range(20)]
    assert output.summary is None and not output.scan_finished


def test_a_status_line_gives_progress_and_the_file_in_flight() -> None:
    reporter = RecordingReporter()
    meter = ProgressMeter(reporter, interval=0)
    output = BackupOutput(meter, reporter, {"data": "/srv/data"})
    output.feed(b'{"message_type":"status","seconds_elapsed":2,"seconds_remaining":8,'
                b'"percent_done":0.2,"total_files":10,"files_done":2,"total_bytes":1000,'
                b'"bytes_done":200,"current_files":["/srv/data/a/b.txt"]}\n')
    state = meter.state
    assert output.scan_finished  # seconds_remaining only comes once the scan is done
    assert (state.phase, state.files_done, state.bytes_done) == ("copying", 2, 200)
    assert state.current_file == "data/a/b.txt"


def test_a_listing_counts_files_and_keeps_nodes_under_the_sources() -> None:
    listing = Listing(keep_nodes=True)
    for raw in _lines("ls.stdout"):
        listing.feed(raw)
    assert listing.snapshot is not None and listing.snapshot["short_id"] == "25dbba79"
    assert listing.roots == {"src": "/tmp/rec/src"}
    assert (listing.files, listing.size) == (3, 3011)
    assert listing.nodes == [Node("src", "dir", 0), Node("src/a.txt", "file", 11),
                             Node("src/link", "symlink", 0), Node("src/sub", "dir", 0),
                             Node("src/sub/b.bin", "file", 3000),
                             Node("src/unreadable", "file", 0)]


def test_snapshots_times_and_roots() -> None:
    snaps = json_object(b'{"list": ' + (DATA / "snapshots.json").read_bytes() + b"}")
    assert snaps is not None
    first, second = snaps["list"]
    assert parse_time(first["time"]) == datetime(2026, 12, 3, 12, 44, 0, 838650, tzinfo=UTC)
    assert parse_time("2026-01-02T03:04:05.123456789+02:00") == \
        datetime(2026, 1, 2, 1, 4, 5, 123456, tzinfo=UTC)
    with pytest.raises(ValueError):
        parse_time(None)
    assert first["tags"] == ["bm-0123456789abcdef", "bm-job:job-1"] and "tags" not in second
    assert snapshot_roots(first) == {"src": "/tmp/rec/src"}
    assert snapshot_roots({"paths": ["/", "relative", 3]}) == {"root": "/"}
    assert rel_in("/tmp/rec/src/sub/b.bin", {"src": "/tmp/rec/src"}) == "src/sub/b.bin"
    assert rel_in("/tmp/rec/srcx", {"src": "/tmp/rec/src"}) is None


def test_counts_and_json_objects_tolerate_odd_values() -> None:
    assert [as_count(v) for v in (3, 2.9, -1, True, None, "7")] == [3, 2, 0, 0, 0, 0]
    assert json_object(b"[1, 2]") is None and json_object(b"not json") is None


def test_check_progress_lines() -> None:
    shares = [s for raw in _lines("check.stdout") if (s := check_progress(raw)) is not None]
    # The snapshots line is not the packs line: only reading data counts.
    assert shares == [1.0]
    assert check_progress(b"[0:07] 42.50%  17 / 40 packs\n") == pytest.approx(0.425)


@pytest.mark.parametrize(("recording", "kind", "says"), [
    ("wrong-password.stderr", EngineError, "does not open the restic repository at "
     "/tmp/rec/repo (wrong password)"),
    ("no-repository.stderr", EngineError, "there is no restic repository at /tmp/rec/repo"),
    ("locked.stderr", EngineError, "in use by another restic process (locked exclusively "
     "by PID 17495 on vm by root (UID 0, GID 0))"),
])
def test_errors_restic_explains_on_stderr(recording: str, kind: type[EngineError],
                                          says: str) -> None:
    fin = Finished(1, _stderr(recording), None)
    err = known_failure(REPO, "backup", fin)
    assert type(err) is kind
    assert says in str(err)
    assert "secret-pw" not in str(err)


def test_other_failures_name_restic_s_last_word() -> None:
    full = Finished(1, ["Fatal: unable to save snapshot: write /tmp/rec/repo/data/x: "
                        "no space left on device"], None)
    assert isinstance(known_failure(REPO, "backup", full, Path("/mnt")), DiskFull)
    denied = Finished(1, ["Fatal: create repository at /tmp/rec/repo failed: mkdir "
                          "/tmp/rec/repo: permission denied"], None)
    assert isinstance(known_failure(REPO, "init", denied), DestinationNotWritable)
    killed = restic_error(REPO, "backup", Finished(-9, [], None))
    assert str(killed) == "restic backup was stopped by signal SIGKILL"
    other = restic_error(REPO, "forget", Finished(1, [
        "using temporary cache in /tmp/x", "Fatal: something new went wrong"], None))
    assert str(other) == "restic forget failed (exit code 1): something new went wrong"
    assert _stderr("backup-missing-source.stderr") == ["/tmp/rec/nope does not exist, skipping"]

"""engines.rsync.output: rsync's printed output read by pure parsers, on output recorded
from the real rsync 3 run with this engine's command line (tests/data/rsync-3/; the
source was /tmp/rrec/src: a.txt, café.txt, a link, a name with a line break, sub/big.bin)."""

from __future__ import annotations

import codecs
import signal
from pathlib import Path

import pytest

from engines.base import DiskFull, EngineError
from engines.rsync.output import (
    TransferTally,
    check_outcome,
    classify_stderr,
    parse_item,
    parse_progress2,
)

DATA = Path(__file__).parent / "data" / "rsync-3"


def _tally(name: str, chunk: int) -> TransferTally:
    """Feed a recording as rsync's pipe might deliver it: `chunk` bytes at a time."""
    raw = (DATA / name).read_bytes()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="backslashreplace")
    tally = TransferTally()
    for start in range(0, len(raw), chunk):
        tally.feed(decoder.decode(raw[start:start + chunk]))
    tally.feed(decoder.decode(b"", final=True))
    tally.finish()
    return tally


def _stderr(name: str) -> list[str]:
    return (DATA / name).read_text().splitlines()


@pytest.mark.parametrize("chunk", [1, 7, 1 << 16])
def test_a_first_copy_counts_every_file_as_sent(chunk: int) -> None:
    tally = _tally("first.stdout", chunk)
    # Four regular files; the link and the folder are items but not files.
    assert tally.files_done == 4
    assert (tally.sent_files_bytes, tally.kept_bytes) == (6 + 1 + 1 + 300_000, 0)
    assert tally.bytes_done == 300_008
    assert not tally.counting and (tally.entries_total, tally.entries_checked) == (7, 7)
    assert tally.current_file == "sub/big.bin"


@pytest.mark.parametrize("chunk", [3, 1 << 16])
def test_a_linked_copy_counts_linked_bytes_as_done(chunk: int) -> None:
    tally = _tally("linked.stdout", chunk)
    assert tally.files_done == 4
    # Only the changed a.txt was sent; the others are hard links to the last snapshot.
    assert (tally.sent_files_bytes, tally.kept_bytes) == (12, 300_002)
    assert tally.bytes_done == 300_014


def test_item_lines_name_files_as_they_are() -> None:
    items = [item for line in (DATA / "first.stdout").read_text().splitlines()
             if (item := parse_item(line)) is not None]
    assert [i.name for i in items] == ["a.txt", "café.txt", "link", "new\nline.txt", "sub/",
                                       "sub/big.bin"]
    assert [i.is_file for i in items] == [True, True, False, True, False, True]
    assert all(i.transferred for i in items if i.is_file)
    linked = parse_item("[bm-item]300000:0:hf         :sub/big.bin")
    assert linked is not None and linked.is_file and not linked.transferred
    assert parse_item("[bm-item]x:0:>f:name") is None and parse_item("a.txt") is None


def test_progress2_lines() -> None:
    line = parse_progress2("         300008  99%   47.68MB/s    0:00:00 (xfr#4, to-chk=0/7)")
    assert line is not None
    assert (line.bytes, line.percent, line.transfers, line.left, line.total) == \
        (300_008, 99, 4, 0, 7)
    assert line.totals_final
    listing = parse_progress2("  1,234,567  45%   12.34MB/s    0:00:03 (xfr#12, ir-chk=1000/2345)")
    assert listing is not None and listing.bytes == 1_234_567 and not listing.totals_final
    bare = parse_progress2("              6   0%    0.00kB/s    0:00:00  ")
    assert bare is not None and bare.check is None
    assert parse_progress2("[bm-item]6:49:>f+++++++++:a.txt") is None


def test_a_source_file_gone_before_rsync_read_it_is_a_warning() -> None:
    stderr = _stderr("missing.stderr")
    assert check_outcome(23, stderr, Path("/dest")) == [
        "/tmp/rrec/src/gone.txt vanished during the backup; skipped"]
    problems = classify_stderr(stderr)
    assert problems.errors == [] and problems.disk_full is None


def test_errors_about_the_destination_fail_the_run() -> None:
    full = ['rsync: [receiver] write failed on "/dest/x": No space left on device (28)',
            "rsync error: error in file IO (code 11) at receiver.c(381) [receiver=3.5.0]"]
    with pytest.raises(DiskFull):
        check_outcome(11, full, Path("/dest"))
    denied = ['rsync: [receiver] mkstemp "/dest/.x.abc" failed: Permission denied (13)']
    with pytest.raises(EngineError, match=r"error in file I/O \(exit code 11\): rsync: "
                                          r"\[receiver\] mkstemp"):
        check_outcome(11, denied, Path("/dest"))
    with pytest.raises(EngineError, match="rsync was killed by signal SIGKILL"):
        check_outcome(-signal.SIGKILL, [], Path("/dest"))
    unreadable = ['rsync: [sender] send_files failed to open "/src/secret": '
                  'Permission denied (13)']
    assert check_outcome(23, unreadable, Path("/dest")) == [
        "/src/secret cannot be read (Permission denied); skipped"]

"""The scan is a stream: a backup consumes entries as the walk reads them."""

from __future__ import annotations

from pathlib import Path

from engines.base import BackupSpec, RunControl
from engines.scan import scan, walk
from tests.engine_helpers import RecordingReporter, write


def test_the_walk_reads_a_folder_only_when_it_gets_there(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "a" / "one.txt", b"1")
    write(src / "c" / "three.txt", b"3")
    spec = BackupSpec.build([src], tmp_path / "dest")
    entries = walk(spec, RunControl(), RecordingReporter())
    assert [next(entries).rel for _ in range(3)] == ["src", "src/a", "src/a/one.txt"]
    # Nothing past "a" has been read yet: what is added there now is seen.
    write(src / "c" / "two.txt", b"2")
    assert [e.rel for e in entries] == ["src/c", "src/c/three.txt", "src/c/two.txt"]


def test_scan_is_the_walk_as_a_list(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for rel in ("x/keep.txt", "x/skip.log", "y/skip.log", "z.txt"):
        write(src / rel, rel.encode())
    spec = BackupSpec.build([src], tmp_path / "dest", ("*.txt",), ())
    listed = [e.rel for e in scan(spec, RunControl(), RecordingReporter())]
    assert listed == [e.rel for e in walk(spec, RunControl(), RecordingReporter())]
    # A folder nothing was taken from is left out; one with something taken comes first.
    assert listed == ["src", "src/x", "src/x/keep.txt", "src/z.txt"]

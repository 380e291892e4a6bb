"""Include and exclude globs, with rsync's meaning, over a real tree walk."""

from __future__ import annotations

from pathlib import Path

import pytest

from engines.base import BackupSpec, RunControl
from engines.scan import scan
from engines.selection import InvalidPattern, Selector
from tests.engine_helpers import RecordingReporter, write


def taken(src: Path, include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> set[str]:
    """The file paths (relative to src) a job with these patterns takes."""
    spec = BackupSpec.build([src], "/nowhere", include, exclude)
    entries = scan(spec, RunControl(), RecordingReporter())
    return {e.rel.split("/", 1)[1] for e in entries if e.kind == "file"}


@pytest.fixture
def src(tmp_path: Path) -> Path:
    """A small project tree."""
    root = tmp_path / "src"
    for rel in ["a.txt", "a.tmp", "docs/r.pdf", "docs/x/y.pdf", "docs/x/n.txt",
                "node_modules/m/i.js", "cache/c.bin", "sub/cache", ".hidden"]:
        write(root / rel, b"x")
    return root


def test_no_patterns_takes_everything(src: Path) -> None:
    assert len(taken(src)) == 9


def test_name_patterns_match_at_any_depth(src: Path) -> None:
    assert taken(src, exclude=("*.tmp", "node_modules")) == {
        "a.txt", "docs/r.pdf", "docs/x/y.pdf", "docs/x/n.txt", "cache/c.bin", "sub/cache",
        ".hidden"}


def test_trailing_slash_matches_directories_only(src: Path) -> None:
    # cache/ is a directory at the top and a file under sub/: only the directory goes.
    assert "sub/cache" in taken(src, exclude=("cache/",))
    assert "cache/c.bin" not in taken(src, exclude=("cache/",))


def test_anchored_patterns_and_globstar(src: Path) -> None:
    # `**` spans zero or more directories, as in .gitignore and shells with globstar.
    assert taken(src, include=("docs/**/*.pdf",)) == {"docs/r.pdf", "docs/x/y.pdf"}
    assert taken(src, include=("docs/*/*.pdf",)) == {"docs/x/y.pdf"}
    assert taken(src, include=("docs/**",)) == {"docs/r.pdf", "docs/x/y.pdf", "docs/x/n.txt"}
    assert taken(src, include=("*.pdf",), exclude=("docs/x/",)) == {"docs/r.pdf"}


def test_included_directory_takes_everything_under_it(src: Path) -> None:
    assert taken(src, include=("x/",)) == {"docs/x/y.pdf", "docs/x/n.txt"}


@pytest.mark.parametrize("bad", ["", "/", "a\x00b"])
def test_unusable_patterns_are_refused(bad: str) -> None:
    with pytest.raises(InvalidPattern):
        Selector(exclude=[bad])

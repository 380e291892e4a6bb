"""The archive's hand-built tar headers are the ones tarfile (and so GNU tar) would write."""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from engines.archive import ArchiveEngine
from engines.archive.tarheader import TYPES as _TYPES
from engines.archive.tarheader import tar_header
from engines.base import BackupSpec, NullReporter, RunControl
from tests.engine_helpers import make_tree, tree_signature

NAME_CHARS = st.sampled_from(list("abcxyz/._-0123 'é日✓\\"))


def tarfile_header(name: str, kind: str, size: int, mtime: int, mode: int, link: str,
                   uid: int = 0, gid: int = 0) -> bytes:
    """What Python's tarfile writes for the same member (pax where needed)."""
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mtime, info.mode, info.linkname = (
        _TYPES[kind], size, mtime, mode, link)
    info.uid, info.gid = uid, gid
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


@settings(max_examples=2000, deadline=None)
@given(name=st.text(NAME_CHARS, min_size=1, max_size=300).map(lambda s: s.strip("/") or "x"),
       kind=st.sampled_from(["file", "dir", "symlink", "hardlink"]),
       size=st.sampled_from([0, 1, 511, 512, 513, 10**6, 8**11 - 1, 8**11, 2**40]),
       mtime=st.sampled_from([0, 1, 1_700_000_000, 8**11 - 1, 8**11, -1, -10**9, 2**40]),
       mode=st.integers(0, 0o7777),
       link=st.text(st.sampled_from(list("abc/.é")), max_size=101),
       uid=st.sampled_from([0, 1, 1000, 65534, 8**7 - 1, 8**7, 2**32 - 2]),
       gid=st.sampled_from([0, 100, 8**7 - 1, 8**7]))
def test_headers_match_tarfile_byte_for_byte(name: str, kind: str, size: int, mtime: int,
                                             mode: int, link: str, uid: int, gid: int) -> None:
    size = size if kind == "file" else 0
    link = link if kind in ("symlink", "hardlink") else ""
    assert tar_header(name, kind, size, mtime, mode, link, uid, gid) == \
        tarfile_header(name, kind, size, mtime, mode, link, uid, gid)


def test_gnu_tar_extracts_what_the_archive_engine_wrote(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", small_files=40, large_bytes=3 * 1024 * 1024)
    spec = BackupSpec.build([src], tmp_path / "dest")
    result = ArchiveEngine().backup(spec, RunControl(), NullReporter())
    archive = next((tmp_path / "dest").glob(f"{result.snapshot_id}*.tar.zst"))
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "--zstd", "-xf", str(archive), "-C", str(out)], check=True,
                   timeout=60)
    assert tree_signature(out / "src") == tree_signature(src)

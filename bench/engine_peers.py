"""The archive engine against tar with zstd, and the restic engine against restic itself."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from bench.compare import Comparison, interleave
from bench.engines import Tree, fresh, run, timed
from engines.base import BackupSpec, NullReporter, RunControl
from engines.registry import get_engine

TAR_CREATE = ["tar", "-I", "zstd -3 -T0", "-cf"]
TAR_EXTRACT = ["tar", "-I", "zstd", "-xf"]


def archive_comparisons(tree: Tree, work: Path, repeats: int) -> list[Comparison]:
    """Archive backup against `tar -I 'zstd -3 -T0' -cf`, restore against `tar -I zstd -xf`."""
    ctrl, rep = RunControl(), NullReporter()
    archive = get_engine("archive")
    adest, tdest = work / "archive", work / "tar"
    spec = BackupSpec.build([tree.src], adest)
    tarball = tdest / "src.tar.zst"
    tar_create = [*TAR_CREATE, str(tarball), "-C", str(tree.src.parent), tree.src.name]
    ours, peer = interleave(
        timed(lambda: fresh(adest), lambda: archive.backup(spec, ctrl, rep)),
        timed(lambda: fresh(tdest), lambda: run(tar_create)), repeats)
    out = [Comparison(f"archive backup, {tree.label}", "s", ours, peer,
                      "tar -I 'zstd -3 -T0' -cf", target_ratio=1.0)]
    print(" ", out[-1].line())

    fresh(adest)
    snapshot = archive.backup(spec, ctrl, rep).snapshot_id
    fresh(tdest)
    run(tar_create)
    atarget, ttarget = work / "archive-restored", work / "tar-restored"
    ours, peer = interleave(
        timed(lambda: fresh(atarget),
              lambda: archive.restore(spec, snapshot, atarget, ctrl, rep)),
        timed(lambda: fresh(ttarget),
              lambda: run([*TAR_EXTRACT, str(tarball), "-C", str(ttarget)])),
        repeats)
    out.append(Comparison(f"archive restore, {tree.label}", "s", ours, peer,
                          "tar -I zstd -xf", target_ratio=1.0))
    print(" ", out[-1].line())
    for path in (adest, tdest, atarget, ttarget):
        shutil.rmtree(path, ignore_errors=True)
    return out


def restic_comparison(tree: Tree, work: Path, repeats: int) -> list[Comparison]:
    """The restic engine's backup against `restic backup` run directly, fresh repositories."""
    ctrl, rep = RunControl(), NullReporter()
    pw = work / "restic-password"
    pw.write_text("bench password\n")
    cache = work / "restic-cache"
    env = {**os.environ, "RESTIC_PASSWORD_FILE": str(pw), "RESTIC_CACHE_DIR": str(cache)}
    ours_repo, direct_repo = work / "restic-ours", work / "restic-direct"
    restic = get_engine("restic")
    spec = BackupSpec.build([tree.src], ours_repo, options={
        "password_file": str(pw), "init": True, "cache_dir": str(cache)})

    def init(repo: Path) -> None:
        shutil.rmtree(repo, ignore_errors=True)
        run(["restic", "init", "--repo", str(repo)], env=env, stderr=subprocess.DEVNULL)
        os.sync()

    ours, peer = interleave(
        timed(lambda: init(ours_repo), lambda: restic.backup(spec, ctrl, rep)),
        timed(lambda: init(direct_repo),
              lambda: run(["restic", "backup", "--json", "--repo", str(direct_repo),
                           str(tree.src)], env=env)),
        repeats)
    out = [Comparison(f"restic engine backup, {tree.label}", "s", ours, peer,
                      "restic backup", target_ratio=1.05)]
    print(" ", out[-1].line())
    for path in (ours_repo, direct_repo, cache):
        shutil.rmtree(path, ignore_errors=True)
    return out

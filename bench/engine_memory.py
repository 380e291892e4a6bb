"""Peak memory of a backup and a restore of the many-files tree: the mirror engine run as
the server runs it (backup, then the listing that confirms the snapshot), in a child
process of its own, against rsync doing the same. Both peaks are the kernel's maximum
resident set size of the process (and any it waited for), from wait4.

The child is bench.engine_child, which imports only the engines.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.compare import Comparison, interleave
from bench.engines import Tree, fresh
from engines.base import BackupSpec
from engines.registry import get_engine

MIB = 1024  # time reports KiB
TIME = "/usr/bin/time"
TARGET_MIB = 100.0


def peak_mib(argv: list[str]) -> float:
    """Run a command to its end and return its peak resident memory in MiB."""
    with tempfile.NamedTemporaryFile("r", prefix="bm-peak-") as out:
        subprocess.run([TIME, "-f", "%M", "-o", out.name, *argv], check=True,
                       stdout=subprocess.DEVNULL)
        return int(out.read().split()[-1]) / MIB


def _child(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "bench.engine_child", *argv]


def memory_comparisons(tree: Tree, work: Path, repeats: int,
                       engine: str = "mirror") -> list[Comparison]:
    """Peak memory of a re-run backup (one snapshot before it) and of a full restore."""
    mdest, rdest = work / "memory-ours", work / "memory-rsync"
    src_arg = f"{tree.src}/"
    fresh(mdest)
    fresh(rdest)
    peak_mib(_child(["backup", engine, str(tree.src), str(mdest)]))
    subprocess.run(["rsync", "-a", src_arg, str(rdest / "base")], check=True)
    spec = BackupSpec.build([tree.src], mdest)
    base = get_engine(engine).snapshots(spec)[0].id

    def prune() -> None:
        eng = get_engine(engine)
        eng.delete_snapshots(spec, [s.id for s in eng.snapshots(spec) if s.id != base])
        shutil.rmtree(rdest / "again", ignore_errors=True)

    def ours_backup() -> float:
        prune()
        return peak_mib(_child(["backup", engine, str(tree.src), str(mdest)]))

    def rsync_backup() -> float:
        prune()
        return peak_mib(["rsync", "-a", f"--link-dest={rdest / 'base'}", src_arg,
                         str(rdest / "again")])

    ours, peer = interleave(ours_backup, rsync_backup, repeats)
    out = [Comparison(f"peak memory, {engine} backup (re-run), {tree.label}", "MiB", ours,
                      peer, "rsync -a --link-dest", target_value=TARGET_MIB)]
    print(" ", out[-1].line())
    prune()
    mtarget, rtarget = work / "memory-ours-restored", work / "memory-rsync-restored"

    def ours_restore() -> float:
        fresh(mtarget)
        return peak_mib(_child(["restore", engine, str(tree.src), str(mdest), str(mtarget)]))

    def rsync_restore() -> float:
        fresh(rtarget)
        return peak_mib(["rsync", "-a", f"{rdest / 'base'}/", str(rtarget / "src")])

    ours, peer = interleave(ours_restore, rsync_restore, repeats)
    out.append(Comparison(f"peak memory, {engine} restore, {tree.label}", "MiB", ours, peer,
                          "rsync -a back", target_value=TARGET_MIB))
    print(" ", out[-1].line())
    for path in (mdest, rdest, mtarget, rtarget):
        shutil.rmtree(path, ignore_errors=True)
    return out

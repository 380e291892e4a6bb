"""Engine benchmarks: every engine figure of issue 14 against the tool it replaces.

Same tree, same invocation, interleaved (bench.compare): the mirror engine's initial
backup, no-change re-run and restore against `rsync -a` (`--link-dest` for the re-run),
the archive engine against `tar -I 'zstd -3 -T0'` both ways, the restic engine against
`restic backup` itself (bench.engine_peers), and peak memory of a backup and a restore
of the many-files tree against rsync's (bench.engine_memory).

Trees (generated once under BENCH_DATA, then reused): "mixed", BENCH_SMALL_FILES small
files plus BENCH_LARGE_FILES files of BENCH_LARGE_MB MB; "many", BENCH_MANY_FILES small
files. Knobs: BENCH_ENGINE_REPEATS (5), BENCH_TREES (mixed,many), BENCH_ENGINE_PARTS
(mirror,archive,restic,memory), BENCH_MIRROR_ONLY=initial (the mirror initial backup
alone). A quick run: BENCH_SMALL_FILES=5000 BENCH_MANY_FILES=20000 BENCH_LARGE_MB=20.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.compare import Comparison, interleave
from bench.eventlog import env_int
from engines.base import BackupSpec, NullReporter, RunControl
from engines.registry import get_engine

DATA_ROOT = Path(os.environ.get("BENCH_DATA", "/tmp/bm-bench-data"))
PARTS = ("mirror", "archive", "restic", "memory")


@dataclass(frozen=True)
class Tree:
    """A generated source tree and the words that name it in figures."""

    key: str
    label: str
    src: Path


def write_tree(root: Path, small: int, large: int, large_mb: int) -> Path:
    """Generate (once, then reuse) small files of 1-8000 bytes in nested folders, plus
    `large` random files of `large_mb` MB."""
    marker = root / ".complete"
    src = root / "src"
    if marker.exists():
        return src
    shutil.rmtree(root, ignore_errors=True)
    rng = random.Random(7)
    for i in range(small):
        d = src / f"d{i % 50:02d}" / f"e{(i // 50) % 20:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:06d}.dat").write_bytes(rng.randbytes(rng.randint(1, 8000)))
    src.mkdir(parents=True, exist_ok=True)
    for i in range(large):
        with open(src / f"large-{i}.bin", "wb") as fh:
            for _ in range(large_mb):
                fh.write(os.urandom(1 << 20))
    marker.touch()
    return src


def trees() -> list[Tree]:
    """The trees the knobs ask for, generated if need be."""
    small = env_int("BENCH_SMALL_FILES", 20_000)
    large, large_mb = env_int("BENCH_LARGE_FILES", 3), env_int("BENCH_LARGE_MB", 50)
    many = env_int("BENCH_MANY_FILES", 100_000)
    wanted = os.environ.get("BENCH_TREES", "mixed,many").split(",")
    out = []
    if "mixed" in wanted:
        src = write_tree(DATA_ROOT / f"mixed-{small}-{large}x{large_mb}", small, large, large_mb)
        out.append(Tree("mixed", f"{small:,} files + {large} x {large_mb} MB", src))
    if "many" in wanted:
        out.append(Tree("many", f"{many:,} files",
                        write_tree(DATA_ROOT / f"many-{many}", many, 0, 0)))
    return out


def run(cmd: list[str], **kw: object) -> None:
    """Run a peer tool, failing loudly, its output dropped."""
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]


def fresh(path: Path) -> None:
    """Empty a directory and flush the disk, outside the timed part."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    os.sync()


def timed(prepare: Callable[[], None], action: Callable[[], object]) -> Callable[[], float]:
    """One repeat: prepare (not timed), then the seconds the action takes."""
    def once() -> float:
        prepare()
        start = time.perf_counter()
        action()
        return time.perf_counter() - start
    return once


def _mirror(tree: Tree, work: Path, repeats: int) -> list[Comparison]:
    """Mirror against rsync: initial backup, no-change re-run, restore."""
    ctrl, rep = RunControl(), NullReporter()
    mirror = get_engine("mirror")
    mdest, rdest = work / "mirror", work / "rsync"
    spec = BackupSpec.build([tree.src], mdest)
    src_arg = f"{tree.src}/"
    out = []
    ours, peer = interleave(
        timed(lambda: fresh(mdest), lambda: mirror.backup(spec, ctrl, rep)),
        timed(lambda: fresh(rdest), lambda: run(["rsync", "-a", src_arg, str(rdest / "src")])),
        repeats)
    out.append(Comparison(f"mirror initial backup, {tree.label}", "s", ours, peer,
                          "rsync -a", target_ratio=0.8,
                          note="ours makes the snapshot durable (syncfs) before it counts; "
                               "rsync -a does not sync"))
    print(" ", out[-1].line())
    if os.environ.get("BENCH_MIRROR_ONLY") == "initial":
        return out  # a quick look at one figure (the others take minutes more)

    # No change: each run links against the same base snapshot; later ones are removed
    # (not timed) so the destination does not grow between repeats.
    fresh(mdest)
    base = mirror.backup(spec, ctrl, rep).snapshot_id
    fresh(rdest)
    run(["rsync", "-a", src_arg, str(rdest / "base")])

    def mirror_prune() -> None:
        mirror.delete_snapshots(spec, [s.id for s in mirror.snapshots(spec) if s.id != base])
        os.sync()

    def rsync_prune() -> None:
        for p in rdest.iterdir():
            if p.name != "base":
                shutil.rmtree(p)
        os.sync()

    ours, peer = interleave(
        timed(mirror_prune, lambda: mirror.backup(spec, ctrl, rep)),
        timed(rsync_prune, lambda: run(["rsync", "-a", f"--link-dest={rdest / 'base'}",
                                        src_arg, str(rdest / "again")])),
        repeats)
    out.append(Comparison(f"mirror no-change re-run, {tree.label}", "s", ours, peer,
                          "rsync -a --link-dest", target_ratio=0.8))
    print(" ", out[-1].line())
    mirror_prune()
    rsync_prune()

    # Restore the whole snapshot into an empty folder; rsync copies its tree back.
    mtarget, rtarget = work / "mirror-restored", work / "rsync-restored"
    ours, peer = interleave(
        timed(lambda: fresh(mtarget),
              lambda: mirror.restore(spec, base, mtarget, ctrl, rep)),
        timed(lambda: fresh(rtarget),
              lambda: run(["rsync", "-a", f"{rdest / 'base'}/", str(rtarget / "src")])),
        repeats)
    out.append(Comparison(f"mirror restore, {tree.label}", "s", ours, peer, "rsync -a back",
                          target_ratio=1.0))
    print(" ", out[-1].line())
    for path in (mdest, rdest, mtarget, rtarget):
        shutil.rmtree(path, ignore_errors=True)
    return out


def run_engines() -> list[Comparison]:
    """Run every engine comparison the knobs select and return them."""
    from bench.engine_memory import memory_comparisons
    from bench.engine_peers import archive_comparisons, restic_comparison

    repeats = env_int("BENCH_ENGINE_REPEATS", 5)
    parts = [p for p in os.environ.get("BENCH_ENGINE_PARTS", ",".join(PARTS)).split(",")
             if p in PARTS]
    comparisons: list[Comparison] = []
    work = Path(tempfile.mkdtemp(prefix="bm-bench-engines-", dir=DATA_ROOT.parent))
    try:
        for tree in trees():
            print(f"\n== engines on {tree.label} (data kept in {tree.src.parent}), "
                  f"{repeats} repeats ==")
            if "mirror" in parts:
                comparisons += _mirror(tree, work, repeats)
            if "archive" in parts:
                comparisons += archive_comparisons(tree, work, repeats)
            if "restic" in parts:
                comparisons += restic_comparison(tree, work, repeats)
            if "memory" in parts and tree.key == "many":
                comparisons += memory_comparisons(tree, work, repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return comparisons

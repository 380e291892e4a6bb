"""Per-engine set-up for the contract suite: specs, damaging a snapshot, killing a worker."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from engines.base import BackupSpec

RESTIC_PASSWORD = "correct horse battery staple"


def engine_spec(engine: str, sources: list[Path], dest: Path, work: Path,
                **kw: object) -> BackupSpec:
    """A spec for `engine` backing up sources into dest (restic: a password file)."""
    options: dict[str, object] = {}
    if engine == "restic":
        pw = work / "restic-password"
        if not pw.exists():
            pw.write_text(RESTIC_PASSWORD + "\n")
            pw.chmod(0o600)
        options = {"password_file": str(pw), "init": True, "cache_dir": str(work / "cache")}
    options.update(kw.pop("options", {}) or {})  # type: ignore[call-overload]
    return BackupSpec.build(sources, dest, options=options, **kw)  # type: ignore[arg-type]


def flip_byte(path: Path, offset: int | None = None) -> None:
    """Flip one bit of one byte in a file, in place (through a hard link too)."""
    size = path.stat().st_size
    where = size // 2 if offset is None else offset
    with open(path, "r+b") as fh:
        fh.seek(where)
        byte = fh.read(1)
        fh.seek(where)
        fh.write(bytes([byte[0] ^ 0x01]))


def damage_snapshot(engine: str, dest: Path, snapshot_id: str) -> None:
    """Flip a byte in what a snapshot stores, the way bit rot would."""
    if engine in ("mirror", "rsync"):
        flip_byte(dest / snapshot_id / "src" / "big.bin")
    elif engine == "archive":
        archive = next(p for p in dest.iterdir() if p.name.startswith(snapshot_id)
                       and ".tar." in p.name)
        flip_byte(archive)
    else:
        packs = sorted((dest / "data").rglob("*"), key=lambda p: p.stat().st_size)
        flip_byte([p for p in packs if p.is_file()][-1])


def descendants(pid: int) -> list[int]:
    """Every process below pid (children, grandchildren, ...), from /proc."""
    out: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError):
                kids = [int(k) for k in (task / "children").read_text().split()]
                out.extend(kids)
                todo.extend(kids)
    return out


def kill_tree(proc: subprocess.Popen[str]) -> None:
    """SIGKILL a process and everything it started, as a power cut would stop them."""
    victims = [proc.pid, *descendants(proc.pid)]
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=10)
    for pid in victims[1:]:  # reap nothing (not our children), just wait for them to go
        for _ in range(100):
            if not Path(f"/proc/{pid}").exists():
                break
            with contextlib.suppress(OSError):
                if "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[-1][:3]:
                    break
            time.sleep(0.02)


@contextlib.contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of `size` at path (the test runs as root, as CI does)."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                   check=True, capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)

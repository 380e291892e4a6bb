"""Side-by-side figures: ours against a peer tool, run interleaved in the same invocation.

Every speed figure of `make bench` is a Comparison: the samples of our code and of the
peer (rsync, tar, restic, a plain SQLite commit, a static page...) taken in turns, so a
machine that slows down half-way slows both. The ratio is the median of the pairwise
ratios (ours/peer), and the spread is their lowest and highest. `record` keeps the
latest figures in bench/results.json so the next change can be compared with them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import platform
import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results.json"
MIN_REPEATS = 5


def interleave(ours: Callable[[], float], peer: Callable[[], float],
               repeats: int = MIN_REPEATS) -> tuple[list[float], list[float]]:
    """Run ours and the peer in turns, alternating which goes first; return both samples."""
    ours_samples: list[float] = []
    peer_samples: list[float] = []
    for index in range(max(repeats, 1)):
        # Alternate the order: whichever runs second gets a warmer page cache.
        if index % 2 == 0:
            ours_samples.append(ours())
            peer_samples.append(peer())
        else:
            peer_samples.append(peer())
            ours_samples.append(ours())
    return ours_samples, peer_samples


def _median(values: Sequence[float]) -> float:
    clean = [v for v in values if not math.isnan(v)]
    return statistics.median(clean) if clean else math.nan


@dataclass
class Comparison:
    """One figure: our samples and the peer's, with the ratio and targets held against."""

    name: str
    unit: str
    ours: list[float]
    peer: list[float]
    peer_name: str
    target_ratio: float | None = None
    target_value: float | None = None
    lower_is_better: bool = True
    note: str = ""
    measured: str = field(default_factory=lambda: datetime.now(UTC).isoformat(
        timespec="seconds").replace("+00:00", "Z"))

    @property
    def ours_median(self) -> float:
        """The median of our samples."""
        return _median(self.ours)

    @property
    def peer_median(self) -> float:
        """The median of the peer's samples."""
        return _median(self.peer)

    @property
    def ratios(self) -> list[float]:
        """Ours over peer for each repeat (pairs in the order they ran)."""
        return [o / p for o, p in zip(self.ours, self.peer, strict=False)
                if p and not (math.isnan(o) or math.isnan(p))]

    @property
    def ratio(self) -> float:
        """The median of the pairwise ratios ours/peer."""
        return _median(self.ratios)

    @property
    def spread(self) -> tuple[float, float]:
        """The lowest and highest pairwise ratio."""
        ratios = self.ratios
        return (min(ratios), max(ratios)) if ratios else (math.nan, math.nan)

    def _met(self, value: float, target: float) -> bool:
        return value <= target if self.lower_is_better else value >= target

    @property
    def verdict(self) -> str:
        """OK when every target given is met, MISS otherwise, blank with no target."""
        checks = []
        if self.target_ratio is not None:
            checks.append(not math.isnan(self.ratio)
                          and self._met(self.ratio, self.target_ratio))
        if self.target_value is not None:
            checks.append(not math.isnan(self.ours_median)
                          and self._met(self.ours_median, self.target_value))
        if not checks:
            return ""
        return "OK" if all(checks) else "MISS"

    def targets_text(self) -> str:
        """The targets as text, such as 'ratio <= 0.80, < 10 ms'."""
        sign = "<=" if self.lower_is_better else ">="
        parts = []
        if self.target_ratio is not None:
            parts.append(f"ratio {sign} {self.target_ratio:.2f}")
        if self.target_value is not None:
            parts.append(f"{sign} {format_value(self.target_value, self.unit)}")
        return ", ".join(parts) or "-"

    def line(self) -> str:
        """One printed line: ours, peer, ratio with its spread, targets and verdict."""
        low, high = self.spread
        return (f"{self.name}: ours {format_value(self.ours_median, self.unit)}, "
                f"{self.peer_name} {format_value(self.peer_median, self.unit)}, "
                f"ratio {self.ratio:.2f} (spread {low:.2f}-{high:.2f}, n={len(self.ratios)}); "
                f"target {self.targets_text()} {self.verdict}".rstrip())

    def as_json(self) -> dict[str, Any]:
        """What results.json keeps of this figure."""
        low, high = self.spread
        return {"unit": self.unit, "ours": self.ours, "peer": self.peer,
                "peer_name": self.peer_name, "ours_median": self.ours_median,
                "peer_median": self.peer_median, "ratio": self.ratio,
                "spread": [low, high], "target_ratio": self.target_ratio,
                "target_value": self.target_value, "lower_is_better": self.lower_is_better,
                "verdict": self.verdict, "note": self.note, "measured": self.measured}


def format_value(value: float, unit: str) -> str:
    """A figure's value with its unit, as every line of `make bench` prints it."""
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "never"
    if unit in ("ev/s", "events/s"):
        return f"{value:,.0f} {unit}"
    if unit == "ms":
        return f"{value:,.2f} ms"
    if unit == "s":
        return f"{value:,.2f} s"
    return f"{value:,.1f} {unit}"


def format_comparisons(comparisons: Sequence[Comparison]) -> str:
    """An aligned table: figure, ours, peer, ratio, spread, targets, verdict."""
    header = ("figure", "ours", "peer", "ratio", "spread", "target", "")
    rows = [header]
    for c in comparisons:
        low, high = c.spread
        rows.append((c.name, format_value(c.ours_median, c.unit),
                     f"{format_value(c.peer_median, c.unit)} ({c.peer_name})", f"{c.ratio:.2f}",
                     f"{low:.2f}-{high:.2f}", c.targets_text(), c.verdict))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for index, row in enumerate(rows):
        lines.append("  " + "  ".join(f"{cell:<{widths[i]}}" for i, cell in enumerate(row))
                     .rstrip())
        if index == 0:
            lines.append("  " + "-" * (sum(widths) + 2 * (len(widths) - 1)))
    return "\n".join(lines)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock beside the results file (two benches may record at once)."""
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def record(comparisons: Sequence[Comparison], path: Path = RESULTS) -> None:
    """Merge these figures into the results file by name (atomic replace, locked)."""
    if not comparisons:
        return
    with _locked(path):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        figures = data.get("figures") if isinstance(data.get("figures"), dict) else {}
        for c in comparisons:
            figures[c.name] = c.as_json()
        data = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                            "platform": platform.platform()},
                "figures": dict(sorted(figures.items()))}
        tmp = path.with_suffix(".json.tmp")
        with open(tmp, "w") as out:
            json.dump(data, out, indent=1, default=str)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)

"""Retention policies: which snapshots to keep (last N, and daily / weekly / monthly buckets)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

MAX_KEEP = 100_000  # more than a snapshot every 5 minutes for a year; bounds the sorting work


class InvalidRetention(ValueError):
    """A retention policy value is not a whole number from 0 to MAX_KEEP."""


@dataclass(frozen=True)
class Retention:
    """How many snapshots to keep; a policy of all zeros keeps everything."""

    keep_last: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidRetention(f"retention {name} must be a whole number of 0 or "
                                       f"more, not {_shown(value)}")
            if value > MAX_KEEP:
                raise InvalidRetention(f"retention {name} must be at most {MAX_KEEP:,}, "
                                       f"not {_shown(value)}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Retention:
        """Build a policy from a mapping, refusing unknown keys."""
        unknown = set(data) - {"keep_last", "keep_daily", "keep_weekly", "keep_monthly"}
        if unknown:
            raise InvalidRetention(f"unknown retention setting(s): {', '.join(sorted(unknown))}")
        return cls(**dict(data))

    @property
    def keeps_everything(self) -> bool:
        """Whether this policy removes nothing (all counts zero)."""
        return not any(asdict(self).values())


def _shown(value: Any) -> str:
    """A refused value for a message, cut short (10**30 has 31 digits)."""
    if isinstance(value, int) and value.bit_length() > 200:
        return "a number that long"  # repr of a huge int is slow, or refused past 4300 digits
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _newest_per_bucket(snapshots: list[tuple[str, datetime]], count: int,
                       bucket: Callable[[datetime], Hashable]) -> set[str]:
    kept: set[str] = set()
    seen: set[Hashable] = set()
    for snap_id, when in snapshots:  # newest first
        key = bucket(when)
        if key in seen:
            continue
        if len(seen) >= count:
            break
        seen.add(key)
        kept.add(snap_id)
    return kept


def snapshots_to_keep(snapshots: Iterable[tuple[str, datetime]], policy: Retention) -> set[str]:
    """Return the ids a policy keeps: the union of its rules, as restic's forget counts them.

    keep_last keeps the N newest; keep_daily keeps the newest snapshot of each of the N
    newest days that have one; weekly uses ISO weeks; monthly uses calendar months.
    """
    ordered = sorted(snapshots, key=lambda s: (s[1], s[0]), reverse=True)
    if policy.keeps_everything:
        return {s for s, _ in ordered}
    keep = {s for s, _ in ordered[: policy.keep_last]}
    keep |= _newest_per_bucket(ordered, policy.keep_daily, lambda t: t.date())
    keep |= _newest_per_bucket(ordered, policy.keep_weekly, lambda t: t.isocalendar()[:2])
    keep |= _newest_per_bucket(ordered, policy.keep_monthly, lambda t: (t.year, t.month))
    return keep

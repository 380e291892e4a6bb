"""Retention: which snapshots a policy keeps, on hand-made calendars."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.retention import InvalidRetention, Retention, snapshots_to_keep


def daily(n: int, start: datetime = datetime(2026, 1, 1, 3, tzinfo=UTC)
          ) -> list[tuple[str, datetime]]:
    """One snapshot a day at 03:00 for n days, ids s000.. in time order."""
    return [(f"s{i:03d}", start + timedelta(days=i)) for i in range(n)]


def test_keep_last_keeps_the_newest() -> None:
    assert snapshots_to_keep(daily(5), Retention(keep_last=2)) == {"s003", "s004"}


def test_keep_daily_keeps_the_newest_of_each_day() -> None:
    snaps = [*daily(3), ("late", datetime(2026, 1, 3, 23, tzinfo=UTC))]
    assert snapshots_to_keep(snaps, Retention(keep_daily=2)) == {"late", "s001"}


def test_weekly_and_monthly_buckets() -> None:
    snaps = daily(70)  # 2026-01-01 .. 2026-03-11
    weekly = snapshots_to_keep(snaps, Retention(keep_weekly=3))
    # Newest of the three newest ISO weeks: Wed 11 Mar, Sun 8 Mar, Sun 1 Mar.
    assert {snaps[int(i[1:])][1].date().isoformat() for i in weekly} == {
        "2026-03-11", "2026-03-08", "2026-03-01"}
    monthly = snapshots_to_keep(snaps, Retention(keep_monthly=2))
    assert {snaps[int(i[1:])][1].date().isoformat() for i in monthly} == {
        "2026-03-11", "2026-02-28"}


def test_rules_are_a_union() -> None:
    kept = snapshots_to_keep(daily(40), Retention(keep_last=1, keep_monthly=2))
    assert kept == {"s039", "s030"}  # 9 Feb (newest) and 31 Jan (newest of January)


def test_all_zero_keeps_everything() -> None:
    assert snapshots_to_keep(daily(4), Retention()) == {"s000", "s001", "s002", "s003"}


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True])
def test_bad_values_are_refused_clearly(bad: object) -> None:
    with pytest.raises(InvalidRetention, match="whole number"):
        Retention(keep_last=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidRetention, match="unknown"):
        Retention.from_dict({"keep_forever": 1})


@given(n=st.integers(0, 60), last=st.integers(0, 5), days=st.integers(0, 5))
def test_never_keeps_more_than_asked_and_always_the_newest(n: int, last: int,
                                                           days: int) -> None:
    snaps = daily(n)
    kept = snapshots_to_keep(snaps, Retention(keep_last=last, keep_daily=days))
    if last or days:
        assert len(kept) <= last + days
        if n:
            assert snaps[-1][0] in kept
    else:
        assert len(kept) == n

"""Benchmark of the start-up hash chain check, against reading the same log without it.

The check (events/chain.py ChainCheck, what EventStore.open runs) is timed next to peers
that read every row and check nothing: a plain `SELECT` of all rows through Python's
sqlite3, and `sqlite3 .dump` (the command-line tool, when installed) writing to
/dev/null. The old per-row hash (events/record.chain_hash on StoredEvent objects, what
`events verify` used before) is shown too. The variants run interleaved, round after
round, so a slow moment of a shared machine hits all of them alike; each figure is the
median of the rounds with its spread (min-max), and the ratio is median over median.

`python -m bench --only chain` (BENCH_CHAIN_EVENTS, default 200000; BENCH_CHAIN_ROUNDS,
default 5). Nothing here asserts.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

from bench.eventlog import TMP_ROOT, Figure, env_int, generate_log
from events.chain import ChainCheck, readonly_connection
from events.record import GENESIS_HASH, StoredEvent
from events.store import FOREGROUND_CHECK_MAX, EventStore


def _chain_check(db: Path) -> None:
    check = ChainCheck(upto=_head(db))
    fault = check.run(lambda: readonly_connection(db), db, time.perf_counter)
    if fault is not None or check.state != "passed":
        raise RuntimeError(f"the generated log does not verify: {fault}")


def _select_all(db: Path) -> None:
    with closing(readonly_connection(db)) as conn:
        for _row in conn.execute("SELECT seq, stream, version, time, type, payload, hash "
                                 "FROM events ORDER BY seq"):
            pass


def _old_verify(db: Path) -> None:
    with closing(readonly_connection(db)) as conn:
        prev = GENESIS_HASH
        for row in conn.execute("SELECT seq, stream, version, time, type, payload, hash "
                                "FROM events ORDER BY seq"):
            ev = StoredEvent.from_row(row)
            if ev.expected_hash(prev) != ev.hash:
                raise RuntimeError(f"seq {ev.seq} does not verify")
            prev = ev.hash


def _dump(db: Path) -> None:
    binary = shutil.which("sqlite3")
    assert binary is not None
    subprocess.run([binary, "-readonly", str(db), ".dump"], stdout=subprocess.DEVNULL,
                   check=True)


def _head(db: Path) -> int:
    with closing(readonly_connection(db)) as conn:
        return int(conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])


def _spread(times: list[float]) -> str:
    return (f"median {statistics.median(times):.3f} s "
            f"(min {min(times):.3f}, max {max(times):.3f}, {len(times)} rounds)")


async def run_chain() -> list[Figure]:
    """Generate a log, then time the chain check and its peers interleaved."""
    total = env_int("BENCH_CHAIN_EVENTS", 200_000)
    rounds = env_int("BENCH_CHAIN_ROUNDS", 5)
    variants: dict[str, Callable[[Path], None]] = {
        "chain check (start-up, events/chain.py)": _chain_check,
        "plain SELECT of all rows (no check)": _select_all,
        "old check (record.chain_hash per StoredEvent)": _old_verify,
    }
    if shutil.which("sqlite3"):
        variants["sqlite3 .dump > /dev/null"] = _dump
    print(f"\n== chain check: {total:,} events, {rounds} interleaved rounds; the server "
          f"checks the newest {FOREGROUND_CHECK_MAX:,} events before serving, the whole "
          "chain behind ==", flush=True)
    times: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory(prefix="bench-chain-", dir=TMP_ROOT) as tmp:
        db = Path(tmp) / "events.db"
        await generate_log(db, total)
        names = list(variants)
        for r in range(rounds):
            # Rotate the order each round: no variant always runs first (cold cache).
            for name in names[r % len(names):] + names[:r % len(names)]:
                started = time.perf_counter()
                await asyncio.to_thread(variants[name], db)
                times[name].append(time.perf_counter() - started)
        # What a person waits for at start: EventStore.open with the check before it
        # returns, against open with the check left to the background.
        opens: dict[str, list[float]] = {"foreground": [], "background": []}
        for r in range(rounds):
            for mode in ("foreground", "background")[::1 if r % 2 == 0 else -1]:
                started = time.perf_counter()
                store = await EventStore.open(db, total if mode == "foreground" else 0)
                opens[mode].append(time.perf_counter() - started)
                await store.close()
    ours = statistics.median(times[names[0]])
    figures = [Figure(f"chain check {total:,} events", ours, "s"),
               Figure(f"chain check rate, {total:,} events", total / ours, "ev/s")]
    for name in names:
        ratio = ours / statistics.median(times[name])
        print(f"  {name}: {_spread(times[name])}"
              + ("" if name == names[0] else f"; chain check / this = {ratio:.2f}x"),
              flush=True)
        if name != names[0]:
            figures.append(Figure(f"chain check / {name.split(' (')[0]}", ratio, "x"))
    fore, back = (statistics.median(opens[m]) for m in ("foreground", "background"))
    print(f"  EventStore.open, chain checked before it returns: {_spread(opens['foreground'])}"
          f"\n  EventStore.open, chain checked in the background: {_spread(opens['background'])}"
          f"; foreground / background = {fore / back:.2f}x", flush=True)
    figures.append(Figure(f"open {total:,}-event log, check in foreground", fore, "s"))
    figures.append(Figure(f"open {total:,}-event log, check in background", back, "s"))
    return figures

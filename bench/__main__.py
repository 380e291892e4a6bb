"""Run the benchmarks: `python -m bench [--only append,replay,ws]` (also `make bench`).

Knobs (environment): BENCH_APPEND_SECONDS (3), BENCH_REPLAY_EVENTS (1000000),
BENCH_WS_CLIENTS (500), BENCH_WS_EVENTS (200), BENCH_WS_SPACING_MS (10),
BENCH_WS_CLIENT_PROCS (2, for the aiohttp-client run).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sqlite3
import sys
import time
from collections.abc import Sequence

from bench import eventlog

BENCHMARKS = ("append", "replay", "ws")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected benchmarks and print every figure next to its target."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(BENCHMARKS),
                        help="comma-separated subset of: " + ", ".join(BENCHMARKS))
    args = parser.parse_args(argv)
    selected = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(selected) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    print(f"backup-manager benchmarks: Python {platform.python_version()}, "
          f"SQLite {sqlite3.sqlite_version}, {platform.machine()}, "
          f"temp data under {eventlog.TMP_ROOT}")
    started = time.perf_counter()
    figures = asyncio.run(eventlog.run(selected))
    print(f"\n== summary ({time.perf_counter() - started:.0f} s in all; figures are "
          f"printed, never asserted) ==")
    print(eventlog.format_table(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())

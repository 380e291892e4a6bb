"""Run the benchmarks: `python -m bench [--only append,replay,ws,engines,runtime,pages]`
(`make bench`).

Knobs (environment): BENCH_APPEND_SECONDS (3), BENCH_REPLAY_EVENTS (1000000),
BENCH_WS_CLIENTS (500), BENCH_WS_EVENTS (200), BENCH_WS_SPACING_MS (10),
BENCH_WS_CLIENT_PROCS (2, for the aiohttp-client run); engines: BENCH_ENGINE_REPEATS (3),
BENCH_SMALL_FILES (20000), BENCH_LARGE_MB (200, four such files), BENCH_NOCHANGE_FILES
(100000), BENCH_DATA (/tmp/bm-bench-data, where generated data is kept between runs);
runtime: BENCH_RUNTIME_RUNS (50), BENCH_RUNTIME_JOBS (1000), BENCH_RUNTIME_STARTS (200);
pages: BENCH_PAGES_JOBS (1000), BENCH_PAGES_EVENTS (100000), BENCH_PAGES_REQUESTS (200).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sqlite3
import sys
import time
from collections.abc import Sequence

from bench import engines, eventlog, pages, runtime

BENCHMARKS = ("append", "replay", "chain", "ws", "engines", "runtime", "pages")


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
    log_benchmarks = [name for name in selected if name not in ("engines", "runtime", "pages")]
    figures = asyncio.run(eventlog.run(log_benchmarks)) if log_benchmarks else []
    if "engines" in selected:
        figures += engines.run_engines()
    if "runtime" in selected:
        figures += asyncio.run(runtime.run_runtime())
    if "pages" in selected:
        figures += asyncio.run(pages.run_pages())
    print(f"\n== summary ({time.perf_counter() - started:.0f} s in all; figures are "
          f"printed, never asserted) ==")
    print(eventlog.format_table(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())

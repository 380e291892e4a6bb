"""Run the benchmarks: `python -m bench [--only append,replay,chain,ws,startup,engines,
runtime,pages]` (`make bench`).

Every speed figure is ours against a peer run interleaved in the same invocation (see
bench/compare.py), printed with its ratio and spread and merged into bench/results.json.

Knobs (environment): log: BENCH_APPEND_SECONDS (3), BENCH_LOG_REPEATS (5),
BENCH_REPLAY_EVENTS (1000000), BENCH_WS_CLIENTS (500), BENCH_WS_EVENTS (200),
BENCH_WS_SPACING_MS (10), BENCH_WS_CLIENT_PROCS (2); startup: BENCH_STARTUP_EVENTS
(1000000), BENCH_STARTUP_DATA, BENCH_STARTUP_SIGNAL_AT (0.3); engines:
BENCH_ENGINE_REPEATS (5), BENCH_SMALL_FILES (20000), BENCH_LARGE_FILES (3), BENCH_LARGE_MB
(50), BENCH_MANY_FILES (100000), BENCH_TREES (mixed,many), BENCH_ENGINE_PARTS
(mirror,archive,restic,memory), BENCH_DATA (/tmp/bm-bench-data, generated data kept
between runs); runtime: BENCH_RUNTIME_RUNS (50), BENCH_RUNTIME_JOBS (1000),
BENCH_RUNTIME_PER_ROUND (40), BENCH_RUNTIME_REPEATS (5), BENCH_RUNTIME_DRAIN_JOBS (1000);
pages: BENCH_PAGES_JOBS (1000), BENCH_PAGES_EVENTS (100000), BENCH_PAGES_REQUESTS (200).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import platform
import sqlite3
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench import eventlog
from bench.compare import Comparison, format_comparisons, record

LOG_BENCHMARKS = ("append", "replay", "chain", "ws")
# name -> (module, function): each returns (or, if async, resolves to) a list of
# Comparison and/or older Figure lines.
OTHER_BENCHMARKS = {
    "startup": ("bench.startup", "run_startup"),
    "engines": ("bench.engines", "run_engines"),
    "runtime": ("bench.runtime", "run_runtime"),
    "pages": ("bench.pages", "run_pages"),
}
BENCHMARKS = LOG_BENCHMARKS + tuple(OTHER_BENCHMARKS)


def _run_one(module_name: str, function: str) -> list[Any]:
    """Import a benchmark module and run its entry point, awaiting it when async."""
    result = getattr(importlib.import_module(module_name), function)()
    if inspect.isawaitable(result):
        result = asyncio.run(_await(result))
    return list(result)


async def _await(awaitable: Any) -> Any:
    return await awaitable


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected benchmarks, print every figure and record the comparisons."""
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
    log_benchmarks = [name for name in selected if name in LOG_BENCHMARKS]
    results: list[Any] = asyncio.run(eventlog.run(log_benchmarks)) if log_benchmarks else []
    for name in selected:
        if name in OTHER_BENCHMARKS:
            results += _run_one(*OTHER_BENCHMARKS[name])
    comparisons = [r for r in results if isinstance(r, Comparison)]
    figures = [r for r in results if isinstance(r, eventlog.Figure)]
    record(comparisons)
    print(f"\n== summary ({time.perf_counter() - started:.0f} s in all; figures are "
          f"printed, never asserted) ==")
    if comparisons:
        print("ours against the peer run interleaved beside it (ratio = ours/peer, "
              "median of the pairwise ratios):")
        print(format_comparisons(comparisons))
    if figures:
        print("other figures:")
        print(eventlog.format_table(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())

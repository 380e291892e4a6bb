"""Page benchmarks: server time per page, bytes per page gzipped, DOMContentLoaded in Chromium.

Issue: "Server time for each page with 1,000 jobs and 100,000 events (target p50 under
10 ms), bytes per page gzipped, and time to DOMContentLoaded in headless Chromium on
loopback." A fresh data directory is filled with a realistic log (specs as the API takes
them, runs spread over the last 30 days), the app is served on 127.0.0.1 in this process,
and each page is measured three ways. Nothing asserts; the temporary data lives in
tempfile.TemporaryDirectory under /tmp and is removed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import math
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.compare import Comparison
from bench.eventlog import TMP_ROOT, Figure, env_int, percentile
from bench.page_data import APPEND_CHUNK, HISTORY_DAYS, plan_log, write_log
from bench.page_lists import run_page_lists
from server.app import create_app
from server.config import Config
from server.errors import Handler
from server.keys import STORE

PATIENCE = 30.0  # seconds for any one request or navigation
WARMUP = 5  # untimed requests per page before the timed ones (the first is shown apart)
NAVIGATIONS = 10  # per page in one browser context: the first cold, the rest warm
PAGE_BUDGET_KB = 60.0  # issue 5: a page with its CSS and JS under 60 KB (1 KB = 1024 B)
SERVER_TARGET_MS = 10.0
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage"]
DCL_SCRIPT = "performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd"
STATIC_RE = re.compile(r'(?:href|src)="(/static/[^"]+)"')



def _ms(seconds: float) -> float:
    return seconds * 1000.0


# --- 2: serving, with a clock around the handlers ------------------------------------------


def _timing_middleware(record: list[float]) -> Any:
    """Outermost middleware: seconds spent in every middleware, handler and render."""
    @web.middleware
    async def handler_clock(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            return await handler(request)
        finally:
            record.append(time.perf_counter() - started)
    return handler_clock


@contextlib.asynccontextmanager
async def _serve(data_dir: Path, record: list[float]) -> AsyncIterator[tuple[str,
                                                                            web.Application]]:
    """Serve the app on a free loopback port, timing handlers; yield (base URL, app)."""
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    app = create_app(Config(data_dir=data_dir, log_to_file=False, log_level="WARNING"))
    app.middlewares.insert(0, _timing_middleware(record))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{int(runner.addresses[0][1])}", app
    finally:
        await runner.cleanup()


# --- 3: server time per page ----------------------------------------------------------------


@dataclass
class PageTimes:
    """One page's request times (seconds): wall time at the client, and in the server."""

    first: float = math.nan  # the first request after start (memos still cold)
    wall: list[float] = field(default_factory=list)
    handler: list[float] = field(default_factory=list)
    bad: Counter[int] = field(default_factory=Counter)  # statuses other than 200


async def time_page(session: aiohttp.ClientSession, path: str, record: list[float],
                    requests: int) -> PageTimes:
    """WARMUP untimed GETs, then `requests` timed ones, one after another."""
    out = PageTimes()
    for i in range(WARMUP + requests):
        before = len(record)
        started = time.perf_counter()
        async with session.get(path, allow_redirects=False) as resp:
            await resp.read()
            status = resp.status
        wall = time.perf_counter() - started
        handler = record[-1] if len(record) > before else math.nan
        if status != 200:
            out.bad[status] += 1
        if i == 0:
            out.first = wall
        if i >= WARMUP:
            out.wall.append(wall)
            out.handler.append(handler)
    return out


# --- 4: bytes per page, gzipped ------------------------------------------------------------


@dataclass
class PageBytes:
    """A page's gzipped HTML and the CSS and JS it links, as the server sends them."""

    html: int
    html_gzipped: bool
    assets: dict[str, int]  # CSS and JS, bytes on the wire (gzipped when the server does)
    other: dict[str, int]  # other static files it links (the icon), not in the total

    @property
    def total(self) -> int:
        """HTML plus CSS and JS."""
        return self.html + sum(self.assets.values())


async def page_bytes(session: aiohttp.ClientSession, path: str,
                     cache: dict[str, tuple[int, bool]]) -> PageBytes:
    """Fetch a page and its static files with Accept-Encoding: gzip; count wire bytes."""
    gz = {"Accept-Encoding": "gzip"}

    async def fetch(url: str) -> tuple[bytes, bool]:
        async with session.get(url, headers=gz, allow_redirects=False) as resp:
            return await resp.read(), resp.headers.get("Content-Encoding") == "gzip"

    body, gzipped = await fetch(path)
    html = gzip.decompress(body) if gzipped else body
    assets: dict[str, int] = {}
    other: dict[str, int] = {}
    for url in dict.fromkeys(STATIC_RE.findall(html.decode("utf-8", "replace"))):
        if url not in cache:
            data, packed = await fetch(url)
            cache[url] = (len(data), packed)
        name = url.rsplit("/", 1)[-1]
        (assets if name.endswith((".css", ".js")) else other)[name] = cache[url][0]
    return PageBytes(len(body), gzipped, assets, other)


# --- 5: DOMContentLoaded in headless Chromium ---------------------------------------------


async def dom_content_loaded(base: str, paths: Sequence[tuple[str, str]]
                             ) -> tuple[dict[str, list[float]], str | None]:
    """NAVIGATIONS per page in a fresh context: domContentLoadedEventEnd (ms) of each.

    Returns (samples by label, None), or ({}, why) when the figure cannot be taken.
    """
    chromium = shutil.which("chromium")
    if chromium is None:
        return {}, "no `chromium` on PATH"
    try:
        from playwright.async_api import Error as PlaywrightError
        from playwright.async_api import async_playwright
    except ImportError as err:
        return {}, f"playwright is not installed ({err})"
    samples: dict[str, list[float]] = {}
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=chromium, headless=True,
                                               args=CHROMIUM_ARGS)
            try:
                # Untimed: the browser's own first navigation (process and GPU-less
                # compositor start) should not land on whichever page comes first.
                context = await browser.new_context()
                await (await context.new_page()).goto(f"{base}/healthz")
                await context.close()
                for label, path in paths:
                    context = await browser.new_context()
                    try:
                        page = await context.new_page()
                        page.set_default_timeout(PATIENCE * 1000)
                        got = samples.setdefault(label, [])
                        for _ in range(NAVIGATIONS):
                            await page.goto(base + path, wait_until="load")
                            got.append(float(await page.evaluate(DCL_SCRIPT)))
                    finally:
                        await context.close()
            finally:
                await browser.close()
    except PlaywrightError as err:
        return samples, f"Chromium failed: {str(err).splitlines()[0]}"
    return samples, None


# --- the run -------------------------------------------------------------------------------


def _pages(job_id: str) -> list[tuple[str, str]]:
    """(label, path) of every page measured."""
    return [("/dashboard", "/dashboard"),
            ("/dashboard?fragment=stats", "/dashboard?fragment=stats"),
            ("/jobs", "/jobs"), ("/jobs?page=10", "/jobs?page=10"),
            ("/jobs/new", "/jobs/new"), ("/jobs/{id}", f"/jobs/{job_id}"),
            ("/jobs/{id}/edit", f"/jobs/{job_id}/edit"), ("/settings", "/settings"),
            ("/logs", "/logs")]


def _p(values: Sequence[float], pct: float) -> str:
    return f"{_ms(percentile(values, pct)):.2f}"


async def run_pages() -> list[Figure | Comparison]:
    """Every page's figures, then the lists at scale against a same-size static file."""
    figures: list[Figure | Comparison] = list(await run_page_figures())
    return figures + await run_page_lists()


async def run_page_figures() -> list[Figure]:
    """Build the data, serve it, measure every page; print as it goes; return the figures."""
    job_count = env_int("BENCH_PAGES_JOBS", 1_000)
    total = env_int("BENCH_PAGES_EVENTS", 100_000)
    requests = env_int("BENCH_PAGES_REQUESTS", 200)
    figures: list[Figure] = []
    print(f"\n== pages with {job_count:,} jobs and {total:,} events: server time, "
          "bytes gzipped, DOMContentLoaded ==", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-pages-", dir=TMP_ROOT) as tmp:
        root = Path(tmp)
        data_dir = root / "data"
        now = time.time()
        planned_at = time.perf_counter()
        plan = await asyncio.to_thread(plan_log, root, job_count, total, now)
        plan_seconds = time.perf_counter() - planned_at
        written = await write_log(data_dir / "events.db", plan.events)
        (data_dir / "logs").mkdir(parents=True, exist_ok=True)
        (data_dir / "logs" / "app.log").write_text("\n".join(plan.log_lines) + "\n")
        outcomes = ", ".join(f"{n:,} {k}" for k, n in sorted(plan.runs.items()))
        print(f"  log: {len(plan.events):,} events = {len(plan.jobs):,} JobCreated + "
              f"{sum(plan.runs.values()):,} runs\n  ({outcomes}), each queued, "
              "started, 0+ checkpoints and an ending;\n  planned in "
              f"{plan_seconds:.1f} s, appended through EventStore in {written.seconds:.1f} s "
              f"({written.commits:,} group commits);\n  {written.chain_note}")
        print(f"  event times: runs spread over the last {HISTORY_DAYS} days. The store stamps "
              "each group commit\n  with its clock (utc_now_iso); it was replaced while the "
              "log was written so that it\n  stamps the planned times, a chunk of "
              f"{APPEND_CHUNK} appends at a time: {written.restamped:,} events were\n  "
              f"stamped up to {written.drift / 3600:.1f} h after their planned time."
              + "\n  Sources and destinations do not exist; logs/app.log holds "
              f"{len(plan.log_lines):,} scheduler lines.", flush=True)
        heavy = plan.heavy
        record: list[float] = []
        started = time.perf_counter()
        async with _serve(data_dir, record) as (base, app):
            start_seconds = time.perf_counter() - started
            store = app[STORE]
            seq_before = store.last_seq
            print(f"  app start (replay into memory, YAML projections of {len(plan.jobs):,} "
                  f"jobs): {start_seconds:.1f} s\n  /jobs/{{id}} is {heavy.job_id}: "
                  f"{len(heavy.runs)} runs, {heavy.spec['engine']}, "
                  f"schedule {heavy.spec['schedule']!r}", flush=True)
            pages = _pages(heavy.job_id)
            timeout = aiohttp.ClientTimeout(total=PATIENCE)

            print(f"\n  -- server time: {WARMUP} warm-up then {requests} sequential GETs per "
                  "page (aiohttp client, gzip accepted) --")
            print("  'request' = client wall time from sending the GET to the body read "
                  "(HTTP over loopback, gzip,\n  client parsing; client and server share this "
                  "event loop). 'handler' = time inside the app's\n  middleware chain, "
                  "handler and template render, from a middleware put outermost in this "
                  "app;\n  it leaves out HTTP parsing, gzip and socket writes. 'first' = the "
                  "first request after start\n  (request time: its template is compiled and "
                  "the page's memos are still empty).")
            print(f"  {'page':<28} {'first':>8} {'req p50':>8} {'req p99':>8} "
                  f"{'hdl p50':>8} {'hdl p99':>8}  (ms)")
            times: dict[str, PageTimes] = {}
            async with aiohttp.ClientSession(base, timeout=timeout) as session:
                for label, path in pages:
                    result = await time_page(session, path, record, requests)
                    times[label] = result
                    bad = (f"  NOT 200: {dict(result.bad)}" if result.bad else "")
                    print(f"  {label:<28} {_ms(result.first):>8.2f} {_p(result.wall, 50):>8} "
                          f"{_p(result.wall, 99):>8} {_p(result.handler, 50):>8} "
                          f"{_p(result.handler, 99):>8}{bad}", flush=True)

            print("\n  -- bytes per page on the wire (Accept-Encoding: gzip): the HTML plus "
                  f"the CSS and JS it\n  links; budget {PAGE_BUDGET_KB:.0f} KB "
                  "(1 KB = 1024 B) --")
            sizes: dict[str, PageBytes] = {}
            cache: dict[str, tuple[int, bool]] = {}
            async with aiohttp.ClientSession(base, timeout=timeout,
                                             auto_decompress=False) as raw:
                for label, path in pages:
                    size = await page_bytes(raw, path, cache)
                    sizes[label] = size
                    parts = " + ".join(f"{n} {b / 1024:.1f}" for n, b in size.assets.items())
                    print(f"  {label:<28} HTML {size.html / 1024:5.1f}"
                          f"{'' if size.html_gzipped else ' (not gzipped)'}"
                          f"{' + ' + parts if parts else ''} = {size.total / 1024:.1f} KB",
                          flush=True)
            others = {n: b for s in sizes.values() for n, b in s.other.items()}
            if others:
                print("  not counted (neither CSS nor JS): "
                      + ", ".join(f"{n} {b:,} B" for n, b in others.items()))
            print("  static files gzipped as served: "
                  + ", ".join(f"{u.rsplit('/', 1)[-1]} {'gzip' if g else 'plain'}"
                              for u, (_, g) in cache.items()))

            print("\n  -- time to DOMContentLoaded in headless Chromium over loopback: "
                  f"{NAVIGATIONS} navigations per\n  page in a fresh context (the first "
                  "with an empty cache, the rest with CSS and JS cached);\n  the value is "
                  "performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd --",
                  flush=True)
            dcl, skipped = await dom_content_loaded(base, pages)
            if skipped:
                print(f"  skipped: {skipped}" + ("; figures below are partial" if dcl else ""))
            for label, values in dcl.items():
                print(f"  {label:<28} cold {values[0]:7.1f} ms, warm p50 "
                      f"{percentile(values[1:], 50):6.1f} ms, warm max "
                      f"{max(values[1:], default=math.nan):6.1f} ms", flush=True)
            grew = store.last_seq - seq_before
            print(f"  the log grew by {grew} event(s) while pages were measured"
                  + (" (the scheduler or recovery ran something: figures may be disturbed)"
                     if grew else ""), flush=True)

        for label, _ in pages:
            shown = f"{label} ({len(heavy.runs)} runs)" if label == "/jobs/{id}" else label
            t = times[label]
            figures.append(Figure(f"{shown}: request p50", _ms(percentile(t.wall, 50)), "ms",
                                  target=SERVER_TARGET_MS, higher_is_better=False))
            figures.append(Figure(f"{shown}: request p99", _ms(percentile(t.wall, 99)), "ms"))
            figures.append(Figure(f"{shown}: handler p50", _ms(percentile(t.handler, 50)),
                                  "ms", target=SERVER_TARGET_MS, higher_is_better=False))
            figures.append(Figure(f"{shown}: gzipped with CSS+JS", sizes[label].total / 1024,
                                  "KB", target=PAGE_BUDGET_KB, higher_is_better=False))
            values = dcl.get(label, [])
            figures.append(Figure(f"{shown}: DOMContentLoaded cold",
                                  values[0] if values else math.nan, "ms"))
            figures.append(Figure(f"{shown}: DOMContentLoaded warm p50",
                                  percentile(values[1:], 50), "ms"))
    return figures

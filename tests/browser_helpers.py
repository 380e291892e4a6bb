"""Real-browser tests: Playwright for Python driving the system Chromium, headless.

Registered as a pytest plugin from tests/conftest.py (`pytest_plugins`), so the fixtures
below are available to every test module.

Why the ASYNC API, on a session-scoped event loop
-------------------------------------------------
The suite runs pytest-asyncio in auto mode with a new event loop per test. Playwright's
SYNC API cannot live next to that: while a sync Playwright instance is alive it leaves its
own loop marked as the thread's running loop between calls, so every later `async def`
test (and every `asyncio.run`) in the session fails with "cannot be called from a running
event loop". So the browser is driven with the ASYNC API. A Playwright connection belongs
to the loop it was started on, and the browser is started once per session, so browser
tests run on pytest-asyncio's *session* loop. `pytest_collection_modifyitems` below marks
every `async def` test that uses `playwright`, `browser`, `page`, `new_page` or
`page_errors` with `pytest.mark.asyncio(loop_scope="session")` by itself; other tests keep
their own loop.
Consequences for whoever writes a browser test:

- write it as `async def` (a plain `def` test asking for `page` fails with a clear message);
- do not mix in async fixtures bound to the per-test loop (`store`, `app_client`,
  `aiohttp_client`): talk to the app through `live_server` (a real server process), over
  HTTP (`live_server.request_json`, `page.request`) and the browser;
- `live_server.stop()` / `.restart()` block (up to a few seconds); that is fine, the
  browser keeps running on its own meanwhile.

Chromium is the system one (`make sysdeps` installs it): `playwright install` is never
needed and never run. Launching it takes about 0.3 s.

Usage::

    from tests.browser_helpers import LiveServer, PageErrors, assert_accessible, screenshot

    async def test_dashboard(live_server: LiveServer, page: Page, page_errors: PageErrors):
        await page.goto(live_server.url + "/dashboard")
        await expect(page).to_have_title(re.compile("backup-manager"))
        await screenshot(page, "dashboard")
        await assert_accessible(page)          # axe-core, zero violations
        page_errors.assert_clean()             # no console errors, no failed requests

Every wait is bounded: Playwright actions time out after ACTION_TIMEOUT_MS, navigations
after NAVIGATION_TIMEOUT_MS, `expect(...)` after EXPECT_TIMEOUT_MS; the server process is
always stopped and the browser context always closed, also when a test fails (a failing
test also leaves a screenshot under test-artifacts/screenshots/).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import re
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Iterator,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Playwright,
    Request,
    async_playwright,
    expect,
)
from playwright.async_api import Error as PlaywrightError

from tests.cli_helpers import REPO, free_port, running_server

ARTIFACTS = REPO / "test-artifacts"
SCREENSHOTS = ARTIFACTS / "screenshots"

VIEWPORT = {"width": 1280, "height": 800}
LAUNCH_TIMEOUT_MS = 30_000
ACTION_TIMEOUT_MS = 10_000
NAVIGATION_TIMEOUT_MS = 15_000
EXPECT_TIMEOUT_MS = 10_000

CHROMIUM_ARGS = [
    "--no-sandbox",  # root in CI; no user namespaces in containers
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # Shared memory from $TMPDIR instead of /dev/shm, which is tiny in some containers
    # (Debian's launcher means to add this itself, but its check is broken when
    # /dev/shm shows up twice in `findmnt`).
    "--disable-dev-shm-usage",
]

# Tests using any of these run on the session loop (see the module docstring).
BROWSER_FIXTURES = frozenset({"playwright", "browser", "page", "new_page", "page_errors"})

expect.set_options(timeout=EXPECT_TIMEOUT_MS)


# --------------------------------------------------------------------------- pytest hooks


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run every browser test on the session event loop, where the browser lives."""
    for item in items:
        if (BROWSER_FIXTURES & set(getattr(item, "fixturenames", ()))
                and inspect.iscoroutinefunction(getattr(item, "obj", None))):
            item.add_marker(pytest.mark.asyncio(loop_scope="session"), append=False)


_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the item, so fixtures can tell a failed test."""
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


def _failed(node: pytest.Item) -> bool:
    reports = node.stash.get(_REPORTS, {})
    return any(r.failed for r in reports.values())


# --------------------------------------------------------------------------- live server


class LiveServer:
    """A real `backup-manager serve` process on loopback, with its own data directory.

    `url` is the base URL (no trailing slash). `stop()` sends SIGTERM and waits (then
    SIGKILLs after 20 s); `kill()` SIGKILLs it like a power cut; `start()` starts it again
    on the same port and data directory; `restart()` is `stop()` then `start()`.
    """

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[str] | None = None
        self.runs = 0
        self._stack: contextlib.ExitStack | None = None

    @property
    def log_path(self) -> Path:
        """The current run's output (running_server writes it next to the data dir)."""
        return self.data_dir.parent / f"server-{self.port}.log"

    def logs(self) -> str:
        """The output of every run so far, oldest first."""
        parts = [p.read_text(errors="replace")
                 for p in sorted(self.data_dir.parent.glob(f"server-{self.port}.run*.log"))]
        if self.log_path.exists():
            parts.append(self.log_path.read_text(errors="replace"))
        return "".join(parts)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Start the server and wait (at most 30 s) until /healthz answers."""
        if self._stack is not None:
            raise RuntimeError("the server is already started")
        stack = contextlib.ExitStack()
        self.proc, _ = stack.enter_context(running_server(self.data_dir, self.port))
        self._stack = stack
        self.runs += 1

    def stop(self) -> None:
        """SIGTERM, wait up to 20 s, SIGKILL if still there. Keeps the run's log."""
        if self._stack is None:
            return
        stack, self._stack = self._stack, None
        try:
            stack.close()
        finally:
            if self.log_path.exists():  # the next run would truncate it
                self.log_path.rename(self.log_path.with_suffix(f".run{self.runs:02d}.log"))

    def kill(self) -> None:
        """SIGKILL the server, as a crash would stop it; `start()` brings it back."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.stop()

    def restart(self) -> None:
        self.stop()
        self.start()

    def request_json(self, method: str, path: str, body: Any = None,
                     timeout: float = 10) -> tuple[int, Any]:
        """One JSON request to the server: (status, decoded body or None)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json",
                                              "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")


@pytest.fixture
def live_server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LiveServer]:
    """A started LiveServer with data in tmp_path/data; always stopped at teardown. When
    the test failed, the server's output is printed (pytest shows it with the failure)."""
    server = LiveServer(tmp_path / "data")
    server.data_dir.mkdir(parents=True, exist_ok=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        if _failed(request.node):
            print(f"---- output of the server at {server.url} ----\n{server.logs()}")


# --------------------------------------------------------------------------- browser


def chromium_path() -> str:
    """The system Chromium; fails (never skips) when it is missing."""
    path = os.environ.get("CHROMIUM") or shutil.which("chromium")
    if not path:
        pytest.fail("no `chromium` on PATH: run `make sysdeps` (apt-get install chromium)",
                    pytrace=False)
    return path


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def playwright() -> AsyncIterator[Playwright]:
    """The Playwright driver (a node process), once per session."""
    async with async_playwright() as pw:
        yield pw


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser(playwright: Playwright) -> AsyncIterator[Browser]:
    """Headless system Chromium, launched once per session and always closed."""
    browser = await playwright.chromium.launch(
        executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS,
        timeout=LAUNCH_TIMEOUT_MS)
    try:
        yield browser
    finally:
        with contextlib.suppress(PlaywrightError):
            await browser.close()


# Always excused: Chromium asks for /favicon.ico by itself when a page declares no icon.
DEFAULT_ALLOW = (r"^console error: Failed to load resource: .* 404 .*\(https?://[^/]+"
                 r"/favicon\.ico:\d+\)$",)


@dataclass
class PageErrors:
    """What went wrong in the watched pages: console errors, uncaught exceptions, failed
    requests. `assert_clean(allow=...)` fails listing them; patterns in `allow` (regular
    expressions, searched in each line as `all()` words it) excuse expected ones, e.g.
    `allow=[r"WebSocket connection .* failed"]` while the server restarts."""

    console: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)

    def watch(self, page: Page) -> None:
        page.on("console", self._on_console)
        page.on("pageerror", lambda exc: self.exceptions.append(f"{page.url}: {exc}"))
        page.on("requestfailed", self._on_request_failed)

    def _on_console(self, msg: ConsoleMessage) -> None:
        if msg.type == "error":
            loc = msg.location
            where = f" ({loc.get('url')}:{loc.get('lineNumber')})" if loc.get("url") else ""
            self.console.append(f"{msg.text}{where}")

    def _on_request_failed(self, request: Request) -> None:
        self.failed_requests.append(
            f"{request.method} {request.url}: {request.failure or 'failed'}")

    def all(self) -> list[str]:
        return ([f"console error: {x}" for x in self.console]
                + [f"uncaught exception: {x}" for x in self.exceptions]
                + [f"failed request: {x}" for x in self.failed_requests])

    def clear(self) -> None:
        self.console.clear()
        self.exceptions.clear()
        self.failed_requests.clear()

    def assert_clean(self, allow: Iterable[str] = ()) -> None:
        patterns = [re.compile(p) for p in (*DEFAULT_ALLOW, *allow)]
        left = [x for x in self.all() if not any(p.search(x) for p in patterns)]
        assert not left, "the page reported problems:\n  " + "\n  ".join(left)


NewPage = Callable[..., Awaitable[Page]]


@pytest.fixture
def page_errors() -> PageErrors:
    """The problems of every page that `page` / `new_page` opened in this test."""
    return PageErrors()


@pytest_asyncio.fixture(loop_scope="session")
async def new_page(browser: Browser, page_errors: PageErrors, request: pytest.FixtureRequest
                   ) -> AsyncIterator[NewPage]:
    """A factory: `await new_page(**context_options)` opens a page in a fresh browser
    context (own cookies and storage; 1280x800 unless `viewport=` says otherwise), watched
    by `page_errors`. Every context is closed at teardown; on failure each page is
    screenshotted first."""
    if not inspect.iscoroutinefunction(getattr(request.node, "obj", None)):
        pytest.fail(f"{request.node.name}: browser tests must be `async def` "
                    "(they use Playwright's async API; see tests/browser_helpers.py)",
                    pytrace=False)
    contexts: list[BrowserContext] = []

    async def open_page(**options: Any) -> Page:
        options.setdefault("viewport", VIEWPORT)
        context = await browser.new_context(**options)
        contexts.append(context)
        context.set_default_timeout(ACTION_TIMEOUT_MS)
        context.set_default_navigation_timeout(NAVIGATION_TIMEOUT_MS)
        page = await context.new_page()
        page_errors.watch(page)
        return page

    try:
        yield open_page
    finally:
        failed = _failed(request.node)
        for i, context in enumerate(contexts):
            if failed:
                for j, page in enumerate(context.pages):
                    with contextlib.suppress(PlaywrightError, OSError):
                        await screenshot(page, f"FAILED-{request.node.nodeid}-{i}-{j}")
            with contextlib.suppress(PlaywrightError):
                await context.close()


@pytest_asyncio.fixture(loop_scope="session")
async def page(new_page: NewPage) -> Page:
    """A page in a fresh context, 1280x800; its problems are in `page_errors`."""
    return await new_page()


# --------------------------------------------------------------------------- screenshots


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_.")[:150] or "screenshot"


async def screenshot(page: Page, name: str, *, full_page: bool = True) -> Path:
    """Save a PNG of the page as test-artifacts/screenshots/<name>.png; returns the path."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{_safe_name(name)}.png"
    await page.screenshot(path=str(path), full_page=full_page, timeout=ACTION_TIMEOUT_MS)
    return path


# --------------------------------------------------------------------------- axe-core

AXE_HINT = ("axe-core is not installed: run `make webdeps` (or `make css`, or "
            "`npm ci --prefix web`), which puts it at web/node_modules/axe-core/axe.min.js")


def axe_path() -> Path:
    """axe.min.js from web/node_modules (`make webdeps`); AXE_CORE_JS overrides. Fails
    (never skips) when it is missing: CI must run the accessibility checks."""
    candidates = [Path(os.environ["AXE_CORE_JS"])] if os.environ.get("AXE_CORE_JS") else []
    candidates += [REPO / "web" / "node_modules" / "axe-core" / "axe.min.js",
                   REPO / "node_modules" / "axe-core" / "axe.min.js"]
    for path in candidates:
        if path.is_file():
            return path
    pytest.fail(AXE_HINT + f" (looked at: {', '.join(map(str, candidates))})", pytrace=False)


async def axe_check(page: Page, *, context: Any = None,
                    options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Run axe-core on the page as it is now and return its violations (JSON, as axe
    reports them). `context`/`options` go to `axe.run`: e.g. `context={"exclude":
    ["#chart"]}`, `options={"rules": {"color-contrast": {"enabled": False}}}`.

    axe is evaluated through the DevTools protocol, which the page's Content Security
    Policy does not restrict, so the CSP under test stays as it is."""
    if not await page.evaluate("typeof window.axe === 'object'"):
        await page.evaluate(axe_path().read_text(encoding="utf-8"))
    result: dict[str, Any] = await page.evaluate(
        "([context, options]) => axe.run(context || document, options || {})",
        [context, options or {}])
    violations: list[dict[str, Any]] = result["violations"]
    return violations


def format_axe_violations(violations: list[dict[str, Any]]) -> str:
    """One readable block per violated rule: id, impact, help, and each offending node."""
    lines = []
    for v in violations:
        lines.append(f"[{v.get('impact') or 'n/a'}] {v['id']}: {v['help']} ({v['helpUrl']})")
        for node in v["nodes"]:
            target = " ".join(json.dumps(t) if not isinstance(t, str) else t
                              for t in node["target"])
            summary = (node.get("failureSummary") or "").replace("\n", " ").strip()
            lines.append(f"    {target}  -- {summary}" if summary else f"    {target}")
    return "\n".join(lines)


async def assert_accessible(page: Page, *, context: Any = None,
                            options: dict[str, Any] | None = None) -> None:
    """Fail unless axe-core finds no violation, naming rule, impact and selectors."""
    violations = await axe_check(page, context=context, options=options)
    assert not violations, (f"axe-core found {len(violations)} violation(s) on {page.url}:\n"
                            + format_axe_violations(violations))

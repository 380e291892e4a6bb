"""Every page in a real Chromium: zero axe-core violations, in both themes, phone and desktop.

Screenshots at 375 px and 1280 px in light and dark land in test-artifacts/screenshots/.
"""

from __future__ import annotations

import time
from pathlib import Path

from playwright.async_api import Page, expect

from tests.browser_helpers import LiveServer, NewPage, PageErrors, assert_accessible, screenshot
from tests.engine_helpers import slow_source, write

WIDTHS = (375, 1280)
THEMES = ("light", "dark")


def seed(live_server: LiveServer, tmp_path: Path) -> str:
    """Jobs with a finished run and a snapshot, a failed run, a run interrupted by a crash
    (the recovery banner) and a run going (a progress bar); returns the running job."""
    write(tmp_path / "src" / "docs" / "a.txt", b"hello\n")
    status, job = live_server.request_json("POST", "/api/jobs", {
        "name": "Documents", "engine": "mirror", "sources": [str(tmp_path / "src")],
        "destination": str(tmp_path / "dest"), "schedule": "0 3 * * *",
        "exclude": ["*.tmp"]})
    assert status == 201, job
    run_id = live_server.request_json("POST", f"/api/jobs/{job['id']}/start", {})[1]["run_id"]
    # A missing source is refused when saved: this one goes away afterwards.
    (tmp_path / "gone").mkdir()
    status, broken = live_server.request_json("POST", "/api/jobs", {
        "name": "Missing source", "engine": "mirror", "sources": [str(tmp_path / "gone")],
        "destination": str(tmp_path / "dest2")})
    (tmp_path / "gone").rmdir()
    live_server.request_json("POST", f"/api/jobs/{broken['id']}/start", {})
    wait_state(live_server, run_id, "succeeded")

    # A run cut off by a crash, with auto-resume off: the recovery banner on every page.
    slow = slow_source(tmp_path / "slow")
    live_server.request_json("PUT", "/api/settings", {"auto_resume": False})
    _, cut = live_server.request_json("POST", "/api/jobs", {
        "name": "Cut off", "engine": "mirror", "sources": [str(slow)],
        "destination": str(tmp_path / "dest3"), "options": {"bwlimit": 512}})
    cut_run = live_server.request_json("POST", f"/api/jobs/{cut['id']}/start", {})[1]["run_id"]
    wait_state(live_server, cut_run, "running")
    live_server.kill()
    live_server.start()
    wait_state(live_server, cut_run, "interrupted")

    # And one running slowly, so the pages show a live progress bar too: 8 MiB at
    # 64 KiB/s outlasts the four passes over every page (at 256 KiB/s, 32 s, it ended
    # during the last pass on a quiet machine).
    _, busy = live_server.request_json("POST", "/api/jobs", {
        "name": "Busy", "engine": "mirror", "sources": [str(slow)],
        "destination": str(tmp_path / "dest4"), "options": {"bwlimit": 64}})
    busy_run = live_server.request_json("POST", f"/api/jobs/{busy['id']}/start", {})[1]["run_id"]
    wait_state(live_server, busy_run, "running")
    return str(busy["id"])


def wait_state(live_server: LiveServer, run_id: str, state: str, within: float = 30) -> None:
    """Poll the API until a run is in `state`."""
    deadline = time.monotonic() + within
    while live_server.request_json("GET", f"/api/runs/{run_id}")[1]["state"] != state:
        assert time.monotonic() < deadline, f"run {run_id} never became {state}"
        time.sleep(0.05)


def page_paths(job_id: str) -> dict[str, str]:
    """The pages to check, by a name for the screenshot."""
    return {"dashboard": "/dashboard", "jobs": "/jobs", "job-new": "/jobs/new",
            "job": f"/jobs/{job_id}", "job-edit": f"/jobs/{job_id}/edit",
            "settings": "/settings", "logs": "/logs", "not-found": "/no/such/page"}


async def test_every_page_passes_axe_in_both_themes_at_phone_and_desktop_width(
        live_server: LiveServer, new_page: NewPage, page_errors: PageErrors,
        tmp_path: Path) -> None:
    job_id = seed(live_server, tmp_path)
    paths = page_paths(job_id)
    for theme in THEMES:
        for width in WIDTHS:
            page: Page = await new_page(viewport={"width": width, "height": 800},
                                        color_scheme=theme)
            for name, path in paths.items():
                await page.goto(live_server.url + path)
                await expect(page.locator("#conn")).to_have_attribute("data-state", "live")
                if path != "/no/such/page":
                    await expect(page.locator("#recovery")).to_contain_text("interrupted run")
                if path in ("/dashboard", f"/jobs/{job_id}"):
                    await expect(page.locator('[data-f="bar"]').first).to_be_visible()
                await assert_accessible(page)
                await screenshot(page, f"{name}-{theme}-{width}")
                # Nothing may stick out sideways on a phone.
                overflow = await page.evaluate(
                    "document.documentElement.scrollWidth - window.innerWidth")
                assert overflow <= 0, f"{path} scrolls sideways by {overflow}px at {width}px"
            await page.context.close()
    # Leaving a page cancels its fragment refreshes in flight (ERR_ABORTED): expected.
    page_errors.assert_clean(allow=[r"status of 404", r"ERR_ABORTED"])


async def test_refused_form_passes_axe(live_server: LiveServer,
                                                         new_page: NewPage,
                                                         tmp_path: Path) -> None:
    for theme in THEMES:
        page = await new_page(color_scheme=theme)
        await page.goto(live_server.url + "/jobs/new")
        await page.get_by_role("button", name="Create job").click()
        await expect(page.locator("#e-name")).to_be_visible()
        await assert_accessible(page)
        await screenshot(page, f"job-form-errors-{theme}-1280")

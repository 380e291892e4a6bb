"""A new user's journey in a real Chromium: create, run, watch, pause, resume, restore, read.

Each test drives the real server process (live_server) through the pages only, the way a
person would, and checks what that person would see, plus the files on disk.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from playwright.async_api import Page, expect

from tests.browser_helpers import LiveServer, NewPage, PageErrors, screenshot
from tests.engine_helpers import slow_source, tree_signature, write

# A slow enough run to watch: 8 MiB through a 1 MiB/s bandwidth limit takes ~8 s.
SLOW_OPTIONS = "bwlimit = 1024"
WS_DROPPED = r"WebSocket|ERR_CONNECTION_REFUSED|net::ERR"
# Chromium logs every 4xx answer to the console; a refused form is answered with 422.
REFUSED_FORM = r"status of 422"


async def bar_value(page: Page) -> float:
    """How far the first progress bar on the page is, 0-100 (-1 while counting)."""
    bar = page.locator('[data-f="bar"]').first
    if await bar.get_attribute("data-counting") == "true":
        return -1.0
    return float(await bar.get_attribute("aria-valuenow") or 0)


async def wait_for_bar_above(page: Page, value: float, within: float = 30) -> float:
    """Wait until the live progress bar passes `value` percent; return where it is."""
    async with asyncio.timeout(within):
        while True:
            now = await bar_value(page)
            if now > value:
                return now
            await asyncio.sleep(0.1)


async def test_new_user_journey(live_server: LiveServer, page: Page,
                                page_errors: PageErrors, tmp_path: Path) -> None:
    src = slow_source(tmp_path / "src")
    dest, target = tmp_path / "backups", tmp_path / "restored"

    await page.goto(live_server.url + "/")
    await expect(page).to_have_url(re.compile(r"/dashboard$"))
    await expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    await page.get_by_role("link", name="New job").first.click()
    await expect(page.get_by_role("heading", name="New backup job")).to_be_visible()

    # A wrong field first: a relative source. The message sits beside the field and
    # everything typed is kept.
    await page.get_by_label("Name").fill("My documents")
    await page.get_by_label("Sources (one absolute path per line)").fill("documents")
    await page.get_by_label("Destination (absolute path, or the restic repository)").fill(
        str(dest))
    await page.get_by_label("Engine options (optional)").fill(SLOW_OPTIONS)
    await page.get_by_role("button", name="Create job").click()
    error = page.locator("#e-sources")
    await expect(error).to_contain_text("must be an absolute path")
    await expect(page.get_by_label("Sources (one absolute path per line)")).to_have_attribute(
        "aria-invalid", "true")
    await expect(page.get_by_label("Name")).to_have_value("My documents")
    await expect(page.get_by_label("Engine options (optional)")).to_have_value(SLOW_OPTIONS)

    await page.get_by_label("Sources (one absolute path per line)").fill(str(src))
    await page.get_by_role("button", name="Create job").click()
    await expect(page.get_by_role("status").filter(has_text="created")).to_be_visible()
    await expect(page.get_by_role("heading", name="My documents")).to_be_visible()
    job_url = page.url

    # Start it and watch the bar move without a reload (a marker on window survives).
    await page.evaluate("window.__noReload = true")
    await page.get_by_role("button", name="Start now").click()
    await expect(page.locator("#job-header .badge")).to_have_text("running", timeout=15000)
    first = await wait_for_bar_above(page, 5)
    second = await wait_for_bar_above(page, first + 5)
    assert second > first
    await expect(page.locator('[data-f="rate"]').first).to_contain_text("/s")

    # Pause: the bar stops; resume: it moves on from where it was.
    await page.get_by_role("button", name="Pause", exact=True).click()
    await expect(page.locator("#job-header .badge")).to_have_text("paused", timeout=15000)
    held = await bar_value(page)
    await asyncio.sleep(1.5)
    assert await bar_value(page) == held
    await page.get_by_role("button", name="Resume", exact=True).click()
    await expect(page.locator("#job-header .badge")).to_have_text("running", timeout=15000)
    await expect(page.locator("#job-runs .badge").first).to_have_text("succeeded",
                                                                      timeout=60000)
    await expect(page.locator("#job-header .badge")).to_have_text("idle")
    await screenshot(page, "journey-job-succeeded")

    # Restore the snapshot into a new folder, then compare byte for byte.
    await page.get_by_text("Restore…").first.click()
    await page.get_by_label("Restore into (absolute path)").first.fill(str(target))
    await page.get_by_role("button", name="Restore", exact=True).first.click()
    await expect(page.locator('[data-activity="RestoreFinished"]')).to_contain_text(
        "finished", timeout=30000)
    assert tree_signature(target / "src") == tree_signature(src)

    # Read the backup run's log from its history row (the restore is a run of its own,
    # listed above it with its kind).
    await expect(page.locator('#job-runs [data-run-kind="restore"]')).to_contain_text(
        "Restore of", timeout=30000)
    backup_row = page.locator("#job-runs tr[data-run-row]:not(:has([data-run-kind]))")
    await backup_row.get_by_role("link", name=re.compile("^Log")).first.click()
    await expect(page).to_have_url(re.compile(r"/logs\?"))
    tail = page.locator("#log-tail")
    await expect(tail).to_contain_text("started (mirror")
    await expect(tail).to_contain_text("paused")
    await expect(tail).to_contain_text("resumed")
    page_errors.assert_clean(allow=[REFUSED_FORM])
    await page.goto(job_url)


async def test_live_update_arrives_without_reload(live_server: LiveServer, page: Page,
                                                  page_errors: PageErrors,
                                                  tmp_path: Path) -> None:
    await page.goto(live_server.url + "/jobs")
    await expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    await page.evaluate("window.__noReload = true")
    await expect(page.get_by_text("No backup jobs yet.")).to_be_visible()
    write(tmp_path / "src" / "a.txt", b"hello")
    status, job = live_server.request_json("POST", "/api/jobs", {
        "name": "Made by a script", "engine": "mirror", "sources": [str(tmp_path / "src")],
        "destination": str(tmp_path / "dest")})
    assert status == 201
    await expect(page.get_by_role("link", name="Made by a script", exact=True)).to_be_visible()
    live_server.request_json("POST", f"/api/jobs/{job['id']}/start", {})
    row = page.locator(f'tr[data-job="{job["id"]}"]')
    await expect(row.locator(".badge").nth(1)).to_have_text("succeeded", timeout=30000)
    assert await page.evaluate("window.__noReload") is True
    page_errors.assert_clean()


async def test_restart_mid_run_shows_the_recovery_banner(live_server: LiveServer, page: Page,
                                                         page_errors: PageErrors,
                                                         tmp_path: Path) -> None:
    src = slow_source(tmp_path / "src")
    assert live_server.request_json("PUT", "/api/settings", {"auto_resume": False})[0] == 200
    status, job = live_server.request_json("POST", "/api/jobs", {
        "name": "Interrupted", "engine": "mirror", "sources": [str(src)],
        "destination": str(tmp_path / "dest"), "options": {"bwlimit": 1024}})
    assert status == 201
    await page.goto(f"{live_server.url}/jobs/{job['id']}")
    await page.evaluate("window.__noReload = true")
    await page.get_by_role("button", name="Start now").click()
    await wait_for_bar_above(page, 5)

    # A crash (SIGKILL) then a restart: with auto-resume off the run waits for a person.
    # (A clean SIGTERM shutdown resumes by itself; recovery tests cover that.)
    live_server.kill()
    live_server.start()
    banner = page.locator("#recovery")
    await expect(banner).to_contain_text("interrupted run", timeout=30000)
    await expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    assert await page.evaluate("window.__noReload") is True
    await screenshot(page, "recovery-banner")

    await banner.get_by_role("button", name=re.compile("^Resume")).click()
    await expect(page.locator("#job-runs .badge").first).to_have_text("succeeded",
                                                                      timeout=60000)
    await expect(banner).not_to_contain_text("interrupted run")
    snapshots = live_server.request_json("GET", f"/api/jobs/{job['id']}/snapshots")[1]
    assert len(snapshots["snapshots"]) == 1
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()
                  if not p.name.endswith(".manifest.json")) == [
        snapshots["snapshots"][0]["id"]], "a partial snapshot was left behind"
    restored = tmp_path / "dest" / snapshots["snapshots"][0]["id"] / "src"
    assert tree_signature(restored) == tree_signature(src)
    # While the server is down the socket and the fragment refreshes fail, as they should.
    page_errors.assert_clean(allow=[WS_DROPPED, r"htmx:(sendError|afterRequest)"])


async def test_settings_form_in_the_browser(live_server: LiveServer, page: Page,
                                            page_errors: PageErrors) -> None:
    await page.goto(live_server.url + "/settings")
    field = page.get_by_label("Runs at the same time")
    await field.fill("99")
    await page.get_by_role("button", name="Save settings").click()
    await expect(page.locator("#e-max_concurrent_runs")).to_contain_text("1 to 32")
    await expect(field).to_have_value("99")
    await expect(page.locator("#form-errors")).to_be_focused()
    await field.fill("3")
    await page.get_by_label("Theme", exact=True).select_option("dark")
    await page.get_by_role("button", name="Save settings").click()
    await expect(page.get_by_text("Settings saved.")).to_be_visible()
    await expect(page.locator("html")).to_have_class("dark")
    assert live_server.request_json("GET", "/api/settings")[1]["max_concurrent_runs"] == 3
    # The header button overrides the theme for this browser only, and is remembered.
    async with page.expect_navigation():  # a plain form post: a whole new page
        await page.get_by_role("button", name=re.compile("^Theme")).click()
    await expect(page.locator("html")).to_have_class("")
    await page.reload()
    await expect(page.locator("html")).to_have_class("")
    page_errors.assert_clean(allow=[REFUSED_FORM])


async def test_keyboard_only_can_reach_and_use_the_navigation(live_server: LiveServer,
                                                              page: Page) -> None:
    await page.goto(live_server.url + "/dashboard")
    await page.keyboard.press("Tab")
    await expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    for _ in range(8):
        await page.keyboard.press("Tab")
        if await page.evaluate("document.activeElement.textContent.trim()") == "Jobs":
            break
    await page.keyboard.press("Enter")
    await expect(page).to_have_url(re.compile(r"/jobs$"))
    await expect(page.get_by_role("link", name="Jobs", exact=True)).to_have_attribute(
        "aria-current", "page")


async def test_falls_back_to_polling_when_the_socket_cannot_open(
        live_server: LiveServer, page: Page, page_errors: PageErrors, tmp_path: Path) -> None:
    # Every WebSocket is refused (as a proxy without upgrade support would): the client
    # must say so, poll /api/events instead, and still show what happens.
    await page.route_web_socket(re.compile(r"/ws"), lambda ws: ws.close())
    await page.goto(live_server.url + "/jobs")
    indicator = page.locator("#conn")
    await expect(indicator).to_have_attribute("data-state", "polling", timeout=20000)
    await expect(indicator).to_contain_text("Polling")
    write(tmp_path / "src" / "a.txt", b"hello")
    status, _ = live_server.request_json("POST", "/api/jobs", {
        "name": "Seen by polling", "engine": "mirror", "sources": [str(tmp_path / "src")],
        "destination": str(tmp_path / "dest")})
    assert status == 201
    await expect(page.get_by_role("link", name="Seen by polling", exact=True)).to_be_visible()
    page_errors.assert_clean(allow=[WS_DROPPED])


async def test_pages_work_with_javascript_off(live_server: LiveServer, new_page: NewPage,
                                              tmp_path: Path) -> None:
    write(tmp_path / "src" / "a.txt", b"plain forms")
    page = await new_page(java_script_enabled=False)
    await page.goto(live_server.url + "/jobs/new")
    await page.get_by_label("Name").fill("No script")
    await page.get_by_label("Sources (one absolute path per line)").fill(str(tmp_path / "src"))
    await page.get_by_role("button", name="Create job").click()  # no destination yet
    await expect(page.locator("#e-destination")).to_contain_text("destination is required")
    await page.get_by_label("Destination (absolute path, or the restic repository)").fill(
        str(tmp_path / "dest"))
    await page.get_by_role("button", name="Create job").click()
    await expect(page.get_by_text("Job “No script” created.")).to_be_visible()
    await page.get_by_role("button", name="Start now").click()
    await expect(page.get_by_text(re.compile(r"Run r-[0-9a-f]{12} queued\."))).to_be_visible()
    for _ in range(100):  # no live updates without JavaScript: reload, as a person would
        await page.reload()
        if await page.locator("#job-runs .badge").first.text_content() == "succeeded":
            break
        await asyncio.sleep(0.1)
    await expect(page.locator("#job-runs .badge").first).to_have_text("succeeded")
    await page.get_by_role("link", name="Logs", exact=True).click()
    await expect(page.get_by_role("heading", name="Logs")).to_be_visible()


async def test_live_refreshes_keep_focus_and_what_is_being_typed(
        live_server: LiveServer, page: Page, tmp_path: Path) -> None:
    src = slow_source(tmp_path / "src")
    write(tmp_path / "quick" / "a.txt", b"quick")
    jobs = {}
    for name, source, options in (("Slow", src, {"bwlimit": 512}),
                                  ("Quick", tmp_path / "quick", {})):
        status, jobs[name] = live_server.request_json("POST", "/api/jobs", {
            "name": name, "engine": "mirror", "sources": [str(source)],
            "destination": str(tmp_path / f"dest-{name}"), "options": options,
            "schedule": "every 6 hours"})  # the dashboard then links the next run
        assert status == 201
    quick = jobs["Quick"]["id"]
    first = live_server.request_json("POST", f"/api/jobs/{quick}/start", {})[1]["run_id"]
    for _ in range(100):
        if live_server.request_json("GET", f"/api/runs/{first}")[1]["state"] == "succeeded":
            break
        await asyncio.sleep(0.1)

    # Keyboard focus on Pause stays there while the run checkpoints and progresses.
    await page.goto(f"{live_server.url}/jobs/{jobs['Slow']['id']}")
    await page.get_by_role("button", name="Start now").click()
    await wait_for_bar_above(page, 1)
    await page.locator("#hdr-pause").focus()
    await asyncio.sleep(4)
    assert await page.evaluate("document.activeElement.id") == "hdr-pause"

    # A restore form being filled in on one job survives another job's run finishing.
    await page.goto(f"{live_server.url}/jobs/{quick}")
    await page.get_by_text("Restore…").first.click()
    target = page.get_by_label("Restore into (absolute path)").first
    await target.fill("/tmp/half-typed")
    live_server.request_json("POST", f"/api/jobs/{quick}/start", {})
    await expect(page.locator("#job-runs .badge").first).to_have_text("succeeded")
    await asyncio.sleep(1)
    await expect(target).to_have_value("/tmp/half-typed")

    # The dashboard's stats poll does not take focus away from a link in the cards.
    await page.goto(f"{live_server.url}/dashboard")
    link = page.locator("#stats a").first
    await link.focus()
    await asyncio.sleep(4.5)  # two polls
    assert await page.evaluate("document.activeElement.closest('#stats') !== null")

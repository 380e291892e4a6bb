"""The browser-test infrastructure works: a real server, the system Chromium, a page."""

from __future__ import annotations

import re

from playwright.async_api import Page, expect

from tests.browser_helpers import LiveServer, PageErrors, screenshot


async def test_dashboard_opens_without_errors(live_server: LiveServer, page: Page,
                                              page_errors: PageErrors) -> None:
    response = await page.goto(live_server.url + "/dashboard")
    assert response is not None and response.ok
    await expect(page).to_have_title(re.compile("backup-manager"))
    path = await screenshot(page, "smoke-dashboard")
    assert path.stat().st_size > 0
    page_errors.assert_clean()

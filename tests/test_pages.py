"""The HTML pages through the real app with JavaScript off: forms post, validate, redirect."""

from __future__ import annotations

import asyncio
import gzip
import re
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient

from server.keys import STATE, STORE
from tests.api_helpers import wait_run
from tests.engine_helpers import make_tree, tree_signature
from tests.page_helpers import csrf_of, field_errors

Client = TestClient[web.Request, web.Application]
PAGES = ("/dashboard", "/jobs", "/jobs/new", "/settings", "/logs")


def field_value(html: str, name: str) -> str:
    """What a text input or textarea shows."""
    match = (re.search(rf'<textarea[^>]*name="{name}"[^>]*>([^<]*)</textarea>', html)
             or re.search(rf'<input[^>]*name="{name}"[^>]*value="([^"]*)"', html))
    assert match, f"no field {name}"
    return match.group(1)


async def token(client: Client) -> str:
    """A CSRF token, read from a page as a browser would."""
    return csrf_of(await (await client.get("/jobs/new")).text())


async def page_until(client: Client, url: str, text: str, within: float = 30) -> str:
    """Reload a page until it shows `text` (a background restore or verify finished)."""
    async with asyncio.timeout(within):
        while True:
            page = await (await client.get(url)).text()
            if text in page:
                return page
            await asyncio.sleep(0.05)


async def test_every_page_renders_with_navigation_and_is_not_cached(app_client: Client) -> None:
    for path in PAGES:
        resp = await app_client.get(path)
        html = await resp.text()
        assert resp.status == 200, (path, html[:500])
        assert resp.headers["Cache-Control"] == "no-store"
        for label in ("Dashboard", "Jobs", "Settings", "Logs"):
            assert f">{label}</a>" in html
        assert html.count('aria-current="page"') == 1, path


async def test_unknown_page_gets_a_styled_404(app_client: Client) -> None:
    resp = await app_client.get("/no/such/page")
    html = await resp.text()
    assert resp.status == 404
    assert "This page does not exist" in html and 'href="/dashboard"' in html
    missing_job = await app_client.get("/jobs/no-such-job")
    assert missing_job.status == 404 and "no job no-such-job" in await missing_job.text()


async def test_refused_job_form_shows_messages_beside_fields_and_keeps_input(
        app_client: Client, tmp_path: Path) -> None:
    store = app_client.app[STORE]
    before = store.last_seq
    resp = await app_client.post("/jobs/new", data={
        "_csrf": await token(app_client), "name": "", "engine": "mirror",
        "sources": "relative/path\n/also/ok", "destination": str(tmp_path / "dest"),
        "keep_daily": "-3", "schedule": "every tuesday"})
    html = await resp.text()
    assert resp.status == 422
    errors = field_errors(html)
    assert errors["name"] == "a name is required"
    assert "absolute path" in errors["sources"]
    assert "whole number" in errors["retention"]
    assert field_value(html, "sources") == "relative/path\n/also/ok"
    assert field_value(html, "destination") == str(tmp_path / "dest")
    assert 'aria-invalid="true"' in html and 'role="alert"' in html
    assert store.last_seq == before  # nothing appended

    # Fixing the retention shows the remaining model errors (schedule, name, sources).
    resp = await app_client.post("/jobs/new", data={
        "_csrf": await token(app_client), "name": "", "engine": "mirror",
        "sources": "relative", "destination": "/x", "schedule": "every tuesday"})
    assert "not a valid schedule" in field_errors(await resp.text())["schedule"]
    assert store.last_seq == before


async def test_create_start_and_restore_a_job_with_forms_only(app_client: Client,
                                                             tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    csrf = await token(app_client)
    resp = await app_client.post("/jobs/new", allow_redirects=False, data={
        "_csrf": csrf, "name": "Photos", "engine": "mirror", "sources": str(src),
        "destination": str(tmp_path / "dest"), "keep_last": "3", "enabled": "on",
        "options": "bwlimit = 0"})
    assert resp.status == 303
    job_url = resp.headers["Location"]
    job_id = job_url.rsplit("/", 1)[1]
    page = await (await app_client.get(job_url)).text()
    assert "Job “Photos” created." in page  # the flash, shown once
    assert "Job “Photos” created." not in await (await app_client.get(job_url)).text()
    assert app_client.app[STATE].jobs[job_id].spec["retention"]["keep_last"] == 3

    start = await app_client.post(f"{job_url}/start", data={"_csrf": csrf},
                                  allow_redirects=False)
    assert start.status == 303 and start.headers["Location"] == job_url
    run_id = app_client.app[STATE].jobs[job_id].run_ids[-1]
    run = await wait_run(app_client, run_id, {"succeeded", "failed"})
    assert run["state"] == "succeeded", run

    page = await (await app_client.get(job_url)).text()
    snapshot = re.findall(r'data-snapshot="([^"]+)"', page)
    assert snapshot == [run["snapshot_id"]]
    assert f'data-run-row="{run_id}"' in page
    jobs_page = await (await app_client.get("/jobs")).text()
    assert "Photos" in jobs_page and "badge-succeeded" in jobs_page

    target = tmp_path / "restored"
    restore = await app_client.post(f"{job_url}/snapshots/{snapshot[0]}/restore",
                                    data={"_csrf": csrf, "target": str(target)},
                                    allow_redirects=False)
    assert restore.status == 303
    page = await page_until(app_client, job_url, 'data-activity="RestoreFinished"')
    assert tree_signature(target / "src") == tree_signature(src)
    assert "Restore of" in page and "finished" in page

    # A second restore into the same place is refused at once, and the page says why.
    before = app_client.app[STORE].last_seq
    again = await app_client.post(f"{job_url}/snapshots/{snapshot[0]}/restore",
                                  data={"_csrf": csrf, "target": str(target)})
    page = await again.text()
    assert f"Restore of {snapshot[0]} failed:" in page and "overwrite" in page
    assert app_client.app[STORE].last_seq == before  # refused before writing: no record


async def test_delete_needs_confirmation_and_keeps_backups(app_client: Client,
                                                          tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    created = await app_client.post("/api/jobs", json={
        "name": "Gone", "engine": "mirror", "sources": [str(src)],
        "destination": str(tmp_path / "dest")})
    job_id = (await created.json())["id"]
    csrf = await token(app_client)
    refused = await app_client.post(f"/jobs/{job_id}/delete", data={"_csrf": csrf},
                                    allow_redirects=False)
    assert refused.status == 303 and job_id in app_client.app[STATE].jobs
    run_id = (await (await app_client.post(f"/api/jobs/{job_id}/start", json={})).json()
              )["run_id"]
    run = await wait_run(app_client, run_id, {"succeeded", "failed"})
    deleted = await app_client.post(f"/jobs/{job_id}/delete",
                                    data={"_csrf": csrf, "confirm": "delete"})
    assert deleted.status == 200 and "Job “Gone” deleted." in await deleted.text()
    assert job_id not in app_client.app[STATE].jobs
    snapshot = tmp_path / "dest" / run["snapshot_id"] / "src"
    assert tree_signature(snapshot) == tree_signature(src)  # the backups stay


async def test_forms_without_token_or_from_another_site_are_refused(app_client: Client) -> None:
    store = app_client.app[STORE]
    before = store.last_seq
    csrf = await token(app_client)
    good = {"name": "x", "engine": "mirror", "sources": "/a", "destination": "/b"}
    no_token = await app_client.post("/jobs/new", data=good)
    assert no_token.status == 403 and "security token" in await no_token.text()
    wrong = await app_client.post("/jobs/new", data={**good, "_csrf": "0" * 64})
    assert wrong.status == 403
    foreign = await app_client.post("/jobs/new", data={**good, "_csrf": csrf},
                                    headers={"Origin": "https://evil.example"})
    assert foreign.status == 403
    foreign_referer = await app_client.post("/settings", data={"_csrf": csrf},
                                            headers={"Referer": "https://evil.example/x"})
    assert foreign_referer.status == 403
    assert store.last_seq == before


async def test_settings_form_validates_saves_and_applies(app_client: Client) -> None:
    csrf = csrf_of(await (await app_client.get("/settings")).text())
    store = app_client.app[STORE]
    before = store.last_seq
    bad = await app_client.post("/settings", data={
        "_csrf": csrf, "max_concurrent_runs": "0", "auto_resume": "no", "log_level": "LOUD",
        "theme": "dark", "keep_last": "2", "webhook_url": "ftp://nope"})
    html = await bad.text()
    assert bad.status == 422
    errors = field_errors(html)
    assert set(errors) >= {"max_concurrent_runs", "log_level", "webhook_url"}
    assert field_value(html, "webhook_url") == "ftp://nope"
    assert store.last_seq == before
    ok = await app_client.post("/settings", data={
        "_csrf": csrf, "max_concurrent_runs": "4", "auto_resume": "no", "log_level": "WARNING",
        "theme": "dark", "keep_last": "2", "keep_daily": "1", "webhook_url": ""})
    html = await ok.text()
    assert ok.status == 200 and "Settings saved." in html
    settings = app_client.app[STATE].settings
    assert settings["max_concurrent_runs"] == 4 and settings["auto_resume"] is False
    assert settings["default_retention"] == {"keep_last": 2, "keep_daily": 1, "keep_weekly": 0,
                                             "keep_monthly": 0}
    assert '<html lang="en" class="dark">' in html  # the theme setting applies at once
    last = (await store.read(since=before))[-1]
    assert last.type == "SettingsChanged"


async def test_theme_toggle_is_remembered_per_browser(app_client: Client) -> None:
    csrf = await token(app_client)
    resp = await app_client.post("/theme", data={"_csrf": csrf, "theme": "light",
                                                 "next": "/jobs"}, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/jobs"
    html = await (await app_client.get("/dashboard")).text()
    assert '<html lang="en" class="light">' in html
    evil = await app_client.post("/theme", data={"_csrf": csrf, "theme": "dark",
                                                 "next": "//evil.example/"},
                                 allow_redirects=False)
    assert evil.headers["Location"] == "/dashboard"  # never sent to another site


async def test_fragments_render_alone(app_client: Client) -> None:
    whole = await (await app_client.get("/dashboard")).text()
    for name in ("stats", "running", "recent", "chart", "recovery"):
        resp = await app_client.get(f"/dashboard?fragment={name}")
        assert resp.status == 200
        assert "<html" not in await resp.text()
    assert "<svg" in await (await app_client.get("/dashboard?fragment=chart")).text()
    assert "<svg" in whole
    bad = await app_client.get("/dashboard?fragment=nope", headers={"HX-Request": "true"})
    assert bad.status == 404 and bad.headers["HX-Reswap"] == "none"


async def test_static_files_have_hashed_urls_long_cache_and_gzip(app_client: Client) -> None:
    html = await (await app_client.get("/dashboard")).text()
    urls = re.findall(r'(?:href|src)="(/static/[0-9a-f]{12}/[^"]+)"', html)
    assert {u.rsplit("/", 1)[1] for u in urls} >= {"app.css", "app.js", "htmx.min.js"}
    for url in urls:
        resp = await app_client.get(url, headers={"Accept-Encoding": "gzip"},
                                    auto_decompress=False)
        assert resp.status == 200
        assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        if not url.endswith(".svg"):
            assert resp.headers["Content-Encoding"] == "gzip"
            gzip.decompress(await resp.read())
        again = await app_client.get(url, headers={"If-None-Match": resp.headers["ETag"]})
        assert again.status == 304
    stale = await app_client.get("/static/000000000000/app.css")
    assert stale.status == 200 and "immutable" not in stale.headers["Cache-Control"]
    assert (await app_client.get("/static/000000000000/../secret.key")).status == 404


async def test_dashboard_counts_runs_and_draws_them_in_the_chart(app_client: Client,
                                                                 tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", small_files=5, large_bytes=1000)
    ok = await (await app_client.post("/api/jobs", json={
        "name": "Fine", "engine": "mirror", "sources": [str(src)],
        "destination": str(tmp_path / "d1"), "schedule": "every 6 hours"})).json()
    gone = tmp_path / "gone"
    gone.mkdir()  # a missing source is refused when saved: it goes away afterwards
    bad = await (await app_client.post("/api/jobs", json={
        "name": "Broken", "engine": "mirror", "sources": [str(gone)],
        "destination": str(tmp_path / "d2"), "enabled": False})).json()
    gone.rmdir()
    for job in (ok, bad):
        run_id = (await (await app_client.post(f"/api/jobs/{job['id']}/start",
                                               json={})).json())["run_id"]
        await wait_run(app_client, run_id, {"succeeded", "failed"})
    stats = await (await app_client.get("/dashboard?fragment=stats")).text()
    assert re.search(r'data-stat="jobs">2<', stats) and "1 enabled" in stats
    assert re.search(r'data-stat="succeeded">1<', stats)
    assert re.search(r'data-stat="failed">1<', stats)
    assert "Fine" in stats and "in 6 h" in stats  # the next scheduled run, and whose
    chart = await (await app_client.get("/dashboard?fragment=chart")).text()
    assert "succeeded (1)" in chart and "failed (1)" in chart
    assert chart.count("<rect") == 60  # 30 days, a succeeded and a failed bar each
    recent = await (await app_client.get("/dashboard?fragment=recent")).text()
    assert recent.index("Broken") < recent.index("Fine")  # newest first


async def test_stats_poll_answers_204_while_nothing_changed(app_client: Client,
                                                           tmp_path: Path) -> None:
    page = await (await app_client.get("/dashboard")).text()
    poll = re.search(r'id="stats" hx-get="([^"]+)"', page)
    assert poll
    url = poll.group(1).replace("&amp;", "&")
    same = await app_client.get(url)
    assert same.status == 204  # nothing to swap: focus and screen readers undisturbed
    (tmp_path / "a").mkdir()
    await app_client.post("/api/jobs", json={"name": "New", "engine": "mirror",
                                             "sources": [str(tmp_path / "a")],
                                             "destination": str(tmp_path / "b")})
    changed = await app_client.get(url)
    assert changed.status == 200
    assert re.search(r'data-stat="jobs">1<', await changed.text())


async def test_odd_numbers_in_the_query_are_handled(app_client: Client) -> None:
    assert (await app_client.get("/jobs?page=%C2%B2")).status == 200
    assert (await app_client.get("/jobs?page=-3")).status == 200
    bad = await app_client.get("/api/events?limit=%C2%B2")
    assert bad.status == 400 and "limit" in (await bad.json())["error"]


async def test_search_pushes_its_own_url_and_the_list_refresh_keeps_it(app_client: Client,
                                                                       tmp_path: Path
                                                                       ) -> None:
    (tmp_path / "src").mkdir()
    for name in ("Alpha", "Beta"):
        await app_client.post("/api/jobs", json={"name": name, "engine": "mirror",
                                                 "sources": [str(tmp_path / "src")],
                                                 "destination": str(tmp_path / name)})
    resp = await app_client.get("/jobs?fragment=list&q=alp",
                                headers={"HX-Request": "true", "HX-Trigger": "job-search"})
    html = await resp.text()
    assert resp.headers["HX-Push-Url"] == "/jobs?q=alp"
    assert "Alpha" in html and "Beta" not in html
    page = await (await app_client.get("/jobs?q=alp")).text()
    assert 'hx-include="#job-search"' in page and 'value="alp"' in page


async def test_restore_with_a_bad_target_keeps_the_form_and_says_why(app_client: Client,
                                                                     tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", small_files=3, large_bytes=100)
    job = await (await app_client.post("/api/jobs", json={
        "name": "R", "engine": "mirror", "sources": [str(src)],
        "destination": str(tmp_path / "dest")})).json()
    run_id = (await (await app_client.post(f"/api/jobs/{job['id']}/start", json={})).json()
              )["run_id"]
    run = await wait_run(app_client, run_id, {"succeeded"})
    store = app_client.app[STORE]
    before = store.last_seq
    resp = await app_client.post(
        f"/jobs/{job['id']}/snapshots/{run['snapshot_id']}/restore",
        data={"_csrf": await token(app_client), "target": "relative/dir", "path": "docs"})
    html = await resp.text()
    assert resp.status == 422
    assert "must be an absolute path" in html and 'value="relative/dir"' in html
    assert 'value="docs"' in html and "<details class=\"mt-2\" open>" in html
    assert store.last_seq == before  # no RestoreStarted


async def test_verify_and_prune_buttons_queue_runs_the_job_page_shows(app_client: Client,
                                                                     tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", small_files=3, large_bytes=100)
    job = await (await app_client.post("/api/jobs", json={
        "name": "V", "engine": "mirror", "sources": [str(src)],
        "destination": str(tmp_path / "dest")})).json()
    backup = (await (await app_client.post(f"/api/jobs/{job['id']}/start", json={})).json()
              )["run_id"]
    snap = (await wait_run(app_client, backup, {"succeeded"}))["snapshot_id"]
    csrf, job_url = await token(app_client), f"/jobs/{job['id']}"
    verify = await app_client.post(f"{job_url}/snapshots/{snap}/verify",
                                   data={"_csrf": csrf}, allow_redirects=False)
    assert verify.status == 303 and verify.headers["Location"] == f"{job_url}#running"
    run_id = app_client.app[STATE].jobs[job["id"]].run_ids[-1]
    run = await wait_run(app_client, run_id, {"succeeded", "failed"})
    assert run["state"] == "succeeded" and run["kind"] == "verify", run
    page = await page_until(app_client, job_url, 'data-activity="VerifyFinished"')
    assert 'data-run-kind="verify"' in page and "Verify of <code" in page
    prune = await app_client.post(f"{job_url}/prune", data={"_csrf": csrf},
                                  allow_redirects=False)
    assert prune.status == 303
    run_id = app_client.app[STATE].jobs[job["id"]].run_ids[-1]
    run = await wait_run(app_client, run_id, {"succeeded", "failed"})
    assert run["state"] == "succeeded" and run["kind"] == "prune", run
    # A snapshot that is not there: said on the page, nothing queued.
    before = app_client.app[STORE].last_seq
    missing = await app_client.post(f"{job_url}/snapshots/2020-01-01T000000Z/verify",
                                    data={"_csrf": csrf})
    assert "Verify not started" in await missing.text()
    assert app_client.app[STORE].last_seq == before

"""The Logs page through the real app: filters, search, fragments, download, live tail."""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient
from playwright.async_api import Page, expect

from core import logread
from core.livelog import MAX_LIVE_PER_SECOND
from core.logformat import APP_FORMAT, LEVELS, LogFormat
from core.logread import MAX_LINES, LogEntry, LogFile, Wanted, read_logs
from server.keys import CONFIG, RUNNER
from tests.browser_helpers import LiveServer, PageErrors, assert_accessible, screenshot

Client = TestClient[web.Request, web.Application]

APP_LOG = """\
2026-11-24 05:00:00,001 DEBUG core.scheduler: next tick in 60 s
2026-11-24 05:00:01,000 INFO core.runner: run r-0123456789ab started
2026-11-24 05:00:02,000 WARNING core.runner: Disk nearly full on /backups
2026-11-24 05:00:03,000 ERROR server.errors: unexpected error on GET /x
Traceback (most recent call last):
  File "x.py", line 1, in <module>
ValueError: bad things
2026-11-24 05:00:04,000 CRITICAL events.store: store closed
2026-11-24 05:00:05,000 INFO aiohttp.access: 127.0.0.1 "GET /jobs HTTP/1.1" 200
"""

LI = re.compile(r'<li class="log-line log-(\w+)" data-level="(\w+)">(.*?)</li>', re.S)


def shown(page: str) -> list[tuple[str, str]]:
    """(level, text) of each line the page shows, oldest first."""
    out = []
    for cls, level, inner in LI.findall(page):
        assert cls == level
        out.append((level, html.unescape(re.sub(r"<[^>]+>", "", inner))))
    return out


def logs_dir(client: Client) -> Path:
    path: Path = client.app[CONFIG].logs_dir
    (path / "runs").mkdir(parents=True, exist_ok=True)
    return path


async def get_page(client: Client, query: str, status: int = 200,
                   headers: dict[str, str] | None = None) -> str:
    resp = await client.get(f"/logs{query}", headers=headers or {})
    text = await resp.text()
    assert resp.status == status, text[:500]
    return text


async def eventually(check: Callable[[], bool], within: float = 30) -> None:
    async with asyncio.timeout(within):
        while True:
            if check():
                return
            await asyncio.sleep(0.02)


async def finished_run(client: Client, tmp_path: Path, job_id: str | None = None,
                       name: str = "Docs") -> tuple[str, str]:
    """Run a small mirror job to its end (creating the job first unless given)."""
    if job_id is None:
        src = tmp_path / f"src-{name}"
        src.mkdir()
        (src / "a.txt").write_text("hello")
        resp = await client.post("/api/jobs", json={
            "name": name, "engine": "mirror", "sources": [str(src)],
            "destination": str(tmp_path / f"backups-{name}")})
        assert resp.status == 201, await resp.text()
        job_id = (await resp.json())["id"]
    run_id = (await (await client.post(f"/api/jobs/{job_id}/start", json={})).json())["run_id"]
    async with asyncio.timeout(60):
        while True:
            run = await (await client.get(f"/api/runs/{run_id}")).json()
            if run["state"] in ("succeeded", "failed"):
                break
            await asyncio.sleep(0.05)
    path = logs_dir(client) / "runs" / f"{run_id}.log"
    await eventually(lambda: path.exists() and "succeeded" in path.read_text())
    return job_id, run_id


async def write_run_lines(client: Client, run_id: str, *messages: str) -> None:
    """Write lines to a run's log the way the runner does, and wait until they are in it."""
    run_logs = client.app[RUNNER].logs
    for message in messages:
        run_logs.write(run_id, message)
    path = run_logs.path(run_id)
    await eventually(lambda: messages[-1] in path.read_text())


async def test_app_log_by_level_and_search_with_tracebacks_kept_whole(app_client: Client
                                                                     ) -> None:
    (logs_dir(app_client) / "app.log").write_text(APP_LOG)
    page = await get_page(app_client, "")
    lines = shown(page)
    assert [level for level, _ in lines] == ["DEBUG", "INFO", "WARNING", "ERROR", "ERROR",
                                             "INFO"]
    assert lines[3][1].endswith("Traceback (most recent call last):\n"
                                '  File "x.py", line 1, in <module>\nValueError: bad things')
    assert '6 lines.' in page

    warnings = shown(await get_page(app_client, "?level=WARNING"))
    assert [text.split(": ", 1)[1].splitlines()[0] for _, text in warnings] == [
        "Disk nearly full on /backups", "unexpected error on GET /x", "store closed"]
    assert [t for _, t in shown(await get_page(app_client, "?q=DISK"))] == [
        "2026-11-24 05:00:02,000 WARNING core.runner: Disk nearly full on /backups"]
    # A continuation line finds its record; the level filter still applies to it.
    assert [lv for lv, _ in shown(await get_page(app_client, "?q=bad+things"))] == ["ERROR"]
    assert len(shown(await get_page(app_client, "?q=get+/&level=warning"))) == 1
    assert "No lines match these filters." in await get_page(app_client, "?q=nothing-like-it")

    await get_page(app_client, "?level=LOUD", 400)
    await get_page(app_client, "?source=disk", 400)


async def test_the_page_reads_without_javascript(app_client: Client) -> None:
    page = await get_page(app_client, "")
    assert '<form method="get" action="/logs"' in page
    for field in ("log-source", "log-job", "log-run", "log-level", "log-q", "log-live"):
        assert f'id="{field}"' in page and f'for="{field}"' in page, field
    assert 'type="search" name="q"' in page and 'hx-trigger="input changed delay:300ms' in page
    assert 'id="log-tail" data-order="newest-last" data-live="on" data-source="app"' in page
    assert "The application log is not written to a file" in page  # tests log to stderr only
    assert 'href="/logs/download?source=app"' in page


async def test_a_rotated_app_log_fills_in_when_the_current_one_is_short(app_client: Client
                                                                         ) -> None:
    logs = logs_dir(app_client)
    (logs / "app.log.1").write_text("2026-11-23 23:59:59,000 INFO core.x: before rotation\n")
    (logs / "app.log").write_text("2026-11-24 00:00:00,000 INFO core.x: after rotation\n")
    texts = [t for _, t in shown(await get_page(app_client, ""))]
    assert [t.rsplit(": ", 1)[1] for t in texts] == ["before rotation", "after rotation"]


async def test_a_50_mb_app_log_is_read_from_its_end_only(app_client: Client) -> None:
    first = b"2026-11-24 00:00:00,000 INFO core.x: needle-at-the-start\n"
    filler = b"2026-11-24 01:00:00,000 INFO core.x: filler line, padded to a realistic len\n"
    last = b"2026-11-24 02:00:00,000 WARNING core.x: the newest line\n"
    path = logs_dir(app_client) / "app.log"
    await asyncio.to_thread(path.write_bytes,
                            first + filler * (50_000_000 // len(filler)) + last)
    page = await get_page(app_client, "")
    lines = shown(page)
    assert len(lines) == MAX_LINES and lines[-1][1].endswith("the newest line")
    assert f"The last {MAX_LINES} matching lines" in page
    # A search that matches only the first line stops at the scan budget instead of
    # reading 50 MB, and says so.
    page = await get_page(app_client, "?q=needle-at-the-start")
    assert shown(page) == [] and "only the last 4 MB of each file were read" in page


async def test_run_logs_by_job_run_and_level(app_client: Client, tmp_path: Path) -> None:
    job_a, run_a1 = await finished_run(app_client, tmp_path, name="Alpha <&>")
    _, run_a2 = await finished_run(app_client, tmp_path, job_id=job_a)
    job_b, run_b = await finished_run(app_client, tmp_path, name="Beta")
    await write_run_lines(app_client, run_a1, "WARNING tag-a1 disk nearly full",
                          "FAILED tag-a1 boom")
    await write_run_lines(app_client, run_a2, "tag-a2 hello")
    await write_run_lines(app_client, run_b, "tag-b hello")

    one_run = await get_page(app_client, f"?run={run_a1}")
    texts = " ".join(t for _, t in shown(one_run))
    assert "tag-a1 disk" in texts and "tag-a2" not in texts and "tag-b" not in texts
    # The run's job is chosen in the select, its name escaped.
    assert f'<option value="{job_a}" selected>Alpha &lt;&amp;&gt;</option>' in one_run
    assert "<&>" not in one_run
    assert f'data-source="run" data-job="{job_a}" data-run="{run_a1}"' in one_run
    assert f'href="/logs/download?run={run_a1}"' in one_run

    of_job = " ".join(t for _, t in shown(await get_page(app_client, f"?job={job_a}")))
    assert "tag-a1" in of_job and "tag-a2" in of_job and "tag-b" not in of_job
    assert f"{run_a2} " in of_job  # merged runs say which run each line is from
    every_run = " ".join(t for _, t in shown(await get_page(app_client, "?source=run")))
    assert all(tag in every_run for tag in ("tag-a1", "tag-a2", "tag-b"))

    errors = shown(await get_page(app_client, f"?run={run_a1}&level=ERROR"))
    assert [(lv, t[21:]) for lv, t in errors] == [("ERROR", "FAILED tag-a1 boom")]
    warned = shown(await get_page(app_client, f"?job={job_b}&level=WARNING&q=TAG"))
    assert warned == []

    await get_page(app_client, "?job=no-such-job", 404)
    await get_page(app_client, "?run=../../secret.key", 404)
    assert "This run has no log lines" in await get_page(app_client, "?run=r-000000000000")


async def test_the_lines_fragment_is_only_the_lines(app_client: Client) -> None:
    (logs_dir(app_client) / "app.log").write_text(APP_LOG)
    resp = await app_client.get("/logs?fragment=lines&q=disk&live=off",
                                headers={"HX-Request": "true"})
    text = await resp.text()
    assert resp.status == 200
    assert "<html" not in text and "<form" not in text and "<nav" not in text
    assert text.lstrip().startswith('<section id="log-lines"')
    assert 'data-live="off"' in text and 'data-q="disk"' in text
    assert len(shown(text)) == 1
    assert '<span id="log-status" hx-swap-oob="innerHTML">1 line.</span>' in text
    # The address bar shows the page with its filters, never the fragment URL.
    assert resp.headers["HX-Push-Url"] == "/logs?source=app&q=disk&live=off"
    # The form's hidden live=off comes before the ticked checkbox: the box wins.
    both = await get_page(app_client, "?fragment=lines&live=off&live=on")
    assert 'data-live="on"' in both
    await get_page(app_client, "?fragment=everything", 404)
    # The layout's own fragments are served as they are, and never move the address bar.
    recovery = await app_client.get("/logs?fragment=recovery", headers={"HX-Request": "true"})
    assert recovery.status == 200 and "HX-Push-Url" not in recovery.headers


async def test_download_gives_the_file_and_refuses_anything_else(app_client: Client,
                                                                 tmp_path: Path) -> None:
    logs = logs_dir(app_client)
    (logs / "app.log").write_text(APP_LOG)
    resp = await app_client.get("/logs/download?source=app")
    assert resp.status == 200 and await resp.text() == APP_LOG
    assert resp.headers["Content-Disposition"] == 'attachment; filename="backup-manager-app.log"'
    assert resp.headers["Content-Type"].startswith("text/plain")

    run_id = "r-00000000abcd"
    (logs / "runs" / f"{run_id}.log").write_text("2026-11-24T05:00:00Z started\n")
    resp = await app_client.get(f"/logs/download?run={run_id}")
    assert resp.status == 200 and await resp.text() == "2026-11-24T05:00:00Z started\n"
    assert resp.headers["Content-Disposition"] == \
        f'attachment; filename="backup-manager-{run_id}.log"'

    secret = tmp_path / "outside.txt"
    secret.write_text("not a log")
    (logs / "runs" / "r-0000000000ee.log").symlink_to(secret)
    for query, status in [("run=../../secret.key", 404), ("run=r-00000000abcd/../../x", 404),
                          ("source=run&run=%2Fetc%2Fpasswd", 404), ("source=../etc", 400),
                          ("source=run", 400), ("run=r-000000000999", 404),
                          ("run=r-0000000000ee", 403)]:
        resp = await app_client.get(f"/logs/download?{query}")
        body = await resp.text()
        assert resp.status == status, (query, body[:300])
        assert "not a log" not in body and "root:" not in body
    await get_page(app_client, "?run=r-0000000000ee", 403)  # the page refuses it too


async def next_log(ws: Any, match: Callable[[dict[str, Any]], bool],
                   within: float = 10) -> dict[str, Any]:
    """The next {"kind": "log"} message for which `match` holds."""
    async with asyncio.timeout(within):
        while True:
            msg = await ws.receive()
            assert msg.type == WSMsgType.TEXT, msg
            data: dict[str, Any] = msg.json()
            if data.get("kind") == "log" and match(data):
                return data


async def test_new_log_lines_reach_websocket_clients(app_client: Client,
                                                     tmp_path: Path) -> None:
    job_id, run_id = await finished_run(app_client, tmp_path)
    ws = await app_client.ws_connect("/ws")
    assert (await ws.receive_json())["kind"] == "hello"

    logging.getLogger("aiohttp.access").info("GET /never-broadcast")
    logging.getLogger("tests.logs_page").warning("live line %s", "hello")
    seen: list[dict[str, Any]] = []

    def is_live_line(message: dict[str, Any]) -> bool:
        seen.append(message)
        return "live line" in message["line"]

    app_line = await next_log(ws, is_live_line)
    assert not any("never-broadcast" in m["line"] for m in seen)  # no access-log feedback
    assert list(app_line) == ["kind", "source", "job_id", "run_id", "level", "time", "line"]
    assert app_line["source"] == "app" and app_line["job_id"] is None
    assert app_line["run_id"] is None and app_line["level"] == "WARNING"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", app_line["time"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING tests.logs_page: "
                        r"live line hello", app_line["line"])

    app_client.app[RUNNER].logs.write(run_id, "FAILED live run line")
    run_line = await next_log(ws, lambda m: m["source"] == "run")
    assert run_line["run_id"] == run_id and run_line["job_id"] == job_id
    assert run_line["level"] == "ERROR"
    assert run_line["line"] == f"{run_line['time']} FAILED live run line"
    assert run_line["line"] in (app_client.app[RUNNER].logs.path(run_id).read_text())
    await ws.close()


async def test_a_flood_of_log_records_is_cut_not_queued(app_client: Client) -> None:
    ws = await app_client.ws_connect("/ws")
    await ws.receive_json()
    flood = logging.getLogger("tests.logs_page.flood")
    for i in range(10 * MAX_LIVE_PER_SECOND):
        flood.warning("flood %d", i)
    received = 0
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(1):
            while True:
                data = (await ws.receive()).json()
                received += data.get("kind") == "log" and "flood" in data["line"]
    # At most one window's worth, give or take a window boundary inside the burst.
    assert 0 < received <= 2 * MAX_LIVE_PER_SECOND
    await asyncio.sleep(1.05)  # the next second has room again
    flood.warning("after the flood")
    await next_log(ws, lambda m: "after the flood" in m["line"])
    await ws.close()


def read_naively(text: str, fmt: LogFormat, wanted: Wanted) -> list[LogEntry]:
    """Every record of a whole log, parsed forwards (the obvious way), filtered."""
    records: list[tuple[list[str], tuple[str, str]]] = []
    for line in text.split("\n"):
        head = fmt.parse_head(line)
        if head is not None:
            records.append(([line], head))
        elif line and records:
            records[-1][0].append(line)
    entries = [LogEntry("\n".join(lines), head[1], head[0]) for lines, head in records]
    return [e for e in entries if wanted.matches(e)][-MAX_LINES:]


@pytest.mark.parametrize("seed", range(12))
def test_reading_backwards_in_blocks_finds_what_a_full_read_finds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    rng = random.Random(seed)
    words = ["disk", "Full", "copied", "héllo", "€uro", "boom", "retry", "ok"]
    out = []
    for i in range(rng.randrange(50, 400)):
        level = rng.choice(["DEBUG", "INFO", "INFO", "WARNING", "ERROR", "CRITICAL"])
        out.append(f"2026-11-24 05:{i // 60 % 60:02d}:{i % 60:02d},000 {level} core.x: "
                   + " ".join(rng.choices(words, k=rng.randrange(1, 6))))
        for _ in range(rng.choice([0, 0, 0, 1, 3, 12])):  # a traceback now and then
            out.append("  " + " ".join(rng.choices(words, k=3)))
    text = "\n".join(out) + "\n"
    (tmp_path / "app.log").write_text(text, encoding="utf-8")
    # Tiny blocks put block edges inside records, lines and multi-byte characters.
    monkeypatch.setattr(logread, "BLOCK_BYTES", rng.choice([7, 37, 256, 4096]))
    for level in LEVELS:
        for query in ["", "disk", "FULL", "€uro boom", "héllo ok", "never-there"]:
            wanted = Wanted(level, query.lower())
            scan = read_logs(tmp_path, [LogFile(tmp_path / "app.log", APP_FORMAT)], level,
                             query, chained=True)
            assert [(e.text, e.level) for e in scan.entries] == [
                (e.text, e.level) for e in read_naively(text, APP_FORMAT, wanted)], \
                (level, query)


async def test_in_a_browser_search_narrows_as_you_type_and_run_lines_arrive_live(
        live_server: LiveServer, page: Page, page_errors: PageErrors, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("hello")
    status, job = live_server.request_json("POST", "/api/jobs", {
        "name": "Docs", "engine": "mirror", "sources": [str(src)],
        "destination": str(tmp_path / "backups")})
    assert status == 201, job

    await page.goto(live_server.url + "/logs")
    await expect(page.locator("#log-tail li").first).to_be_visible()
    await assert_accessible(page)
    await screenshot(page, "logs-app")
    await page.get_by_label("Search").fill("EVENT LOG")  # any case
    await expect(page).to_have_url(re.compile(r"/logs\?source=app&q=EVENT\+LOG$"))
    lines = page.locator("#log-tail li")
    await expect(lines.first).to_be_visible()
    assert all("event log" in t.lower() for t in await lines.all_text_contents())
    await expect(page.locator("#log-status")).to_contain_text("line")

    await page.goto(live_server.url + f"/logs?job={job['id']}")
    await expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    status, started = live_server.request_json("POST", f"/api/jobs/{job['id']}/start", {})
    assert status == 202, started
    await expect(page.locator("#log-tail li", has_text="succeeded")).to_be_visible()
    await assert_accessible(page)
    await screenshot(page, "logs-run-live")
    page_errors.assert_clean()

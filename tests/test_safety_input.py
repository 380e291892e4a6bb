"""Bad input that used to be accepted is refused when saved, with a message (issue 12).

Through the real app: restic password files, missing sources and destinations that
cannot be created (or only warned about when a disk may be mounted later), invisible
control characters, malformed and link-local webhooks, huge retention numbers, cron
expressions that never fire, and the words of the 409 for a second start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from core.commands import Commands
from core.errors import Conflict
from core.state import State
from core.webhooks import LinkLocalRefused, WebhookSender, _GuardedResolver
from events.store import EventStore
from server.keys import COMMANDS, STATE, STORE
from server.page_support import FLASH_COOKIE
from tests.engine_helpers import write
from tests.page_helpers import csrf_of, field_errors

Client = TestClient[web.Request, web.Application]


@pytest.fixture
def src(tmp_path: Path) -> Path:
    """A source folder that exists."""
    write(tmp_path / "src" / "a.txt", b"a")
    return tmp_path / "src"


def body(src: Path, dest: Path | str, **extra: Any) -> dict[str, Any]:
    """A valid mirror job body (schedule off) with fields replaced."""
    return {"name": "Photos", "engine": "mirror", "sources": [str(src)],
            "destination": str(dest), "enabled": False, **extra}


async def refused(client: Client, data: dict[str, Any], field: str, words: str,
                  method: str = "POST", url: str = "/api/jobs") -> str:
    """A request refused with a 400 whose field message holds `words`; nothing appended."""
    store = client.app[STORE]
    before = store.last_seq
    resp = await client.request(method, url, json=data)
    answer = await resp.json()
    assert resp.status == 400, answer
    assert words in answer["fields"][field], answer
    assert store.last_seq == before
    return str(answer["fields"][field])


async def test_a_restic_job_needs_a_password_file_that_can_be_read(
        app_client: Client, src: Path, tmp_path: Path) -> None:
    restic = {**body(src, tmp_path / "repo"), "engine": "restic"}
    await refused(app_client, restic, "options", "password_file is needed")  # no options
    await refused(app_client, {**restic, "options": {}}, "options", "password_file is needed")
    missing = str(tmp_path / "no-such-pw")
    await refused(app_client, {**restic, "options": {"password_file": missing}}, "options",
                  f"password file {missing} cannot be read")
    (tmp_path / "empty").write_text("")
    await refused(app_client, {**restic, "options": {"password_file": str(tmp_path / "empty")}},
                  "options", "is empty")
    await refused(app_client, {**restic, "options": {"password_file": str(tmp_path)}},
                  "options", "cannot be read")
    (tmp_path / "pw").write_text("secret\n")
    resp = await app_client.post("/api/jobs", json={
        **restic, "options": {"password_file": str(tmp_path / "pw")}})
    assert resp.status == 201, await resp.text()
    assert "secret" not in await resp.text()


async def test_a_missing_source_or_an_uncreatable_destination_is_refused(
        app_client: Client, src: Path, tmp_path: Path) -> None:
    gone = f"/nonexistent-{uuid.uuid4().hex[:8]}/src"
    await refused(app_client, body(src, tmp_path / "d", sources=[str(src), gone]), "sources",
                  f"source {gone} does not exist")
    (tmp_path / "file").write_text("not a folder")
    await refused(app_client, body(src, tmp_path / "file" / "backups"), "destination",
                  "cannot be created")
    await refused(app_client, body(src, tmp_path / "file"), "destination", "is not a folder")


async def test_paths_on_a_disk_not_mounted_yet_are_saved_with_a_warning_everywhere(
        app_client: Client, src: Path, tmp_path: Path) -> None:
    later = f"/mnt/bm-test-{uuid.uuid4().hex[:8]}"
    created = await app_client.post("/api/jobs", json=body(
        src, f"{later}/backups", sources=[str(src), f"{later}/photos"]))
    assert created.status == 201, await created.text()
    job_id = (await created.json())["id"]
    page = await (await app_client.get(f"/jobs/{job_id}")).text()
    warnings = re.search(r'id="path-warnings".*?</div>', page, re.S)
    assert warnings, "the job page shows no path warning"
    assert f"source {later}/photos does not exist (yet)" in warnings.group(0)
    assert f"destination {later}/backups does not exist" in warnings.group(0)
    api_job = await (await app_client.get(f"/api/jobs/{job_id}")).json()
    assert any(f"{later}/photos does not exist (yet)" in w for w in api_job["path_warnings"])
    # The form says so when it saves, too.
    csrf = csrf_of(await (await app_client.get("/jobs/new")).text())
    saved = await app_client.post("/jobs/new", allow_redirects=False, data={
        "_csrf": csrf, "name": "Later", "engine": "mirror",
        "sources": f"{later}/music", "destination": str(tmp_path / "later-dest")})
    assert saved.status == 303, await saved.text()
    flash = unquote(saved.cookies[FLASH_COOKIE].value)
    assert flash.startswith("warn:") and f"{later}/music does not exist (yet)" in flash
    # A job whose paths are fine shows no warning.
    fine = await (await app_client.post("/api/jobs", json=body(
        src, tmp_path / "fine", name="Fine"))).json()
    assert 'id="path-warnings"' not in await (await app_client.get(f"/jobs/{fine['id']}")).text()
    assert (await (await app_client.get(f"/api/jobs/{fine['id']}")).json())["path_warnings"] == []


async def test_invisible_control_characters_are_refused_in_names_and_paths(
        app_client: Client, src: Path, tmp_path: Path) -> None:
    for char in ("\u202e", "\u202a", "\u2066", "\u2069", "\u200e", "\u200f", "\x7f", "\u0085",
                 "\ufeff", "\u2028"):
        message = await refused(app_client, body(src, tmp_path / "d", name=f"gpj{char}.exe"),
                                "name", "invisible character")
        assert f"U+{ord(char):04X}" in message
        await refused(app_client, body(src, tmp_path / f"d{char}x"), "destination",
                      "invisible character")
        await refused(app_client, body(src, tmp_path / "d", sources=[f"{src}{char}"]),
                      "sources", "invisible character")
    # Joiners are part of ordinary writing and emoji: still accepted.
    resp = await app_client.post("/api/jobs", json=body(src, tmp_path / "d",
                                                        name="Family 👨\u200d👩\u200d👧"))
    assert resp.status == 201, await resp.text()



@pytest.mark.parametrize("name", ["\u3164", "\u115f\u1160", "Photos\u034f"])
async def test_a_name_of_invisible_fillers_is_refused(app_client: Client, tmp_path: Path,
                                                      name: str) -> None:
    # What a user sees: a job named U+3164 (HANGUL FILLER) is saved and shows in the job
    # list and on the dashboard as a blank name (U+115F/U+1160 likewise; U+034F makes
    # "Photos" and "Photos<CGJ>" two jobs that look the same). These are Unicode
    # Default_Ignorable characters, as invisible as the U+200B and U+FEFF that are
    # refused; they should be refused with the same message.
    src = tmp_path / "src"
    write(src / "a.txt", b"a\n")
    resp = await app_client.post("/api/jobs", json={
        "name": name, "engine": "mirror", "sources": [str(src)],
        "destination": str(tmp_path / "backups")})
    assert resp.status == 400, await resp.text()
    assert "invisible character" in (await resp.json())["fields"]["name"]


async def test_default_ignorable_characters_are_refused_in_paths_but_emoji_still_save(
        app_client: Client, src: Path, tmp_path: Path) -> None:
    for char in ("\u3164", "\u034f", "\u00ad", "\uffa0", "\ufe00", "\U000e0100"):
        await refused(app_client, body(src, tmp_path / f"d{char}x"), "destination",
                      "invisible character")
        await refused(app_client, body(src, tmp_path / "d", sources=[f"{src}{char}"]),
                      "sources", "invisible character")
    # U+FE0F picks the emoji form of a heart: part of ordinary writing, still accepted.
    resp = await app_client.post("/api/jobs", json=body(src, tmp_path / "d",
                                                        name="Love \u2764\ufe0f"))
    assert resp.status == 201, await resp.text()

async def test_a_malformed_webhook_through_the_settings_form_is_a_field_error(
        app_client: Client) -> None:
    store = app_client.app[STORE]
    before = store.last_seq
    csrf = csrf_of(await (await app_client.get("/settings")).text())
    for url in ("http://[::1", "http://x:99999/", "http://[zz::1]/", "http://"):
        resp = await app_client.post("/settings", data={
            "_csrf": csrf, "max_concurrent_runs": "2", "auto_resume": "yes",
            "webhook_url": url, "log_level": "INFO", "theme": "system", "keep_last": "7"})
        html = await resp.text()
        assert resp.status == 422, html[:300]
        assert "webhook_url" in field_errors(html), url
    api = await app_client.put("/api/settings", json={"webhook_url": "http://[::1"})
    assert api.status == 400 and "not a valid URL" in (await api.json())["fields"]["webhook_url"]
    assert store.last_seq == before


async def test_huge_retention_numbers_are_refused_with_the_bound(app_client: Client, src: Path,
                                                                 tmp_path: Path) -> None:
    for key in ("keep_last", "keep_daily", "keep_weekly", "keep_monthly"):
        await refused(app_client, body(src, tmp_path / "d", retention={key: 10**30}),
                      "retention", "at most 100,000")
    resp = await app_client.put("/api/settings", json={"default_retention": {
        "keep_last": 10**30}})
    assert resp.status == 400 and "at most 100,000" in (await resp.json())["error"]
    ok = await app_client.post("/api/jobs", json=body(src, tmp_path / "d",
                                                      retention={"keep_last": 100_000}))
    assert ok.status == 201


async def test_a_cron_expression_that_never_fires_is_refused(app_client: Client, src: Path,
                                                             tmp_path: Path) -> None:
    for cron in ("0 0 30 2 *", "0 0 31 4 *", "0 0 31 11 *"):
        await refused(app_client, body(src, tmp_path / "d", schedule=cron), "schedule",
                      "never fires")
    # Rare is not never: the 29th of February comes within 5 years.
    ok = await app_client.post("/api/jobs", json=body(src, tmp_path / "d",
                                                      schedule="0 0 29 2 *"))
    assert ok.status == 201, await ok.text()


async def test_link_local_webhooks_are_refused_unless_the_setting_allows_them(
        app_client: Client, src: Path, tmp_path: Path) -> None:
    for url in ("http://169.254.169.254/latest/meta-data/", "http://[fe80::1]/hook",
                "http://[::ffff:169.254.169.254]/", "http://2852039166/", "http://0xa9fea9fe/"):
        await refused(app_client, body(src, tmp_path / "d", webhook_url=url), "webhook_url",
                      "link-local")
        await refused(app_client, {"webhook_url": url}, "webhook_url", "link-local",
                      method="PUT", url="/api/settings")
    # Allowed in the same change that turns the setting on, and for jobs afterwards.
    resp = await app_client.put("/api/settings", json={
        "allow_link_local_webhooks": True, "webhook_url": "http://169.254.169.254/hook"})
    assert resp.status == 200, await resp.text()
    job = await app_client.post("/api/jobs", json=body(
        src, tmp_path / "d", webhook_url="http://169.254.10.10/hook"))
    assert job.status == 201, await job.text()


async def test_a_webhook_is_checked_again_when_sent(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A name that resolves to a link-local address, or a literal saved while allowed."""
    state = State()
    sender = WebhookSender(state, attempts=1, timeout=5)
    caplog.set_level(logging.INFO, logger="core.webhooks")
    try:
        # 0xa9fea9fe is 169.254.169.254 written as one number: a host name to aiohttp,
        # an address to the resolver.
        for url in ("http://0xa9fea9fe/hook", "http://169.254.169.254/hook"):
            state.settings["webhook_url"] = url
            sender.notify("job-1", "Photos", "run.failed", "r-1", {"error": "x"})
        await sender.close(wait=10)  # waits for both deliveries to end
        assert sender.failed == 2 and sender.delivered == 0
        refusals = [r.getMessage() for r in caplog.records if "link-local" in r.getMessage()]
        assert len(refusals) == 2, caplog.text
        # A host name is checked where the connection resolves it (no DNS rebinding):
        # the resolver refuses what resolves to a link-local address.
        with pytest.raises(LinkLocalRefused, match=r"resolves to 169\.254\.169\.254"):
            await _GuardedResolver(state).resolve("169.254.169.254", 80)
        assert (await _GuardedResolver(state).resolve("127.0.0.1", 80))[0]["host"] == \
            "127.0.0.1"
        state.settings["allow_link_local_webhooks"] = True
        assert await _GuardedResolver(state).resolve("169.254.169.254", 80)
    finally:
        await sender.close()


async def test_a_second_start_says_in_words_that_the_job_is_already_running(
        tmp_path: Path, src: Path) -> None:
    store = await EventStore.open(tmp_path / "events.db")
    state = State()
    store.notifier.add_listener(state.apply_all)  # as the app wires it
    try:
        commands = Commands(store, state)
        job = await commands.create_job(body(src, tmp_path / "d"))
        results = await asyncio.gather(*[commands.start_run(job.job_id) for _ in range(4)],
                                       return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) == 3, results
        for err in errors:
            assert isinstance(err, Conflict), repr(err)
            assert str(err).startswith("Photos is already running"), str(err)
            assert "version" not in str(err) and "stream" not in str(err)
    finally:
        await store.close()


async def test_the_409_through_the_api_names_the_job(app_client: Client, src: Path,
                                                     tmp_path: Path) -> None:
    write(src / "big.bin", os.urandom(8 * 1024 * 1024))
    job = await (await app_client.post("/api/jobs", json=body(
        src, tmp_path / "d", options={"bwlimit": 1024}))).json()
    answers = await asyncio.gather(*[app_client.post(f"/api/jobs/{job['id']}/start", json={})
                                     for _ in range(3)])
    statuses = sorted(r.status for r in answers)
    assert statuses == [202, 409, 409], statuses
    for resp in answers:
        if resp.status == 409:
            assert (await resp.json())["error"].startswith("Photos is already running")
    await app_client.app[COMMANDS].stop_runs(job["id"])


async def test_the_checksum_option_is_taken_by_mirror_and_rsync_only(
        app_client: Client, src: Path, tmp_path: Path) -> None:
    for engine in ("mirror", "rsync"):
        resp = await app_client.post("/api/jobs", json=body(
            src, tmp_path / engine, name=engine, engine=engine, options={"checksum": True}))
        assert resp.status == 201, await resp.text()
        assert (await resp.json())["options"] == {"checksum": True}
    await refused(app_client, body(src, tmp_path / "a", engine="archive",
                                   options={"checksum": True}), "options",
                  "checksum is not an option of the archive engine")
    await refused(app_client, body(src, tmp_path / "m", options={"checksum": "sometimes"}),
                  "options", "checksum must be true or false")
    assert app_client.app[STATE].settings["allow_link_local_webhooks"] is False


async def test_the_settings_form_switches_link_local_webhooks_on_and_off(
        app_client: Client) -> None:
    csrf = csrf_of(await (await app_client.get("/settings")).text())
    form = {"_csrf": csrf, "max_concurrent_runs": "2", "auto_resume": "yes",
            "log_level": "INFO", "theme": "system", "keep_last": "7",
            "webhook_url": "http://169.254.169.254/hook"}
    refused = await app_client.post("/settings", data={**form,
                                                       "allow_link_local_webhooks": "no"})
    assert refused.status == 422
    assert "link-local" in field_errors(await refused.text())["webhook_url"]
    saved = await app_client.post("/settings", allow_redirects=False,
                                  data={**form, "allow_link_local_webhooks": "yes"})
    assert saved.status == 303, await saved.text()
    settings = app_client.app[STATE].settings
    assert settings["allow_link_local_webhooks"] is True
    assert settings["webhook_url"] == "http://169.254.169.254/hook"
    page = await (await app_client.get("/settings")).text()
    assert re.search(r'<option value="yes" selected>Allow</option>', page)

"""Torture tests, bad input (issue 6): every form and API endpoint fed nasty values.

Whatever a form or a script sends (relative paths, `..`, NUL bytes, huge strings,
unicode, a destination inside a source, invalid cron, negative retention, an unknown
engine, wrong JSON types, bad ids in the URL, odd query strings), the answer is a 4xx
with a clear message, never a 5xx, and nothing is appended to the event log. The JSON
API answers `{"error": "..."}`; a refused form re-renders with 422 and its messages; a
form button (start, delete, a run action...) may instead come back with a 303 and an
error flash, and then too nothing is appended. The cross-site probes (foreign Origin,
foreign Host, WebSocket Origin, path traversal, security headers) are at the end.

How hypothesis meets the async app: the property tests are `async def` with `@given`.
pytest-asyncio runs every example as a coroutine on the test's event loop, so all the
examples of one test share one `app_client` (one app, one event log). That is why
HealthCheck.function_scoped_fixture is suppressed, and why nothing assumes a fresh log:
each example reads `last_seq` right before its request and compares right after (an
accepted input may legitimately append; the jobs it creates are disabled so the
scheduler never appends on its own). One app per test instead of one per example
(tests/test_job_input.py does that) is what keeps this file well under a minute.
Shrinking is left out (phases without Phase.shrink) to keep the time bounded when a
bug is found: the failing example is reported as generated, and the hand-picked lists
hold the minimal known cases.

The figures (inputs tried, requests served) are printed at the end of the module.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from server.keys import CONFIG, RUNNER, STATE, STORE
from tests.api_helpers import wait_run
from tests.engine_helpers import write
from tests.page_helpers import csrf_of, field_errors

Client = TestClient[web.Request, web.Application]

FIGURES: Counter[str] = Counter()
PER_TEST: Counter[str] = Counter()
FLASH_COOKIE = "bm_flash"
MIB = 1024 * 1024


def hypothesis_settings(examples: int) -> settings:
    """Bounded property runs sharing one app (see the module docstring)."""
    return settings(max_examples=examples, deadline=None, derandomize=False,
                    phases=[Phase.explicit, Phase.reuse, Phase.generate],
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


@pytest.fixture(scope="module", autouse=True)
def report_figures(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print how many inputs were tried and how many requests served (issue 6)."""
    yield
    _BACKUPS.clear()
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    lines = [f"torture input: {FIGURES['inputs']} inputs tried, {FIGURES['requests']} "
             f"requests served ({FIGURES['refused']} refused as expected, "
             f"{FIGURES['accepted']} accepted as valid)",
             *(f"  {name}: {count} inputs" for name, count in sorted(PER_TEST.items()))]
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        reporter.write_line("")
        for line in lines:
            reporter.write_line(line)


@pytest.fixture(autouse=True)
def keep_log_level() -> Iterator[None]:
    """A settings input may change the root log level; put it back for other tests."""
    level = logging.getLogger().level
    yield
    logging.getLogger().setLevel(level)


def tried(request_name: str) -> None:
    """Count one input."""
    FIGURES["inputs"] += 1
    PER_TEST[request_name] += 1


# --- strategies -----------------------------------------------------------------------

# Lone surrogates cannot travel in UTF-8 (forms, most JSON encoders); they get their own
# hand-picked raw JSON bodies below.
CHARS = st.characters(exclude_categories=("Cs",))
TEXT = st.text(CHARS, max_size=80)
HUGE = st.builds(lambda piece, n: piece * n,
                 st.sampled_from(["x", "é", "🚀", "/", "../", "\x00", " ", "a\n"]),
                 st.integers(5_000, 50_000))  # up to ~100 KB of UTF-8
HAND_PICKED = st.sampled_from([
    "", " ", ".", "..", "../etc", "../../etc/passwd", "/", "/a/../b", "/a/./b", "//a",
    "relative/path", "\x00", "/a\x00b", "~/docs", "C:\\Windows", "\\\\server\\share",
    "🚀/💾", "/tmp/\u202eevil", "\u200b", "%2e%2e%2f", "/etc/passwd\x00.txt", "-rf",
    "0 3 * * *", "61 * * * *", "* * * *", "0 3 31 2 *", "@daily", "every 0 minutes",
    "every 30 seconds", "every -1 hours", "every 5 minutes", "mirror", "tape", "restic",
    "DEBUG", "LOUD", "dark", "neon", "yes", "true", "on", "null", "NaN", "-1", "1e309",
    "http://x", "ftp://x", "javascript:alert(1)", "http://x\n", "<script>alert(1)</script>",
    "{{7*7}}", "'; DROP TABLE events; --", "x" * 4097, "/" + "x" * 4096,
])
NASTY = st.one_of(TEXT, HAND_PICKED, HUGE)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                    st.floats(allow_nan=True, allow_infinity=True), NASTY)
VALUES = st.recursive(SCALARS, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(TEXT, children, max_size=4)),
    max_leaves=8)

JOB_FIELDS = ["name", "engine", "sources", "destination", "include", "exclude", "schedule",
              "retention", "options", "enabled", "webhook_url"]
SETTINGS_KEYS = ["max_concurrent_runs", "auto_resume", "default_retention", "webhook_url",
                 "log_level", "theme"]
# A job's source must exist when it is saved (and a destination be creatable): real
# folders, made once; the destination is created by no test (nothing runs this job).
ROOT = Path(tempfile.gettempdir()) / "bm-torture-input"
SRC, DST, FORM_DST = str(ROOT / "src"), str(ROOT / "dst"), str(ROOT / "form-dst")
Path(SRC).mkdir(parents=True, exist_ok=True)


def base_spec(**extra: Any) -> dict[str, Any]:
    """A valid job (disabled: the scheduler must not append while inputs are tried)."""
    return {"name": "Torture", "engine": "mirror", "sources": [SRC], "destination": DST,
            "enabled": False, **extra}


def never_enabled(body: Any) -> Any:
    """Keep a body that would create or enable a job from switching its schedule on."""
    if isinstance(body, dict) and body.get("enabled", True) is True:
        body["enabled"] = False
    return body


@st.composite
def job_bodies(draw: st.DrawFn, base: bool = True) -> Any:
    """A job body: a valid one with some fields made nasty, or anything at all."""
    if not draw(st.integers(0, 9)):
        return draw(VALUES)
    body = base_spec() if base else {}
    for key in draw(st.lists(st.sampled_from([*JOB_FIELDS, "id", "junk", ""]), min_size=1,
                             max_size=4, unique=True)):
        body[key] = draw(VALUES)
    return never_enabled(body)


# --- helpers --------------------------------------------------------------------------

async def call(client: Client, method: str, url: str, **kw: Any
               ) -> tuple[aiohttp.ClientResponse, str]:
    """One request; a 5xx or a dropped connection fails the test with what was sent."""
    FIGURES["requests"] += 1
    kw.setdefault("allow_redirects", False)
    try:
        async with asyncio.timeout(30):
            resp = await client.request(method, url, **kw)
            text = await resp.text(errors="replace")
    except aiohttp.ClientError as err:
        raise AssertionError(f"{method} {url[:200]!r}: the server dropped the connection "
                             f"({err!r}); sent {short(kw)}") from err
    assert resp.status < 500, f"{method} {url[:200]!r} -> {resp.status}: {text[:300]!r}; " \
                              f"sent {short(kw)}"
    return resp, text


def short(value: Any) -> str:
    """What was sent, cut to a readable length."""
    text = repr(value)
    return text if len(text) <= 300 else f"{text[:300]}... ({len(text)} chars)"


def busy(client: Client) -> bool:
    """Whether a run (a backup, or a restore or verify a form queued) waits or runs."""
    return bool(client.app[RUNNER].active) or any(
        r.state in ("queued", "running") for r in client.app[STATE].active_runs())


async def settle(client: Client) -> None:
    """Let runs a form queued (restores, verifies, backups) finish, for up to 15 s."""
    for _ in range(300):  # polled: runs end on the runner's tasks, not on an event here
        if not busy(client):
            return
        await asyncio.sleep(0.05)


async def quiet(client: Client, within: float = 30) -> None:
    """Wait until nothing appends any more (a finished run's retention, its cleanup)."""
    store = client.app[STORE]
    async with asyncio.timeout(within):
        while True:
            await settle(client)
            seq = store.last_seq
            await asyncio.sleep(0.3)
            if store.last_seq == seq and not busy(client):
                return


def flash_of(resp: aiohttp.ClientResponse) -> str | None:
    """The one-time message a redirect carries, as 'kind:text'."""
    morsel = resp.cookies.get(FLASH_COOKIE)
    return unquote(morsel.value) if morsel is not None and morsel.value else None


def check_clear_message(resp: aiohttp.ClientResponse, text: str, url: str) -> None:
    """A refusal says what is wrong: JSON `error` for the API, a message on a page."""
    if resp.status == 400 and "bytes when reading" in text:
        return  # a request line over 8 KB: aiohttp's parser refused it before the app
    if url.startswith("/api/"):
        body = json.loads(text)
        assert isinstance(body, dict) and isinstance(body.get("error"), str) \
            and body["error"].strip(), f"{url}: no error message in {text[:200]!r}"
    elif resp.status == 422:
        assert field_errors(text) or 'role="alert"' in text or 'class="field-error"' in text, \
            f"{url}: a refused form shows no message"
    else:
        assert text.strip(), f"{url}: {resp.status} with an empty body"


async def refused(client: Client, method: str, url: str, *, button: bool = False,
                  **kw: Any) -> tuple[aiohttp.ClientResponse, str]:
    """Send input that must be refused: a 4xx (or, for a button, a 303 with an error
    flash) with a clear message, and nothing appended to the log."""
    store = client.app[STORE]
    before = store.last_seq
    resp, text = await call(client, method, url, **kw)
    if button and resp.status == 303:
        flash = flash_of(resp)
        assert flash is not None and flash.startswith("error:"), \
            f"{method} {url}: 303 without an error flash ({flash!r}); sent {short(kw)}"
    else:
        assert 400 <= resp.status < 500, \
            f"{method} {url[:200]!r} -> {resp.status}, expected a 4xx; sent {short(kw)}: " \
            f"{text[:200]!r}"
        check_clear_message(resp, text, url)
    await settle(client)
    assert store.last_seq == before, \
        f"{method} {url[:200]!r} -> {resp.status} appended {store.last_seq - before} " \
        f"event(s); sent {short(kw)}"
    FIGURES["refused"] += 1
    return resp, text


async def refused_or_accepted(client: Client, method: str, url: str, accepted: set[int],
                              **kw: Any) -> tuple[aiohttp.ClientResponse, str]:
    """Send input that may be valid: accepted (and then at most a few events) or
    refused with a 4xx, a clear message and nothing appended."""
    store = client.app[STORE]
    before = store.last_seq
    resp, text = await call(client, method, url, **kw)
    await settle(client)
    if resp.status in accepted:
        FIGURES["accepted"] += 1
        assert store.last_seq - before <= 1, f"{url}: one input appended " \
                                             f"{store.last_seq - before} events"
        return resp, text
    assert 400 <= resp.status < 500, f"{method} {url[:200]!r} -> {resp.status}; sent " \
                                     f"{short(kw)}: {text[:200]!r}"
    check_clear_message(resp, text, url)
    assert store.last_seq == before, f"{method} {url[:200]!r} -> {resp.status} appended " \
                                     f"{store.last_seq - before} event(s); sent {short(kw)}"
    FIGURES["refused"] += 1
    return resp, text


async def csrf(client: Client) -> str:
    """The CSRF token, read from a page as a browser would."""
    return csrf_of((await call(client, "GET", "/jobs/new"))[1])


_JOBS: dict[int, tuple[web.Application, str]] = {}


async def a_job(client: Client) -> str:
    """The id of a (disabled) job in this app, created the first time.

    Remembered by id, not found by name: an update example may rename it or move its
    destination, and a second job on the first one's destination is refused.
    """
    known = _JOBS.get(id(client.app))
    if known is not None and known[0] is client.app and known[1] in client.app[STATE].jobs:
        return known[1]
    resp, text = await call(client, "POST", "/api/jobs", json=base_spec())
    assert resp.status == 201, text
    job_id = str(json.loads(text)["id"])
    _JOBS[id(client.app)] = (client.app, job_id)
    return job_id


_BACKUPS: dict[int, tuple[web.Application, dict[str, str]]] = {}


async def a_backup(client: Client, tmp_path: Path) -> dict[str, str]:
    """A job with one finished mirror snapshot (made once per app): ids and paths."""
    cached = _BACKUPS.get(id(client.app))
    if cached is not None and cached[0] is client.app:
        return cached[1]
    src = tmp_path / "backup-src"
    for i in range(5):
        write(src / f"dir{i % 2}" / f"file{i}.txt", f"content {i}\n".encode())
    resp, text = await call(client, "POST", "/api/jobs", json={
        "name": "Snap", "engine": "mirror", "sources": [str(src)],
        "destination": str(tmp_path / "backup-dst"), "enabled": False})
    assert resp.status == 201, text
    job_id = json.loads(text)["id"]
    resp, text = await call(client, "POST", f"/api/jobs/{job_id}/start", json={})
    assert resp.status == 202, text
    run = await wait_run(client, json.loads(text)["run_id"], {"succeeded", "failed"})
    assert run["state"] == "succeeded", run
    await quiet(client)
    info = {"job": job_id, "run": run["run_id"], "snapshot": run["snapshot_id"],
            "src": str(src), "dst": str(tmp_path / "backup-dst")}
    _BACKUPS[id(client.app)] = (client.app, info)
    return info


def assert_all(failures: list[str], tried_count: int) -> None:
    """Fail once, listing every hand-picked input that was not handled as it must be."""
    assert not failures, f"{len(failures)} of {tried_count} hand-picked inputs went " \
                         "wrong:\n" + "\n".join(failures)


async def each(client: Client, name: str, cases: list[tuple[str, str, dict[str, Any]]],
               button: bool = False) -> None:
    """Send every hand-picked (method, url, kwargs) that must be refused; report all."""
    failures = []
    for method, url, kw in cases:
        tried(name)
        try:
            await refused(client, method, url, button=button, **kw)
        except AssertionError as err:
            failures.append(str(err).splitlines()[0][:400])
    assert_all(failures, len(cases))


# --- the JSON API: jobs ---------------------------------------------------------------

BAD_JOB_FIELDS: list[tuple[str, Any]] = [
    ("name", ""), ("name", "   "), ("name", None), ("name", 7), ("name", ["x"]),
    ("name", {"a": 1}), ("name", True), ("name", "x" * 100_000), ("name", "tab\there"),
    ("name", "nul\x00"), ("name", "line\nbreak"),
    ("engine", "tape"), ("engine", ""), ("engine", None), ("engine", "MIRROR"),
    ("engine", "mirror\x00"), ("engine", ["mirror"]), ("engine", 1), ("engine", "mirror "),
    ("sources", []), ("sources", ["relative/path"]), ("sources", ["/a/../etc"]),
    ("sources", ["../../etc"]), ("sources", ["/a\x00b"]), ("sources", ["/" + "x" * 100_000]),
    ("sources", "relative"), ("sources", [None]), ("sources", [["/a"]]),
    ("sources", {"a": "/a"}), ("sources", 5), ("sources", ["/a", "/a"]),
    ("sources", [f"/s{i}" for i in range(33)]), ("sources", ["~/docs"]), ("sources", [""]),
    ("destination", "relative"), ("destination", ""), ("destination", None),
    ("destination", SRC + "/inside"), ("destination", SRC), ("destination", str(ROOT)),
    ("destination", "/"), ("destination", "/a/../b"), ("destination", "/b\x00"),
    ("destination", 5), ("destination", ["/b"]), ("destination", "~/backups"),
    ("destination", "C:\\backups"), ("destination", "/" + "x" * 5000),
    ("schedule", "every tuesday"), ("schedule", "61 * * * *"), ("schedule", "* * * *"),
    ("schedule", "* * * * * *"), ("schedule", "every 0 minutes"),
    ("schedule", "every 30 seconds"), ("schedule", "every -1 hours"), ("schedule", "@daily"),
    ("schedule", 5), ("schedule", ["0 3 * * *"]), ("schedule", "0 3 * * *\x00"),
    ("schedule", "x" * 100_000), ("schedule", True),
    ("retention", {"keep_last": -1}), ("retention", {"keep_daily": -7}),
    ("retention", {"keep_last": "7"}), ("retention", {"keep_last": 1.5}),
    ("retention", {"keep_last": True}), ("retention", {"keep_last": None}),
    ("retention", {"nope": 1}), ("retention", "7"), ("retention", [7]), ("retention", -1),
    ("options", {"threads": -1}), ("options", {"threads": 0}), ("options", {"threads": "4"}),
    ("options", {"bwlimit": "fast"}), ("options", {"nope": 1}), ("options", {"Bad-Name": 1}),
    ("options", "threads=4"), ("options", [1]), ("options", {"threads": [1]}),
    ("options", {"threads": {"a": 1}}), ("options", {"threads": 1.5}),
    ("enabled", "yes"), ("enabled", 1), ("enabled", None), ("enabled", "on"),
    ("webhook_url", "ftp://x"), ("webhook_url", "javascript:alert(1)"),
    ("webhook_url", "http://"), ("webhook_url", "http://a b"), ("webhook_url", "http://x\n"),
    ("webhook_url", "http://x\x00"), ("webhook_url", 5), ("webhook_url", ["http://x"]),
    ("include", [None]), ("include", [""]), ("include", ["a\x00"]), ("include", ["x" * 2000]),
    ("include", 5), ("include", {"a": 1}), ("include", ["*"] * 201),
    ("exclude", [None]), ("exclude", ["a\x00"]), ("exclude", 5), ("exclude", ["x" * 2000]),
    ("junk", 1), ("", 1),
]


async def test_api_refuses_every_hand_picked_bad_job_field(app_client: Client) -> None:
    job_id = await a_job(app_client)
    cases = []
    for field, value in BAD_JOB_FIELDS:
        cases.append(("POST", "/api/jobs", {"json": base_spec(**{field: value})}))
        cases.append(("PUT", f"/api/jobs/{job_id}", {"json": {field: value}}))
    await each(app_client, "api job fields (hand-picked)", cases)


# Raw bodies no JSON encoder on the client side would produce.
RAW_BODIES: list[tuple[str, bytes, str]] = [
    ("not JSON", b"{name: 'x'}", "application/json"),
    ("empty body", b"", "application/json"),
    ("truncated", b'{"name": "x", "sources": ["/a"', "application/json"),
    ("a JSON string", b'"just a string"', "application/json"),
    ("a JSON list", b"[1, 2, 3]", "application/json"),
    ("null", b"null", "application/json"),
    ("invalid UTF-8", b'{"name": "\xff\xfe"}', "application/json"),
    ("UTF-8 BOM", b'\xef\xbb\xbf{"name": "x"}', "application/json"),
    ("NUL byte outside a string", b'{"name": "x"}\x00', "application/json"),
    ("trailing garbage", b'{"name": "x"} {"name": "y"}', "application/json"),
    ("deeply nested lists", b"[" * 100_000 + b"]" * 100_000, "application/json"),
    ("deeply nested objects", b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "application/json"),
    ("a 5000-digit number", b'{"retention": {"keep_last": 1' + b"0" * 5000 + b"}}",
     "application/json"),
    ("a lone surrogate in the name",
     b'{"name": "\\ud800", "engine": "mirror", "sources": ["/srv/a"], '
     b'"destination": "/srv/b", "enabled": false}', "application/json"),
    ("a lone surrogate in a source",
     b'{"name": "s", "engine": "mirror", "sources": ["/srv/\\udfff"], '
     b'"destination": "/srv/b", "enabled": false}', "application/json"),
    ("an unknown charset", b"{}", "application/json; charset=nope"),
    ("UTF-16 without saying so", '{"name": "x"}'.encode("utf-16"), "application/json"),
    ("a form body", b"name=x&engine=mirror", "application/x-www-form-urlencoded"),
    ("text/plain", b'{"name": "x"}', "text/plain"),
    ("no content type", b'{"name": "x"}', ""),
]


async def test_api_refuses_raw_bodies_no_client_would_send(app_client: Client) -> None:
    job_id = await a_job(app_client)
    cases = []
    for what, body, ctype in RAW_BODIES:
        headers = {"Content-Type": ctype} if ctype else {}
        for method, url in (("POST", "/api/jobs"), ("PUT", f"/api/jobs/{job_id}"),
                            ("PUT", "/api/settings")):
            cases.append((method, url, {"data": body, "headers": headers,
                                        "skip_auto_headers": ["Content-Type"], "_what": what}))
    failures = []
    for method, url, kw in cases:
        what = kw.pop("_what")
        tried("api raw bodies (hand-picked)")
        try:
            await refused(app_client, method, url, **kw)
        except AssertionError as err:
            failures.append(f"[{what}] {str(err).splitlines()[0][:300]}")
    assert_all(failures, len(cases))


async def test_a_body_over_one_mib_gets_413_everywhere(app_client: Client) -> None:
    job_id = await a_job(app_client)
    token = await csrf(app_client)
    big_json = json.dumps(base_spec(name="x" * (MIB + 10))).encode()
    big_form = {"_csrf": token, "name": "x" * (MIB + 10)}
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/api/jobs", {"data": big_json, "headers": {"Content-Type": "application/json"}}),
        ("PUT", f"/api/jobs/{job_id}", {"data": big_json,
                                         "headers": {"Content-Type": "application/json"}}),
        ("PUT", "/api/settings", {"data": big_json,
                                  "headers": {"Content-Type": "application/json"}}),
        ("POST", "/jobs/new", {"data": big_form}),
        ("POST", f"/jobs/{job_id}/edit", {"data": big_form}),
        ("POST", "/settings", {"data": big_form}),
    ]
    failures = []
    for method, url, kw in cases:
        tried("bodies over 1 MiB")
        try:
            resp, _ = await refused(app_client, method, url, **kw)
            assert resp.status == 413, f"{method} {url}: {resp.status}, expected 413"
        except AssertionError as err:
            failures.append(str(err).splitlines()[0][:300])
    assert_all(failures, len(cases))


@hypothesis_settings(400)
@given(body=job_bodies())
async def test_api_create_answers_any_body_with_201_or_a_clear_4xx(
        app_client: Client, body: Any) -> None:
    tried("POST /api/jobs (hypothesis)")
    resp, text = await refused_or_accepted(app_client, "POST", "/api/jobs", {201}, json=body)
    if resp.status == 201:
        job = json.loads(text)
        # Whatever was accepted is clean: absolute paths without '..' or NUL, a known engine.
        assert job["engine"] in ("mirror", "archive", "rsync", "restic")
        for path in [*job["sources"], job["destination"]]:
            assert path.startswith("/") and ".." not in path.split("/") and "\x00" not in path
        assert job["enabled"] is False


@hypothesis_settings(250)
@given(body=job_bodies(base=False))
async def test_api_update_answers_any_body_with_200_or_a_clear_4xx(
        app_client: Client, body: Any) -> None:
    tried("PUT /api/jobs/{id} (hypothesis)")
    job_id = await a_job(app_client)
    resp, text = await refused_or_accepted(app_client, "PUT", f"/api/jobs/{job_id}", {200},
                                           json=never_enabled(body))
    if resp.status == 200:
        job = json.loads(text)
        assert job["id"] == job_id and job["enabled"] is False
        assert all(p.startswith("/") and "\x00" not in p for p in job["sources"])


# --- bad ids in URLs --------------------------------------------------------------------

# "." and ".." as a whole segment cannot be sent by the client (it normalises the URL):
# test_path_traversal_urls_get_a_4xx_and_leak_nothing sends those raw.
BAD_IDS = ["nope", "../../etc/passwd", "..%2F..%2Fetc", "...", "settings", "a" * 5000,
           "UPPER", "-lead", "trail-", "x\x00y", "x\ny", "job\n", "r-0123456789ab\n",
           "r-0123456789aB", "r-", "🚀", "%ff%fe", "a b", "a;b", "' or 1=1 --", "0" * 64,
           "2026-01-01T000000Z", "r-000000000000"]
ID_TEXT = st.one_of(st.sampled_from(BAD_IDS), st.text(CHARS, min_size=1, max_size=60),
                    st.text(st.sampled_from("abc-./%0\x00\n"), min_size=1, max_size=20)
                    ).filter(lambda s: s not in (".", ".."))


def in_path(value: str) -> str:
    """An id put into one URL path segment, whatever it holds (already-escaped ids stay)."""
    if re.fullmatch(r"(%[0-9a-fA-F]{2}|[A-Za-z0-9.])+", value) and "%" in value:
        return value
    return quote(value, safe="") or "%20"


def id_requests(job: str, run: str, snap: str, target: str, token: str
                ) -> list[tuple[str, str, dict[str, Any], bool]]:
    """Every endpoint that takes an id in its path: (method, url, kwargs, is a button)."""
    form = {"data": {"_csrf": token, "target": target, "confirm": "delete"}}
    return [
        ("GET", f"/api/jobs/{job}", {}, False),
        ("PUT", f"/api/jobs/{job}", {"json": {"name": "x"}}, False),
        ("DELETE", f"/api/jobs/{job}", {}, False),
        ("DELETE", f"/api/jobs/{job}?cancel=true", {}, False),
        ("POST", f"/api/jobs/{job}/start", {"json": {}}, False),
        ("POST", f"/api/jobs/{job}/enable", {"json": {}}, False),
        ("POST", f"/api/jobs/{job}/disable", {"json": {}}, False),
        ("GET", f"/api/jobs/{job}/snapshots", {}, False),
        ("POST", f"/api/jobs/{job}/snapshots/{snap}/restore", {"json": {"target": target}},
         False),
        ("POST", f"/api/jobs/{job}/snapshots/{snap}/verify", {"json": {}}, False),
        ("GET", f"/api/runs/{run}", {}, False),
        *[("POST", f"/api/runs/{run}/{a}", {"json": {}}, False)
          for a in ("pause", "resume", "cancel", "discard")],
        ("GET", f"/jobs/{job}", {}, False),
        ("GET", f"/jobs/{job}/edit", {}, False),
        ("POST", f"/jobs/{job}/edit", {"data": {"_csrf": token, "name": "x"}}, False),
        ("POST", f"/jobs/{job}/start", form, True),
        ("POST", f"/jobs/{job}/enable", form, True),
        ("POST", f"/jobs/{job}/delete", form, True),
        ("POST", f"/jobs/{job}/snapshots/{snap}/restore", form, True),
        ("POST", f"/jobs/{job}/snapshots/{snap}/verify", form, True),
        *[("POST", f"/runs/{run}/{a}", form, True)
          for a in ("pause", "resume", "cancel", "discard")],
    ]


@hypothesis_settings(150)
@given(bad=ID_TEXT)
async def test_any_bad_job_or_run_id_is_a_4xx_on_every_endpoint(
        app_client: Client, tmp_path: Path, bad: str) -> None:
    tried("bad ids in URLs (hypothesis)")
    token = await csrf(app_client)
    segment = in_path(bad)
    for method, url, kw, button in id_requests(segment, segment, "2026-01-01T000000Z",
                                               str(tmp_path / "restore-here"), token):
        await refused(app_client, method, url, button=button, **kw)


async def test_bad_snapshot_ids_and_paths_are_refused_before_anything_is_logged(
        app_client: Client, tmp_path: Path) -> None:
    backup = await a_backup(app_client, tmp_path)
    job, snap = backup["job"], backup["snapshot"]
    token = await csrf(app_client)
    cases: list[tuple[str, str, dict[str, Any]]] = []
    for bad in ["nope", "..", "..%2F..%2Fetc", "%2e%2e%2f%2e%2e%2fetc", "2026-01-01T000000Z",
                "2026-01-01T000000Z\n", "a\x00b", snap + "x", "x" * 5000]:
        seg = in_path(bad)
        target = str(tmp_path / "restore-bad-sid")
        cases += [
            ("POST", f"/api/jobs/{job}/snapshots/{seg}/restore", {"json": {"target": target}}),
            ("POST", f"/api/jobs/{job}/snapshots/{seg}/verify", {"json": {}}),
            ("POST", f"/jobs/{job}/snapshots/{seg}/restore",
             {"data": {"_csrf": token, "target": target}}),
            ("POST", f"/jobs/{job}/snapshots/{seg}/verify", {"data": {"_csrf": token}}),
        ]
    for path in ["../../etc", "../..", "/etc/passwd", "dir0/../../..", "a\x00b", "x" * 5000,
                 "no/such/path"]:
        target = str(tmp_path / "restore-bad-path")
        cases += [
            ("POST", f"/api/jobs/{job}/snapshots/{snap}/restore",
             {"json": {"target": target, "path": path}}),
            ("POST", f"/jobs/{job}/snapshots/{snap}/restore",
             {"data": {"_csrf": token, "target": target, "path": path}}),
        ]
    # The forms are buttons: a 303 back to the job page is fine if it says what is wrong.
    api = [c for c in cases if c[1].startswith("/api/")]
    buttons = [c for c in cases if not c[1].startswith("/api/")]
    failures = []
    for group, button in ((api, False), (buttons, True)):
        try:
            await each(app_client, "bad snapshot ids and restore paths (hand-picked)", group,
                       button=button)
        except AssertionError as err:
            failures.append(str(err))
    assert not failures, "\n".join(failures)
    assert not (tmp_path / "restore-bad-path").exists() or not any(
        (tmp_path / "restore-bad-path").rglob("*")), "a refused restore wrote files"


BAD_TARGETS = st.one_of(
    st.text(CHARS, max_size=60).filter(lambda s: not s.strip().startswith("/")),
    st.builds(lambda a, b: f"/{a}/../{b}", st.text(CHARS, max_size=10),
              st.text(CHARS, max_size=10)),
    st.builds(lambda a: f"/tmp/{a}\x00", st.text(CHARS, max_size=10)),
    st.sampled_from(["../../etc", "..", "/../../etc", "./x", "~/x", "x\x00", "/" + "x" * 5000,
                     "", "   ", "C:\\x", "/tmp/../etc/cron.d"]),
    st.one_of(st.none(), st.booleans(), st.integers(), st.lists(st.just("/tmp/x"), max_size=2),
              st.dictionaries(TEXT, st.just("/tmp/x"), max_size=2)),
)


@hypothesis_settings(150)
@given(target=BAD_TARGETS, extra=st.dictionaries(
    st.sampled_from(["path", "overwrite"]),
    st.one_of(st.none(), st.booleans(), st.integers(), TEXT), max_size=2))
async def test_restore_refuses_any_bad_target(app_client: Client, tmp_path: Path, target: Any,
                                              extra: dict[str, Any]) -> None:
    tried("restore targets (hypothesis)")
    backup = await a_backup(app_client, tmp_path)
    url = f"/api/jobs/{backup['job']}/snapshots/{backup['snapshot']}/restore"
    await refused(app_client, "POST", url, json={"target": target, **extra})
    if isinstance(target, str):
        token = await csrf(app_client)
        form = {"_csrf": token, "target": target}
        for key, value in extra.items():
            if isinstance(value, str):
                form[key] = value
        await refused(app_client, "POST", url.removeprefix("/api"), data=form)


# --- runs in the wrong state ---------------------------------------------------------------

async def test_run_actions_in_the_wrong_state_are_refused(app_client: Client,
                                                         tmp_path: Path) -> None:
    backup = await a_backup(app_client, tmp_path)
    run, job = backup["run"], backup["job"]
    token = await csrf(app_client)
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", f"/api/runs/{run}/{action}", {"json": body})
        for action in ("pause", "resume", "cancel", "discard")
        for body in ({}, {"force": True}, {"state": "running"})]
    await each(app_client, "run actions in the wrong state (API)", cases)
    resp, text = await call(app_client, "POST", f"/api/runs/{run}/pause", json={})
    assert resp.status == 409 and "succeeded" in json.loads(text)["error"], text
    buttons: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", f"/runs/{run}/{action}", {"data": {"_csrf": token, "next": nxt}})
        for action in ("pause", "resume", "cancel", "discard")
        for nxt in ("", "//evil.example/", "https://evil.example/")]
    buttons += [
        ("POST", f"/jobs/{job}/delete", {"data": {"_csrf": token}}),
        ("POST", f"/jobs/{job}/delete", {"data": {"_csrf": token, "confirm": "DELETE"}}),
        ("POST", f"/jobs/{job}/delete", {"data": {"_csrf": token, "confirm": "delete\x00"}}),
    ]
    await each(app_client, "run actions and delete in the wrong state (buttons)", buttons,
               button=True)


# --- settings -----------------------------------------------------------------------------

BAD_SETTINGS: list[dict[str, Any]] = [
    {}, {"nope": 1}, {"max_concurrent_runs": 0}, {"max_concurrent_runs": 33},
    {"max_concurrent_runs": -1}, {"max_concurrent_runs": "2"}, {"max_concurrent_runs": 2.5},
    {"max_concurrent_runs": True}, {"max_concurrent_runs": None}, {"max_concurrent_runs": [2]},
    {"max_concurrent_runs": 10**30}, {"auto_resume": "yes"}, {"auto_resume": 1},
    {"auto_resume": None}, {"auto_resume": "true"}, {"default_retention": {"keep_last": -1}},
    {"default_retention": {"nope": 1}}, {"default_retention": "7"}, {"default_retention": [7]},
    {"default_retention": None}, {"default_retention": {"keep_last": "7"}},
    {"default_retention": {"keep_daily": 1.5}}, {"webhook_url": "ftp://x"},
    {"webhook_url": 5}, {"webhook_url": "http://x\n"}, {"webhook_url": "javascript:alert(1)"},
    {"webhook_url": "http://" + "x" * 100_000}, {"log_level": "LOUD"},
    {"log_level": "debug"}, {"log_level": None}, {"log_level": 10},
    {"log_level": "INFO\x00"}, {"theme": "neon"}, {"theme": ""}, {"theme": None},
    {"theme": 1}, {"theme": "dark", "nope": 1}, {"max_concurrent_runs": 3, "theme": "neon"},
]


async def test_settings_api_refuses_every_hand_picked_bad_value(app_client: Client) -> None:
    await each(app_client, "PUT /api/settings (hand-picked)",
               [("PUT", "/api/settings", {"json": body}) for body in BAD_SETTINGS])
    _, text = await call(app_client, "GET", "/api/settings")
    assert json.loads(text)["theme"] == "system"  # no partial change from a mixed body


@hypothesis_settings(300)
@given(body=st.one_of(
    st.dictionaries(st.sampled_from([*SETTINGS_KEYS, "junk"]), VALUES, max_size=4), VALUES))
async def test_settings_api_answers_any_body_with_200_or_a_clear_4xx(
        app_client: Client, body: Any) -> None:
    tried("PUT /api/settings (hypothesis)")
    await refused_or_accepted(app_client, "PUT", "/api/settings", {200}, json=body)


# --- /api/events and the pages' query strings -------------------------------------------

BAD_NUMBERS = ["-1", "abc", "²", "1.5", "1e3", "0x10", "99999999999999999999", "9" * 5000,
               "1 2", "\u0661\u0662", "\uff11", "\x00", "%00", "NaN", "inf", "", " "]
# Odd but harmless spellings of a number: a 200 or a 400 are both fine.
LENIENT_NUMBERS = ["+1", "1_000", "-0", " 1", "01"]


async def test_events_api_refuses_bad_since_and_limit(app_client: Client) -> None:
    cases: list[tuple[str, str, dict[str, Any]]] = []
    for raw in BAD_NUMBERS:
        if raw.strip():  # an empty since means "from the start"
            cases.append(("GET", "/api/events", {"params": {"since": raw}}))
        cases.append(("GET", "/api/events", {"params": {"since": "0", "limit": raw}}))
    for raw in ("0", "1001", "10000000"):
        cases.append(("GET", "/api/events", {"params": {"limit": raw}}))
    await each(app_client, "GET /api/events (hand-picked)", cases)


@hypothesis_settings(300)
@given(query=st.dictionaries(st.sampled_from(["since", "limit", "junk"]),
                             st.one_of(TEXT, st.sampled_from(BAD_NUMBERS + LENIENT_NUMBERS),
                                       st.integers(-(2**70), 2**70).map(str)), max_size=3))
async def test_events_api_answers_any_query_with_200_or_400(app_client: Client,
                                                           query: dict[str, str]) -> None:
    tried("GET /api/events (hypothesis)")
    resp, text = await refused_or_accepted(app_client, "GET", "/api/events", {200},
                                           params=query)
    if resp.status == 200:
        assert isinstance(json.loads(text)["events"], list)


PAGE_QUERIES = st.dictionaries(
    st.sampled_from(["page", "q", "level", "job", "run", "source", "live", "fragment", "have",
                     "next"]),
    st.one_of(TEXT, HAND_PICKED, st.sampled_from(["stats", "list", "nope", "recovery", "0",
                                                  "-1", "²", "99999999", "DEBUG", "app"])),
    max_size=4)


@hypothesis_settings(200)
@given(path=st.sampled_from(["/dashboard", "/jobs", "/jobs/new", "/settings", "/logs",
                             "/logs/download", "/healthz", "/"]), query=PAGE_QUERIES)
async def test_pages_answer_any_query_string_without_a_5xx(
        app_client: Client, path: str, query: dict[str, str]) -> None:
    tried("GET pages with odd queries (hypothesis)")
    store = app_client.app[STORE]
    before = store.last_seq
    resp, text = await call(app_client, "GET", path, params=query)
    assert resp.status in (200, 204, 302, 303) or 400 <= resp.status < 500, (resp.status, text)
    if resp.status >= 400:
        check_clear_message(resp, text, path)
    assert store.last_seq == before


async def test_pages_refuse_hand_picked_odd_queries(app_client: Client) -> None:
    job_id = await a_job(app_client)
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/dashboard", {"params": {"fragment": "nope"}}),
        ("GET", "/jobs", {"params": {"fragment": "../../etc/passwd"}}),
        ("GET", f"/jobs/{job_id}", {"params": {"fragment": "nope"}}),
        ("GET", "/logs", {"params": {"level": "LOUD"}}),
        ("GET", "/logs", {"params": {"level": "\x00"}}),
        ("GET", "/logs", {"params": {"source": "../../etc/passwd"}}),
        ("GET", "/logs", {"params": {"run": "../../etc/passwd"}}),
        ("GET", "/logs", {"params": {"job": "../../etc"}}),
        ("GET", "/logs", {"params": {"job": "no-such-job"}}),
        ("GET", "/logs/download", {"params": {"run": "../../etc/passwd"}}),
        ("GET", "/logs/download", {"params": {"source": "run"}}),
        ("GET", "/logs/download", {"params": {"source": "/etc/passwd"}}),
        ("GET", "/ws", {"params": {"since": "-1"}}),
        ("GET", "/ws", {"params": {"since": "abc"}}),
    ]
    await each(app_client, "GET pages (hand-picked)", cases)
    for page in ("0", "-1", "²", "99999999", "1e3", "x" * 5000):  # clamped, not refused
        tried("GET pages (hand-picked)")
        resp, _ = await call(app_client, "GET", "/jobs", params={"page": page})
        assert resp.status == 200, (page, resp.status)
    tried("GET pages (hand-picked)")
    resp, _ = await call(app_client, "GET", "/logs", params={"q": "x" * 100_000})
    assert resp.status in (200, 400, 414, 431), resp.status


# --- forms ----------------------------------------------------------------------------------

FORM_JOB_FIELDS = ["name", "engine", "sources", "destination", "include", "exclude",
                   "schedule", "options", "webhook_url", "keep_last", "keep_daily",
                   "keep_weekly", "keep_monthly"]
BAD_JOB_FORMS: list[dict[str, str]] = [
    {"name": ""}, {"name": "x" * 30_000}, {"name": "nul\x00"}, {"engine": "tape"},
    {"engine": ""}, {"sources": ""}, {"sources": "relative/path"}, {"sources": "/a/../etc"},
    {"sources": "/a\x00b"}, {"sources": "/ok\nrelative"}, {"sources": "/" + "x" * 5000},
    {"destination": ""}, {"destination": "relative"}, {"destination": SRC + "/inside"},
    {"destination": str(ROOT)}, {"destination": "/a/../b"}, {"destination": "/b\x00"},
    {"schedule": "every tuesday"}, {"schedule": "61 * * * *"}, {"schedule": "* * * *"},
    {"schedule": "every 0 minutes"}, {"keep_last": "-3"}, {"keep_daily": "²"},
    {"keep_weekly": "1.5"}, {"keep_monthly": "x"}, {"keep_last": "9999999"},
    {"options": "no equals sign"}, {"options": "threads = -1"}, {"options": "nope = 1"},
    {"options": "= 1"}, {"webhook_url": "ftp://x"}, {"webhook_url": "javascript:alert(1)"},
    {"include": "a\x00"}, {"exclude": "x" * 2000}, {"sources": "x" * 30_000},
]


def job_form(token: str, **fields: str) -> dict[str, str]:
    """A valid job form (schedule switched off) with some fields replaced."""
    return {"_csrf": token, "name": "Torture form", "engine": "mirror", "sources": SRC,
            "destination": FORM_DST, **fields}


async def test_job_forms_refuse_every_hand_picked_bad_field(app_client: Client) -> None:
    job_id = await a_job(app_client)
    token = await csrf(app_client)
    cases: list[tuple[str, str, dict[str, Any]]] = []
    for fields in BAD_JOB_FORMS:
        for url in ("/jobs/new", f"/jobs/{job_id}/edit"):
            cases.append(("POST", url, {"data": job_form(token, **fields)}))
    await each(app_client, "job forms (hand-picked)", cases)
    _, text = await refused(app_client, "POST", "/jobs/new",
                            data=job_form(token, sources="relative", keep_last="-1"))
    assert field_errors(text).keys() >= {"sources", "retention"}


FORM_TEXT = st.one_of(TEXT, HAND_PICKED, st.builds(lambda n: "x" * n, st.integers(0, 40_000)),
                      st.lists(TEXT, max_size=3).map("\n".join))


@hypothesis_settings(250)
@given(fields=st.dictionaries(st.sampled_from([*FORM_JOB_FIELDS, "enabled", "junk"]),
                              FORM_TEXT.filter(lambda v: v != "on"), max_size=6),
       edit=st.booleans())
async def test_job_forms_answer_any_input_with_303_or_422(
        app_client: Client, fields: dict[str, str], edit: bool) -> None:
    tried("job forms (hypothesis)")
    token = await csrf(app_client)
    url = f"/jobs/{await a_job(app_client)}/edit" if edit else "/jobs/new"
    resp, text = await refused_or_accepted(app_client, "POST", url, {303},
                                           data=job_form(token, **fields))
    if resp.status != 303:
        assert resp.status == 422, (resp.status, text[:300])


BAD_SETTINGS_FORMS: list[dict[str, str]] = [
    {"max_concurrent_runs": "0"}, {"max_concurrent_runs": "33"}, {"max_concurrent_runs": "-1"},
    {"max_concurrent_runs": "²"}, {"max_concurrent_runs": "1e3"}, {"max_concurrent_runs": ""},
    {"max_concurrent_runs": "x" * 30_000}, {"auto_resume": "maybe"}, {"auto_resume": ""},
    {"log_level": "LOUD"}, {"log_level": ""}, {"theme": "neon"}, {"keep_last": "-3"},
    {"keep_daily": "1.5"}, {"webhook_url": "ftp://x"}, {"webhook_url": "http://x\x00"},
]


def settings_form(token: str, **fields: str) -> dict[str, str]:
    """A valid settings form with some fields replaced."""
    return {"_csrf": token, "max_concurrent_runs": "2", "auto_resume": "yes",
            "log_level": "INFO", "theme": "system", "keep_last": "7", **fields}


async def test_settings_form_refuses_every_hand_picked_bad_field(app_client: Client) -> None:
    token = await csrf(app_client)
    await each(app_client, "settings form (hand-picked)",
               [("POST", "/settings", {"data": settings_form(token, **f)})
                for f in BAD_SETTINGS_FORMS])


@hypothesis_settings(200)
@given(fields=st.dictionaries(
    st.sampled_from(["max_concurrent_runs", "auto_resume", "webhook_url", "log_level", "theme",
                     "keep_last", "keep_daily", "keep_weekly", "keep_monthly", "junk"]),
    FORM_TEXT, max_size=5))
async def test_settings_form_answers_any_input_with_303_or_422(
        app_client: Client, fields: dict[str, str]) -> None:
    tried("settings form (hypothesis)")
    token = await csrf(app_client)
    resp, text = await refused_or_accepted(app_client, "POST", "/settings", {303},
                                           data=settings_form(token, **fields))
    if resp.status != 303:
        assert resp.status == 422, (resp.status, text[:300])


def safe_location(location: str) -> bool:
    """Whether a redirect stays on this site as a browser reads it.

    Browsers drop tabs and newlines from a URL and read a backslash as a slash, so
    "/\\t/evil.example" is "//evil.example": another site.
    """
    cleaned = re.sub(r"[\t\n\r]", "", location).replace("\\", "/")
    return cleaned.startswith("/") and not cleaned.startswith("//") \
        and not any(ord(c) < 32 or ord(c) == 127 for c in location)


HAND_PICKED_NEXT = ["//evil.example", "/\\evil.example", "\\\\evil.example",
                    "https://evil.example", "/\t/evil.example", "/\n/evil.example",
                    "/\r\nSet-Cookie: x=y", "/\x00", "/\x01", "/\x7f", "/%0d%0aX: y",
                    "javascript:alert(1)", "/ok", "/jobs?page=2", "/" + "x" * 3000, "/é",
                    " /ok", "/ /evil", "/\u2028/evil.example"]
NEXT_VALUES = st.one_of(st.sampled_from(HAND_PICKED_NEXT), st.builds(lambda s: "/" + s, TEXT),
                        TEXT)


async def test_buttons_stay_on_site_whatever_next_says(app_client: Client,
                                                       tmp_path: Path) -> None:
    token = await csrf(app_client)
    backup = await a_backup(app_client, tmp_path)
    store = app_client.app[STORE]
    failures = []
    for nxt in HAND_PICKED_NEXT:
        for url in ("/theme", f"/jobs/{backup['job']}/disable", f"/runs/{backup['run']}/pause"):
            tried("button next= (hand-picked)")
            before = store.last_seq
            try:
                resp, _ = await call(app_client, "POST", url,
                                     data={"_csrf": token, "theme": "dark", "next": nxt})
            except AssertionError as err:
                failures.append(f"{url} next={nxt[:40]!r}: {str(err).splitlines()[0][:150]}")
                continue
            location = resp.headers.get("Location", "")
            if resp.status != 303 or not safe_location(location) or store.last_seq != before:
                failures.append(f"{url} next={nxt[:40]!r} -> {resp.status} Location "
                                f"{location[:60]!r}, appended {store.last_seq - before}")
    assert_all(failures, len(HAND_PICKED_NEXT) * 3)


@hypothesis_settings(250)
@given(theme=st.one_of(st.sampled_from(["dark", "light", "system", "neon", ""]), TEXT),
       nxt=NEXT_VALUES)
async def test_theme_and_buttons_never_redirect_off_site_or_break(
        app_client: Client, tmp_path: Path, theme: str, nxt: str) -> None:
    tried("theme and button next= (hypothesis)")
    token = await csrf(app_client)
    job_id = await a_job(app_client)
    store = app_client.app[STORE]
    for url in ("/theme", f"/jobs/{job_id}/disable"):
        before = store.last_seq
        resp, _ = await call(app_client, "POST", url,
                             data={"_csrf": token, "theme": theme, "next": nxt})
        assert resp.status == 303, (url, resp.status)
        location = resp.headers["Location"]
        assert safe_location(location), f"{url} with next={nxt!r} redirects to {location!r}"
        assert store.last_seq == before
        if url == "/theme":
            morsel = resp.cookies.get("bm_theme")
            assert morsel is None or morsel.value in ("dark", "light", "system")


async def test_forms_refuse_missing_or_foreign_tokens(app_client: Client) -> None:
    job_id = await a_job(app_client)
    token = await csrf(app_client)
    cases: list[tuple[str, str, dict[str, Any]]] = []
    for url, data in (("/jobs/new", job_form("")), (f"/jobs/{job_id}/edit", job_form("")),
                      ("/settings", settings_form("")), ("/theme", {"theme": "dark"}),
                      (f"/jobs/{job_id}/delete", {"confirm": "delete"}),
                      (f"/jobs/{job_id}/start", {})):
        data.pop("_csrf", None)
        for bad in (None, "", "0" * 64, token.upper(), token[:-1], token + "0",
                    token + "\x00", ["a", "b"]):
            sent = dict(data)
            if isinstance(bad, str):
                sent["_csrf"] = bad
            cases.append(("POST", url, {"data": sent}))
        cases.append(("POST", url, {"data": {**data, "_csrf": token},
                                    "headers": {"Origin": "null"}}))
    await each(app_client, "forms without a good token", cases)


# --- cross-site probes ----------------------------------------------------------------------

EVIL = "http://evil.example"


async def test_foreign_origin_is_refused_for_forms_and_the_api(app_client: Client) -> None:
    job_id = await a_job(app_client)
    token = await csrf(app_client)
    cases: list[tuple[str, str, dict[str, Any]]] = []
    for origin in (EVIL, "null", f"http://127.0.0.1:{app_client.port}.evil.example",
                   f"https://127.0.0.1:{app_client.port}", "http://localhost:1"):
        headers = {"Origin": origin}
        cases += [
            ("POST", "/jobs/new", {"data": job_form(token), "headers": headers}),
            ("POST", f"/jobs/{job_id}/delete", {"data": {"_csrf": token, "confirm": "delete"},
                                                "headers": headers}),
            ("POST", "/settings", {"data": settings_form(token, theme="dark"),
                                   "headers": headers}),
            ("POST", "/api/jobs", {"json": base_spec(), "headers": headers}),
            ("PUT", "/api/settings", {"json": {"theme": "dark"}, "headers": headers}),
            ("DELETE", f"/api/jobs/{job_id}", {"headers": headers}),
            ("POST", f"/api/jobs/{job_id}/start", {"json": {}, "headers": headers}),
        ]
    cases.append(("POST", "/jobs/new", {"data": job_form(token),
                                        "headers": {"Referer": EVIL + "/page"}}))
    await each(app_client, "foreign origins", cases)
    assert job_id in app_client.app[STATE].jobs


async def test_websocket_from_a_foreign_origin_is_refused(app_client: Client) -> None:
    tried("websocket origins")
    FIGURES["requests"] += 3
    for origin in (EVIL, "null"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused_ws:
            ws = await app_client.ws_connect("/ws?since=0", origin=origin)
            await ws.close()
        assert refused_ws.value.status == 403, refused_ws.value
    # The page's own origin still gets the log (the refusal is not a blanket one).
    own = f"http://{app_client.host}:{app_client.port}"
    async with app_client.ws_connect("/ws?since=0", origin=own) as ws:
        hello = await ws.receive_json(timeout=10)
        assert hello["kind"] == "hello"


FOREIGN_HOSTS = ["evil.example", "evil.example:8080", "localhost.evil.example",
                 "127.0.0.1.nip.io", "127.0.0.1.evil.example:80", "0.0.0.0", "127.1",
                 "[::1].evil.example", "evil.example\x00", ""]
LOOPBACK_HOSTS = ["127.0.0.1", "localhost:1234", "[::1]:8080", "LOCALHOST", "127.0.0.1:80"]


async def test_foreign_host_headers_are_refused(app_client: Client) -> None:
    job_id = await a_job(app_client)
    store = app_client.app[STORE]
    failures = []
    for host in FOREIGN_HOSTS:
        tried("foreign Host headers")
        # A DNS-rebinding page is same-origin with its own host name, so its Origin matches.
        headers = {"Host": host, "Origin": f"http://{host}"}
        for method, url, kw in (("GET", "/dashboard", {}), ("GET", "/api/jobs", {}),
                                ("GET", "/api/events?since=0", {}), ("GET", "/healthz", {}),
                                ("POST", "/api/jobs", {"json": base_spec()}),
                                ("DELETE", f"/api/jobs/{job_id}", {})):
            before = store.last_seq
            try:
                resp, text = await call(app_client, method, url, headers=headers, **kw)
            except (AssertionError, ValueError) as err:
                if host.endswith("\x00") or not host:
                    continue  # the client itself refuses to send it: nothing reached us
                failures.append(f"Host {host!r} {method} {url}: {err}")
                continue
            if resp.status not in (403, 421) or store.last_seq != before:
                failures.append(f"Host {host!r} {method} {url} -> {resp.status}, appended "
                                f"{store.last_seq - before}: {text[:120]!r}")
            elif '"events"' in text or job_id in text:
                failures.append(f"Host {host!r} {method} {url} leaked data")
        FIGURES["requests"] += 1
        try:
            ws = await app_client.ws_connect("/ws?since=0", headers=headers)
        except aiohttp.WSServerHandshakeError as err:
            if err.status not in (403, 421):
                failures.append(f"Host {host!r} /ws -> {err.status}")
        except (aiohttp.ClientError, ValueError):
            pass
        else:
            await ws.close()
            failures.append(f"Host {host!r}: the WebSocket was upgraded")
    for host in LOOPBACK_HOSTS:
        tried("foreign Host headers")
        resp, _ = await call(app_client, "GET", "/api/jobs", headers={"Host": host})
        if resp.status != 200:
            failures.append(f"loopback Host {host!r} -> {resp.status}, expected 200")
    assert_all(failures, len(FOREIGN_HOSTS) + len(LOOPBACK_HOSTS))


async def raw_get(client: Client, target: str) -> tuple[int, dict[str, str], bytes]:
    """Send a request line exactly as written (no client-side normalising of `..`)."""
    FIGURES["requests"] += 1
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: {client.host}:{client.port}\r\n"
                     "Connection: close\r\n\r\n".encode("latin-1"))
        await writer.drain()
        async with asyncio.timeout(15):
            data = await reader.read()
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


TRAVERSALS = [
    "/static/abc/../../server/app.py", "/static/abc/..%2f..%2fserver%2fapp.py",
    "/static/abc/%2e%2e/%2e%2e/server/app.py", "/static/x/../../../../etc/passwd",
    "/static/x/..%2F..%2F..%2F..%2Fetc%2Fpasswd", "/static/x/%2e%2e%2f%2e%2e%2fsecret.key",
    "/static/x/....//....//etc/passwd", "/static/x/..\\..\\server\\app.py",
    "/logs/download?run=../../etc/passwd", "/logs/download?source=run&run=..%2F..%2Fetc%2Fpasswd",
    "/logs/download?source=../../etc/passwd", "/logs/download?run=r-0123456789ab/../../../x",
    "/jobs/..%2F..%2Fetc", "/jobs/%2e%2e%2f%2e%2e%2fetc%2fpasswd/edit",
    "/api/jobs/..%2F..%2Fetc%2Fpasswd", "/api/runs/..%2F..%2Fsecret.key",
    "/%2e%2e/%2e%2e/etc/passwd", "/../../etc/passwd", "/static/../secret.key",
    "/static/%2e%2e/%2e%2e/events.db", "/logs?source=run&run=../../etc/passwd",
]
LEAKS = [b"root:x:0:0", b"def create_app", b"SQLite format 3", b"import aiohttp"]


async def test_path_traversal_urls_get_a_4xx_and_leak_nothing(app_client: Client) -> None:
    secret = (app_client.app[CONFIG].data_dir / "secret.key").read_bytes().strip()
    failures = []
    for target in TRAVERSALS:
        tried("path traversal URLs")
        status, _, body = await raw_get(app_client, target)
        leaked = [m for m in [*LEAKS, secret] if m in body]
        if not 400 <= status < 500 or leaked:
            failures.append(f"{target} -> {status}, leaked {leaked}")
    assert_all(failures, len(TRAVERSALS))


# Referrer-Policy values that never send a path to another site.
STRICT_REFERRER = {"no-referrer", "same-origin", "strict-origin", "origin",
                   "strict-origin-when-cross-origin"}


def security_problems(headers: Any) -> list[str]:
    """What a response lacks of the security headers (issue 6)."""
    problems = []
    csp = headers.get("Content-Security-Policy")
    if not csp:
        problems.append("no Content-Security-Policy")
    else:
        directives = {}
        for part in csp.split(";"):
            words = part.split()
            if words:
                directives[words[0].lower()] = words[1:]
        script = directives.get("script-src", directives.get("default-src"))
        if script is None or "'unsafe-inline'" in script:
            problems.append(f"script-src allows inline scripts: {csp}")
        if directives.get("frame-ancestors") != ["'none'"]:
            problems.append(f"no frame-ancestors 'none': {csp}")
    if (headers.get("X-Content-Type-Options") or "").lower() != "nosniff":
        problems.append("no X-Content-Type-Options: nosniff")
    referrer = (headers.get("Referrer-Policy") or "").lower()
    if referrer not in STRICT_REFERRER:
        problems.append(f"Referrer-Policy {referrer!r}")
    return problems


async def test_every_response_carries_the_security_headers(app_client: Client) -> None:
    job_id = await a_job(app_client)
    token = await csrf(app_client)
    _, page = await call(app_client, "GET", "/dashboard")
    static = re.search(r'(/static/[0-9a-f]+/[^"]+\.css)', page)
    assert static, "the page links no stylesheet"
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/dashboard", {}), ("GET", "/dashboard?fragment=stats", {}),
        ("GET", "/jobs", {}), ("GET", f"/jobs/{job_id}", {}), ("GET", "/settings", {}),
        ("GET", "/logs", {}), ("GET", "/", {}), ("GET", "/healthz", {}),
        ("GET", static.group(1), {}), ("GET", "/static/0/app.css", {}),
        ("GET", static.group(1), {"headers": {"If-None-Match": "x"}}),
        ("HEAD", "/jobs", {}), ("GET", "/api/jobs", {}), ("GET", "/api/events?since=0", {}),
        ("GET", "/no/such/page", {}), ("GET", "/api/nope", {}), ("GET", "/logs/download", {}),
        ("POST", "/jobs/new", {"data": job_form(token, sources="relative")}),
        ("POST", "/jobs/new", {"data": job_form("")}),
        ("POST", f"/jobs/{job_id}/delete", {"data": {"_csrf": token}}),
        ("POST", "/api/jobs", {"json": {}}), ("POST", "/api/jobs", {"data": "x"}),
        ("POST", "/api/jobs", {"data": b"x" * (MIB + 1),
                               "headers": {"Content-Type": "application/json"}}),
        ("GET", "/dashboard", {"headers": {"Host": "evil.example"}}),
        ("GET", "/api/jobs", {"headers": {"Host": "evil.example"}}),
        ("PUT", "/api/jobs", {"json": {}}), ("GET", "/ws?since=-1", {}),
    ]
    failures = []
    for method, url, kw in requests:
        tried("security headers")
        resp, _ = await call(app_client, method, url, **kw)
        for problem in security_problems(resp.headers):
            failures.append(f"{method} {url} ({resp.status}): {problem}")
    FIGURES["requests"] += 1
    try:
        ws = await app_client.ws_connect("/ws", origin=EVIL)
        await ws.close()
    except aiohttp.WSServerHandshakeError as err:
        for problem in security_problems(err.headers or {}):
            failures.append(f"/ws refused ({err.status}): {problem}")
    _, headers, _ = await raw_get(app_client, "/static/abc/../../server/app.py")
    for problem in security_problems({k.title(): v for k, v in headers.items()}):
        failures.append(f"raw traversal: {problem}")
    assert_all(failures, len(requests) + 2)


async def test_raw_http_oddities_never_get_a_5xx(app_client: Client) -> None:
    """Request lines a browser would not send: the server answers or closes, never 500."""
    failures = []
    for target in ["/jobs/%ff%fe", "/api/jobs/%ff", "/jobs?page=%ff", "/logs?q=%ff%00",
                   "/api/events?since=%ff", "/%00", "/jobs/%00/edit", "/" + "a" * 7000,
                   "/jobs?" + "a=1&" * 2000, "/dashboard?fragment=%00"]:
        tried("raw request oddities")
        try:
            status, _, body = await raw_get(app_client, target)
        except (ConnectionError, IndexError, ValueError):
            continue  # the connection was closed on a malformed request: nothing served
        if status >= 500:
            failures.append(f"{target[:80]} -> {status}: {body[:120]!r}")
    assert_all(failures, 10)

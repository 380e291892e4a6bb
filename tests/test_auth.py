"""Sign-in with the access token, and the protections every request passes."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient

from models.atomic import write_atomic
from server.app import create_app
from server.auth import create_token
from server.config import Config
from server.csrf import load_secret
from server.keys import STORE
from tests.cli_helpers import REPO
from tests.conftest import AppClient

Client = TestClient[web.Request, web.Application]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the backup-manager command line."""
    return subprocess.run([sys.executable, "-m", "server", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_serving_beyond_loopback_needs_a_token_first(tmp_path: Path) -> None:
    data = tmp_path / "data"
    refused = cli("serve", "--host", "0.0.0.0", "--port", "1", "--data", str(data))
    assert refused.returncode == 2
    assert "needs an access token" in refused.stderr
    assert f"backup-manager token --data {data}" in refused.stderr
    assert not (data / "events.db").exists()  # refused before touching anything


def test_token_command_makes_a_private_token_once_and_rotates(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = cli("token", "--data", str(data))
    assert first.returncode == 0
    token = first.stdout.strip()
    assert len(token) >= 40
    path = data / "access-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert cli("token", "--data", str(data)).stdout.strip() == token
    rotated = cli("token", "--rotate", "--data", str(data)).stdout.strip()
    assert rotated != token and path.read_text().strip() == rotated


def test_token_and_secret_are_written_whole_private_and_leave_no_temp_file(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    token, made = create_token(data)
    secret = load_secret(data)
    assert made and len(secret) == 32 and load_secret(data) == secret
    assert sorted(p.name for p in data.iterdir()) == ["access-token", "secret.key"]
    for name in ("access-token", "secret.key"):
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600
    # Rotating replaces the file whole and keeps it private.
    rotated, _ = create_token(data, rotate=True)
    assert rotated != token and (data / "access-token").read_text() == f"{rotated}\n"
    assert stat.S_IMODE((data / "access-token").stat().st_mode) == 0o600


def test_write_atomic_gives_the_new_file_the_mode_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "f"
    write_atomic(path, b"old")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    write_atomic(path, b"new", mode=0o600)
    assert path.read_bytes() == b"new" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


async def test_without_signing_in_nothing_but_login_health_and_css(
        guarded: tuple[Client, str]) -> None:
    client, _ = guarded
    page = await client.get("/dashboard?x=1", allow_redirects=False)
    assert page.status == 303 and page.headers["Location"] == "/login?next=/dashboard?x=1"
    api = await client.get("/api/jobs")
    assert api.status == 401 and "Bearer" in (await api.json())["error"]
    assert api.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await client.get("/ws")).status == 401
    assert (await client.post("/api/jobs", json={"name": "x"})).status == 401
    assert (await client.get("/healthz")).status == 200
    login = await client.get("/login")
    html = await login.text()
    assert login.status == 200 and 'type="password"' in html
    assert "/static/" in html and 'aria-label="Main"' not in html  # no navigation, no feed
    css = html.split('href="', 2)[1].split('"')[0]
    assert (await client.get(css)).status == 200


async def test_signing_in_sets_a_strict_session_cookie(guarded: tuple[Client, str]) -> None:
    client, token = guarded
    html = await (await client.get("/login")).text()
    csrf = html.split('name="_csrf" value="')[1].split('"')[0]
    store = client.app[STORE]
    wrong = await client.post("/login", data={"_csrf": csrf, "token": "guess",
                                              "next": "/jobs"})
    assert wrong.status == 401 and "not the access token" in await wrong.text()
    right = await client.post("/login", data={"_csrf": csrf, "token": token, "next": "/jobs"},
                              allow_redirects=False)
    assert right.status == 303 and right.headers["Location"] == "/jobs"
    cookie = right.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert (await client.get("/jobs")).status == 200
    assert (await client.get("/api/jobs")).status == 200
    out = await client.post("/logout", data={"_csrf": csrf}, allow_redirects=False)
    assert out.status == 303
    assert (await client.get("/api/jobs")).status == 401
    assert store.last_seq == 0  # signing in and out is not a job state change


async def test_the_api_takes_the_token_as_a_bearer_header(guarded: tuple[Client, str],
                                                         tmp_path: Path) -> None:
    client, token = guarded
    headers = {"Authorization": f"Bearer {token}"}
    (tmp_path / "a").mkdir()
    made = await client.post("/api/jobs", headers=headers, json={
        "name": "Scripted", "engine": "mirror", "sources": [str(tmp_path / "a")],
        "destination": str(tmp_path / "b")})
    assert made.status == 201
    forged = await client.get("/api/jobs", headers={"Authorization": "Bearer " + "x" * 43},
                              cookies={"bm_session": "9999999999.deadbeef"})
    assert forged.status == 401


async def test_foreign_host_names_and_origins_are_refused(app_client: Client) -> None:
    foreign = await app_client.get("/dashboard", headers={"Host": "evil.example"})
    assert foreign.status == 421
    api = await app_client.get("/api/jobs", headers={"Host": "evil.example:8080"})
    assert api.status == 421
    for name in ("localhost", "127.0.0.1:8080", "[::1]:8080"):
        assert (await app_client.get("/healthz", headers={"Host": name})).status == 200
    ws = await app_client.get("/ws", headers={
        "Origin": "https://evil.example", "Connection": "Upgrade", "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert ws.status == 403


async def test_without_a_token_nothing_is_served_through_a_proxy(
        app_client: Client) -> None:
    # A proxy in front of a loopback server lets the network in; without a token the
    # server says how to make one instead of serving the jobs to anyone.
    for header in ("X-Forwarded-For", "X-Forwarded-Proto", "Forwarded", "X-Real-IP"):
        for path in ("/dashboard", "/api/jobs", "/ws", "/metrics"):
            resp = await app_client.get(path, headers={header: "203.0.113.9"})
            assert resp.status == 403, (header, path)
            assert "backup-manager token" in await resp.text()
        made = await app_client.post("/api/jobs", json={"name": "x"}, headers={header: "x"})
        assert made.status == 403
    assert (await app_client.get("/healthz", headers={"X-Forwarded-For": "x"})).status == 200
    assert (await app_client.get("/api/jobs")).status == 200  # straight from loopback
    assert app_client.app[STORE].last_seq == 0


async def test_with_a_token_a_proxied_request_signs_in_as_usual(
        guarded: tuple[Client, str]) -> None:
    client, token = guarded
    headers = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    assert (await client.get("/api/jobs", headers=headers)).status == 401
    headers["Authorization"] = f"Bearer {token}"
    assert (await client.get("/api/jobs", headers=headers)).status == 200


async def test_an_allowed_host_name_is_answered(aiohttp_client: AppClient,
                                                tmp_path: Path) -> None:
    client = await aiohttp_client(create_app(Config(
        data_dir=tmp_path / "data", log_to_file=False, allowed_hosts=("backup.lan",))))
    assert (await client.get("/healthz", headers={"Host": "backup.lan"})).status == 200
    assert (await client.get("/healthz", headers={"Host": "other.lan"})).status == 421


async def test_every_response_carries_the_security_headers(app_client: Client) -> None:
    html = await (await app_client.get("/dashboard")).text()
    css = html.split('rel="stylesheet" href="')[1].split('"')[0]
    for path in ("/dashboard", "/api/jobs", "/no/such/page", css, "/healthz"):
        resp = await app_client.get(path)
        csp = resp.headers["Content-Security-Policy"]
        script_src = csp.split("script-src")[1].split(";")[0]
        assert "unsafe-inline" not in script_src and "frame-ancestors 'none'" in csp
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["Referrer-Policy"] == "same-origin"

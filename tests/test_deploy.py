"""The deployment examples in deploy/, checked with the real tools.

The systemd unit passes `systemd-analyze verify` (which loads unit files offline, so it
runs in a container without systemd as PID 1) and keeps the options people rely on.
The nginx site runs in a real nginx, with only its ports and certificate paths
substituted, over TLS in front of a real `backup-manager serve` set up from the example
config, as a browser and a script would use it: pages, sign-in, the JSON API, live events
on the WebSocket, the Host allow-list and the Origin checks.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from tests.cli_helpers import REPO, free_port

DEPLOY = REPO / "deploy"
UNIT = DEPLOY / "backup-manager.service"
SITE = DEPLOY / "nginx.conf"
CONFIG = DEPLOY / "config.toml"
INSTALLED = "/usr/local/bin/backup-manager"  # where the unit expects the binary
BINARY = Path(sys.executable).parent / "backup-manager"  # the same command, from the venv
NAME = "backups.example.lan"  # the public name in the examples


def tool(name: str, package: str) -> str:
    """A system program the test needs; fails (never skips) when it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; `make sysdeps` installs it "
                    f"(apt-get install {package})")
    return path


def unit_settings(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file's settings by section, every value of a repeated key kept in order."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None and "=" in line, f"not a unit file setting: {raw!r}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def substitute(text: str, changes: list[tuple[str, str]]) -> str:
    """Apply (line regex, replacement) pairs; each must match exactly one line, so an
    edit to the example that a substitution no longer fits fails here, loudly."""
    for pattern, replacement in changes:
        text, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
        assert count == 1, f"{pattern!r} matched {count} lines of the example, not 1"
    return text


# --- the systemd unit ------------------------------------------------------------------


def test_unit_passes_systemd_analyze_verify_without_warnings(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze", "systemd")
    text = UNIT.read_text()
    # verify checks that every Exec*= program exists and is executable; the binary is
    # installed only on real hosts, so point it at the venv's `backup-manager`.
    text = substitute(text, [(rf"^ExecStart={re.escape(INSTALLED)} ", f"ExecStart={BINARY} ")])
    if not os.access("/bin/kill", os.X_OK):  # procps; on every real host, not every image
        text = text.replace("ExecReload=/bin/kill", f"ExecReload={shutil.which('true')}")
    unit = tmp_path / UNIT.name  # the file name is the unit's name
    unit.write_text(text)
    result = subprocess.run([analyze, "verify", str(unit)], cwd=tmp_path, text=True,
                            capture_output=True, timeout=60, check=False)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_unit_hardening_keeps_a_low_exposure(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze", "systemd")
    unit = tmp_path / UNIT.name
    shutil.copy(UNIT, unit)
    # --threshold is the exposure level times 10; it exits non-zero above it.
    result = subprocess.run([analyze, "security", "--offline=yes", "--threshold=30",
                             "--no-pager", str(unit)], cwd=tmp_path, text=True,
                            capture_output=True, timeout=60, check=False)
    overall = [line for line in result.stdout.splitlines() if "Overall exposure" in line]
    assert result.returncode == 0, f"exposure above 3.0: {overall or result.stderr}"


def test_unit_has_the_options_the_service_relies_on() -> None:
    settings = unit_settings(UNIT.read_text())
    service = settings["Service"]

    def one(key: str) -> str:
        values = service.get(key, [])
        assert len(values) == 1, f"{key}= is set {len(values)} times"
        return values[0]

    assert one("ExecStart") == f"{INSTALLED} serve --config /etc/backup-manager/config.toml"
    assert one("User") == "backup-manager"
    assert one("Restart") == "on-failure"
    assert one("ExecReload") == "/bin/kill -HUP $MAINPID"
    # SIGTERM to the main process only: it stops rsync and restic at a safe point
    # itself, with time to do so before systemd sends SIGKILL.
    assert (one("KillSignal"), one("KillMode")) == ("SIGTERM", "mixed")
    assert int(one("TimeoutStopSec")) >= 60
    # A usage error (bad config, busy data directory) must not restart in a loop.
    assert one("RestartPreventExitStatus") == "2"
    assert one("StateDirectory") == "backup-manager"
    # Reads everything, writes only its state and the destinations.
    assert one("AmbientCapabilities") == one("CapabilityBoundingSet") == "CAP_DAC_READ_SEARCH"
    assert (one("ProtectSystem"), one("ProtectHome")) == ("strict", "read-only")
    assert "/srv/backups" in one("ReadWritePaths").split()
    # The single-file binary unpacks into /tmp and runs from there.
    assert one("PrivateTmp") == "yes"
    assert not any(k in service for k in ("NoExecPaths", "TemporaryFileSystem"))
    # Left out on purpose (see the unit's comments): each breaks reading or copying.
    for key in ("MemoryDenyWriteExecute", "RestrictSUIDSGID", "PrivateUsers", "DynamicUser"):
        assert key not in service, f"{key}= breaks the service; see the unit's comments"
    assert settings["Install"]["WantedBy"] == ["multi-user.target"]


def test_examples_agree_with_each_other() -> None:
    config = tomllib.loads(CONFIG.read_text())
    assert set(config) <= {"data", "host", "port", "log_level", "allowed_hosts"}
    service = unit_settings(UNIT.read_text())["Service"]
    site = SITE.read_text()
    # The unit's state directory is the data directory, and the unit reads this file.
    assert config["data"] == f"/var/lib/{service['StateDirectory'][0]}"
    assert service["ExecStart"][0].endswith("--config /etc/backup-manager/config.toml")
    # nginx forwards to the address the app listens on, which is loopback only.
    assert config["host"] == "127.0.0.1"
    assert re.findall(r"^\s*server (\S+);", site, re.MULTILINE) == [
        f"{config['host']}:{config['port']}"]
    # The app answers to the name nginx serves.
    names = set(re.findall(r"^\s*server_name (\S+);", site, re.MULTILINE))
    assert names == set(config["allowed_hosts"]) == {NAME}
    assert config["log_level"] in ("DEBUG", "INFO", "WARNING", "ERROR")


def api(port: int, method: str, path: str, body: object = None) -> Any:
    """Call the JSON API on loopback (no token, no Origin: a local script)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


@pytest.fixture
def world_searchable(tmp_path: Path) -> Iterator[Path]:
    """A temp directory other users may enter: pytest's own sit in a 0700 directory."""
    with tempfile.TemporaryDirectory(prefix="bm-deploy-") as name:
        os.chmod(name, 0o755)
        yield Path(name)


@pytest.mark.parametrize("source_mode", [
    0o755, 0o700], ids=["root-only-file", "root-only-source-dir"])
def test_unit_credentials_back_up_files_only_root_may_read(
        world_searchable: Path, source_mode: int) -> None:
    """What the unit gives the server (another user, NoNewPrivileges, CAP_DAC_READ_SEARCH
    ambient and alone in the bounding set, its UMask), applied with setpriv, is enough
    to back up files only root may read, by Python (mirror) and a child program (rsync)."""
    if os.geteuid() != 0:
        pytest.skip("switching to an unprivileged user with capabilities needs root")
    setpriv = tool("setpriv", "util-linux")
    tool("rsync", "rsync")
    service = unit_settings(UNIT.read_text())["Service"]
    assert service["NoNewPrivileges"] == ["yes"]

    def caps(key: str) -> str:
        return ",".join(f"+{cap.removeprefix('CAP_').lower()}"
                        for cap in service[key][0].split())

    nobody = 65534  # the unit's user does not exist here; any unprivileged one will do
    work = world_searchable
    src, data, dest = work / "src", work / "data", work / "dest"
    (src / "private").mkdir(parents=True)
    (src / "private" / "key.txt").write_text("only root may read this\n")
    (src / "private" / "key.txt").chmod(0o600)
    (src / "private").chmod(0o700)
    src.chmod(source_mode)
    for owned in (data, dest):
        owned.mkdir()
        os.chown(owned, nobody, nobody)
    port = free_port()
    server = launch([setpriv, f"--reuid={nobody}", f"--regid={nobody}", "--clear-groups",
                     f"--inh-caps={caps('AmbientCapabilities')}",
                     f"--ambient-caps={caps('AmbientCapabilities')}",
                     f"--bounding-set=-all,{caps('CapabilityBoundingSet')}",
                     "--no-new-privs", str(BINARY), "serve", "--port", str(port),
                     "--data", str(data)],
                    work, port, umask=int(service["UMask"][0], 8))
    try:
        status = Path(f"/proc/{server.pid}/status").read_text()
        assert re.search(rf"^Uid:\s+{nobody}\s", status, re.MULTILINE), status
        assert re.search(r"^CapEff:\s+0+4$", status, re.MULTILINE), status  # that one cap
        for engine in ("mirror", "rsync"):
            job = api(port, "POST", "/api/jobs", {
                "name": engine, "engine": engine, "sources": [str(src)],
                "destination": str(dest / engine)})
            run_id = api(port, "POST", f"/api/jobs/{job['id']}/start", {})["run_id"]
            deadline = time.monotonic() + 60
            while (run := api(port, "GET", f"/api/runs/{run_id}"))["state"] in (
                    "queued", "running"):
                assert time.monotonic() < deadline, run
                time.sleep(0.2)
            assert (run["state"], run["files"]) == ("succeeded", 1), run["error"]
            copies = list((dest / engine).rglob("key.txt"))
            assert [c.read_text() for c in copies] == ["only root may read this\n"]
    finally:
        code = stop(server, signal.SIGTERM)
    assert code == 0, (work / "server.log").read_text()
    # UMask=0077 keeps the event log and the logs private. (The YAML projections are
    # written 0644 on purpose; StateDirectoryMode=0700 keeps other users out of them.)
    private = [data / "events.db", data / "logs", *(data / "logs").rglob("*")]
    assert [p for p in private if p.stat().st_mode & 0o077] == []


# --- nginx in front of a real server ---------------------------------------------------


@dataclass
class Stack:
    """nginx (TLS and plain HTTP) in front of a running server."""

    server: subprocess.Popen[str]
    app_port: int
    https_port: int
    http_port: int
    token: str
    ca_file: Path
    config_file: Path  # the example config, as the server was started with it
    work: Path

    @property
    def origin(self) -> str:
        """The origin a browser has on this site. The port is not 443, so it only matches
        because the site passes the Host header with its port ($http_host)."""
        return f"https://{NAME}:{self.https_port}"

    def url(self, path: str) -> str:
        """A URL on the site by its public name (resolved to loopback by the client)."""
        return f"{self.origin}{path}"


class LoopbackResolver(AbstractResolver):
    """Resolves every name to 127.0.0.1, so the client uses the public name as a
    browser would (Host, SNI, certificate check) without touching DNS."""

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        return [ResolveResult(hostname=host, host="127.0.0.1", port=port,
                              family=socket.AF_INET, proto=0, flags=socket.AI_NUMERICHOST)]

    async def close(self) -> None:
        return None


def client(stack: Stack, **kwargs: Any) -> aiohttp.ClientSession:
    """A client session that reaches the site by name and trusts its certificate."""
    context = ssl.create_default_context(cafile=stack.ca_file)
    connector = aiohttp.TCPConnector(resolver=LoopbackResolver(), ssl=context)
    return aiohttp.ClientSession(connector=connector,
                                 timeout=aiohttp.ClientTimeout(total=30), **kwargs)


def distinct_free_ports(count: int) -> list[int]:
    """Free loopback ports, all different (free_port may hand out one twice)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def wait_until(ready: Callable[[], bool], proc: subprocess.Popen[str], what: str,
               log: Path, seconds: float = 30) -> None:
    """Poll until `ready()`; fail with the process's log when it exits or time runs out."""
    deadline = time.monotonic() + seconds
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{what} did not start (exit {proc.poll()}):\n{log.read_text()}")
        time.sleep(0.1)


def answers(url: str) -> bool:
    """Whether a plain-HTTP URL answers at all."""
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except OSError:
        return False


def accepts(port: int) -> bool:
    """Whether something accepts TCP connections on a loopback port."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def stop(proc: subprocess.Popen[str], *signals: signal.Signals) -> int:
    """Send each signal in turn, waiting up to 30 s after each; SIGKILL as a last resort."""
    for sig in signals:
        if proc.poll() is not None:
            return proc.returncode
        proc.send_signal(sig)
        try:
            return proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            continue
    proc.kill()
    return proc.wait()


def launch(command: list[str], work: Path, port: int, **popen: Any) -> subprocess.Popen[str]:
    """Start a server command (logging to work/server.log); return once /healthz answers."""
    log = work / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=work, stdout=out, stderr=subprocess.STDOUT,
                                text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                **popen)
    wait_until(lambda: answers(f"http://127.0.0.1:{port}/healthz"), proc,
               "backup-manager", log)
    return proc


def write_config(work: Path, app_port: int) -> Path:
    """deploy/config.toml with only its data directory and port changed (a temp
    directory, a free port)."""
    config_file = work / "config.toml"
    config_file.write_text(substitute(CONFIG.read_text(), [
        (r'^data = "/var/lib/backup-manager"$', f"data = {json.dumps(str(work / 'data'))}"),
        (r"^port = 8080$", f"port = {app_port}")]))
    return config_file


def start_nginx(work: Path, app_port: int, https_port: int,
                http_port: int) -> tuple[subprocess.Popen[str], Path]:
    """A real nginx running the example site, in the foreground, all files under `work`."""
    nginx = tool("nginx", "nginx")
    openssl = tool("openssl", "openssl")
    cert, key = work / "site.pem", work / "site.key"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                    "-subj", f"/CN={NAME}", "-addext", f"subjectAltName=DNS:{NAME}",
                    "-keyout", str(key), "-out", str(cert)],
                   capture_output=True, timeout=60, check=True)
    # Only what differs on a test machine: ports (loopback, IPv4) and certificate paths.
    (work / "site.conf").write_text(substitute(SITE.read_text(), [
        (r"^(\s*)listen 80;$", rf"\1listen 127.0.0.1:{http_port};"),
        (r"^\s*listen \[::\]:80;\n", ""),
        (r"^(\s*)listen 443 ssl;$", rf"\1listen 127.0.0.1:{https_port} ssl;"),
        (r"^\s*listen \[::\]:443 ssl;\n", ""),
        (r"^(\s*)server 127\.0\.0\.1:8080;$", rf"\1server 127.0.0.1:{app_port};"),
        (r"^(\s*ssl_certificate\s+)\S+;$", rf"\g<1>{cert};"),
        (r"^(\s*ssl_certificate_key\s+)\S+;$", rf"\g<1>{key};"),
    ]))
    for temp in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (work / temp).mkdir()
    # As root, nginx's workers would switch to nobody, who cannot enter pytest's 0700
    # temp directories to spool large responses; keep them as root there.
    user = "user root;" if os.geteuid() == 0 else ""
    (work / "nginx.conf").write_text(f"""
        {user}
        worker_processes 1;
        pid {work}/nginx.pid;
        error_log stderr notice;
        events {{ worker_connections 64; }}
        http {{
            access_log {work}/access.log;
            client_body_temp_path {work}/client_body;
            proxy_temp_path {work}/proxy;
            fastcgi_temp_path {work}/fastcgi;
            uwsgi_temp_path {work}/uwsgi;
            scgi_temp_path {work}/scgi;
            include {work}/site.conf;
        }}
    """)
    log = work / "nginx.log"
    with log.open("w") as out:
        # -e: the compiled-in error log (/var/log/nginx) is opened before the config.
        proc = subprocess.Popen([nginx, "-p", str(work), "-c", str(work / "nginx.conf"),
                                 "-e", "stderr", "-g", "daemon off;"],
                                stdout=out, stderr=subprocess.STDOUT, text=True)
    wait_until(lambda: accepts(https_port) and accepts(http_port), proc, "nginx", log)
    return proc, cert


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The example deployment, on loopback: nginx on TLS and HTTP, the server behind it."""
    work = tmp_path_factory.mktemp("deploy")
    app_port, https_port, http_port = distinct_free_ports(3)
    config_file = write_config(work, app_port)
    # As the README says: the token first, before the site goes on the network.
    made = subprocess.run([BINARY, "token", "--config", str(config_file)], text=True,
                          capture_output=True, timeout=60, check=True)
    server = launch([str(BINARY), "serve", "--config", str(config_file)], work, app_port)
    try:
        nginx, cert = start_nginx(work, app_port, https_port, http_port)
    except BaseException:
        stop(server, signal.SIGTERM)
        raise
    try:
        yield Stack(server=server, app_port=app_port, https_port=https_port,
                    http_port=http_port, token=made.stdout.strip(), ca_file=cert,
                    config_file=config_file, work=work)
    finally:
        # SIGQUIT lets nginx finish open requests; SIGTERM is its fast stop.
        stop(nginx, signal.SIGQUIT, signal.SIGTERM)
        code = stop(server, signal.SIGTERM)
    # What `systemctl stop` does: exit 0, so Restart=on-failure leaves it stopped.
    assert code == 0, (work / "server.log").read_text()


async def test_health_and_security_headers_through_nginx(stack: Stack) -> None:
    async with client(stack) as session, session.get(stack.url("/healthz")) as resp:
        assert resp.status == 200
        assert (await resp.json())["status"] == "ok"
        assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]


async def test_browser_signs_in_and_gets_pages_and_assets(stack: Stack) -> None:
    async with client(stack) as session:
        async with session.get(stack.url("/"), allow_redirects=True) as resp:
            assert resp.status == 200 and resp.url.path == "/login"
            page = await resp.text()
        found = re.search(r'name="_csrf" value="([0-9a-f]+)"', page)
        assert found is not None
        form = {"_csrf": found.group(1), "token": stack.token, "next": "/dashboard"}
        async with session.post(stack.url("/login"), data=form, allow_redirects=False,
                                headers={"Origin": stack.origin}) as resp:
            assert (resp.status, resp.headers["Location"]) == (303, "/dashboard")
            cookie = resp.cookies["bm_session"]
            # X-Forwarded-Proto: https reached the app, so the cookie is TLS-only.
            assert cookie["secure"] and cookie["httponly"]
        async with session.get(stack.url("/")) as resp:
            assert resp.status == 200 and resp.url.path == "/dashboard"
            page = await resp.text()
        styles = re.findall(r'href="(/static/[^"]+\.css)"', page)
        assert styles
        # Assets come through as the app sends them (gzipped, cached by hash).
        async with session.get(stack.url(styles[0])) as resp:
            assert resp.status == 200 and resp.content_type == "text/css"
            assert resp.headers["Content-Encoding"] == "gzip"
            assert len(await resp.read()) > 1000


async def test_api_creates_and_runs_a_job_with_live_events_on_the_websocket(
        stack: Stack) -> None:
    src, dest = stack.work / "src", stack.work / "dest"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha\n")
    (src / "sub" / "b.txt").write_text("beta\n")
    auth = {"Authorization": f"Bearer {stack.token}"}
    writes = {**auth, "Origin": stack.origin}
    async with client(stack) as session, \
            session.ws_connect(stack.url("/ws"), origin=stack.origin, headers=auth) as ws:
        seen: list[str] = []

        async def event(kind: str) -> dict[str, Any]:
            while True:
                message = await ws.receive_json(timeout=60)
                seen.append(message.get("type") or message.get("kind"))
                if message.get("type") == kind:
                    return message
                assert message.get("type") != "RunFailed", message

        assert (await ws.receive_json(timeout=30))["kind"] == "hello"
        spec = {"name": "Through nginx", "engine": "mirror", "sources": [str(src)],
                "destination": str(dest)}
        async with session.post(stack.url("/api/jobs"), json=spec, headers=writes) as resp:
            assert resp.status == 201, await resp.text()
            job_id = (await resp.json())["id"]
        assert (await event("JobCreated"))["data"]["job_id"] == job_id
        async with session.post(stack.url(f"/api/jobs/{job_id}/start"), json={},
                                headers=writes) as resp:
            assert resp.status == 202, await resp.text()
            run_id = (await resp.json())["run_id"]
        for kind in ("RunQueued", "RunStarted", "RunSucceeded"):
            assert (await event(kind))["data"]["run_id"] == run_id, seen
        async with session.get(stack.url(f"/api/runs/{run_id}"), headers=auth) as resp:
            assert (await resp.json())["state"] == "succeeded"


async def test_origin_checks_see_the_public_https_origin(stack: Stack) -> None:
    auth = {"Authorization": f"Bearer {stack.token}"}
    spec = {"name": "Refused", "engine": "mirror", "sources": ["/nonexistent"],
            "destination": "/nonexistent-dest"}
    async with client(stack) as session:
        # Another site, and this site over plain http (the scheme comes from
        # X-Forwarded-Proto, so a proxy that dropped it would fail the first check).
        for origin in ("https://evil.example", f"http://{NAME}:{stack.https_port}"):
            async with session.post(stack.url("/api/jobs"), json=spec,
                                    headers={**auth, "Origin": origin}) as resp:
                assert resp.status == 403, origin
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(stack.url("/ws"), origin=origin, headers=auth)
            assert refused.value.status == 403
        async with session.get(stack.url("/api/jobs"), headers=auth) as resp:
            assert "Refused" not in await resp.text()


async def test_unknown_host_through_nginx_gets_421(stack: Stack) -> None:
    async with client(stack) as session:
        for host in ("evil.example", f"rebound.example:{stack.https_port}"):
            async with session.get(stack.url("/healthz"), headers={"Host": host}) as resp:
                assert resp.status == 421, host


async def test_plain_http_redirects_to_https(stack: Stack) -> None:
    async with client(stack) as session, session.get(
            f"http://{NAME}:{stack.http_port}/jobs?x=1", allow_redirects=False) as resp:
        assert resp.status == 301
        assert resp.headers["Location"] == f"https://{NAME}/jobs?x=1"


def test_reload_rereads_the_log_level_and_keeps_serving(stack: Stack) -> None:
    log = stack.work / "server.log"
    stack.config_file.write_text(substitute(stack.config_file.read_text(), [
        (r'^log_level = "INFO"$', 'log_level = "DEBUG"')]))
    stack.server.send_signal(signal.SIGHUP)  # what ExecReload= sends
    deadline = time.monotonic() + 20
    while "log level is now DEBUG" not in log.read_text():
        assert stack.server.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    assert answers(f"http://127.0.0.1:{stack.app_port}/healthz")

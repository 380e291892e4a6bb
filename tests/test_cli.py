"""The audit / replay tool and the server, run as real processes."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from events.store import EventStore
from events.types import JobDeleted, RunQueued, SettingsChanged
from storage.projector import Projector
from tests.cli_helpers import REPO, cli, running_server
from tests.projection_helpers import history, projection_files


async def fill(data: Path, jobs: int = 3, runs: int = 2) -> int:
    """Write a realistic log (and its projections) into a data dir; return the last seq."""
    store = await EventStore.open(data / "events.db")
    projector = Projector(store, data)
    await projector.start()
    try:
        for j in range(jobs):
            await history(store, f"job-{j}", runs=runs)
        await store.append("settings", 0, [SettingsChanged(changes={"theme": "dark"})])
        await store.append("job-0", None, [JobDeleted(job_id="job-0")])
        return store.last_seq
    finally:
        await projector.stop()
        await store.close()


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A data dir holding a log of 29 events: three jobs with two runs each, and more."""
    path = tmp_path / "data"
    asyncio.run(fill(path))
    return path


def tamper(db: Path, sql: str) -> None:
    """Change the log the way an attacker with file access would: triggers dropped first."""
    conn = sqlite3.connect(db)
    conn.execute("DROP TRIGGER events_refuse_update")
    conn.execute("DROP TRIGGER events_refuse_delete")
    conn.execute(sql)
    conn.commit()
    conn.close()


def test_verify_passes_on_an_intact_log(data: Path) -> None:
    result = cli("events", "verify", "--data", str(data))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK: 29 events, hash chain intact")


def test_verify_names_the_first_altered_row(data: Path) -> None:
    tamper(data / "events.db",
           "UPDATE events SET payload = replace(payload, 'disk full', 'all fine') WHERE seq = 5")
    result = cli("events", "verify", "--data", str(data))
    assert result.returncode == 1
    assert "DAMAGED at seq 5" in result.stdout and "4 events before it" in result.stdout


def test_verify_names_a_deleted_row(data: Path) -> None:
    tamper(data / "events.db", "DELETE FROM events WHERE seq = 9")
    result = cli("events", "verify", "--data", str(data))
    assert result.returncode == 1
    assert "DAMAGED at seq 9: seq 9 is missing" in result.stdout


def test_verify_catches_a_rewritten_time(data: Path) -> None:
    tamper(data / "events.db", "UPDATE events SET time = '2020-01-01T00:00:00Z' WHERE seq = 14")
    result = cli("events", "verify", "--data", str(data))
    assert result.returncode == 1 and "seq 14" in result.stdout


def test_export_writes_every_event_as_json_lines(data: Path) -> None:
    result = cli("events", "export", "--data", str(data))
    assert result.returncode == 0
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["seq"] for e in lines] == list(range(1, 30))
    assert lines[0]["type"] == "JobCreated" and lines[0]["data"]["job_id"] == "job-0"
    assert lines[-1]["type"] == "JobDeleted" and lines[-1]["stream"] == "job-0"


def test_replay_rebuilds_byte_identical_projections(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "rebuilt"
    result = cli("events", "replay", "--out", str(out), "--data", str(data))
    assert result.returncode == 0, result.stderr
    assert "replayed 29 events: 2 jobs" in result.stdout
    assert projection_files(out) == projection_files(data)
    assert set(projection_files(out)) == {"jobs/job-1.yaml", "jobs/job-2.yaml", "settings.yaml"}


def test_replay_refuses_a_directory_with_files(data: Path) -> None:
    before = projection_files(data)
    result = cli("events", "replay", "--out", str(data), "--data", str(data))
    assert result.returncode == 2 and "not an empty directory" in result.stderr
    assert projection_files(data) == before


def test_tail_prints_after_since_and_defaults_to_the_last_ten(data: Path) -> None:
    since = cli("events", "tail", "--since", "26", "--data", str(data))
    assert [json.loads(x)["seq"] for x in since.stdout.splitlines()] == [27, 28, 29]
    last = cli("events", "tail", "--data", str(data))
    assert [json.loads(x)["seq"] for x in last.stdout.splitlines()] == list(range(20, 30))


def test_tail_follow_prints_new_events_as_they_come(data: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "server", "events", "tail", "--since", "28",
                             "--follow", "--data", str(data)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline())["seq"] == 29

        async def more() -> None:
            store = await EventStore.open(data / "events.db")
            await store.append("job-1", None, [RunQueued(job_id="job-1",
                                                         run_id="r-0000000000aa")])
            await store.close()

        asyncio.run(more())
        line = json.loads(proc.stdout.readline())
        assert (line["seq"], line["type"]) == (30, "RunQueued")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def test_stats_counts_by_type(data: Path) -> None:
    result = cli("events", "stats", "--data", str(data))
    body = json.loads(result.stdout)
    assert body["events"] == 29 and body["last_seq"] == 29
    assert body["by_type"]["JobCreated"]["count"] == 3
    assert body["by_type"]["RunQueued"]["count"] == 6
    assert body["first_time"] <= body["last_time"]


def test_tool_explains_a_missing_log(tmp_path: Path) -> None:
    result = cli("events", "verify", "--data", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and "no event log at" in result.stderr
    assert not (tmp_path / "nowhere").exists()


def test_tool_works_read_only_while_the_server_runs(data: Path) -> None:
    with running_server(data):
        assert cli("events", "verify", "--data", str(data)).returncode == 0
        export = cli("events", "export", "--data", str(data))
        assert len(export.stdout.splitlines()) == 29
        stats = json.loads(cli("events", "stats", "--data", str(data)).stdout)
        assert stats["events"] == 29


def test_second_server_on_the_same_data_is_refused(data: Path) -> None:
    with running_server(data):
        result = cli("serve", "--port", "1", "--data", str(data))
        assert result.returncode == 2
        assert "already serving" in result.stderr


def test_sigterm_closes_websockets_with_1001_and_exits_cleanly(data: Path) -> None:
    async def scenario(port: int, proc: subprocess.Popen[str]) -> int | None:
        async with aiohttp.ClientSession() as session, session.ws_connect(
                f"http://127.0.0.1:{port}/ws?since=27") as ws:
            assert (await ws.receive_json())["kind"] == "hello"
            assert (await ws.receive_json())["seq"] == 28
            assert (await ws.receive_json())["seq"] == 29
            proc.send_signal(signal.SIGTERM)
            msg = await ws.receive(timeout=15)
            while msg.type == aiohttp.WSMsgType.TEXT:
                # The app log's own live lines ("stopping: ...") may come first.
                assert json.loads(msg.data)["kind"] == "log", msg.data
                msg = await ws.receive(timeout=15)
            assert msg.type == aiohttp.WSMsgType.CLOSE
            return ws.close_code

    with running_server(data) as (proc, port):
        assert asyncio.run(scenario(port, proc)) == 1001
        assert proc.wait(timeout=20) == 0
    assert "event log closed at seq 29" in (data / "logs" / "app.log").read_text()
    # After a clean stop the log is still intact and the projections are current.
    assert cli("events", "verify", "--data", str(data)).returncode == 0


def test_env_var_chooses_the_data_dir(data: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "server", "events", "stats"], cwd=REPO,
                            text=True, capture_output=True, timeout=60, check=False,
                            env={"BACKUP_MANAGER_DATA": str(data), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0 and json.loads(result.stdout)["events"] == 29


def test_serve_explains_an_unusable_data_directory(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    result = cli("serve", "--port", "1", "--data", str(not_a_dir))
    assert result.returncode == 2
    assert f"cannot use {not_a_dir} as the data directory" in result.stderr


def wait_for_line(path: Path, text: str, timeout: float = 10) -> str:
    """The file's text once `text` is in it (the app log is written by a thread)."""
    deadline = time.monotonic() + timeout
    while True:
        body = path.read_text() if path.exists() else ""
        if text in body:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} never appeared in {path}:\n{body[-2000:]}")
        time.sleep(0.05)


def get(port: int, path: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return int(resp.status)


def test_sighup_reloads_the_log_level_from_the_config_file(data: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('log_level = "WARNING"\n')
    app_log = data / "logs" / "app.log"
    with running_server(data, args=["--config", str(config)]) as (proc, port):
        # The config file's level wins over the Settings page's default (INFO) at start,
        # so request lines (INFO) are not logged.
        assert get(port, "/healthz?quiet") == 200
        config.write_text('log_level = "INFO"  # turned up for a look\n')
        proc.send_signal(signal.SIGHUP)
        wait_for_line(app_log, "log level is now INFO (SIGHUP: from")
        assert get(port, "/healthz?loud") == 200
        body = wait_for_line(app_log, "GET /healthz?loud")
        assert "/healthz?quiet" not in body
        # A broken file changes nothing and says why; the server keeps serving.
        config.write_text('log_level = "WARNING\n')
        proc.send_signal(signal.SIGHUP)
        wait_for_line(app_log, "is not valid TOML")
        assert get(port, "/healthz?still-loud") == 200
        wait_for_line(app_log, "GET /healthz?still-loud")
        assert proc.poll() is None
    assert proc.returncode == 0


def test_config_file_gives_the_data_dir_relative_to_itself(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "config.toml").write_text('data = "state"\nport = 8099\n')
    result = cli("token", "--config", str(etc / "config.toml"))
    assert result.returncode == 0, result.stderr
    assert (etc / "state" / "access-token").read_text().strip() == result.stdout.strip()


@pytest.mark.parametrize(("text", "message"), [
    ('log_levle = "DEBUG"\n', "unknown setting log_levle"),
    ('port = "8080"\n', "port must be a int"),
    ('port = 70000\n', "port 70000 is out of range"),
    ('log_level = "LOUD"\n', "log_level must be one of DEBUG, INFO, WARNING, ERROR"),
    ('allowed_hosts = "a.lan"\n', "allowed_hosts must be a list of host names"),
    ('data = \n', "is not valid TOML"),
    ('data = ""\n', "data is empty"),
    ('host = " "\n', "host is empty"),
    ('allowed_hosts = ["https://backups.lan"]\n', "'https://backups.lan', which is not a host"),
    ('allowed_hosts = ["bad host/x"]\n', "'bad host/x', which is not a host name"),
])
def test_a_bad_config_file_is_refused_before_anything_is_made(tmp_path: Path, text: str,
                                                               message: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'data = "{tmp_path / "made"}"\n' if "data" not in text else "")
    config.write_text(config.read_text() + text)
    result = cli("serve", "--config", str(config))
    assert result.returncode == 2
    assert message in result.stderr and str(config) in result.stderr
    assert not (tmp_path / "made").exists()


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    result = cli("serve", "--config", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert f"cannot read {tmp_path / 'nope.toml'}: No such file" in result.stderr


def test_self_backup_while_serving_is_a_data_dir_a_server_starts_on(data: Path,
                                                                   tmp_path: Path) -> None:
    token = cli("token", "--data", str(data)).stdout.strip()
    copy = tmp_path / "copy"
    with running_server(data) as (_, port):
        result = cli("events", "backup", "--out", str(copy), "--data", str(data))
        assert result.returncode == 0, result.stderr
        assert projection_files(copy) == projection_files(data)
        # Copies taken while events are being appended are each whole and intact.
        stop = threading.Event()

        def append_all_the_time() -> None:
            while not stop.is_set():
                put_settings(port, {"theme": "light"}, token)
                put_settings(port, {"theme": "dark"}, token)

        writer = threading.Thread(target=append_all_the_time)
        writer.start()
        try:
            for n in range(3):
                busy = cli("events", "backup", "--out", str(tmp_path / f"busy-{n}"),
                           "--data", str(data))
                assert busy.returncode == 0, busy.stderr
                check = cli("events", "verify", "--data", str(tmp_path / f"busy-{n}"))
                assert check.returncode == 0 and check.stdout.startswith("OK: "), check.stdout
        finally:
            stop.set()
            writer.join()
        assert int(busy.stdout.split()[1]) > 29  # events were appended meanwhile
    assert result.stdout.startswith("OK: 29 events") and ", 2 jobs," in result.stdout
    # A data directory as the server leaves it, with no -wal beside the copied log.
    assert sorted(p.name for p in copy.iterdir()) == [
        ".projection.json", "access-token", "events.db", "events.db-acked", "jobs",
        "secret.key", "settings.yaml"]
    assert not list(tmp_path.glob(".copy.partial-*"))
    # Private whatever the umask: it names every source, destination and webhook.
    assert {p.stat().st_mode & 0o777 for p in [copy, *copy.rglob("*")] if p.is_dir()} == {
        0o700}
    assert {p.stat().st_mode & 0o777 for p in copy.rglob("*") if p.is_file()} == {0o600}
    assert cli("events", "verify", "--data", str(copy)).stdout.startswith("OK: 29 events")
    with running_server(copy) as (_, port):
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/jobs",
                                     headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            restored = json.load(resp)
    assert len(restored["jobs"]) == 2


def test_self_backup_refuses_a_used_directory_and_a_damaged_log(data: Path,
                                                                tmp_path: Path) -> None:
    used = tmp_path / "used"
    used.mkdir()
    (used / "old.txt").write_text("keep me")
    result = cli("events", "backup", "--out", str(used), "--data", str(data))
    assert result.returncode == 2 and "is not an empty directory" in result.stderr
    assert [p.name for p in used.iterdir()] == ["old.txt"]
    tamper(data / "events.db", "UPDATE events SET payload = '{}' WHERE seq = 7")
    result = cli("events", "backup", "--out", str(tmp_path / "copy"), "--data", str(data))
    assert result.returncode == 1 and "damaged at seq 7" in result.stderr
    assert not (tmp_path / "copy").exists() and not list(tmp_path.glob(".copy.partial-*"))


def test_a_log_from_a_newer_release_is_refused_not_misread(data: Path) -> None:
    conn = sqlite3.connect(data / "events.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1  # written by this release
    conn.execute("PRAGMA user_version=2")
    conn.close()
    before = (data / "events.db").read_bytes()
    for args in (["serve", "--port", "1"], ["events", "verify"], ["events", "export"]):
        result = cli(*args, "--data", str(data))
        assert result.returncode == 2, args
        assert "written by a newer backup-manager (log format 2" in result.stderr
    assert (data / "events.db").read_bytes() == before


def test_a_new_data_directory_is_private(tmp_path: Path) -> None:
    with running_server(tmp_path / "new-data"):
        pass
    assert (tmp_path / "new-data").stat().st_mode & 0o777 == 0o700
    assert cli("token", "--data", str(tmp_path / "other")).returncode == 0
    assert (tmp_path / "other").stat().st_mode & 0o777 == 0o700


def put_settings(port: int, changes: dict[str, object], token: str = "") -> None:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/settings", method="PUT",
                                 data=json.dumps(changes).encode(), headers=headers)
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200


def test_the_start_up_level_holds_until_the_level_itself_is_changed(data: Path) -> None:
    app_log = data / "logs" / "app.log"
    with running_server(data, args=["--log-level", "WARNING"]) as (_, port):
        put_settings(port, {"theme": "light"})  # another setting: the level stays
        put_settings(port, {"log_level": "DEBUG"})
        body = wait_for_line(app_log, "log level is now DEBUG (changed in the settings)")
    assert "log level is now INFO" not in body


def test_a_port_in_use_exits_3_so_a_service_manager_tries_again(data: Path,
                                                                 tmp_path: Path) -> None:
    with running_server(data) as (_, port):
        result = cli("serve", "--port", str(port), "--data", str(tmp_path / "other"))
    assert result.returncode == 3
    assert f"cannot serve on 127.0.0.1:{port}: " in result.stderr

"""Issue 12, items 8 and 2 (store side): the event log is checked, never trusted blindly.

- A byte flipped in a stored event (through SQL with the triggers bypassed, or in the
  file's bytes): the next start refuses, naming the seq and what to do; a large log
  checked in the background keeps serving but refuses every command (503) and shows a
  banner naming the seq on every page; a row altered while the server runs is refused
  when it is read back.
- A structurally damaged events.db (garbage, truncated) and an unreadable
  events.db-acked: a clear message naming the file from `serve` and `events verify`.
- A full data directory (a real small tmpfs): appends fail whole, /healthz says why
  (503, degraded) until space is back, then the next append succeeds and /healthz is ok.

Real server processes on loopback, real SQLite, real tmpfs; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from events import sql
from events.audit import follow, open_readonly, verify
from events.store import ChainBroken, EventStore, LogUnreadable, MarkUnreadable, WriteFailed
from events.types import SettingsChanged
from server.health import chain_state, health_status, log_problems
from tests.cli_helpers import cli, free_port, running_server, spawn_server, stop_server
from tests.conftest import created
from tests.fs_helpers import fill_up, small_tmpfs

BACKGROUND = {**os.environ, "BACKUP_MANAGER_CHAIN_FOREGROUND_MAX": "0"}


def call(port: int, method: str, path: str, body: Any = None,
         accept: str = "application/json") -> tuple[int, Any]:
    """One request to a server process: (status, parsed JSON or text)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json",
                                          "Accept": accept})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    text = raw.decode()
    return status, json.loads(text) if text.startswith(("{", "[")) else text


def make_log(data: Path, themes: int = 6) -> None:
    """A data directory written by a real server: settings changed `themes` times."""
    data.mkdir(parents=True, exist_ok=True)
    with running_server(data) as (_, port):
        for i in range(themes):
            status, body = call(port, "PUT", "/api/settings",
                                {"theme": ("dark", "light")[i % 2]})
            assert status == 200, body


def seq_with(db: Path, text: str) -> int:
    """The first seq whose payload holds `text`."""
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT min(seq) FROM events WHERE payload LIKE ?",
                                (f"%{text}%",)).fetchone()[0])
    finally:
        conn.close()


def tamper_sql(db: Path, seq: int) -> None:
    """Change one character of a stored payload the way someone with file access would:
    the append-only triggers dropped, the row updated, the triggers put back."""
    conn = sqlite3.connect(db)
    try:
        conn.execute("DROP TRIGGER events_refuse_update")
        conn.execute("UPDATE events SET payload = replace(payload, 'dark', 'dork') "
                     "WHERE seq = ?", (seq,))
        conn.executescript(sql.SCHEMA)
        conn.commit()
    finally:
        conn.close()


def tamper_bytes(db: Path, needle: bytes) -> None:
    """Flip one bit of the only copy of `needle` in the file's bytes (no SQL at all)."""
    raw = bytearray(db.read_bytes())
    assert raw.count(needle) == 1, raw.count(needle)
    raw[raw.index(needle) + len(needle) - 2] ^= 0x01
    db.write_bytes(bytes(raw))


def start_refused(data: Path, log: Path, within: float = 30,
                  env: dict[str, str] | None = None) -> tuple[int | None, str]:
    """Start `serve` on a data dir it must refuse: (exit code, its output)."""
    port = free_port()
    with open(log, "w") as out:
        proc = spawn_server(data, port, out, env=env)
        try:
            proc.wait(timeout=within)
        except subprocess.TimeoutExpired:
            pass
        finally:
            stop_server(proc)
    return proc.returncode, log.read_text(errors="replace")


def wait_health(port: int, proc: subprocess.Popen[str], until: str,
                within: float = 30) -> dict[str, Any]:
    """Poll /healthz (any status) until its status is `until`; return the last body."""
    deadline = time.monotonic() + within
    body: Any = None
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            _, body = call(port, "GET", "/healthz")
        except OSError:
            body = None
        if isinstance(body, dict) and body["status"] == until:
            return body
        time.sleep(0.1)
    raise AssertionError(f"/healthz never said {until!r}; last: {body}")


# --- a flipped byte, found at start ---------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["sql", "bytes"])
def test_a_flipped_byte_refuses_the_start_naming_the_seq(tmp_path: Path, how: str) -> None:
    data = tmp_path / "data"
    make_log(data, themes=1)  # one event says "dark"
    db = data / "events.db"
    bad = seq_with(db, '"theme":"dark"')
    if how == "sql":
        tamper_sql(db, bad)
    else:
        tamper_bytes(db, b'"theme":"dark"')
    for attempt in (1, 2):  # still refused the second time: nothing was "repaired"
        code, output = start_refused(data, tmp_path / f"serve-{attempt}.log")
        assert code == 2, output[-3000:]
        assert f"damaged at seq {bad}" in output, output[-3000:]
        assert "events verify" in output and "Traceback" not in output, output[-3000:]
    result = cli("events", "verify", "--data", str(data))
    assert result.returncode == 1 and f"DAMAGED at seq {bad}" in result.stdout, result


# --- a large log, checked in the background --------------------------------------------


@pytest.mark.timeout(120)
def test_a_background_check_that_fails_stops_commands_and_shows_a_banner(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_log(data)
    bad = seq_with(data / "events.db", '"theme":"dark"')
    tamper_sql(data / "events.db", bad)
    port = free_port()
    with open(tmp_path / "serve.log", "w") as out:
        proc = spawn_server(data, port, out, env=BACKGROUND)
        try:
            health = wait_health(port, proc, "degraded")
            assert health["chain_check"]["state"] == "failed", health
            assert health["chain_check"]["bad_seq"] == bad, health
            assert any(f"damaged at seq {bad}" in p for p in health["problems"]), health
            assert call(port, "GET", "/healthz")[0] == 503
            # Commands are refused with words, and nothing is appended.
            status, body = call(port, "PUT", "/api/settings", {"theme": "dark"})
            assert status == 503 and f"damaged at seq {bad}" in body["error"], (status, body)
            assert call(port, "GET", "/healthz")[1]["last_seq"] == health["last_seq"]
            # Every page shows the banner naming the seq.
            for page in ("/dashboard", "/jobs", "/settings"):
                status, html = call(port, "GET", page, accept="text/html")
                assert status == 200 and f"damaged at seq {bad}" in html, (page, status)
                assert 'id="log-damaged"' in html
        finally:
            stop_server(proc)


@pytest.mark.timeout(120)
def test_an_intact_large_log_checked_in_the_background_ends_ok(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_log(data)
    port = free_port()
    with open(tmp_path / "serve.log", "w") as out:
        proc = spawn_server(data, port, out, env=BACKGROUND)
        try:
            health = wait_health(port, proc, "ok")
            assert health["chain_check"]["state"] == "passed", health
            assert health["chain_check"]["checked"] == health["last_seq"] > 0, health
            assert call(port, "PUT", "/api/settings", {"theme": "dark"})[0] == 200
        finally:
            stop_server(proc)


# --- altered while the server runs ------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_row_altered_while_serving_is_refused_when_read(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with running_server(data) as (_, port):
        for theme in ("dark", "light"):
            assert call(port, "PUT", "/api/settings", {"theme": theme})[0] == 200
        status, body = call(port, "GET", "/api/events?since=0")
        assert status == 200 and len(body["events"]) == body["last_seq"]
        bad = seq_with(data / "events.db", '"theme":"dark"')
        tamper_sql(data / "events.db", bad)

        status, body = call(port, "GET", "/api/events?since=0")
        assert status == 503 and f"damaged at seq {bad}" in body["error"], (status, body)
        assert "dork" not in json.dumps(body)  # the altered row is never served
        status, health = call(port, "GET", "/healthz")
        assert status == 503 and health["chain_check"]["bad_seq"] == bad, health
        status, body = call(port, "PUT", "/api/settings", {"theme": "dark"})
        assert status == 503 and f"seq {bad}" in body["error"], body
        status, html = call(port, "GET", "/dashboard", accept="text/html")
        assert f"damaged at seq {bad}" in html
        code, messages = asyncio.run(ws_replay(port))
        assert code == 1011, (code, messages)  # closed with words, not left hanging
        assert "dork" not in json.dumps(messages)


async def ws_replay(port: int) -> tuple[int | None, list[Any]]:
    """Open /ws?since=0 and read until it closes: the close code and what came."""
    messages: list[Any] = []
    async with aiohttp.ClientSession() as session, \
            session.ws_connect(f"http://127.0.0.1:{port}/ws?since=0") as ws:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                messages.append(json.loads(msg.data))
        return ws.close_code, messages


async def test_reads_check_each_row_against_its_predecessor(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    store = await EventStore.open(db)
    try:
        for i in range(5):
            await store.append(f"job-{i}", 0, [created(f"job-{i}")])
        assert len(await store.read(since=2)) == 3
        assert [e.seq for e in await store.read(since=-5)] == [1, 2, 3, 4, 5]
        assert await store.read(since=99) == [] and await store.read(since=5) == []
        assert [e.seq for e in await store.read(since=1, until=3)] == [2, 3]
        tamper_sql_any(db, 4)
        assert [e.seq for e in await store.read(since=0, limit=3)] == [1, 2, 3]
        with pytest.raises(ChainBroken, match="damaged at seq 4"):
            await store.read(since=3)  # the bad row first in its page
        with pytest.raises(ChainBroken, match="damaged at seq 4"):
            await store.read_stream("job-3")  # a stream read alone is checked too
        with pytest.raises(ChainBroken, match="seq 4"):
            await store.append("job-9", 0, [created("job-9")])
        assert store.last_seq == 5
    finally:
        await store.close()
    with pytest.raises(ChainBroken, match="damaged at seq 4"):
        await EventStore.open(db)


def tamper_sql_any(db: Path, seq: int) -> None:
    """Rename the job in one stored JobCreated, triggers bypassed."""
    conn = sqlite3.connect(db)
    try:
        conn.execute("DROP TRIGGER events_refuse_update")
        conn.execute("UPDATE events SET payload = replace(payload, 'Docs', 'Dogs') "
                     "WHERE seq = ?", (seq,))
        conn.executescript(sql.SCHEMA)
        conn.commit()
    finally:
        conn.close()


# --- a damaged file --------------------------------------------------------------------


def garbage(db: Path) -> None:
    """Bytes that are not a SQLite database at all."""
    db.write_bytes(b"this is not a database\n" + bytes(range(256)) * 40)


def truncated(db: Path) -> None:
    """A real log cut to a third of its pages (a copy that stopped half-way)."""
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    size = db.stat().st_size
    assert size >= 16 * 4096, size
    os.truncate(db, size // 3 // 4096 * 4096)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("damage", [garbage, truncated], ids=["garbage", "truncated"])
def test_a_damaged_events_db_is_named_by_serve_and_verify(tmp_path: Path, damage: Any) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = data / "events.db"

    async def fill() -> None:
        store = await EventStore.open(db)
        try:
            for i in range(200):
                await store.append("settings", None, [SettingsChanged(
                    changes={"note": f"{i:04d}" + "x" * 900})])
        finally:
            await store.close()

    asyncio.run(fill())
    damage(db)
    code, output = start_refused(data, tmp_path / "serve.log")
    assert code == 2, output[-3000:]
    assert f"the event log {db} cannot be read" in output, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    result = cli("events", "verify", "--data", str(data))
    said = result.stdout + result.stderr
    assert result.returncode == 1 and f"the event log {db} cannot be read" in said, said
    assert "Traceback" not in said, said


# --- an unreadable events.db-acked ---------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["directory", "garbage"])
def test_an_unreadable_acked_mark_is_refused_naming_the_file(tmp_path: Path, kind: str) -> None:
    data = tmp_path / "data"
    make_log(data, themes=2)
    mark = data / "events.db-acked"
    assert mark.is_file()
    mark.unlink()
    if kind == "directory":
        mark.mkdir()  # chmod 000 would not stop root; a directory does
    else:
        mark.write_bytes(b"\x00\x17garbage that is not a seq\n")
    code, output = start_refused(data, tmp_path / "serve.log")
    assert code == 2, output[-3000:]
    assert f"{mark} (the mark of the last acknowledged event) cannot be read" in output, \
        output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    result = cli("events", "verify", "--data", str(data))
    assert result.returncode == 1 and str(mark) in result.stdout, result


async def test_an_empty_acked_mark_is_a_mark_not_written_yet(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    store = await EventStore.open(db)
    await store.append("job-1", 0, [created("job-1")])
    await store.close()
    (tmp_path / "events.db-acked").write_bytes(b"")  # a crash before the first write
    store = await EventStore.open(db)
    await store.close()
    (tmp_path / "events.db-acked").write_text("17 short\n")
    with pytest.raises(MarkUnreadable, match=r"events\.db-acked"):
        await EventStore.open(db)
    with pytest.raises(LogUnreadable):
        (tmp_path / "other.db").write_bytes(b"x" * 5000)
        await EventStore.open(tmp_path / "other.db")


# --- a full data directory ------------------------------------------------------------


async def test_a_failed_group_commit_on_a_full_disk_leaves_nothing_and_recovers(
        tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "mnt", "2m") as mnt:
        store = await EventStore.open(mnt / "events.db")
        try:
            for i in range(3):
                await store.append(f"job-{i}", 0, [created(f"job-{i}")])
            head = store.last_seq
            filler = fill_up(mnt)
            # Twenty appenders at once: one group commit, failing as a whole.
            results = await asyncio.gather(*(
                store.append(f"big-{i}", 0, [SettingsChanged(changes={"n": "y" * 4000})])
                for i in range(20)), return_exceptions=True)
            assert all(isinstance(r, WriteFailed) for r in results), results
            assert "disk is full" in str(results[0])
            assert store.write_error is not None and "disk is full" in store.write_error
            assert store.write_error_since is not None
            assert store.last_seq == head
            filler.unlink()
            stored = await store.append("after", 0, [created("after")])
            assert stored[0].seq == head + 1  # no seq was burnt by the failed batch
            assert store.write_error is None and store.write_error_since is None
        finally:
            await store.close()
        conn = open_readonly(mnt / "events.db")
        try:
            result = verify(conn)
        finally:
            conn.close()
        assert result.ok and result.checked == head + 1, result
        mark = (mnt / "events.db-acked").read_text().split()
        assert int(mark[0]) == head + 1 and mark[1] == result.head_hash


@pytest.mark.timeout(120)
def test_healthz_says_what_is_wrong_while_the_data_directory_is_full(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "mnt", "8m") as mnt:
        data = mnt / "data"
        data.mkdir()
        port = free_port()
        # The server's own output goes outside the filesystem that is filled.
        with open(tmp_path / "serve.log", "w") as out:
            proc = spawn_server(data, port, out)
            try:
                wait_health(port, proc, "ok")
                assert call(port, "PUT", "/api/settings", {"theme": "dark"})[0] == 200
                filler = fill_up(mnt)
                refused: Any = None
                for i in range(200):  # until what is left of the space is used up
                    status, body = call(port, "PUT", "/api/settings",
                                        {"theme": ("light", "dark")[i % 2]})
                    if status != 200:
                        refused = (status, body)
                        break
                assert refused is not None, "the full disk never refused an append"
                assert refused[0] == 503 and "disk is full" in refused[1]["error"], refused
                status, health = call(port, "GET", "/healthz")
                assert status == 503 and health["status"] == "degraded", health
                assert "disk is full" in health["write_error"], health
                assert health["write_error_since"], health
                assert any("disk is full" in p for p in health["problems"]), health
                status, html = call(port, "GET", "/dashboard", accept="text/html")
                assert 'id="log-unwritable"' in html and "disk is full" in html

                filler.unlink()
                status, body = call(port, "PUT", "/api/settings", {"theme": "light"})
                assert status == 200, body
                health = wait_health(port, proc, "ok")
                assert health["write_error"] is None and health["problems"] == [], health
            finally:
                stop_server(proc)


def test_events_tail_checks_each_row_it_prints(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = data / "events.db"

    async def fill() -> None:
        store = await EventStore.open(db)
        try:
            for i in range(5):
                await store.append(f"job-{i}", 0, [created(f"job-{i}")])
        finally:
            await store.close()

    asyncio.run(fill())
    result = cli("events", "tail", "--since", "0", "--data", str(data))
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 5, result
    tamper_sql_any(db, 3)
    result = cli("events", "tail", "--since", "0", "--data", str(data))
    assert [json.loads(line)["seq"] for line in result.stdout.splitlines()] == [1, 2]
    assert result.returncode == 1 and "damaged at seq 3" in result.stderr, result
    assert "Traceback" not in result.stderr and "Dogs" not in result.stdout
    followed = []
    with pytest.raises(ChainBroken, match="damaged at seq 3"):
        for ev in follow(db, 1, poll=0.05, stop_after=5):
            followed.append(ev.seq)
    assert followed == [2]


async def test_healthz_says_checking_until_a_background_check_has_passed(
        tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    store = await EventStore.open(db)
    for i in range(50):
        await store.append(f"job-{i}", 0, [created(f"job-{i}")])
    await store.close()
    store = await EventStore.open(db, foreground_check_max=10)
    try:
        # Open returned before the check ran: the log is served, but not vouched for.
        assert store.chain.state in ("pending", "running")
        assert health_status(store, log_problems(store)) == "checking"
        assert chain_state(store)["of"] == 50
        await store.append("job-x", 0, [created("job-x")])  # commands work meanwhile
        await store.wait_chain_check()
        assert store.chain.state == "passed" and store.chain.checked == 50
        assert health_status(store, log_problems(store)) == "ok"
    finally:
        await store.close()

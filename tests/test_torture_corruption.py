"""Torture tests, corrupted inputs (issue 6): each damage is detected and reported.

- A YAML projection (a job's file, settings.yaml, the position file) edited into garbage:
  a restarted server rebuilds it byte-identical to `events replay`, with a WARNING in
  logs/app.log naming the file.
- A truncated events.db-wal after a SIGKILL (acknowledged events cut off): the server
  refuses to start and says which events are missing, instead of serving a shorter log;
  `events verify` reports it too (exit 1). The log never silently loses an
  acknowledged event.
- A snapshot with a flipped byte, in a file and in its manifest: verify reports
  ok=false naming the file; a damaged manifest is a clear problem, never a 500.

Real server processes on loopback with their own data directory; every wait is bounded
and every server is stopped. The figures are printed at the end of the module.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from server.keys import STORE
from tests.api_helpers import wait_run
from tests.cli_helpers import (
    cli,
    free_port,
    running_server,
    spawn_server,
    stop_server,
    wait_served,
)
from tests.engine_helpers import write
from tests.projection_helpers import projection_files

Client = TestClient[web.Request, web.Application]
FIGURES: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def report_figures(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print how many damages were tried and how many requests served (issue 6)."""
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        reporter.write_line("")
        reporter.write_line(
            f"torture corruption: {FIGURES['damages']} damages tried, "
            f"{FIGURES['requests']} requests served, {FIGURES['starts']} server starts "
            f"({FIGURES['refused starts']} refused as they must be)")


def api(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One JSON API call to a server process."""
    FIGURES["requests"] += 1
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def create_jobs(port: int, count: int, root: Path, prefix: str = "Job") -> list[str]:
    """Create jobs (disabled, never run) one request at a time; each 201 is an ack.
    Their sources are real folders under `root` (a job on a missing source is refused)."""
    ids = []
    for i in range(count):
        (root / f"s{i}").mkdir(parents=True, exist_ok=True)
        status, job = api(port, "POST", "/api/jobs", {
            "name": f"{prefix} {i} ünïcødé", "engine": "mirror", "sources": [str(root / f"s{i}")],
            "destination": str(root / f"d{i}"), "enabled": False, "schedule": "0 3 * * *",
            "exclude": ["*.tmp"], "retention": {"keep_last": i + 1}})
        assert status == 201, job
        ids.append(job["id"])
    return ids


def replayed(data: Path, out: Path) -> dict[str, bytes]:
    """What `events replay` (the real command) rebuilds from the log."""
    result = cli("events", "replay", "--data", str(data), "--out", str(out))
    assert result.returncode == 0, result.stderr
    return projection_files(out)


def app_log(data: Path) -> str:
    """The application log of a data directory (rotated files included)."""
    return "".join(p.read_text(errors="replace")
                   for p in sorted((data / "logs").glob("app.log*")))


@contextlib.contextmanager
def counted_server(data: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """running_server on `data` (made if needed), counted in the printed figures."""
    data.mkdir(parents=True, exist_ok=True)
    FIGURES["starts"] += 1
    with running_server(data) as served:
        yield served


# --- YAML projections edited into garbage ------------------------------------------------

DAMAGES = {
    "binary garbage": lambda text: b"\x00\xff\xfe: [unclosed\n  - {" + os.urandom(64),
    "not a mapping": lambda text: b"- just\n- a list\n",
    "edited by hand": lambda text: text.replace(b"enabled: false", b"enabled: true")
    + b"hacked: true\n",
    "emptied": lambda text: b"",
    "truncated": lambda text: text[: len(text) // 2],
    "one byte flipped": lambda text: text[:40] + bytes([text[40] ^ 0x01]) + text[41:],
}


@pytest.mark.timeout(120)
def test_yaml_garbage_is_rebuilt_byte_identical_with_a_warning(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with counted_server(data) as (_, port):
        job_ids = create_jobs(port, len(DAMAGES) + 1, tmp_path / "paths")
        assert api(port, "PUT", "/api/settings", {"theme": "dark", "max_concurrent_runs": 3}
                   )[0] == 200
    good = projection_files(data)
    assert good == replayed(data, tmp_path / "replay-before")
    assert len(good) == len(job_ids) + 1

    # Each job file gets a different damage; settings.yaml is edited; one file is removed.
    damaged: dict[str, str] = {}
    for (what, damage), job_id in zip(DAMAGES.items(), job_ids, strict=False):
        path = data / "jobs" / f"{job_id}.yaml"
        path.write_bytes(damage(path.read_bytes()))
        damaged[f"jobs/{job_id}.yaml"] = what
        FIGURES["damages"] += 1
    (data / "jobs" / f"{job_ids[-1]}.yaml").unlink()
    damaged[f"jobs/{job_ids[-1]}.yaml"] = "removed"
    settings = data / "settings.yaml"
    settings.write_bytes(settings.read_bytes().replace(b"theme: dark", b"theme: light"))
    damaged["settings.yaml"] = "edited by hand"
    FIGURES["damages"] += 2
    log_before = len(app_log(data))

    with counted_server(data) as (_, port):
        # The server answers with what the log says, not what the damaged files said.
        status, got = api(port, "GET", "/api/settings")
        assert status == 200 and got["theme"] == "dark"
        status, jobs = api(port, "GET", "/api/jobs")
        assert sorted(j["id"] for j in jobs["jobs"]) == sorted(job_ids)
        rebuilt_while_running = projection_files(data)
    expected = replayed(data, tmp_path / "replay-after")
    assert expected == good, "the log itself changed"
    mismatched = [rel for rel in expected if rebuilt_while_running.get(rel) != expected[rel]]
    assert not mismatched, f"not rebuilt byte-identical to `events replay`: {mismatched}"
    assert projection_files(data) == expected

    new_log = app_log(data)[log_before:]
    warnings = [line for line in new_log.splitlines() if " WARNING " in line]
    unreported = [f"{rel} ({what})" for rel, what in damaged.items()
                  if not any(str(data / rel) in line for line in warnings)]
    assert not unreported, "no WARNING in logs/app.log names " + ", ".join(unreported) + \
        "\nwarnings:\n" + "\n".join(warnings)


@pytest.mark.timeout(120)
def test_a_garbage_position_file_rebuilds_every_projection(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with counted_server(data) as (_, port):
        create_jobs(port, 3, tmp_path / "paths")
    good = projection_files(data)
    assert good == replayed(data, tmp_path / "replay")
    failures = []
    # The last one is a position ahead of the log: what a log that lost its tail (see
    # the truncated WAL below, once the loss is accepted) leaves behind.
    for garbage in (b"\x00\xff garbage {", b'{"format": 1, "seq": "many", "files": []}',
                    b"[]", b'{"format": 1, "seq": -5, "files": {}}',
                    b'{"format": 1, "seq": 999999, "files": {}}'):
        FIGURES["damages"] += 1
        (data / ".projection.json").write_bytes(garbage)
        for path in (data / "jobs").glob("*.yaml"):
            path.write_bytes(b"garbage: [")
        with counted_server(data) as (_, port):
            health = api(port, "GET", "/healthz")[1]
        wrong = sorted(rel for rel, body in projection_files(data).items() if good[rel] != body)
        if wrong:
            failures.append(f"position file {garbage!r}: {wrong} left as garbage "
                            f"(healthz said {health})")
            for rel, body in good.items():  # put back for the next variant
                (data / rel).write_bytes(body)
    assert not failures, "\n".join(failures)


# --- a truncated WAL after a crash ------------------------------------------------------

def wal_frames(wal: Path) -> tuple[int, int]:
    """The WAL's frame size and how many whole frames it holds."""
    header = wal.read_bytes()[:32]
    page_size = int.from_bytes(header[8:12], "big")
    frame = 24 + page_size
    return frame, (wal.stat().st_size - 32) // frame


def surviving_seq(data: Path, scratch: Path) -> int:
    """The last seq SQLite recovers from events.db plus its (damaged) -wal, read from a
    copy so the data directory itself is not touched."""
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir()
    for name in ("events.db", "events.db-wal"):
        shutil.copy2(data / name, scratch / name)
    conn = sqlite3.connect(scratch / "events.db")
    try:
        return int(conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])
    finally:
        conn.close()


def start_expecting_refusal(data: Path, log: Path, within: float = 30
                            ) -> tuple[int | None, str, bool]:
    """Start `serve` on a damaged data dir: (exit code, output, whether it served)."""
    FIGURES["starts"] += 1
    port = free_port()
    with open(log, "w") as out:
        proc = spawn_server(data, port, out)
        try:
            served = wait_served(proc, port, within)
        finally:
            stop_server(proc)
    if not served and proc.returncode not in (None, 0):
        FIGURES["refused starts"] += 1
    return proc.returncode, log.read_text(errors="replace"), served


@pytest.mark.timeout(180)
def test_a_truncated_wal_is_refused_naming_the_lost_events(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with counted_server(data) as (proc, port):
        # Twelve commits, each acknowledged with a 201.
        job_ids = create_jobs(port, 12, tmp_path / "paths")
        status, events = api(port, "GET", "/api/events?since=0&limit=1000")
        acked = events["last_seq"]
        assert status == 200 and acked >= len(job_ids)
        proc.kill()  # SIGKILL: no checkpoint, the acknowledged events live in the WAL
        proc.wait(timeout=20)
    wal = data / "events.db-wal"
    assert wal.exists() and wal.stat().st_size > 32, "nothing was left in the WAL to cut"
    assert surviving_seq(data, tmp_path / "scratch") == acked  # intact before the damage

    # Cut the WAL inside its last frame, then a frame more, until the last three
    # acknowledged events are really gone (a frame is one page of one transaction).
    frame, frames = wal_frames(wal)
    size = wal.stat().st_size
    cut = frame // 2
    while surviving_seq(data, tmp_path / "scratch") > acked - 3:
        assert cut < size - 32 - frame, "cutting the WAL never lost an event"
        os.truncate(wal, size - cut)
        cut += frame
    FIGURES["damages"] += 1
    left = surviving_seq(data, tmp_path / "scratch")
    lost = list(range(left + 1, acked + 1))
    assert lost and frames > 0

    for attempt in (1, 2):  # refused, and still refused on a second try (nothing "fixed")
        code, output, served = start_expecting_refusal(data, tmp_path / f"refused-{attempt}.log")
        assert not served, f"start {attempt}: the server served a log missing seqs {lost} " \
                           f"as if complete:\n{output[-3000:]}"
        assert code not in (None, 0), f"start {attempt}: exit code {code}:\n{output[-3000:]}"
        assert re.search(r"missing|lost", output, re.I), output[-3000:]
        named = str(lost[0]) in output and str(lost[-1]) in output
        assert named, f"start {attempt}: the message does not name seqs {lost[0]}..{lost[-1]}" \
                      f":\n{output[-3000:]}"

    verify = cli("events", "verify", "--data", str(data))
    assert verify.returncode == 1, verify.stdout + verify.stderr
    said = verify.stdout + verify.stderr
    assert re.search(r"missing|lost", said, re.I) and str(lost[0]) in said, said
    # The mark of what was acknowledged is still there for the person who has to decide.
    assert any(p.name.startswith("events.db-") and p.name not in ("events.db-wal",
                                                                   "events.db-shm")
               for p in data.iterdir()), sorted(p.name for p in data.iterdir())


# --- a flipped byte in a snapshot and in its manifest ------------------------------------

async def mirror_snapshot(client: Client, tmp_path: Path) -> tuple[str, str, Path]:
    """Back up a small tree with the mirror engine: (job id, snapshot id, destination)."""
    src = tmp_path / "src"
    for i in range(4):
        write(src / f"dir{i % 2}" / f"file{i}.bin", bytes(range(256)) * (i + 1))
    dest = tmp_path / "dest"
    resp = await client.post("/api/jobs", json={
        "name": "Flip", "engine": "mirror", "sources": [str(src)], "destination": str(dest),
        "enabled": False})
    assert resp.status == 201, await resp.text()
    job_id = (await resp.json())["id"]
    run_id = (await (await client.post(f"/api/jobs/{job_id}/start", json={})).json())["run_id"]
    run = await wait_run(client, run_id, {"succeeded", "failed"})
    assert run["state"] == "succeeded", run
    return job_id, run["snapshot_id"], dest


async def verify(client: Client, job_id: str, snap: str) -> tuple[int, dict[str, Any]]:
    """POST .../verify; every answer must be JSON and never a 5xx. A verify is a run: once
    it ended, its verdict ({"ok", "problems"}) is read from the VerifyFinished it wrote
    (a run that failed without one, from its error)."""
    FIGURES["requests"] += 1
    before = client.app[STORE].last_seq
    resp = await client.post(f"/api/jobs/{job_id}/snapshots/{snap}/verify", json={})
    text = await resp.text()
    assert resp.status < 500, f"verify -> {resp.status}: {text[:300]}"
    if resp.status != 202:
        return resp.status, json.loads(text)
    run = await wait_run(client, json.loads(text)["run_id"], {"succeeded", "failed"})
    events = (await (await client.get(f"/api/events?since={before}")).json())["events"]
    verdicts = [e["data"] for e in events if e["type"] == "VerifyFinished"]
    if verdicts:
        return 200, {"ok": verdicts[-1]["ok"], "problems": verdicts[-1]["problems"]}
    assert run["state"] == "failed" and run["error"], run
    return 200, {"ok": False, "problems": [run["error"]]}


def flip(path: Path, offset: int) -> bytes:
    """Flip the lowest bit of one byte in place; return the original content."""
    original = path.read_bytes()
    damaged = bytearray(original)
    damaged[offset] ^= 0x01
    stat = path.stat()
    path.write_bytes(bytes(damaged))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same mtime
    return original


@pytest.mark.timeout(120)
async def test_a_flipped_byte_in_a_snapshot_file_is_reported_by_name(
        app_client: Client, tmp_path: Path) -> None:
    job_id, snap, dest = await mirror_snapshot(app_client, tmp_path)
    status, result = await verify(app_client, job_id, snap)
    assert status == 200 and result["ok"] is True, result
    files = sorted(p for p in (dest / snap).rglob("*") if p.is_file())
    assert len(files) == 4
    for victim in files:
        for offset in (0, victim.stat().st_size // 2, victim.stat().st_size - 1):
            FIGURES["damages"] += 1
            original = flip(victim, offset)
            try:
                status, result = await verify(app_client, job_id, snap)
            finally:
                victim.write_bytes(original)
            rel = victim.relative_to(dest / snap).as_posix()
            assert status == 200 and result["ok"] is False, (rel, offset, result)
            assert any(rel in problem for problem in result["problems"]), (rel, result)
    status, result = await verify(app_client, job_id, snap)
    assert result["ok"] is True, result  # put back: whole again
    events = (await (await app_client.get("/api/events?since=0&limit=1000")).json())["events"]
    verdicts = [e["data"]["ok"] for e in events if e["type"] == "VerifyFinished"]
    assert verdicts.count(False) == 12 and verdicts.count(True) == 2  # each one recorded


def manifest_fields(text: bytes) -> list[tuple[int, str]]:
    """Offsets worth flipping in a manifest, each with what it falls in (a key's name or
    its value): every byte of the head and of the first file entry, then every 7th byte
    of the rest."""
    lines = text.split(b"\n")
    head_end = len(lines[0]) + 1
    first_file = next(i for i, line in enumerate(lines) if b'"type": "file"' in line)
    start = sum(len(line) + 1 for line in lines[:first_file])
    end = start + len(lines[first_file])
    offsets = sorted({*range(head_end), *range(start, end), *range(0, len(text), 7)})
    keys = [(m.start(), m.end(), m.group(1).decode())
            for m in re.finditer(rb'"([a-z_0-9]+)":', text)]
    out = []
    for offset in offsets:
        inside = [k for a, b, k in keys if a <= offset < b]
        if inside:
            out.append((offset, f"the key {inside[0]!r}"))
            continue
        before = [k for _, b, k in keys if b <= offset]
        out.append((offset, f"the value of {before[-1]!r}" if before else "the structure"))
    return out


@pytest.mark.timeout(180)
async def test_a_flipped_byte_in_a_manifest_is_a_clear_problem_never_a_500(
        app_client: Client, tmp_path: Path) -> None:
    job_id, snap, dest = await mirror_snapshot(app_client, tmp_path)
    manifest = dest / f"{snap}.manifest.json"
    assert manifest.is_file()
    text = manifest.read_bytes()
    store = app_client.app[STORE]
    undetected: dict[str, list[int]] = {}
    failures = []
    for offset, field in manifest_fields(text):
        FIGURES["damages"] += 1
        flip(manifest, offset)
        try:
            before = store.last_seq
            status, result = await verify(app_client, job_id, snap)
        except AssertionError as err:
            failures.append(f"byte {offset} ({field}): {str(err).splitlines()[0][:160]}")
            continue
        finally:
            manifest.write_bytes(text)
        if status == 200 and result.get("ok") is True:
            undetected.setdefault(field, []).append(offset)
        elif status == 200:
            if not result.get("problems") or not all(isinstance(p, str) and p
                                                     for p in result["problems"]):
                failures.append(f"byte {offset} ({field}): ok=false without a problem")
        elif not (400 <= status < 500 and result.get("error")):
            failures.append(f"byte {offset} ({field}): {status} {result}")
        elif store.last_seq != before:
            failures.append(f"byte {offset} ({field}): refused but appended")
    status, result = await verify(app_client, job_id, snap)
    assert result["ok"] is True, result
    summary = [f"{field}: {len(offs)} byte(s), e.g. offset {offs[0]}"
               for field, offs in sorted(undetected.items())]
    assert not failures and not undetected, \
        f"{len(failures)} flipped bytes handled wrongly:\n" + "\n".join(failures[:25]) + \
        "\nflipped bytes verify did not notice (it said ok=true):\n" + "\n".join(summary)


@pytest.mark.timeout(60)
async def test_a_missing_or_emptied_manifest_is_reported_not_a_500(
        app_client: Client, tmp_path: Path) -> None:
    job_id, snap, dest = await mirror_snapshot(app_client, tmp_path)
    manifest = dest / f"{snap}.manifest.json"
    text = manifest.read_bytes()
    damages = {
        "emptied": b"", "null": b"null", "a list": b"[]", "only a format": b'{"format": 1}',
        "a newer format": b'{"format": 2}', "truncated": text[: len(text) // 2],
        "no sha256 key": text.replace(b'"sha256"', b'"sha-56"'),
        "no path key": text.replace(b'"path"', b'"pat"'),
        "no type key": text.replace(b'"type"', b'"typ"'),
        "no size key": text.replace(b'"size"', b'"siz"'),
        "entries not a list": text.replace(b'"entries": [', b'"entries": {"x": [', 1)
        .replace(b"\n]}", b"\n]}}"),
        "an unknown type": text.replace(b'"type": "file"', b'"type": "fifo"'),
        "a negative size": text.replace(b'"size": ', b'"size": -', 1),
        "a path with ..": text.replace(b'"path": "src/dir0', b'"path": "src/../../dir0', 1),
    }
    failures = []
    for what, damage in damages.items():
        FIGURES["damages"] += 1
        manifest.write_bytes(damage)
        try:
            status, result = await verify(app_client, job_id, snap)
        except AssertionError as err:
            failures.append(f"{what}: {str(err).splitlines()[0][:160]}")
            continue
        if not ((status == 200 and result["ok"] is False and result["problems"])
                or (400 <= status < 500 and result["error"])):
            failures.append(f"{what}: {status} {result}")
    assert not failures, "damaged manifests handled wrongly:\n" + "\n".join(failures)
    manifest.unlink()
    FIGURES["damages"] += 1
    status, result = await verify(app_client, job_id, snap)
    assert 400 <= status < 500 and result["error"], result  # no complete snapshot any more
    manifest.write_bytes(text)
    assert (await verify(app_client, job_id, snap))[1]["ok"] is True


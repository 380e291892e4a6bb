"""Torture: kill -9 the server at random moments during backups of every engine.

For each engine one data directory is served by a succession of real server processes,
each killed with SIGKILL at a moment drawn from a seeded generator: just after a start,
at any time during the copy, or in the milliseconds of a run's finalising (the manifest
being written, the snapshot being put in place). After every restart:

- `events verify` passes (the hash chain is intact);
- `events replay` rebuilds jobs/*.yaml and settings.yaml byte for byte;
- no snapshot is listed that is not complete, and none beyond the run's own;
- the interrupted run is resumed (auto_resume), never failed.

Every run then ends succeeded with exactly one new snapshot, whose restore is byte-identical
to the source as it was; at the end every listed snapshot verifies and no helper program
(rsync, restic) a killed server left behind is still running. The figures are printed in
the terminal summary. TORTURE_SEED=N replays another sequence of moments.

A second test kills the server while retention removes a snapshot (mirror and rsync
rename it away first, which the watch sees) and half-way through a restore. After each
restart no run or restore is left going, every listed snapshot verifies, a half-deleted
one is not listed and nothing of it stays in the destination after the next run, and no
file of the cut-off restore sits under its final name unless it is complete.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.engine_contract_helpers import RESTIC_PASSWORD
from tests.engine_helpers import BASE_MTIME, make_tree, tree_signature, write
from tests.operation_helpers import api_operation
from tests.torture_helpers import (
    HTTP_TIMEOUT,
    Figures,
    Server,
    Watcher,
    assert_chain_verifies,
    assert_projections_equal_a_rebuild,
    json_dump,
)

SEED = int(os.environ.get("TORTURE_SEED", "20240607"))
MiB = 1 << 20
# Per engine: how big the file that changes between runs is, the options that make a run
# last about a second, and how many kills. mirror and rsync are slowed by their bandwidth
# limit, archive by a slow compression level; restic gets fewer kills because each of
# its restarts costs more (every restic call derives the repository key, and listing
# counts every snapshot again in a new process).
ENGINES: dict[str, tuple[int, dict[str, Any], int]] = {
    "mirror": (6 * MiB, {"bwlimit": 6144, "threads": 2}, 9),
    "rsync": (6 * MiB, {"bwlimit": 6144}, 9),
    "archive": (4 * MiB, {"level": 19}, 8),
    "restic": (16 * MiB, {}, 6),
}
# The moments to kill at (shuffled per engine): just after a start or restart, as soon as
# the manifest appears, as soon as the snapshot is in place, and any time in a run.
SPECIAL = ["soon", "manifest", "in place"]
RUN_WITHIN = 90.0  # seconds a run may take to end once the killing stops


class _Summary:
    """Writes the figures at the end of the terminal output (also with -q)."""

    def __init__(self) -> None:
        self.figures: list[Figures] = []

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.figures:
            return
        terminalreporter.write_sep("-", f"kill -9 torture (seed {SEED})")
        for fig in self.figures:
            terminalreporter.write_line(fig.line())
        total = sum(f.kills for f in self.figures)
        terminalreporter.write_line(f"total: {total} kills survived, "
                                    f"{sum(f.runs for f in self.figures)} runs, "
                                    f"{sum(f.seconds for f in self.figures):.1f} s")


@pytest.fixture(scope="module")
def summary(request: pytest.FixtureRequest) -> Iterator[_Summary]:
    """The figures of every engine's torture, written in the terminal summary."""
    plugins = request.config.pluginmanager
    existing = plugins.get_plugin("torture-kills-summary")
    report = existing if isinstance(existing, _Summary) else _Summary()
    if existing is None:
        plugins.register(report, "torture-kills-summary")
    yield report


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    """A server (restarted many times) on one data directory; stopped whatever happens,
    with the helper programs killed servers left behind."""
    logs = tmp_path / "server-logs"
    logs.mkdir()
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session:
        srv = Server(tmp_path / "data", logs, session)
        try:
            yield srv
        finally:
            await asyncio.to_thread(srv.shutdown)


def refresh_source(src: Path, rng: random.Random, size: int, generation: int) -> None:
    """Change the source between runs so every run has real work to do: a new big file,
    a changed small one, an added one."""
    write(src / "big.bin", rng.randbytes(size), mtime=BASE_MTIME + 100 + generation)
    write(src / "f000.txt", f"generation {generation}\n".encode(),
          mtime=BASE_MTIME + 200 + generation)
    write(src / "added" / f"gen-{generation}.txt", rng.randbytes(3000),
          mtime=BASE_MTIME + 300 + generation)


def job_options(engine: str, work: Path) -> dict[str, Any]:
    """The job's options (restic: a password file and a cache outside the repository)."""
    options = dict(ENGINES[engine][1])
    if engine == "restic":
        pw = work / "restic-password"
        pw.write_text(RESTIC_PASSWORD + "\n")
        pw.chmod(0o600)
        options.update(password_file=str(pw), init=True, cache_dir=str(work / "cache"))
    return options


def finalising_watch(engine: str, dest: Path, what: str
                     ) -> tuple[Path, Callable[[str], bool]]:
    """Where a run's finishing touch `what` shows, and which new names are it: the
    manifest written (restic: its index) or the snapshot put in place."""
    if engine == "restic":
        return dest / ("index" if what == "manifest" else "snapshots"), lambda name: True
    if what == "manifest":
        return dest, lambda name: "manifest" in name
    if engine == "archive":
        return dest, lambda name: name.endswith((".tar.zst", ".tar.gz"))
    return dest, lambda name: "." not in name


async def run_events(server: Server, run_id: str) -> list[dict[str, Any]]:
    """Every stored event of one run, oldest first."""
    out: list[dict[str, Any]] = []
    since = 0
    while True:
        page = (await server.api.call("GET", f"/api/events?since={since}&limit=1000"))["events"]
        if not page:
            return out
        out += [e for e in page if e["data"].get("run_id") == run_id]
        since = page[-1]["seq"]


async def interruptions(server: Server, run_id: str) -> int:
    """How many times the log shows the run cut off by a crash so far."""
    return sum(1 for e in await run_events(server, run_id)
               if e["type"] == "RunInterrupted" and e["data"].get("reason") == "crash")


def moment_of(events: list[dict[str, Any]], interrupted_before: int) -> str:
    """What the kill cut, read from the log: the run before it started, the run while it
    went, or nothing (the run had already ended)."""
    cuts = [i for i, e in enumerate(events)
            if e["type"] == "RunInterrupted" and e["data"].get("reason") == "crash"]
    if len(cuts) == interrupted_before:
        return "after the run ended"
    assert len(cuts) == interrupted_before + 1, json_dump(events)
    before = events[cuts[-1] - 1]["type"]
    return "before the engine started" if before in ("RunQueued", "RunResumed") \
        else "during the run"


async def snapshot_ids(server: Server, job_id: str) -> list[str]:
    """The ids of the snapshots the API lists as complete."""
    return [s["id"] for s in
            (await server.api.call("GET", f"/api/jobs/{job_id}/snapshots"))["snapshots"]]


async def verify_snapshot(server: Server, job_id: str, sid: str) -> None:
    """The server's verify finds the snapshot complete and intact."""
    run = await api_operation(server.api, f"/api/jobs/{job_id}/snapshots/{sid}/verify",
                              within=RUN_WITHIN)
    assert run["state"] == "succeeded", \
        f"snapshot {sid} is listed but does not verify: {json_dump(run)}"


@pytest.mark.timeout(300)  # about 15 to 60 s each; restic's calls can be slow on a busy host
@pytest.mark.parametrize("engine", list(ENGINES))
async def test_kill_9_at_random_moments_during_backups(
        engine: str, server: Server, tmp_path: Path, summary: _Summary,
        record_property: Any) -> None:
    began = time.monotonic()
    size, _, kills = ENGINES[engine]
    rng = random.Random(f"{SEED}-{engine}")
    src = make_tree(tmp_path / "src", seed=rng.randrange(1 << 30), large_bytes=size)
    dest = tmp_path / "dest"
    figures = Figures(engine)
    await server.start()
    job = await server.api.call("POST", "/api/jobs", {
        "name": f"Torture {engine}", "engine": engine, "sources": [str(src)],
        "destination": str(dest), "options": job_options(engine, tmp_path),
        "retention": {"keep_last": 1000}})  # nothing pruned: every snapshot stays to check
    job_id = job["id"]
    known: dict[str, dict[str, Any]] = {}  # snapshot id -> source signature it must restore
    # Complete snapshots that no run recorded (a run put one in place, was killed before
    # its success was logged, and made another when resumed): snapshot id -> what happened.
    strays: dict[str, str] = {}
    first_seen: dict[str, str] = {}  # snapshot id -> the kill after which it was listed
    last_kill = "none"

    async def start_run() -> tuple[str, dict[str, Any]]:
        figures.runs += 1
        refresh_source(src, rng, size, figures.runs)
        sig = tree_signature(src)
        run_id = (await server.api.call("POST", f"/api/jobs/{job_id}/start", {}))["run_id"]
        return run_id, sig

    async def check_listed(run_id: str, sig: dict[str, Any], run: dict[str, Any]) -> None:
        """No snapshot went missing; every new one is complete (verified at once, restic's
        at the end); once the run succeeded, its snapshot restores to the source it was
        started on, and every other new one is a stray."""
        listed = await snapshot_ids(server, job_id)
        assert set(known) <= set(listed), f"snapshots went missing: {listed}, {sorted(known)}"
        for sid in sorted(set(listed) - set(known) - set(first_seen)):
            first_seen[sid] = last_kill
            if engine != "restic":  # restic checks its whole repository, once at the end
                await verify_snapshot(server, job_id, sid)
        fresh = sorted(set(listed) - set(known) - set(strays))
        if run["state"] == "succeeded":
            assert run["snapshot_id"] in fresh, (fresh, json_dump(run))
            for sid in fresh:
                if sid != run["snapshot_id"]:
                    strays[sid] = f"run {run_id}, listed after a kill {first_seen[sid]}"
            target = tmp_path / f"restored-{len(known)}"
            restored = await api_operation(server.api, f"/api/jobs/{job_id}/snapshots/"
                                                       f"{run['snapshot_id']}/restore",
                                           {"target": str(target)}, within=RUN_WITHIN)
            assert restored["state"] == "succeeded", json_dump(restored)
            assert tree_signature(target / src.name) == sig, \
                f"run {run_id} (resumed {run['resumes']} times) restored something else"
            known[run["snapshot_id"]] = sig

    async def finished(run_id: str, sig: dict[str, Any]) -> None:
        """The run ended succeeded; its snapshot restores to the source it was started on."""
        run = await server.api.wait_state(run_id, {"succeeded", "failed", "cancelled",
                                                   "interrupted"}, within=RUN_WITHIN)
        assert run["state"] == "succeeded", json_dump(run)
        await check_listed(run_id, sig, run)

    # Two runs never killed (the first one also sets up a repository): how long the
    # second takes is the window random kills are drawn from.
    for _ in range(2):
        run_id, sig = await start_run()
        t0 = time.monotonic()
        await server.api.wait_state(run_id, {"succeeded", "failed"}, within=RUN_WITHIN)
        window = max(0.5, time.monotonic() - t0)
        await finished(run_id, sig)
    figures.window = window

    async def ended(run_id: str) -> bool:
        try:
            run = await server.api.call("GET", f"/api/runs/{run_id}")
        except aiohttp.ClientError:  # the watcher has just killed the server
            return False
        return run["state"] not in ("queued", "running")

    plan = SPECIAL + ["any"] * (kills - len(SPECIAL))
    rng.shuffle(plan)
    run_id, sig = await start_run()
    for kind in plan:
        label = kind
        if kind in ("manifest", "in place"):
            where, wanted = finalising_watch(engine, dest, kind)
            while True:
                cut_before = await interruptions(server, run_id)
                watcher = Watcher(where, wanted, server.kill9, within=RUN_WITHIN)
                seen = await watcher.wait(functools.partial(ended, run_id))
                if seen is not None:
                    break
                await finished(run_id, sig)  # it ended before the watch began: next run
                run_id, sig = await start_run()
            label = {"manifest": "finalising (manifest written)",
                     "in place": "finalising (snapshot in place)"}[kind]
        else:
            # Kill a run that is going: a fresh one for "soon", or this one if the checks
            # after the last restart did not outlast it.
            if kind == "soon" or await ended(run_id):
                await finished(run_id, sig)
                run_id, sig = await start_run()
            cut_before = await interruptions(server, run_id)
            await asyncio.sleep(rng.uniform(0, 0.25) if kind == "soon"
                                else rng.uniform(0.05, window))
            server.kill9()
        figures.kills += 1
        # The log as the crash left it verifies (checked while the next server starts),
        # and so does it with what the restart appended.
        await asyncio.gather(asyncio.to_thread(assert_chain_verifies, server.data),
                             server.start())
        figures.restarts += 1
        await asyncio.gather(asyncio.to_thread(assert_chain_verifies, server.data),
                             assert_projections_equal_a_rebuild(server, tmp_path))
        moment = moment_of(await run_events(server, run_id), cut_before)
        last_kill = label if kind in ("manifest", "in place") else moment
        figures.count(last_kill)
        run = await server.api.call("GET", f"/api/runs/{run_id}")
        assert run["state"] in ("queued", "running", "succeeded"), json_dump(run)
        if run["state"] == "succeeded":
            await finished(run_id, sig)
            run_id, sig = await start_run()
        else:
            await check_listed(run_id, sig, run)
    await finished(run_id, sig)

    listed = await snapshot_ids(server, job_id)
    # restic's verify is `restic check --read-data` of the whole repository: once is all.
    for sid in listed[-1:] if engine == "restic" else listed:
        await verify_snapshot(server, job_id, sid)
    assert_chain_verifies(server.data)
    await assert_projections_equal_a_rebuild(server, tmp_path)
    leftovers = server.leftovers()
    # Every run ended: nothing of a killed attempt is left beside the snapshots (a partial
    # snapshot, a resume journal, a temp file).
    debris = [] if engine == "restic" else sorted(
        n for n in os.listdir(dest)
        if n.split(".", 1)[0] not in known or n.split(".", 1)[-1] not in
        (n, "manifest.json", "tar.zst", "tar.gz"))
    figures.seconds = time.monotonic() - began
    figures.strays = len(strays)
    summary.figures.append(figures)
    record_property("torture_kills", figures.kills)
    record_property("torture_figures", figures.line())
    print(figures.line())
    assert figures.kills == kills
    assert not leftovers, f"programs left running by killed servers: {leftovers}"
    assert not debris, f"left in the destination by killed attempts: {debris}"
    assert not strays, f"complete snapshots that no run recorded (the resumed run made " \
                       f"another): {strays}"


# --- kills during a prune and during a restore ---------------------------------------------

# Engines whose prune renames a snapshot away before removing it (the moment is visible).
PRUNE_WATCHED = {"mirror", "rsync"}


def layered_source(root: Path, rng: random.Random) -> Path:
    """A source whose restore takes a while and passes a landmark half-way: many small
    files under a/, then the folder m/, then a large file under z/ (manifest order)."""
    for i in range(1500):
        write(root / "a" / f"f{i:04d}.txt", rng.randbytes(1024), mtime=BASE_MTIME + i)
    write(root / "m" / "landmark.txt", b"half-way\n", mtime=BASE_MTIME)
    write(root / "z" / "big.bin", rng.randbytes(24 * MiB), mtime=BASE_MTIME)
    return root


def settled_files(target: Path) -> dict[str, bytes]:
    """Files a restore left under their final names (dot names are temporary ones)."""
    out: dict[str, bytes] = {}
    for folder, dirs, files in os.walk(target):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            path = Path(folder) / name
            if not name.startswith(".") and not path.is_symlink():
                out[path.relative_to(target).as_posix()] = path.read_bytes()
    return out


async def checks_after_restart(server: Server, work: Path, job_id: str) -> list[str]:
    """The log verifies, the projections equal a rebuild, no run or restore is left going,
    and every snapshot listed verifies; returns the listed ids."""
    assert_chain_verifies(server.data)
    await assert_projections_equal_a_rebuild(server, work)
    job = await server.api.call("GET", f"/api/jobs/{job_id}")
    stuck = [r for r in job["runs"] if r["state"] in ("running", "queued", "paused")]
    assert not stuck, json_dump(stuck)
    listed = await snapshot_ids(server, job_id)
    for sid in listed:
        await verify_snapshot(server, job_id, sid)
    return listed


@pytest.mark.timeout(240)
@pytest.mark.parametrize("engine", ["mirror", "rsync", "archive"])
async def test_kill_9_during_a_prune_and_during_a_restore(
        engine: str, server: Server, tmp_path: Path) -> None:
    rng = random.Random(f"{SEED}-prune-restore-{engine}")
    src = layered_source(tmp_path / "src", rng)
    dest = tmp_path / "dest"
    await server.start()
    job = await server.api.call("POST", "/api/jobs", {
        "name": f"Prune and restore {engine}", "engine": engine, "sources": [str(src)],
        "destination": str(dest), "retention": {"keep_last": 1}})
    job_id = job["id"]

    async def backup() -> dict[str, Any]:
        run_id = (await server.api.call("POST", f"/api/jobs/{job_id}/start", {}))["run_id"]
        run = await server.api.wait_state(run_id, {"succeeded", "failed"}, within=RUN_WITHIN)
        assert run["state"] == "succeeded", json_dump(run)
        return dict(run)

    first = await backup()
    # A kill while retention removes the first snapshot (it is renamed away at once).
    write(src / "z" / "second.txt", b"second run\n", mtime=BASE_MTIME + 1)
    if engine in PRUNE_WATCHED:
        watcher = Watcher(dest, lambda name: name.endswith(".deleting"), server.kill9,
                          within=RUN_WITHIN)
        await server.api.call("POST", f"/api/jobs/{job_id}/start", {})
        assert await watcher.wait(_never) is not None, "the prune never began"
        await server.start()
        listed = await checks_after_restart(server, tmp_path, job_id)
        assert first["snapshot_id"] not in listed, "a half-deleted snapshot is listed"
        assert len(listed) == 1, listed
    else:
        await backup()
    sig = tree_signature(src)
    latest = await backup()  # retention again: nothing left of the killed prune
    listed = await checks_after_restart(server, tmp_path, job_id)
    assert listed == [latest["snapshot_id"]], listed
    doc = yaml.safe_load((server.data / "jobs" / f"{job_id}.yaml").read_text())
    assert [s["id"] for s in doc["snapshots"]] == listed, "jobs/<id>.yaml names snapshots " \
                                                          "that are gone"
    debris = sorted(n for n in os.listdir(dest) if n.split(".", 1)[0] != latest["snapshot_id"])
    assert not debris, f"left in the destination by the killed prune: {debris}"

    # A kill half-way through a restore (when the folder m/ appears in the target).
    target = tmp_path / "restored"
    watcher = Watcher(target / src.name, lambda name: name == "m", server.kill9,
                      within=RUN_WITHIN)
    queued = await server.api.call(
        "POST", f"/api/jobs/{job_id}/snapshots/{latest['snapshot_id']}/restore",
        {"target": str(target)})
    assert await watcher.wait(_never) is not None, "the restore never reached m/"
    source_files = settled_files(src)
    for rel, content in settled_files(target / src.name).items():
        assert content == source_files.get(rel), f"{rel} is under its final name but " \
                                                 "not complete"
    await server.start()
    # The restore run was cut off while writing: it starts again and writes over what
    # its first attempt left, to the end, with nothing of that attempt left over.
    run = await server.api.wait_state(queued["run_id"], {"succeeded", "failed"},
                                      within=RUN_WITHIN)
    assert run["state"] == "succeeded" and run["resumes"] == 1, json_dump(run)
    assert tree_signature(target / src.name) == sig
    await checks_after_restart(server, tmp_path, job_id)
    events = (await server.api.call("GET", "/api/events?since=0&limit=1000"))["events"]
    ends = [e["data"].get("error") for e in events if e["type"] == "RestoreFinished"]
    assert len(ends) == 2 and "cut off" in ends[0] and ends[1] is None, ends
    doc = yaml.safe_load((server.data / "jobs" / f"{job_id}.yaml").read_text())
    assert doc["last_restore"]["state"] == "succeeded", json_dump(doc["last_restore"])
    # Restoring again over it works too.
    again = await api_operation(server.api, f"/api/jobs/{job_id}/snapshots/"
                                            f"{latest['snapshot_id']}/restore",
                                {"target": str(target), "overwrite": True}, within=RUN_WITHIN)
    assert again["state"] == "succeeded", json_dump(again)
    assert tree_signature(target / src.name) == sig
    assert not server.leftovers(), server.leftovers()


async def _never() -> bool:
    """A watch that only ends with its name or its time limit."""
    return False

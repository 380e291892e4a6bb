"""Restores, verifies and prunes as runs, at the edges a person meets: empty snapshots,
targets that do not exist yet, odd names, two restores into one target, a snapshot gone
between queueing and running, a job deleted with a restore waiting."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from engines.base import Progress
from engines.restic import restic_command, restic_env
from server.keys import RUNNER, STORE
from tests.api_helpers import Client, start, wait_run
from tests.engine_helpers import make_tree, tree_signature, write
from tests.operation_helpers import HoldAt, hold_at, operation

ENGINES = ["mirror", "archive", "rsync", "restic"]
RESTIC = shutil.which("restic")


@pytest.fixture(scope="module")
def restic_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An initialised empty restic repository (init costs seconds: made once, copied)."""
    if RESTIC is None:
        pytest.skip("restic is not installed")
    base = tmp_path_factory.mktemp("restic-edges")
    password = base / "password"
    password.write_text("edges password\n")
    subprocess.run(restic_command(base / "repo", "init"),
                   env=restic_env(password, base / "cache"), check=True, capture_output=True)
    return base / "repo", password


def job_body(engine: str, src: Path, tmp_path: Path,
             template: tuple[Path, Path] | None) -> dict[str, Any]:
    """A job of `engine` over src with a destination of its own under tmp_path."""
    body: dict[str, Any] = {"name": f"Edge {engine}", "engine": engine,
                            "sources": [str(src)], "destination": str(tmp_path / "dest")}
    if engine == "restic":
        assert template is not None
        shutil.copytree(template[0], tmp_path / "dest")
        body["options"] = {"password_file": str(template[1]),
                           "cache_dir": str(tmp_path / "cache")}
    return body


async def backed_up(client: Client, engine: str, src: Path, tmp_path: Path,
                    template: tuple[Path, Path] | None = None) -> tuple[str, str]:
    """A job of `engine` over src with one snapshot: its id and the snapshot's."""
    resp = await client.post("/api/jobs", json=job_body(engine, src, tmp_path, template))
    assert resp.status == 201, await resp.text()
    job_id = str((await resp.json())["id"])
    run = await wait_run(client, await start(client, job_id), {"succeeded", "failed"})
    assert run["state"] == "succeeded", run
    return job_id, str(run["snapshot_id"])


def template_for(engine: str, request: pytest.FixtureRequest) -> tuple[Path, Path] | None:
    """The restic template for restic jobs (made only when a restic case runs)."""
    if engine != "restic":
        return None
    found: tuple[Path, Path] = request.getfixturevalue("restic_template")
    return found


def restore_url(job_id: str, snap: str) -> str:
    """Where a restore of a snapshot is asked for."""
    return f"/api/jobs/{job_id}/snapshots/{snap}/restore"


# --- holding a run at a moment (tests/operation_helpers.py hold_at) ----------------------


async def held(holds: list[HoldAt]) -> HoldAt:
    """The first hold, once its engine reached the phase."""
    for _ in range(1500):
        if holds and holds[0].reached.is_set():
            return holds[0]
        await asyncio.sleep(0.02)
    raise AssertionError("no run reached the phase within 30 s")


async def queue(client: Client, url: str, body: Any = None) -> str:
    """POST an operation; assert the 202 answer; return the run id."""
    resp = await client.post(url, json={} if body is None else body)
    assert resp.status == 202, await resp.text()
    return str((await resp.json())["run_id"])


async def event_types(client: Client, since: int) -> list[tuple[str, dict[str, Any]]]:
    """(type, data) of every event after `since`."""
    events = (await (await client.get(f"/api/events?since={since}")).json())["events"]
    return [(e["type"], e["data"]) for e in events]


# --- empty snapshots ----------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("engine", ENGINES)
async def test_an_empty_folder_restores_as_an_empty_folder_at_run_time(
        app_client: Client, tmp_path: Path, engine: str,
        request: pytest.FixtureRequest) -> None:
    src = tmp_path / "src"
    (src / "only-an-empty-folder").mkdir(parents=True)
    job_id, snap = await backed_up(app_client, engine, src, tmp_path,
                                   template_for(engine, request))
    target = tmp_path / "restored"
    holds = hold_at(app_client, "restoring")
    run_id = await queue(app_client, restore_url(job_id, snap), {"target": str(target)})
    hold = await held(holds)
    hold.release.set()
    run = await wait_run(app_client, run_id, {"succeeded", "failed", "cancelled"})
    assert run["state"] == "succeeded", run
    assert (target / "src" / "only-an-empty-folder").is_dir()
    assert os.listdir(target / "src" / "only-an-empty-folder") == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("engine", ENGINES)
async def test_a_source_folder_with_nothing_in_it_restores_as_an_empty_folder(
        app_client: Client, tmp_path: Path, engine: str,
        request: pytest.FixtureRequest) -> None:
    src = tmp_path / "src"
    src.mkdir()
    job_id, snap = await backed_up(app_client, engine, src, tmp_path,
                                   template_for(engine, request))
    target = tmp_path / "restored"
    run = await operation(app_client, restore_url(job_id, snap), {"target": str(target)})
    assert run["state"] == "succeeded" and run["files"] == 0, run
    assert os.listdir(target) == ["src"] and os.listdir(target / "src") == []


# --- targets --------------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_a_target_several_folders_deep_that_does_not_exist_is_made_at_run_time(
        app_client: Client, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", small_files=5, large_bytes=100)
    job_id, snap = await backed_up(app_client, "mirror", src, tmp_path)
    target = tmp_path / "new" / "deeper" / "restored"
    run = await operation(app_client, restore_url(job_id, snap), {"target": str(target)})
    assert run["state"] == "succeeded", run
    assert tree_signature(target / "src") == tree_signature(src)


@pytest.mark.timeout(60)
async def test_a_queued_restore_cancelled_before_it_ran_leaves_no_target_behind(
        app_client: Client, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "a.txt", b"small")
    job_id, snap = await backed_up(app_client, "mirror", src, tmp_path)
    write(src / "big.bin", os.urandom(4 * 1024 * 1024))
    await app_client.put(f"/api/jobs/{job_id}", json={"options": {"bwlimit": 1024}})
    backup = await start(app_client, job_id)
    await wait_run(app_client, backup, {"running"})
    target = tmp_path / "new" / "restored"
    run_id = await queue(app_client, restore_url(job_id, snap), {"target": str(target)})
    assert not (tmp_path / "new").exists()  # the queue-time check made nothing that stays
    await app_client.post(f"/api/runs/{run_id}/cancel", json={})
    await app_client.post(f"/api/runs/{backup}/cancel", json={})
    assert (await wait_run(app_client, run_id, {"cancelled"}))["state"] == "cancelled"
    assert not (tmp_path / "new").exists()


@pytest.mark.timeout(60)
async def test_a_target_under_a_file_is_refused_at_queue_time_and_the_file_kept(
        app_client: Client, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "a.txt", b"data")
    job_id, snap = await backed_up(app_client, "mirror", src, tmp_path)
    blocker = tmp_path / "notes.txt"
    blocker.write_bytes(b"my notes")
    before = app_client.app[STORE].last_seq
    for target in (blocker, blocker / "restored"):
        resp = await app_client.post(restore_url(job_id, snap), json={"target": str(target)})
        assert 400 <= resp.status < 500, (target, await resp.text())
        assert str(blocker) in (await resp.json())["error"]
    assert app_client.app[STORE].last_seq == before
    assert blocker.read_bytes() == b"my notes"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("engine", ENGINES)
async def test_a_single_file_from_a_snapshot_restores_alone(
        app_client: Client, tmp_path: Path, engine: str,
        request: pytest.FixtureRequest) -> None:
    src = tmp_path / "src"
    write(src / "docs" / "letter.txt", b"dear you")
    write(src / "docs" / "other.txt", b"not this one")
    write(src / "top.txt", b"nor this")
    job_id, snap = await backed_up(app_client, engine, src, tmp_path,
                                   template_for(engine, request))
    target = tmp_path / "restored"
    run = await operation(app_client, restore_url(job_id, snap),
                          {"target": str(target), "path": "src/docs/letter.txt"})
    assert run["state"] == "succeeded" and run["files"] == 1, run
    assert (target / "src" / "docs" / "letter.txt").read_bytes() == b"dear you"
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == [
        "src", "src/docs", "src/docs/letter.txt"]


# --- two restores into one target ----------------------------------------------------------


@pytest.mark.timeout(60)
async def test_a_second_restore_into_the_same_target_fails_clearly_and_keeps_the_first(
        app_client: Client, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", small_files=10, large_bytes=1000)
    job_id, snap = await backed_up(app_client, "mirror", src, tmp_path)
    target = tmp_path / "restored"
    holds = hold_at(app_client, "restoring")
    first = await queue(app_client, restore_url(job_id, snap), {"target": str(target)})
    hold = await held(holds)
    before = app_client.app[STORE].last_seq
    # Queued while the first holds the destination (it has made the target, no file yet).
    second = await queue(app_client, restore_url(job_id, snap), {"target": str(target)})
    hold.release.set()
    for h in holds[1:]:
        h.release.set()
    one = await wait_run(app_client, first, {"succeeded", "failed", "cancelled"})
    await asyncio.sleep(0.1)
    for h in holds:
        h.release.set()
    two = await wait_run(app_client, second, {"succeeded", "failed", "cancelled"})
    assert one["state"] == "succeeded", one
    assert two["state"] == "failed" and "already exist" in two["error"], two
    assert str(target) in two["error"]
    assert tree_signature(target / "src") == tree_signature(src)
    # Nothing was written by the second: no RestoreStarted/RestoreFinished of its own.
    types = [t for t, d in await event_types(app_client, before)
             if t.startswith("Restore")]
    assert types == ["RestoreFinished"], types


@pytest.mark.timeout(60)
async def test_a_restore_cancelled_part_way_can_be_restored_again_over_its_part(
        app_client: Client, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", small_files=30, large_bytes=1000)
    job_id, snap = await backed_up(app_client, "mirror", src, tmp_path)
    target = tmp_path / "restored"
    holds = hold_at(app_client, "restoring")
    run_id = await queue(app_client, restore_url(job_id, snap), {"target": str(target)})
    hold = await held(holds)
    await app_client.post(f"/api/runs/{run_id}/cancel", json={})
    hold.release.set()
    await wait_run(app_client, run_id, {"cancelled"})
    hold_at(app_client, "no such phase")  # the runs from now on go through
    # Without overwrite, what the cancelled one wrote is refused, saying so.
    write(target / "src" / "run.sh", b"part")  # as if it had got that far
    again = await app_client.post(restore_url(job_id, snap), json={"target": str(target)})
    assert again.status == 409, await again.text()
    assert "already exist" in (await again.json())["error"]
    run = await operation(app_client, restore_url(job_id, snap),
                          {"target": str(target), "overwrite": True})
    assert run["state"] == "succeeded", run
    assert tree_signature(target / "src") == tree_signature(src)


# --- odd names ------------------------------------------------------------------------------


def odd_tree(root: Path) -> Path:
    """Names a person's disk really has: spaces, a newline, bytes that are not UTF-8,
    a 200-character name, a leading dash, a name that looks like a temporary one."""
    write(root / "with spaces" / " leading and trailing ", b"spaces")
    write(root / "line\nbreak.txt", b"newline")
    write(root / "tab\there", b"tab")
    write(root / "-dash-first", b"dash")
    write(root / ("n" * 200), b"long")
    write(root / ("d" * 200) / ("f" * 200), b"long in long")
    write(root / "*?[glob].txt", b"glob")
    write(root / "back\\slash", b"backslash")
    os.makedirs(os.fsencode(root) + b"/latin1-\xe9", exist_ok=True)
    with open(os.fsencode(root) + b"/latin1-\xe9/caf\xe9.txt", "wb") as f:
        f.write(b"not utf-8")
    return root


@pytest.mark.timeout(90)
@pytest.mark.parametrize("engine", ENGINES)
async def test_odd_names_restore_byte_for_byte(app_client: Client, tmp_path: Path,
                                              engine: str,
                                              request: pytest.FixtureRequest) -> None:
    src = odd_tree(tmp_path / "src")
    job_id, snap = await backed_up(app_client, engine, src, tmp_path,
                                   template_for(engine, request))
    target = tmp_path / "restored"
    run = await operation(app_client, restore_url(job_id, snap), {"target": str(target)})
    assert run["state"] == "succeeded", run
    assert sorted(os.listdir(os.fsencode(target / "src"))) == sorted(
        os.listdir(os.fsencode(src)))
    assert tree_signature(target / "src") == tree_signature(src)
    verified = await operation(app_client, f"/api/jobs/{job_id}/snapshots/{snap}/verify")
    assert verified["state"] == "succeeded", verified


# --- a snapshot gone between queueing and running -----------------------------------------


async def behind_a_held_backup(client: Client, job_id: str) -> tuple[str, HoldAt]:
    """Start a backup of the job held at its scan, so it holds the destination; its run
    id and the hold (release it after cancelling the run)."""
    holds = hold_at(client, "scanning")
    backup = await start(client, job_id)
    return backup, await held(holds)


def remove_snapshot(dest: Path, snap: str) -> None:
    """Delete a snapshot by hand, as a person tidying the disk does."""
    for path in dest.iterdir():
        if path.name == snap or path.name.startswith(snap + "."):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["verify", "restore"])
@pytest.mark.parametrize("engine", ENGINES)
async def test_a_snapshot_deleted_after_queueing_fails_the_run_naming_it(
        app_client: Client, tmp_path: Path, engine: str, kind: str,
        request: pytest.FixtureRequest) -> None:
    src = tmp_path / "src"
    write(src / "a.txt", b"small")
    template = template_for(engine, request)
    job_id, snap = await backed_up(app_client, engine, src, tmp_path, template)
    backup, hold = await behind_a_held_backup(app_client, job_id)
    body = {"target": str(tmp_path / "restored")} if kind == "restore" else {}
    run_id = await queue(app_client, f"/api/jobs/{job_id}/snapshots/{snap}/{kind}", body)
    if template is None:
        remove_snapshot(tmp_path / "dest", snap)
    else:  # forgotten with restic itself, as a person at the command line does
        await asyncio.to_thread(
            subprocess.run, restic_command(tmp_path / "dest", "forget", snap),
            env=restic_env(template[1], tmp_path / "cache"), check=True, capture_output=True)
    hold_at(app_client, "no such phase")  # the runs from now on go through
    await app_client.post(f"/api/runs/{backup}/cancel", json={})
    hold.release.set()
    run = await wait_run(app_client, run_id, {"succeeded", "failed", "cancelled"})
    assert run["state"] == "failed", run
    assert snap[:8] in run["error"] and "internal error" not in run["error"], run
    assert not (tmp_path / "restored").exists()


@pytest.mark.timeout(90)
async def test_a_prune_with_keep_last_then_a_verify_of_a_pruned_snapshot_says_it_is_gone(
        app_client: Client, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "a.txt", b"one")
    job_id, first = await backed_up(app_client, "mirror", src, tmp_path)
    await asyncio.sleep(1.1)  # snapshot ids are made of the second they start in
    write(src / "a.txt", b"two")
    second = (await wait_run(app_client, await start(app_client, job_id),
                             {"succeeded"}))["snapshot_id"]
    await app_client.put(f"/api/jobs/{job_id}", json={"retention": {"keep_last": 1}})
    pruned = await operation(app_client, f"/api/jobs/{job_id}/prune")
    assert pruned["state"] == "succeeded", pruned
    assert sorted(os.listdir(tmp_path / "dest")).count(second) == 1
    assert first not in os.listdir(tmp_path / "dest")
    resp = await app_client.post(f"/api/jobs/{job_id}/snapshots/{first}/verify", json={})
    assert resp.status == 404 and first in (await resp.json())["error"]
    again = await operation(app_client, f"/api/jobs/{job_id}/prune")
    assert again["state"] == "succeeded" and again["files"] == 0, again


# --- deleting a job ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_deleting_a_job_with_a_queued_restore_is_refused_then_cancels_it(
        app_client: Client, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "a.txt", b"small")
    job_id, snap = await backed_up(app_client, "mirror", src, tmp_path)
    backup, hold = await behind_a_held_backup(app_client, job_id)
    target = tmp_path / "restored"
    run_id = await queue(app_client, restore_url(job_id, snap), {"target": str(target)})
    refused = await app_client.delete(f"/api/jobs/{job_id}")
    assert refused.status == 409, await refused.text()
    threading.Timer(0.3, hold.release.set).start()
    deleted = await app_client.delete(f"/api/jobs/{job_id}?cancel=true")
    hold.release.set()
    assert deleted.status == 200, await deleted.text()
    gone = await app_client.get(f"/api/runs/{run_id}")
    assert gone.status == 404
    await asyncio.sleep(0.3)
    assert not target.exists()  # the restore never ran
    assert (await app_client.get(f"/api/runs/{backup}")).status == 404


# --- two jobs restoring into one target at once -----------------------------------------------


@pytest.mark.timeout(60)
async def test_two_jobs_restoring_the_same_folder_name_into_one_target_do_not_mix(
        app_client: Client, tmp_path: Path) -> None:
    """Two jobs (two destinations, so they may run at once) whose sources share a name:
    both restores passed their checks, so without care the later writer silently
    replaces the other's files although neither allowed overwriting."""
    laptop, desktop = tmp_path / "laptop" / "docs", tmp_path / "desktop" / "docs"
    write(laptop / "letter.txt", b"from the laptop")
    write(desktop / "letter.txt", b"from the desktop")
    jobs = []
    for name, src in (("Laptop", laptop), ("Desktop", desktop)):
        resp = await app_client.post("/api/jobs", json={
            "name": name, "engine": "mirror", "sources": [str(src)],
            "destination": str(tmp_path / f"dest-{name}")})
        assert resp.status == 201, await resp.text()
        job_id = str((await resp.json())["id"])
        run = await wait_run(app_client, await start(app_client, job_id), {"succeeded"})
        jobs.append((job_id, str(run["snapshot_id"])))
    target = tmp_path / "restored"
    holds = hold_at(app_client, "restoring")
    first = await queue(app_client, restore_url(*jobs[0]), {"target": str(target)})
    hold = await held(holds)  # checked, target made, nothing written yet
    second = await queue(app_client, restore_url(*jobs[1]), {"target": str(target)})
    for _ in range(200):  # the second either holds at its own start or ends at once
        state = (await wait_run(app_client, second, {"running", "failed", "succeeded"}))
        if (len(holds) > 1 and holds[1].reached.is_set()) or state["state"] != "running":
            break
        await asyncio.sleep(0.02)
    for h in holds[1:]:
        h.release.set()
    two = await wait_run(app_client, second, {"succeeded", "failed", "cancelled"})
    hold.release.set()
    one = await wait_run(app_client, first, {"succeeded", "failed", "cancelled"})
    ended = {one["state"], two["state"]}
    assert ended == {"succeeded", "failed"}, (one, two)
    failed = one if one["state"] == "failed" else two
    assert str(target) in failed["error"], failed
    winner = b"from the laptop" if one["state"] == "succeeded" else b"from the desktop"
    assert (target / "docs" / "letter.txt").read_bytes() == winner


def test_the_queue_time_check_keeps_a_folder_made_meanwhile_by_someone_else(
        tmp_path: Path) -> None:
    """The preflight removes what the engine made before its first "restoring" report;
    a folder another restore (or a person) made in the target meanwhile is not its own."""
    from core.operations import preflight_restore

    class Meanwhile:
        def restore(self, spec: Any, snapshot_id: str, target: Path, control: Any,
                    reporter: Any, path: str | None, overwrite: bool) -> None:
            target.mkdir(parents=True, exist_ok=True)
            (target / "docs").mkdir()  # another restore's folder, its files to come
            reporter.progress(Progress(phase="restoring"))

    target = tmp_path / "restored"
    target.mkdir()
    preflight_restore(Meanwhile(), None, "snap", target, None, False)  # type: ignore[arg-type]
    assert (target / "docs").is_dir()


# --- retention and a restore waiting for its snapshot -----------------------------------------


@pytest.mark.timeout(60)
async def test_a_backups_retention_keeps_the_snapshot_a_queued_restore_waits_for(
        app_client: Client, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "a.txt", b"yesterday")
    job_id, snap = await backed_up(app_client, "mirror", src, tmp_path)
    await app_client.put(f"/api/jobs/{job_id}", json={"retention": {"keep_last": 1}})
    await asyncio.sleep(1.1)  # snapshot ids are made of the second they start in
    write(src / "a.txt", b"today")
    backup, hold = await behind_a_held_backup(app_client, job_id)
    target = tmp_path / "restored"
    run_id = await queue(app_client, restore_url(job_id, snap), {"target": str(target)})
    hold.release.set()
    assert (await wait_run(app_client, backup, {"succeeded"}))["state"] == "succeeded"
    run = await wait_run(app_client, run_id, {"succeeded", "failed", "cancelled"})
    assert run["state"] == "succeeded", run  # accepted with a 202, then its snapshot went
    assert (target / "src" / "a.txt").read_bytes() == b"yesterday"
    # Held only while the restore waited: the next backup's retention prunes it.
    delattr(app_client.app[RUNNER], "_reporter")  # runs report as usual again, unheld
    again = await app_client.post(f"/api/jobs/{job_id}/start", json={})
    assert (await wait_run(app_client, (await again.json())["run_id"],
                           {"succeeded"}))["state"] == "succeeded"
    listed = (await (await app_client.get(f"/api/jobs/{job_id}/snapshots")).json())["snapshots"]
    assert snap not in {s["id"] for s in listed} and len(listed) == 1, listed


# --- paths as a person types them -------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_a_path_typed_with_a_trailing_slash_or_a_leading_one_is_answered_in_words(
        app_client: Client, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "docs" / "letter.txt", b"dear you")
    job_id, snap = await backed_up(app_client, "mirror", src, tmp_path)
    for n, path in enumerate(("src/docs/", "/src/docs", "./src/docs", "src//docs",
                              "src/../src/docs")):
        target = tmp_path / f"target-{n}"
        resp = await app_client.post(restore_url(job_id, snap),
                                     json={"target": str(target), "path": path})
        if resp.status == 202:
            run = await wait_run(app_client, (await resp.json())["run_id"],
                                 {"succeeded", "failed", "cancelled"})
            assert run["state"] == "succeeded", (path, run)
            assert (target / "src" / "docs" / "letter.txt").read_bytes() == b"dear you"
        else:
            assert resp.status == 400, (path, await resp.text())
            assert "path" in (await resp.json())["fields"], path
            assert not target.exists(), path


@pytest.mark.timeout(60)
@pytest.mark.parametrize("engine", ENGINES)
async def test_overwrite_where_a_file_stands_in_place_of_a_folder_ends_clearly(
        app_client: Client, tmp_path: Path, engine: str,
        request: pytest.FixtureRequest) -> None:
    src = tmp_path / "src"
    write(src / "docs" / "letter.txt", b"dear you")
    job_id, snap = await backed_up(app_client, engine, src, tmp_path,
                                   template_for(engine, request))
    target = tmp_path / "restored"
    write(target / "src" / "docs", b"a file named like the folder")
    resp = await app_client.post(restore_url(job_id, snap),
                                 json={"target": str(target), "overwrite": True})
    if resp.status == 202:
        run = await wait_run(app_client, (await resp.json())["run_id"],
                             {"succeeded", "failed", "cancelled"})
        assert run["state"] == "succeeded", run["error"]
        assert (target / "src" / "docs" / "letter.txt").read_bytes() == b"dear you"
    else:
        assert resp.status == 409, await resp.text()
        assert "docs" in (await resp.json())["error"]
        assert (target / "src" / "docs").read_bytes() == b"a file named like the folder"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("typed", ["src/docs", "/src/docs", "./src/docs", "src/docs/"])
async def test_a_path_typed_another_way_is_the_same_path_to_every_check(
        app_client: Client, tmp_path: Path, typed: str) -> None:
    """The checks take the folder a restore writes from the path's first part: a leading
    "/" or "./" must not make that the whole target (refused as around the job's
    destination, and swept whole after a crash)."""
    src = tmp_path / "a" / "src"
    write(src / "docs" / "letter.txt", b"dear you")
    home = tmp_path / "home"
    resp = await app_client.post("/api/jobs", json={
        "name": "Typed", "engine": "mirror", "sources": [str(src)],
        "destination": str(home / "backups")})
    job_id = str((await resp.json())["id"])
    snap = (await wait_run(app_client, await start(app_client, job_id),
                           {"succeeded"}))["snapshot_id"]
    # Restoring into the folder around the destination writes home/src only: allowed.
    run = await operation(app_client, restore_url(job_id, snap),
                          {"target": str(home), "path": typed})
    assert run["state"] == "succeeded", run
    assert run["params"]["path"] == "src/docs"
    assert (home / "src" / "docs" / "letter.txt").read_bytes() == b"dear you"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["caf\udce9", "new\nline", "tab\there", "x" * 255])
async def test_an_odd_target_name_restores_there_or_is_refused_in_words(
        app_client: Client, tmp_path: Path, name: str) -> None:
    """A target typed with a byte that is not UTF-8 (a lone surrogate in JSON), a newline,
    or a 255-byte name: restored into, or a 400 naming the target; never a 500."""
    src = tmp_path / "src"
    write(src / "a.txt", b"data")
    job_id, snap = await backed_up(app_client, "mirror", src, tmp_path)
    target = str(tmp_path / name)
    before = app_client.app[STORE].last_seq
    resp = await app_client.post(restore_url(job_id, snap), json={"target": target})
    if resp.status == 202:
        run = await wait_run(app_client, (await resp.json())["run_id"],
                             {"succeeded", "failed", "cancelled"})
        assert run["state"] == "succeeded", run
        assert (tmp_path / name / "src" / "a.txt").read_bytes() == b"data"
    else:
        assert resp.status == 400, await resp.text()
        answer = await resp.json()  # the target's field, or the body's bad text, named
        assert "target" in answer.get("fields", {}) or "Unicode" in answer["error"], answer
        assert app_client.app[STORE].last_seq == before


# --- pause and resume on every engine -----------------------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("engine", ENGINES)
async def test_a_paused_restore_resumes_to_the_whole_tree(
        app_client: Client, tmp_path: Path, engine: str,
        request: pytest.FixtureRequest) -> None:
    src = make_tree(tmp_path / "src", small_files=40, large_bytes=256 * 1024)
    job_id, snap = await backed_up(app_client, engine, src, tmp_path,
                                   template_for(engine, request))
    target = tmp_path / "restored"
    holds = hold_at(app_client, "restoring")
    run_id = await queue(app_client, restore_url(job_id, snap), {"target": str(target)})
    hold = await held(holds)
    paused = await app_client.post(f"/api/runs/{run_id}/pause", json={})
    assert paused.status == 200, await paused.text()
    hold.release.set()
    await asyncio.sleep(0.5)
    state = (await (await app_client.get(f"/api/runs/{run_id}")).json())["state"]
    assert state in ("paused", "succeeded"), state
    if state == "paused":
        resumed = await app_client.post(f"/api/runs/{run_id}/resume", json={})
        assert resumed.status == 200, await resumed.text()
    run = await wait_run(app_client, run_id, {"succeeded", "failed", "cancelled"})
    assert run["state"] == "succeeded", run
    assert tree_signature(target / "src") == tree_signature(src)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("engine", ENGINES)
async def test_a_restore_cancelled_while_paused_ends_cancelled_and_frees_its_target(
        app_client: Client, tmp_path: Path, engine: str,
        request: pytest.FixtureRequest) -> None:
    src = make_tree(tmp_path / "src", small_files=20, large_bytes=64 * 1024)
    job_id, snap = await backed_up(app_client, engine, src, tmp_path,
                                   template_for(engine, request))
    target = tmp_path / "restored"
    holds = hold_at(app_client, "restoring")
    run_id = await queue(app_client, restore_url(job_id, snap), {"target": str(target)})
    hold = await held(holds)
    await app_client.post(f"/api/runs/{run_id}/pause", json={})
    hold.release.set()
    await asyncio.sleep(0.3)
    await app_client.post(f"/api/runs/{run_id}/cancel", json={})
    run = await wait_run(app_client, run_id, {"succeeded", "failed", "cancelled"})
    assert run["state"] in ("cancelled", "succeeded"), run
    await asyncio.sleep(0.3)
    assert run_id not in app_client.app[RUNNER].active
    hold_at(app_client, "no such phase")
    again = await operation(app_client, restore_url(job_id, snap),
                            {"target": str(target), "overwrite": True})
    assert again["state"] == "succeeded", again
    assert tree_signature(target / "src") == tree_signature(src)
    leftovers = [p for p in target.rglob("*") if p.name.startswith((".bm-", ".restic-"))]
    assert leftovers == []

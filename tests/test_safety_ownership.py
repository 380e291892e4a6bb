"""A destination belongs to one job; restores never write into backups; engines stay put.

Issue 12, items 1, 5 and 12, through the real app, real files and real mirror runs.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from core.ownership import overlap
from server.keys import STATE, STORE
from tests.api_helpers import wait_run
from tests.engine_helpers import write
from tests.operation_helpers import operation

Client = TestClient[web.Request, web.Application]


def mirror(name: str, src: Path, dest: Path | str, **extra: Any) -> dict[str, Any]:
    """A mirror job body (its schedule off)."""
    return {"name": name, "engine": "mirror", "sources": [str(src)],
            "destination": str(dest), "enabled": False, **extra}


async def create(client: Client, body: dict[str, Any]) -> dict[str, Any]:
    """Create a job that must be accepted."""
    resp = await client.post("/api/jobs", json=body)
    answer: dict[str, Any] = await resp.json()
    assert resp.status == 201, answer
    return answer


async def refused(client: Client, method: str, url: str, body: dict[str, Any],
                  status: int = 400) -> dict[str, Any]:
    """Send a request that must be refused with a message, appending nothing."""
    store = client.app[STORE]
    before = store.last_seq
    resp = await client.request(method, url, json=body)
    answer: dict[str, Any] = await resp.json()
    assert resp.status == status, answer
    assert store.last_seq == before, "a refused request appended events"
    return answer


async def test_a_second_job_on_the_same_destination_is_refused_naming_the_owner(
        app_client: Client, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "x.txt", b"a")
    write(b / "y.txt", b"b")
    photos = await create(app_client, mirror("Photos", a, tmp_path / "backup"))
    answer = await refused(app_client, "POST", "/api/jobs",
                           mirror("Music", b, tmp_path / "backup"))
    assert f"is used by job Photos (id {photos['id']})" in answer["fields"]["destination"]
    # The same folder written differently, or through a symlink, is the same place.
    (tmp_path / "link").symlink_to(tmp_path / "backup", target_is_directory=True)
    (tmp_path / "backup").mkdir()
    for same in (f"{tmp_path}/./backup/", f"{tmp_path}//backup", tmp_path / "link"):
        answer = await refused(app_client, "POST", "/api/jobs", mirror("Music", b, same))
        assert "Photos" in answer["fields"]["destination"], same


async def test_a_destination_inside_or_around_another_is_refused_for_every_engine(
        app_client: Client, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "x.txt", b"x")
    (tmp_path / "pw").write_text("secret\n")
    photos = await create(app_client, mirror("Photos", src, tmp_path / "backups" / "photos"))
    restic = {"password_file": str(tmp_path / "pw"), "init": True}
    cases = [
        (mirror("Inside", src, tmp_path / "backups" / "photos" / "sub"), "is inside"),
        (mirror("Around", src, tmp_path / "backups"), "contains"),
        ({**mirror("Repo", src, tmp_path / "backups" / "photos" / "repo"),
          "engine": "restic", "options": restic}, "is inside"),
        ({**mirror("Archive", src, tmp_path / "backups"), "engine": "archive"}, "contains"),
        ({**mirror("Rsync", src, tmp_path / "backups" / "photos"), "engine": "rsync"},
         "is used by"),
    ]
    for body, words in cases:
        answer = await refused(app_client, "POST", "/api/jobs", body)
        message = answer["fields"]["destination"]
        assert words in message and f"job Photos (id {photos['id']})" in message, message
    # A sibling folder is fine.
    await create(app_client, mirror("Sibling", src, tmp_path / "backups" / "music"))


async def test_moving_a_job_onto_another_jobs_destination_is_refused(
        app_client: Client, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "x.txt", b"x")
    await create(app_client, mirror("Photos", src, tmp_path / "d1"))
    music = await create(app_client, mirror("Music", src, tmp_path / "d2"))
    answer = await refused(app_client, "PUT", f"/api/jobs/{music['id']}",
                           {"destination": str(tmp_path / "d1" / "music")})
    assert "Photos" in answer["error"]
    renamed = await app_client.put(f"/api/jobs/{music['id']}", json={"name": "Songs"})
    assert renamed.status == 200  # its own destination is no conflict with itself


async def test_two_jobs_saved_at_once_cannot_both_take_one_destination(
        app_client: Client, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "x.txt", b"x")
    answers = await asyncio.gather(*[
        app_client.post("/api/jobs", json=mirror(f"Job {i}", src, tmp_path / "same"))
        for i in range(6)])
    assert sorted(r.status for r in answers) == [201] + [400] * 5
    owners = [j for j in app_client.app[STATE].jobs.values()
              if j.spec["destination"] == str(tmp_path / "same")]
    assert len(owners) == 1


def test_remote_repositories_compare_by_their_url() -> None:
    assert overlap("s3:s3.example.com/bucket", "s3:s3.example.com/bucket/") == "equal"
    assert overlap("s3:s3.example.com/bucket/sub", "S3:s3.example.com/bucket") == "inside"
    assert overlap("sftp:host:/srv/repo", "sftp:host:/srv/repo2") is None
    assert overlap("local:/srv/repo", "/srv/repo") == "equal"
    assert overlap("rest:http://host:8000/", "/srv/repo") is None


async def backed_up(client: Client, tmp_path: Path) -> tuple[dict[str, Any], str, Path]:
    """A mirror job with one finished snapshot: the job, the snapshot id, the source."""
    src = tmp_path / "home" / "docs"
    write(src / "a.txt", b"first\n")
    write(src / "sub" / "b.txt", b"second\n")
    job = await create(client, mirror("Docs", src, tmp_path / "home" / "backups"))
    run = await (await client.post(f"/api/jobs/{job['id']}/start", json={})).json()
    await wait_run(client, run["run_id"], {"succeeded"})
    snaps = (await (await client.get(f"/api/jobs/{job['id']}/snapshots")).json())["snapshots"]
    return job, snaps[0]["id"], src


async def test_restoring_into_or_around_the_destination_is_refused_and_records_nothing(
        app_client: Client, tmp_path: Path) -> None:
    job, snap, src = await backed_up(app_client, tmp_path)
    dest = Path(job["destination"])
    url = f"/api/jobs/{job['id']}/snapshots/{snap}/restore"
    snapshot_dir = dest / next(n for n in os.listdir(dest) if snap in n)
    targets = [dest, snapshot_dir, snapshot_dir / "docs", dest / "new-folder"]
    (tmp_path / "outer").mkdir()
    (tmp_path / "outer" / "docs").symlink_to(dest, target_is_directory=True)
    targets.append(tmp_path / "outer")  # restoring writes outer/docs/...: the destination
    for target in targets:
        answer = await refused(app_client, "POST", url, {"target": str(target),
                                                         "overwrite": True})
        assert "restore target" in answer["error"] and "choose a folder outside" in \
            answer["error"], answer
    verify = await operation(app_client, f"/api/jobs/{job['id']}/snapshots/{snap}/verify")
    assert verify["state"] == "succeeded", verify  # the snapshot is untouched
    # Back into the original place: writes home/docs, next to home/backups: allowed.
    (src / "a.txt").unlink()
    run = await operation(app_client, url, {"target": str(src.parent), "overwrite": True})
    assert run["state"] == "succeeded", run
    assert (src / "a.txt").read_bytes() == b"first\n"


async def test_restoring_into_another_jobs_destination_is_refused(
        app_client: Client, tmp_path: Path) -> None:
    """A restore must not write into the backups of another job either."""
    job, snap, _ = await backed_up(app_client, tmp_path)
    other_src = tmp_path / "other-src"
    write(other_src / "x.txt", b"x\n")
    other = await create(app_client, mirror("Other", other_src, tmp_path / "other-backups"))
    url = f"/api/jobs/{job['id']}/snapshots/{snap}/restore"
    for target in (Path(other["destination"]), Path(other["destination"]) / "inside"):
        answer = await refused(app_client, "POST", url, {"target": str(target)})
        assert "Other" in answer["error"], answer
    assert not (Path(other["destination"]) / "inside").exists()


async def test_an_engine_change_is_refused_once_the_job_has_backups(
        app_client: Client, tmp_path: Path) -> None:
    job, _, _ = await backed_up(app_client, tmp_path)
    answer = await refused(app_client, "PUT", f"/api/jobs/{job['id']}", {"engine": "archive"})
    message = answer["fields"]["engine"]
    assert "backups made by the mirror engine" in message and "new job" in message
    # A job that has never backed anything up may change its engine freely.
    fresh = await create(app_client, mirror("Fresh", tmp_path / "home" / "docs",
                                            tmp_path / "fresh"))
    resp = await app_client.put(f"/api/jobs/{fresh['id']}", json={"engine": "archive"})
    assert resp.status == 200 and (await resp.json())["engine"] == "archive"


async def test_a_destination_inside_a_source_through_a_symlink_is_refused(
        app_client: Client, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "x.txt", b"x")
    (tmp_path / "backups").symlink_to(src, target_is_directory=True)
    answer = await refused(app_client, "POST", "/api/jobs",
                           mirror("Loop", src, tmp_path / "backups" / "loop"))
    assert f"is inside source {src}" in answer["fields"]["destination"]

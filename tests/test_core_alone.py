"""The core built and run on its own, with no web server: a job backs up end to end."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from core.build import CoreConfig, build_core
from events.store import EventStore
from tests.engine_helpers import make_tree, tree_signature


async def test_the_core_alone_runs_a_backup_into_the_destination(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", small_files=20, large_bytes=64 * 1024)
    dest = tmp_path / "backups"
    data = tmp_path / "data"
    store = await EventStore.open(data / "events.db")
    core = build_core(store, CoreConfig(data_dir=data))
    try:
        await core.start()
        job = await core.commands.create_job({
            "name": "Docs", "engine": "mirror", "sources": [str(src)],
            "destination": str(dest)})
        run = await core.commands.start_run(job.job_id)
        async with asyncio.timeout(60):
            while True:
                if core.state.runs[run.run_id].state in ("succeeded", "failed"):
                    break
                await asyncio.sleep(0.02)
        done = core.state.runs[run.run_id]
        assert done.state == "succeeded", done.error
        assert done.snapshot_id is not None
        assert tree_signature(dest / done.snapshot_id / "src") == tree_signature(src)
        assert core.queries is not None and core.projector.healthy
    finally:
        await core.stop()
        await store.close()
    # The run log was written and closed, the YAML projection caught up.
    assert "succeeded" in (data / "logs" / "runs" / f"{run.run_id}.log").read_text()
    assert (data / "jobs" / f"{job.job_id}.yaml").is_file()


async def test_a_core_built_but_never_started_stops_cleanly(tmp_path: Path) -> None:
    store = await EventStore.open(tmp_path / "events.db")
    core = build_core(store, CoreConfig(data_dir=tmp_path))
    await core.stop()
    await store.close()


def test_building_the_core_loads_no_web_server() -> None:
    # In a fresh interpreter: this one has the server loaded by other tests.
    probe = ("import sys, core.build; print(sorted(m for m in sys.modules if m.split('.')[0] "
             "in ('server', 'aiohttp_jinja2', 'jinja2') or m.startswith('aiohttp.web')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parent.parent, timeout=60)
    assert out.stdout.strip() == "[]"

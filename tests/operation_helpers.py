"""Restores, verifies and prunes are runs: ask for one, check the 202, wait for its end."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from typing import Any

from core.active import RunReporter
from core.state import RunView
from engines.base import Progress, Reporter
from server.keys import RUNNER
from tests.api_helpers import Client, wait_run
from tests.cli_helpers import Api

ENDED = {"succeeded", "failed", "cancelled"}


async def operation(client: Client, url: str, body: Any = None,
                    within: float = 60) -> dict[str, Any]:
    """POST a restore, verify or prune to the test app; return the run once it ended."""
    resp = await client.post(url, json={} if body is None else body)
    assert resp.status == 202, await resp.text()
    answer = await resp.json()
    assert answer["state"] == "queued" and answer["url"] == f"/api/runs/{answer['run_id']}"
    return await wait_run(client, answer["run_id"], ENDED, within)


async def api_operation(api: Api, path: str, body: Any = None,
                        within: float = 120) -> dict[str, Any]:
    """The same against a real server process; return the run once it ended."""
    answer = await api.call("POST", path, {} if body is None else body)
    run: dict[str, Any] = await api.wait_state(answer["run_id"], ENDED, within)
    return run


class HoldAt:
    """A run's reporter that holds the engine's thread at a phase until released."""

    def __init__(self, inner: Reporter, phase: str) -> None:
        self.inner, self.phase = inner, phase
        self.reached, self.release = threading.Event(), threading.Event()

    def progress(self, progress: Progress) -> None:
        """Hold once at the phase (a few seconds at most), then pass the report on."""
        if progress.phase == self.phase and not self.reached.is_set():
            self.reached.set()
            self.release.wait(30)
        self.inner.progress(progress)

    def checkpoint(self, state: Mapping[str, Any]) -> None:
        """Pass a checkpoint on."""
        self.inner.checkpoint(state)

    def warning(self, message: str) -> None:
        """Pass a warning on."""
        self.inner.warning(message)


def hold_at(client: Client, phase: str) -> list[HoldAt]:
    """Give every run the app starts from now on a HoldAt reporter; return them as made."""
    runner = client.app[RUNNER]
    made: list[HoldAt] = []

    def reporter(run: RunView) -> Reporter:
        made.append(HoldAt(RunReporter(runner, run, asyncio.get_running_loop()), phase))
        return made[-1]
    setattr(runner, "_reporter", reporter)  # noqa: B010 - the runner's hook for a moment
    return made

"""Restores, verifies and prunes are runs: ask for one, check the 202, wait for its end."""

from __future__ import annotations

from typing import Any

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

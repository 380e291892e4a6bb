"""At 1,000 jobs and 100,000 events every page and API list answers bounded in size.

Not timed (speed figures live in bench/pages.py): the data is built once per session
(tests/scale_helpers.py) and served once for this module.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.scale_helpers import Client, ScaleData, scale_data, serve_scale

__all__ = ["scale_data"]  # the fixture, used by name

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(scale_data: ScaleData) -> AsyncIterator[Client]:
    """The app serving the scale data, once for the module."""
    async with serve_scale(scale_data.data_dir) as c:
        yield c


async def test_the_scale_data_is_what_it_says(client: Client, scale_data: ScaleData) -> None:
    """1,000 jobs, 100,000 events, the queued runs still queued."""
    from server.keys import STATE, STORE

    state = client.app[STATE]
    assert len(state.jobs) == 1_000
    assert client.app[STORE].last_seq == 100_000
    queued = [r for r in state.active_runs() if r.state == "queued"]
    assert len(queued) == len(scale_data.queued_run_ids) == 900

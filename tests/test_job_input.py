"""Job input: whatever a form or a script sends, a clear 4xx or a valid job, never a 500."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engines.registry import ENGINE_NAMES, catalog
from models.job import JobInvalid, JobSpec
from server.app import create_app
from server.config import Config
from server.keys import STORE

NASTY_TEXT = st.one_of(
    st.text(max_size=50),
    st.sampled_from(["", " ", "..", "../etc", "/", "/a/../b", "relative/path", "\x00", "/a\x00b",
                     "x" * 5000, "/" + "x" * 5000, "🚀/💾", "C:\\Windows", "~/docs", "/tmp/./x",
                     "0 3 * * *", "61 * * * *", "every 0 minutes", "every 5 minutes", "@daily"]),
)
VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(), NASTY_TEXT),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.text(max_size=12), children, max_size=4)),
    max_leaves=12)
FIELDS = ["name", "engine", "sources", "destination", "include", "exclude", "schedule",
          "retention", "options", "enabled", "webhook_url"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from([*FIELDS, "junk"]), VALUES, max_size=len(FIELDS)))
def test_any_input_is_a_valid_spec_or_field_errors(data: dict[str, Any]) -> None:
    try:
        spec = JobSpec.from_input(data, engines=catalog())
    except JobInvalid as err:
        assert err.errors and all(isinstance(m, str) and m for m in err.errors.values())
        assert set(err.errors) <= {*FIELDS, "_"}
        return
    # Whatever was accepted is clean: absolute paths without '..', a known engine.
    assert spec.engine in ENGINE_NAMES
    assert all(s.startswith("/") and ".." not in s.split("/") for s in spec.sources)
    assert spec.destination.startswith("/")  # no engine takes a remote destination yet
    assert JobSpec.from_input(spec.to_dict(), engines=catalog()) == spec


@given(st.sampled_from(ENGINE_NAMES),
       st.lists(st.sampled_from(["/home/a", "/srv/data", "/var/www"]), min_size=1,
                max_size=3, unique=True))
def test_well_formed_specs_round_trip(engine: str, sources: list[str]) -> None:
    spec = JobSpec.from_input({"name": "n", "engine": engine, "sources": sources,
                               "destination": "/backups/x", "schedule": "every 6 hours",
                               "retention": {"keep_daily": 7}}, engines=catalog())
    assert spec.sources == tuple(sources) and spec.retention.keep_daily == 7


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(body=st.one_of(st.dictionaries(st.sampled_from([*FIELDS, "junk"]), VALUES,
                                      max_size=len(FIELDS)), VALUES))
def test_api_answers_any_body_with_4xx_or_201_and_appends_only_on_201(
        tmp_path_factory: pytest.TempPathFactory, body: Any) -> None:
    async def scenario() -> None:
        app = create_app(Config(data_dir=tmp_path_factory.mktemp("d"), log_to_file=False))
        async with TestClient(TestServer(app)) as client:
            before = app[STORE].last_seq
            resp = await client.post("/api/jobs", json=body)
            assert resp.status == 201 or 400 <= resp.status < 500, await resp.text()
            answer = await resp.json()
            if resp.status != 201:
                assert answer["error"]
                assert app[STORE].last_seq == before
            else:
                assert app[STORE].last_seq == before + 1

    asyncio.run(scenario())

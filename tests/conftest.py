"""Shared fixtures: a real SQLite event log in a temp dir, and the real app."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from events.store import EventStore
from events.types import JobCreated
from server.app import create_app
from server.auth import create_token
from server.config import Config

pytest_plugins = ["tests.browser_helpers"]  # Playwright fixtures: live_server, browser, page

# Whole modules that take tens of seconds each (real servers killed and restarted, the
# browser, the one-file build, every engine against its contract, restic repositories):
# `pytest -m "not slow"` leaves them out for a quick run; `make test` runs everything.
SLOW_MODULES = frozenset({
    "test_torture_kills", "test_torture_load", "test_torture_corruption",
    "test_torture_input", "test_engine_contract", "test_engine_restic", "test_dist",
    "test_deploy", "test_browser_journey", "test_browser_a11y", "test_browser_smoke",
    "test_safety_restic", "test_safety_runs", "test_safety_eventlog", "test_recovery",
    "test_safety_children", "test_cli", "test_leftover_programs", "test_web_build",
    # rsync run for real on each odd case (a second apiece); test_engine_rsync stays fast.
    "test_safety_rsync",
    # Restore, verify and prune runs at the edges, on every engine (restic's take seconds).
    "test_operation_edges",
    # 1,000 jobs and 100,000 events built once and served (tests/scale_helpers.py): ~10 s.
    "test_scale",
})
# Single tests of several seconds in otherwise quick modules (gigabytes of sparse zeros
# hashed, a browser, a worker killed and resumed, hundreds of generated inputs, a client
# made slow on purpose, a flood timed over two seconds, command-line processes). The
# fast subset keeps a quicker test of each behaviour; `--durations=30` finds new ones.
SLOW_TESTS = frozenset({
    "test_two_files_sharing_a_temporary_name_restore_each_with_its_own_bytes",
    "test_writing_and_reading_100000_entries_holds_memory_flat",
    "test_a_restore_holds_nothing_per_file",
    "test_a_10_gib_sparse_file_backs_up_and_restores_with_its_holes",
    "test_a_sparse_file_larger_than_the_destination_keeps_its_holes",
    "test_a_paused_rsync_dies_with_its_killed_worker_and_the_resume_completes",
    "test_in_a_browser_search_narrows_as_you_type_and_run_lines_arrive_live",
    "test_a_sparse_file_restores_sparse_onto_a_small_filesystem",
    "test_any_input_is_a_valid_spec_or_field_errors",
    "test_headers_match_tarfile_byte_for_byte",
    "test_api_answers_any_body_with_4xx_or_201_and_appends_only_on_201",
    "test_slow_ws_client_is_closed_and_does_not_delay_others",
    "test_token_command_makes_a_private_token_once_and_rotates",
    "test_a_snapshot_names_its_job_and_links_only_to_its_own_jobs_snapshots",
    "test_a_flood_of_log_records_is_cut_not_queued",
    "test_pause_resume_and_cancel_through_the_api",
    "test_retention_prunes_after_success_and_records_it",
    "test_pause_stops_rsync_resume_continues_cancel_cleans_up",
    "test_a_stop_signal_during_start_up_ends_the_server_within_a_second",
})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests of the slow modules, and the slow tests elsewhere, `slow`."""
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module is not None else ""
        if module in SLOW_MODULES or item.name.split("[", 1)[0] in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[EventStore]:
    """An open event store on a fresh events.db."""
    s = await EventStore.open(tmp_path / "events.db")
    yield s
    await s.close()


def job_spec(name: str = "Docs", **extra: object) -> dict[str, object]:
    """A plausible job spec as a command would store it."""
    spec: dict[str, object] = {"name": name, "engine": "mirror", "sources": ["/home/a/docs"],
                               "destination": "/backups/docs", "include": [], "exclude": [],
                               "schedule": None, "options": {}}
    spec.update(extra)
    return spec


def created(job_id: str, name: str = "Docs") -> JobCreated:
    """A JobCreated event for a job id."""
    return JobCreated(job_id=job_id, spec=job_spec(name))


AppClient = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture
async def app_client(aiohttp_client: AppClient, tmp_path: Path
                     ) -> TestClient[web.Request, web.Application]:
    """A test client talking to the real app over a loopback socket."""
    config = Config(data_dir=tmp_path / "data", log_to_file=False)
    return await aiohttp_client(create_app(config))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Kill any process a failed test left behind (a paused rsync or restic would hold
    the output pipe open and hang `make test`)."""
    import contextlib
    import os
    import signal

    from tests.engine_contract_helpers import descendants

    for pid in descendants(os.getpid()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
async def guarded(aiohttp_client: AppClient, tmp_path: Path
                  ) -> tuple[TestClient[web.Request, web.Application], str]:
    """The real app with an access token set, and the token."""
    data = tmp_path / "data"
    token, _ = create_token(data)
    client = await aiohttp_client(create_app(Config(data_dir=data, log_to_file=False)))
    return client, token

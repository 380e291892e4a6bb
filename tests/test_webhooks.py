"""Webhook notifications against a real HTTP receiver on the loopback interface."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from core.state import JobView, State
from core.webhooks import RUN_CANNOT_START, RUN_FAILED, RUN_SUCCEEDED, WebhookSender

pytestmark = pytest.mark.timeout(30)

LOGGER = "core.webhooks"


@dataclass
class Received:
    """One request the receiver got."""

    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    at: float


@dataclass
class Receiver:
    """A local webhook endpoint: records requests, answers with scripted statuses."""

    base: str = ""
    statuses: list[int] = field(default_factory=list)  # answered in order, then 200
    delays: list[float] = field(default_factory=list)  # seconds to stall each answer
    received: list[Received] = field(default_factory=list)

    def url(self, path: str = "hook") -> str:
        """The receiver's URL for a path."""
        return f"{self.base}/{path}"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A real aiohttp server on 127.0.0.1, on a free port."""
    rec = Receiver()

    async def receive(request: web.Request) -> web.Response:
        rec.received.append(Received(request.path, await request.json(),
                                     dict(request.headers), time.monotonic()))
        if rec.delays:
            await asyncio.sleep(rec.delays.pop(0))
        return web.Response(status=rec.statuses.pop(0) if rec.statuses else 200)

    app = web.Application()
    app.router.add_post("/{name}", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield rec
    await runner.cleanup()


def state_with(global_url: str | None = None, job_url: str | None = None) -> State:
    """A State holding job docs-1, with the given webhook URLs."""
    state = State()
    state.settings["webhook_url"] = global_url
    spec: dict[str, Any] = {"name": "Docs", "engine": "mirror", "sources": ["/home/a/docs"],
                            "destination": "/backups/docs", "webhook_url": job_url}
    state.jobs["docs-1"] = JobView("docs-1", spec, 1, "2024-01-01T00:00:00Z",
                                   "2024-01-01T00:00:00Z")
    return state


def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def until(condition: Callable[[], bool], limit: float = 5.0) -> None:
    """Wait until a condition holds, failing the test after `limit` seconds."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_success_posts_the_notification_as_json(receiver: Receiver,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    sender = WebhookSender(state_with(global_url=receiver.url()))
    sender.notify("docs-1", "Docs", RUN_SUCCEEDED, "r-1",
                  {"snapshot_id": "2024-05-01T120000Z", "files": 12, "bytes": 3456,
                   "duration": 1.5, "event": "must not win"})
    await sender.close()
    assert (sender.delivered, sender.failed) == (1, 0)
    [got] = receiver.received
    time_sent = got.body.pop("time")
    assert got.body == {"event": "run.succeeded", "job_id": "docs-1", "job_name": "Docs",
                        "run_id": "r-1", "snapshot_id": "2024-05-01T120000Z", "files": 12,
                        "bytes": 3456, "duration": 1.5}
    assert time_sent.endswith("Z") and "T" in time_sent
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["X-Backup-Manager-Event"] == "run.succeeded"
    assert "delivered to" in caplog.text


async def test_server_errors_are_retried_with_backoff(receiver: Receiver,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    receiver.statuses = [500, 500]
    sender = WebhookSender(state_with(global_url=receiver.url()), first_delay=0.05)
    sender.notify("docs-1", "Docs", RUN_FAILED, "r-1", {"error": "disk full"})
    await sender.close()
    assert (sender.delivered, sender.failed) == (1, 0)
    assert len(receiver.received) == 3
    assert all(r.body["error"] == "disk full" for r in receiver.received)
    # One notification, one delivery id, so a receiver can drop the duplicates.
    assert len({r.headers["X-Backup-Manager-Delivery"] for r in receiver.received}) == 1
    gaps = [b.at - a.at for a, b in zip(receiver.received, receiver.received[1:], strict=False)]
    assert gaps[0] >= 0.05 * 0.9 - 0.01 and gaps[1] >= 0.1 * 0.9 - 0.01  # doubling
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("HTTP 500" in r.getMessage() for r in warnings)


async def test_a_down_server_is_tried_n_times_then_logged_as_error(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    url = f"http://127.0.0.1:{closed_port()}/hook"
    sender = WebhookSender(state_with(global_url=url), attempts=3, first_delay=0.01)
    sender.notify("docs-1", "Docs", RUN_CANNOT_START, None, {"error": "destination missing"})
    await sender.close()
    assert (sender.delivered, sender.failed) == (0, 1)
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 3
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    message = error.getMessage()
    assert f"webhook to {url} not delivered after 3 attempts" in message
    assert "run.cannot_start for job docs-1" in message


async def test_a_timeout_is_retried(receiver: Receiver) -> None:
    receiver.delays = [0.5]  # the first answer comes too late
    sender = WebhookSender(state_with(global_url=receiver.url()), first_delay=0.01,
                           timeout=0.1)
    sender.notify("docs-1", "Docs", RUN_SUCCEEDED, "r-1", {})
    await sender.close()
    assert (sender.delivered, sender.failed, len(receiver.received)) == (1, 0, 2)


async def test_a_client_error_is_not_retried(receiver: Receiver,
                                             caplog: pytest.LogCaptureFixture) -> None:
    receiver.statuses = [400]
    sender = WebhookSender(state_with(global_url=receiver.url()), first_delay=0.01)
    sender.notify("docs-1", "Docs", RUN_FAILED, "r-1", {"error": "boom"})
    await sender.close()
    assert (sender.delivered, sender.failed, len(receiver.received)) == (0, 1, 1)
    assert "refused: HTTP 400" in caplog.text


async def test_429_is_retried(receiver: Receiver) -> None:
    receiver.statuses = [429]
    sender = WebhookSender(state_with(global_url=receiver.url()), first_delay=0.01)
    sender.notify("docs-1", "Docs", RUN_FAILED, "r-1", {"error": "boom"})
    await sender.close()
    assert (sender.delivered, len(receiver.received)) == (1, 2)


async def test_the_job_url_beats_the_global_one(receiver: Receiver) -> None:
    state = state_with(global_url=receiver.url("global"), job_url=receiver.url("job"))
    sender = WebhookSender(state)
    sender.notify("docs-1", "Docs", RUN_SUCCEEDED, "r-1", {})
    # A job without its own URL (here: one the state does not know) uses the global one.
    sender.notify("other-2", "Other", RUN_SUCCEEDED, "r-2", {})
    await sender.close()
    assert sorted((r.path, r.body["job_id"]) for r in receiver.received) == [
        ("/global", "other-2"), ("/job", "docs-1")]


async def test_no_url_sends_nothing(receiver: Receiver,
                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    sender = WebhookSender(state_with())
    sender.notify("docs-1", "Docs", RUN_FAILED, "r-1", {"error": "boom"})
    assert sender.pending == 0
    await sender.close()
    assert receiver.received == []
    assert (sender.delivered, sender.failed) == (0, 0)
    assert "no webhook URL set" in caplog.text


async def test_credentials_are_used_but_never_logged(receiver: Receiver,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    receiver.statuses = [503]
    url = receiver.url("hook").replace("http://", "http://alice:s3cret@") + "?token=t0ken"
    sender = WebhookSender(state_with(global_url=url), first_delay=0.01)
    sender.notify("docs-1", "Docs", RUN_SUCCEEDED, "r-1", {})
    await sender.close()
    assert sender.delivered == 1
    assert receiver.received[-1].headers["Authorization"].startswith("Basic ")
    # Only what the sender logs counts: the receiving test server's access log (seen
    # when an earlier test left the root level at INFO) shows its own request line.
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name == LOGGER)
    assert receiver.url("hook") in ours
    assert "s3cret" not in ours and "alice" not in ours
    assert "t0ken" not in ours


async def test_close_waits_for_an_inflight_retry(receiver: Receiver) -> None:
    receiver.statuses = [500]
    sender = WebhookSender(state_with(global_url=receiver.url()), first_delay=0.2)
    sender.notify("docs-1", "Docs", RUN_FAILED, "r-1", {"error": "boom"})
    await until(lambda: len(receiver.received) == 1)
    await sender.close(wait=5)  # the retry is still 0.2 s away
    assert (sender.delivered, sender.failed, len(receiver.received)) == (1, 0, 2)


async def test_close_logs_a_retry_it_cannot_wait_for(receiver: Receiver,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    receiver.statuses = [500] * 5
    sender = WebhookSender(state_with(global_url=receiver.url()), first_delay=30)
    sender.notify("docs-1", "Docs", RUN_FAILED, "r-1", {"error": "boom"})
    await until(lambda: len(receiver.received) == 1)
    started = time.monotonic()
    await sender.close(wait=0.2)
    assert time.monotonic() - started < 2
    assert (sender.delivered, sender.failed, sender.pending) == (0, 1, 0)
    assert "not delivered after 1 attempt: the app is shutting down" in caplog.text


async def test_nothing_is_dropped_silently_at_shutdown(
        receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    receiver.delays = [1.0]
    sender = WebhookSender(state_with(global_url=receiver.url()))
    sender.notify("docs-1", "Docs", RUN_FAILED, "r-1", {"error": "boom"})
    await sender.close(wait=0)
    assert (sender.delivered, sender.failed) == (0, 1)
    assert "shutting down (run.failed for job docs-1, run r-1)" in caplog.text
    # A notification after close is not sent, but it is still logged and counted.
    sender.notify("docs-1", "Docs", RUN_FAILED, "r-2", {"error": "boom"})
    assert sender.failed == 2
    assert "came after shutdown (run.failed for job docs-1, run r-2)" in caplog.text


def test_notify_never_raises_without_a_loop(caplog: pytest.LogCaptureFixture) -> None:
    sender = WebhookSender(state_with(global_url="http://127.0.0.1:9/hook"))
    sender.notify("docs-1", "Docs", RUN_FAILED, "r-1", {"error": "boom"})
    assert sender.failed == 1
    assert "could not be queued" in caplog.text


def test_backoff_doubles_and_is_capped() -> None:
    sender = WebhookSender(State(), first_delay=1.0, max_delay=5.0)
    for attempt, expected in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (10, 5.0), (500, 5.0)]:
        delay = sender.backoff(attempt)
        assert expected * 0.9 <= delay <= expected

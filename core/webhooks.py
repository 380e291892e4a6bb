"""Webhook notifications: a JSON POST when a run succeeds, fails or cannot even start.

The issue asks that a notification is "never lost silently, a failed delivery is
logged". So each notification is delivered by its own background task, retried with
exponential backoff while the failure may pass (connection error, timeout, 5xx, 429),
and every outcome is logged: info when delivered, warning for each failed attempt,
error when it is given up (refused, out of attempts, or cut off by shutdown). The
caller (the runner) never waits on a slow or dead endpoint.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp.abc import ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from core.state import State
from models.urls import link_local

log = logging.getLogger(__name__)

RUN_SUCCEEDED = "run.succeeded"
RUN_FAILED = "run.failed"
RUN_CANNOT_START = "run.cannot_start"  # destination or engine binary missing
EVENTS = frozenset({RUN_SUCCEEDED, RUN_FAILED, RUN_CANNOT_START})

CLOSE_WAIT = 5.0  # seconds close() gives pending deliveries before cancelling them
_JITTER = 0.1  # each backoff delay is shortened by up to 10% so senders do not retry in step
_USER_AGENT = "backup-manager-webhook/1"
LINK_LOCAL_REFUSED = ("is a link-local address (where cloud metadata services live); set "
                      "allow_link_local_webhooks in Settings to allow it")


class LinkLocalRefused(OSError):
    """A webhook host resolved to a link-local address that the settings do not allow."""


class _GuardedResolver(ThreadedResolver):
    """Resolves as usual, but refuses a host that resolves to a link-local address.

    The check sits in the resolver the connection itself uses, so a name that
    resolved elsewhere at first and to 169.254.169.254 now (DNS rebinding) is refused too.
    """

    def __init__(self, state: State) -> None:
        super().__init__()
        self.state = state

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        """The host's addresses, unless one is link-local and that is not allowed."""
        found = await super().resolve(host, port, family)
        if not _link_local_allowed(self.state):
            for item in found:
                if link_local(item["host"]):
                    raise LinkLocalRefused(f"{host} resolves to {item['host']}, which "
                                           f"{LINK_LOCAL_REFUSED}")
        return found


def _link_local_allowed(state: State) -> bool:
    return state.settings.get("allow_link_local_webhooks") is True


@dataclass
class _Delivery:
    """One notification on its way: what to send, where, and how far it got."""

    url: str
    shown_url: str  # the URL as logged: no user, password, query or fragment
    body: bytes
    event: str
    delivery_id: str  # the same on every attempt, so a receiver can drop duplicates
    what: str  # "run.failed for job docs-1, run r-1", for log lines
    attempts: int = 0
    last_error: str = ""
    finished: bool = False  # delivered or given up (and logged as such)


class WebhookSender:
    """Posts run notifications to the job's own or the global webhook URL, with retries."""

    def __init__(self, state: State, attempts: int = 5, first_delay: float = 1.0,
                 max_delay: float = 60.0, timeout: float = 10.0) -> None:
        if attempts < 1 or first_delay < 0 or max_delay < 0 or timeout <= 0:
            raise ValueError("attempts must be at least 1, delays not negative, timeout positive")
        self.state = state
        self.attempts, self.first_delay, self.max_delay = attempts, first_delay, max_delay
        self.timeout = timeout
        self.delivered = 0
        self.failed = 0
        self._session: aiohttp.ClientSession | None = None
        # Strong references: the loop keeps only weak ones, and a collected task would
        # drop its notification without a trace.
        self._tasks: dict[asyncio.Task[None], _Delivery] = {}
        self._closed = False

    @property
    def pending(self) -> int:
        """How many notifications are still being delivered."""
        return len(self._tasks)

    def webhook_url(self, job_id: str) -> str | None:
        """Where a job's notifications go: its own URL, else the global one, else None."""
        job = self.state.jobs.get(job_id)
        own = job.spec.get("webhook_url") if job is not None else None
        url = own or self.state.settings.get("webhook_url")
        return str(url) if url else None

    def notify(self, job_id: str, job_name: str, event: str, run_id: str | None,
               detail: Mapping[str, Any]) -> None:
        """Send a notification in the background; returns at once and never raises."""
        try:
            self._schedule(job_id, job_name, event, run_id, detail)
        except Exception:  # a notification problem must never break the run that reports it
            self.failed += 1
            log.exception("webhook %s for job %s could not be queued", event, job_id)

    async def close(self, wait: float = CLOSE_WAIT) -> None:
        """Give pending deliveries up to `wait` seconds, log the rest as undelivered, close."""
        self._closed = True
        if self._tasks:
            _, unfinished = await asyncio.wait(set(self._tasks), timeout=wait)
            undelivered = [self._tasks[t] for t in unfinished]
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
            for delivery in undelivered:
                # A task cancelled before it ever ran could not log for itself.
                self._give_up(delivery, "the app is shutting down")
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- internals ------------------------------------------------------------------

    def _schedule(self, job_id: str, job_name: str, event: str, run_id: str | None,
                  detail: Mapping[str, Any]) -> None:
        what = f"{event} for job {job_id}" + (f", run {run_id}" if run_id else "")
        url = self.webhook_url(job_id)
        if url is None:
            log.debug("no webhook URL set; %s not sent", what)
            return
        if event not in EVENTS:
            log.warning("unknown webhook event %r; sending it anyway", event)
        body: dict[str, Any] = {"event": event, "job_id": job_id, "job_name": job_name,
                                "run_id": run_id, "time": _utc_now()}
        for key, value in detail.items():
            body.setdefault(key, value)  # detail adds facts, it cannot relabel the event
        # Serialized now, so later changes to `detail` cannot alter what is sent.
        data = json.dumps(body, default=str).encode()
        delivery = _Delivery(url, _shown(url), data, event, uuid.uuid4().hex, what)
        if self._closed:
            self._give_up(delivery, "it came after shutdown")
            return
        task = asyncio.get_running_loop().create_task(self._deliver(delivery),
                                                      name=f"webhook-{event}")
        self._tasks[task] = delivery
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)

    async def _deliver(self, d: _Delivery) -> None:
        """Post until delivered, refused, or out of attempts; log the outcome."""
        try:
            for attempt in range(1, self.attempts + 1):
                d.attempts = attempt
                retry, reason = await self._post(d)
                if reason is None:
                    d.finished = True
                    self.delivered += 1
                    log.info("webhook %s delivered to %s (attempt %d)", d.what, d.shown_url,
                             attempt)
                    return
                d.last_error = reason
                if not retry:
                    self._give_up(d, f"refused: {reason}; not retried")
                    return
                if attempt < self.attempts:
                    delay = self.backoff(attempt)
                    log.warning("webhook to %s failed (attempt %d of %d): %s; retrying in %.2f s",
                                d.shown_url, attempt, self.attempts, reason, delay)
                    await asyncio.sleep(delay)
                else:
                    log.warning("webhook to %s failed (attempt %d of %d): %s; no attempts left",
                                d.shown_url, attempt, self.attempts, reason)
            self._give_up(d, d.last_error)
        except asyncio.CancelledError:
            self._give_up(d, "the app is shutting down")
            raise
        except Exception as err:  # a bug here must still not lose the notification silently
            log.exception("webhook %s to %s crashed", d.what, d.shown_url)
            self._give_up(d, f"internal error: {type(err).__name__}")

    async def _post(self, d: _Delivery) -> tuple[bool, str | None]:
        """One attempt: (worth retrying, None if delivered else why not)."""
        headers = {"Content-Type": "application/json", "X-Backup-Manager-Event": d.event,
                   "X-Backup-Manager-Delivery": d.delivery_id}
        host = _host(d.url)
        if link_local(host) and not _link_local_allowed(self.state):
            return False, f"{host} {LINK_LOCAL_REFUSED}"  # an IP is never resolved
        try:
            # Redirects are not followed: a client would turn the POST into a GET, and
            # a webhook that moved is a setting to fix, not something to guess around.
            async with self._client().post(d.url, data=d.body, headers=headers,
                                           allow_redirects=False) as resp:
                if 200 <= resp.status < 300:
                    return False, None
                reason = f"HTTP {resp.status} {resp.reason or ''}".rstrip()
                if 300 <= resp.status < 400:
                    reason += " (redirects are not followed)"
                return resp.status >= 500 or resp.status == 429, reason
        except TimeoutError:
            return True, f"no answer within {self.timeout:g} s"
        except aiohttp.InvalidURL:  # its message is the URL, which may hold a password
            return False, "invalid URL"
        except aiohttp.ClientConnectorError as err:
            if isinstance(err.os_error, LinkLocalRefused):
                return False, str(err.os_error)
            return True, _scrub(str(err) or type(err).__name__, d.url)
        except (aiohttp.ClientError, OSError) as err:
            return True, _scrub(str(err) or type(err).__name__, d.url)

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after a failed attempt: doubling from first_delay, capped."""
        delay = min(self.first_delay * 2.0 ** min(attempt - 1, 64), self.max_delay)
        return delay * (1 - random.uniform(0, _JITTER))

    def _give_up(self, d: _Delivery, reason: str) -> None:
        if d.finished:
            return
        d.finished = True
        self.failed += 1
        tried = f"{d.attempts} attempt{'' if d.attempts == 1 else 's'}"
        log.error("webhook to %s not delivered after %s: %s (%s)", d.shown_url, tried, reason,
                  d.what)

    def _client(self) -> aiohttp.ClientSession:
        # Created on first use, inside the running loop that will own it.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(resolver=_GuardedResolver(self.state)),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"User-Agent": _USER_AGENT})
        return self._session


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _host(url: str) -> str:
    """The URL's host without IPv6 brackets, or "" when it has none."""
    try:
        return URL(url).host or ""
    except (ValueError, TypeError):
        return ""


def _shown(url: str) -> str:
    """The URL fit for a log: without user, password, query or fragment (tokens live there)."""
    try:
        return str(URL(url).with_user(None).with_query(None).with_fragment(None))
    except (ValueError, TypeError):
        return "<invalid URL>"


def _scrub(text: str, url: str) -> str:
    """Remove the URL's password from an error message, in case the library quoted it."""
    try:
        parsed = URL(url)
    except (ValueError, TypeError):
        return text
    text = text.replace(url, _shown(url))
    for secret in (parsed.raw_password, parsed.password):
        if secret:
            text = text.replace(secret, "***")
    return text

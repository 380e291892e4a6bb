"""The application factory: one create_app(config) used by the CLI and every test."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import aiohttp_jinja2
from aiohttp import web

from core.build import CoreConfig, build_core
from events.record import StoredEvent
from events.store import FOREGROUND_CHECK_MAX, EventStore
from events.types import SettingsChanged
from server import handlers
from server.api import setup_api_routes
from server.assets import StaticAssets
from server.auth import auth_middleware, read_token, setup_auth_routes
from server.config import Config
from server.csrf import csrf_middleware, csrf_token, load_secret, session_key
from server.datadir import lock_data_dir
from server.errors import api_guard_middleware, error_middleware
from server.health import log_banner
from server.keys import (
    ASSETS,
    AUTH_TOKEN,
    COMMANDS,
    CONFIG,
    CSRF_TOKEN,
    LIVE,
    PROJECTOR,
    QUERIES,
    RUNNER,
    SCHEDULER,
    SESSION_KEY,
    STATE,
    STORE,
    WEBSOCKETS,
)
from server.loglevel import LogLevel
from server.logs import FileLog
from server.logs_page import setup_logs_routes
from server.metrics import setup_metrics_routes
from server.page_support import page_context, page_middleware, setup_templates
from server.pages import setup_page_routes
from server.security import add_security_headers, host_middleware
from server.settings_pages import setup_settings_routes
from server.ws import close_websockets, websocket

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
MAX_BODY = 1024 * 1024  # a form or JSON body larger than this gets 413
# The walk of a log of more than CHAIN_CHECK_DEFER_EVENTS events starts CHAIN_CHECK_DELAY
# seconds after serving begins: it holds the interpreter lock for seconds, and the pages
# asked for right after a start are served without it beside them. /healthz says
# "checking" meanwhile, as during the walk.
CHAIN_CHECK_DELAY = 2.0
CHAIN_CHECK_DEFER_EVENTS = 100_000


async def data_dir_ctx(app: web.Application) -> AsyncIterator[None]:
    """Lock the data directory and start the application log file in it."""
    config = app[CONFIG]
    lock = lock_data_dir(config.data_dir)
    file_log = (FileLog(config.logs_dir, config.log_level or "INFO") if config.log_to_file
                else None)
    secret = await asyncio.to_thread(load_secret, config.data_dir)
    app[CSRF_TOKEN], app[SESSION_KEY] = csrf_token(secret), session_key(secret)
    app[AUTH_TOKEN] = await asyncio.to_thread(read_token, config.data_dir)
    await asyncio.to_thread(app[ASSETS].load)
    yield
    if file_log is not None:
        file_log.close()
    lock.close()


async def store_ctx(app: web.Application) -> AsyncIterator[None]:
    """Open the event log; on cleanup write what is queued and close it."""
    # The walk of a large log's whole chain waits until the core has started (core_ctx):
    # hashing a million rows beside the start-up would slow it down for nothing.
    store = await EventStore.open(app[CONFIG].events_db, _foreground_check_max(),
                                  check_later=True)
    app[STORE] = store
    log.info("event log %s open at seq %d%s", store.path, store.last_seq,
             "; checking its hash chain in the background" if store.chain.state != "passed"
             else "")
    yield
    await store.close()
    log.info("event log closed at seq %d", store.last_seq)


def _foreground_check_max() -> int:
    """Up to how many events the chain is checked before serving (a larger log is
    checked in the background); BACKUP_MANAGER_CHAIN_FOREGROUND_MAX overrides it."""
    raw = os.environ.get("BACKUP_MANAGER_CHAIN_FOREGROUND_MAX", "")
    return int(raw) if raw.isdigit() else FOREGROUND_CHECK_MAX


def _on_sighup(levels: LogLevel) -> Callable[[], None]:
    """Reload the log level on SIGHUP (`systemctl reload`); returns the undo."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    def reload() -> None:
        task = loop.create_task(levels.reload())
        tasks.add(task)  # held until done, or the loop may drop it mid-reload
        task.add_done_callback(tasks.discard)

    try:
        loop.add_signal_handler(signal.SIGHUP, reload)
    except (NotImplementedError, RuntimeError):
        # RuntimeError: not the main thread (an app embedded in a test's thread);
        # NotImplementedError: an event loop without signal support. Either way there is
        # no reload by signal, and so nothing to undo.
        return lambda: None

    def undo() -> None:
        loop.remove_signal_handler(signal.SIGHUP)
        # Not the default action (end the process): a reload asked for during the
        # shutdown must not cut it short.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    return undo


def _start_chain_check(store: EventStore) -> asyncio.TimerHandle | None:
    """Start the background walk of the chain, a large log's a little later (the handle)."""
    if store.last_seq <= CHAIN_CHECK_DEFER_EVENTS:
        store.start_chain_check()
        return None
    return asyncio.get_running_loop().call_later(CHAIN_CHECK_DELAY, store.start_chain_check)


async def core_ctx(app: web.Application) -> AsyncIterator[None]:
    """Build the core on the open log, point the app's keys at its parts, and run it."""
    core = build_core(app[STORE], CoreConfig(app[CONFIG].data_dir))
    app[PROJECTOR], app[STATE], app[COMMANDS] = core.projector, core.state, core.commands
    app[RUNNER], app[SCHEDULER], app[QUERIES] = core.runner, core.scheduler, core.queries
    app[LIVE] = core.live
    try:
        await core.load()
        # The level is applied before recovery and the runner start, so what they log
        # shows at the level asked for; it needs the settings the log was folded into.
        levels = LogLevel(app[CONFIG], lambda: core.state.settings)
        levels.start()

        def on_settings(events: Sequence[StoredEvent]) -> None:
            # Only a change of the level itself: saving the theme must not undo a level
            # given at start or by a reload.
            if any(isinstance(e := ev.event, SettingsChanged) and "log_level" in e.changes
                   for ev in events):
                levels.settings_changed()

        app[STORE].notifier.add_listener(on_settings)
        stop_reload = _on_sighup(levels)
        checking: asyncio.TimerHandle | None = None
        try:
            await core.start()
            checking = _start_chain_check(app[STORE])
            yield
        finally:
            if checking is not None:
                checking.cancel()
            stop_reload()
    finally:
        await core.stop()


def setup_routes(app: web.Application) -> None:
    """Declare every route once, by name."""
    app.router.add_get("/", handlers.index, name="index")
    app.router.add_get("/healthz", handlers.healthz, name="healthz")
    app.router.add_get("/ws", websocket, name="ws")
    app.router.add_get("/api/events", handlers.api_events, name="api-events")
    app.router.add_get("/static/{digest}/{name:.+}", app[ASSETS].serve, name="static")
    setup_page_routes(app)
    setup_settings_routes(app)
    setup_auth_routes(app)
    setup_logs_routes(app)
    setup_api_routes(app)
    setup_metrics_routes(app)


def create_app(config: Config) -> web.Application:
    """Build the application; nothing runs until its startup hooks do."""
    # The page context is gathered first, so error pages (a refused form, a 404) render
    # with the layout too; page_middleware is outermost so error pages are not cached.
    app = web.Application(client_max_size=MAX_BODY, middlewares=[
        host_middleware, page_middleware, aiohttp_jinja2.context_processors_middleware,
        error_middleware, auth_middleware, api_guard_middleware, csrf_middleware])
    app.on_response_prepare.append(add_security_headers)
    app[CONFIG] = config
    app[WEBSOCKETS] = set()
    app[ASSETS] = StaticAssets(WEB_DIR / "static")
    setup_templates(app, WEB_DIR / "templates")
    app[aiohttp_jinja2.APP_CONTEXT_PROCESSORS_KEY] = [aiohttp_jinja2.request_processor,
                                                      page_context, log_banner]
    app.cleanup_ctx.extend([data_dir_ctx, store_ctx, core_ctx])
    app.on_shutdown.append(close_websockets)
    setup_routes(app)
    return app

"""Typed application state keys, declared once."""

from __future__ import annotations

from aiohttp import web

from core.commands import Commands
from core.live import LiveFeed
from core.queries import Queries
from core.runner import Runner
from core.scheduler import Scheduler
from core.state import State
from events.store import EventStore
from server.assets import StaticAssets
from server.config import Config
from storage.projector import Projector

CONFIG = web.AppKey("config", Config)
STORE = web.AppKey("store", EventStore)
# Progress and log lines for the WebSocket (never stored), apart from committed events.
LIVE = web.AppKey("live", LiveFeed)
PROJECTOR = web.AppKey("projector", Projector)
WEBSOCKETS = web.AppKey("websockets", set[web.WebSocketResponse])
STATE = web.AppKey("state", State)
COMMANDS = web.AppKey("commands", Commands)
RUNNER = web.AppKey("runner", Runner)
SCHEDULER = web.AppKey("scheduler", Scheduler)
QUERIES = web.AppKey("queries", Queries)
ASSETS = web.AppKey("assets", StaticAssets)
CSRF_TOKEN = web.AppKey("csrf_token", str)
# Restores and verifies started from a page run in the background; shutdown waits for them.
# The access token when one is set (server/auth.py), else None: loopback needs no sign-in.
AUTH_TOKEN: web.AppKey[str | None] = web.AppKey("auth_token")
SESSION_KEY = web.AppKey("session_key", str)

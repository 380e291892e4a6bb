"""Typed application state keys, declared once."""

from __future__ import annotations

from aiohttp import web

from events.store import EventStore
from server.config import Config
from storage.projector import Projector

CONFIG = web.AppKey("config", Config)
STORE = web.AppKey("store", EventStore)
PROJECTOR = web.AppKey("projector", Projector)
WEBSOCKETS = web.AppKey("websockets", set[web.WebSocketResponse])

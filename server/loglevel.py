"""Which log level is in effect: the start-up level, the Settings page, or a SIGHUP reload.

The most recent of the three wins: a level given at start (--log-level or the config
file) holds until someone changes it on the Settings page; SIGHUP re-reads the config
file and applies its log_level (or the Settings page's when the file has none).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from server.config import Config, ConfigFileError, load_config_file

log = logging.getLogger(__name__)


class LogLevel:
    """Sets the root logger's level from the config, the settings or a reload."""

    def __init__(self, config: Config, settings: Callable[[], Mapping[str, Any]]) -> None:
        self.config = config
        self.settings = settings

    def _settings_level(self) -> str:
        level = self.settings().get("log_level")
        return level if isinstance(level, str) else "INFO"

    def _set(self, level: str, source: str) -> None:
        root = logging.getLogger()
        if logging.getLevelName(root.level) == level:
            return
        # Said at INFO while INFO still shows: before going quieter, after going louder.
        louder = logging.getLevelNamesMapping()[level] < root.level
        if not louder:
            log.info("log level is now %s (%s)", level, source)
        root.setLevel(level)
        if louder:
            log.info("log level is now %s (%s)", level, source)

    def start(self) -> None:
        """Apply the start-up level, else the Settings page's."""
        if self.config.log_level is not None:
            self._set(self.config.log_level, "from the command line or config file")
        else:
            self._set(self._settings_level(), "from the settings")

    def settings_changed(self) -> None:
        """Apply a level changed on the Settings page or through the API."""
        self._set(self._settings_level(), "changed in the settings")

    async def reload(self) -> None:
        """SIGHUP: re-read the config file's log_level; a bad file changes nothing."""
        path = self.config.config_file
        if path is None:
            self._set(self._settings_level(), "SIGHUP without a config file: the settings'")
            return
        try:
            loaded = await asyncio.to_thread(load_config_file, path)
        except ConfigFileError as err:
            log.error("SIGHUP: %s; the log level stays %s", err,
                      logging.getLevelName(logging.getLogger().level))
            return
        if loaded.log_level is None:
            self._set(self._settings_level(), f"SIGHUP: {path} sets none, the settings'")
        else:
            self._set(loaded.log_level, f"SIGHUP: from {path}")
        log.info("SIGHUP: log level reloaded from %s", path)

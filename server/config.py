"""Server configuration, built once by the CLI or a test and handed to create_app."""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.settings import LOG_LEVELS

DATA_ENV = "BACKUP_MANAGER_DATA"


def default_data_dir() -> Path:
    """The data directory from BACKUP_MANAGER_DATA, else ./data."""
    return Path(os.environ.get(DATA_ENV) or "data")


@dataclass(frozen=True)
class Config:
    """Everything create_app needs to know."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8080
    # Events a WebSocket client may have queued before it is closed as too slow.
    ws_queue_limit: int = 10_000
    # The level given at start (flag or config file); None leaves it to the Settings page.
    log_level: str | None = None
    log_to_file: bool = True
    # Host names (besides loopback and the bound address) the server answers to.
    allowed_hosts: tuple[str, ...] = ()
    # The --config file, re-read for its log_level on SIGHUP.
    config_file: Path | None = None

    @property
    def events_db(self) -> Path:
        """The event log file."""
        return self.data_dir / "events.db"

    @property
    def logs_dir(self) -> Path:
        """Where the application log and the run logs go."""
        return self.data_dir / "logs"


_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOST_NAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?|\[[0-9A-Fa-f:.]+\]")


def is_host_name(name: str) -> bool:
    """Whether `name` is a DNS name, an IPv4 address or a bracketed IPv6 address."""
    return len(name) <= 253 and HOST_NAME_RE.fullmatch(name) is not None


class ConfigFileError(ValueError):
    """The --config file cannot be used; the message says where and why."""


@dataclass(frozen=True)
class FileConfig:
    """What a --config file sets; None where it is silent."""

    data: Path | None = None
    host: str | None = None
    port: int | None = None
    log_level: str | None = None
    allowed_hosts: tuple[str, ...] = ()


def _field(path: Path, raw: dict[str, Any], key: str, kind: type) -> Any:
    value = raw.get(key)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        raise ConfigFileError(f"{path}: {key} must be a {kind.__name__}, "
                              f"not {type(value).__name__}")
    return value


def load_config_file(path: Path) -> FileConfig:
    """Read a TOML config file (data, host, port, log_level, allowed_hosts); checks each."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigFileError(f"cannot read {path}: {err.strerror or err}") from err
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigFileError(f"{path} is not valid TOML: {err}") from err
    unknown = sorted(set(raw) - {"data", "host", "port", "log_level", "allowed_hosts"})
    if unknown:
        # A misspelt key silently ignored would leave the server not doing what was meant.
        raise ConfigFileError(f"{path}: unknown setting {', '.join(unknown)} (known: data, "
                              "host, port, log_level, allowed_hosts)")
    data, host = _field(path, raw, "data", str), _field(path, raw, "host", str)
    for key, value in (("data", data), ("host", host)):
        if value is not None and not value.strip():
            raise ConfigFileError(f"{path}: {key} is empty; leave it out for the default")
    port, level = _field(path, raw, "port", int), _field(path, raw, "log_level", str)
    if port is not None and not 0 < port < 65536:
        raise ConfigFileError(f"{path}: port {port} is out of range")
    if level is not None and level not in LOG_LEVELS:
        raise ConfigFileError(f"{path}: log_level must be one of {', '.join(LOG_LEVELS)}")
    hosts = raw.get("allowed_hosts", [])
    if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
        raise ConfigFileError(f"{path}: allowed_hosts must be a list of host names")
    for name in hosts:
        if not is_host_name(name):
            raise ConfigFileError(f"{path}: allowed_hosts has {name!r}, which is not a host "
                                  "name (like backups.example.lan, without scheme or port)")
    # A relative data path is read from the config file's folder, not from wherever the
    # service happens to be started.
    data_dir = None if data is None else (path.parent / data if not Path(data).is_absolute()
                                          else Path(data))
    return FileConfig(data=data_dir, host=host, port=port, log_level=level,
                      allowed_hosts=tuple(hosts))

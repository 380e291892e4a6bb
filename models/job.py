"""A backup job's spec and its validation, with one message per field a person can act on."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import PurePath, PurePosixPath
from typing import Any, Protocol

from croniter import croniter

from models.retention import InvalidRetention, Retention
from models.text import control_char, describe
from models.urls import check_webhook_url

MAX_NAME = 100
MAX_PATH = 4096
MAX_SOURCES = 32
MAX_PATTERNS = 200
MAX_PATTERN = 1024
INTERVAL_RE = re.compile(r"^every\s+(\d{1,6})\s*(m|min|minutes?|h|hours?|d|days?)$", re.I)
_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400}
NEVER_FIRES = timedelta(days=5 * 366)  # a cron expression with no time within this is refused


_ENGINE_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class DestinationRules(Protocol):
    """How one engine takes its destination (engines.destinations gives one per engine).

    models imports no engine: the caller passes the rules, from engines.registry.catalog().
    """

    def clean(self, text: Any) -> str:
        """The destination as the job stores it, or ValueError naming what is wrong."""

    def local_path(self, text: str) -> PurePath | None:
        """The local folder the destination writes, or None for a remote one."""


class _LocalFolder:
    """The rule when no catalog is given: a destination is an absolute local path."""

    def clean(self, text: Any) -> str:
        return clean_path(text, "destination")

    def local_path(self, text: str) -> PurePath | None:
        return PurePosixPath(text)


class JobInvalid(ValueError):
    """A job spec failed validation; `errors` maps each bad field to its message."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def interval_seconds(schedule: str) -> int | None:
    """Seconds between runs for an 'every N units' schedule, or None for anything else."""
    match = INTERVAL_RE.match(schedule.strip())
    if not match:
        return None
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)[0].lower()]


def clean_path(value: Any, what: str) -> str:
    """Check an absolute path from input; return it normalised or raise ValueError."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} is required")
    if "\x00" in value:
        raise ValueError(f"{what} cannot contain a NUL byte")
    if len(value) > MAX_PATH:
        raise ValueError(f"{what} is longer than {MAX_PATH} characters")
    if (char := control_char(value)) is not None:
        raise ValueError(f"{what} must not contain the invisible character {describe(char)}")
    path = PurePosixPath(value.strip())
    if not path.is_absolute():
        raise ValueError(f"{what} {value!r} must be an absolute path (starting with /)")
    if ".." in path.parts:
        raise ValueError(f"{what} {value!r} must not contain '..'")
    return str(path)


def _inside(inner: str, outer: str) -> bool:
    a, b = PurePosixPath(inner), PurePosixPath(outer)
    return a == b or b in a.parents


def _patterns(value: Any, what: str) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        value = [line for line in value.splitlines() if line.strip()]
    if not isinstance(value, list | tuple):
        raise ValueError(f"{what} must be a list of patterns")
    if len(value) > MAX_PATTERNS:
        raise ValueError(f"{what} has more than {MAX_PATTERNS} patterns")
    out = []
    for pattern in value:
        if not isinstance(pattern, str) or not pattern.strip():
            raise ValueError(f"{what} has an empty pattern")
        if "\x00" in pattern or len(pattern) > MAX_PATTERN:
            raise ValueError(f"{what} pattern {pattern[:40]!r} is not usable")
        out.append(pattern.strip())
    return tuple(out)


def _schedule(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str) or len(value) > 200:
        raise ValueError("schedule must be a cron expression or 'every N minutes/hours/days'")
    text = " ".join(value.split())
    seconds = interval_seconds(text)
    if seconds is not None:
        if seconds < 60:
            raise ValueError("an interval schedule must be at least 1 minute")
        return text
    if len(text.split()) == 5 and croniter.is_valid(text):
        _fires(text)
        return text
    raise ValueError(f"{value[:60]!r} is not a valid schedule: use a cron expression such as "
                     "'0 3 * * *' or an interval such as 'every 6 hours'")


def _fires(text: str) -> None:
    """Raise ValueError unless a cron expression has a next time within NEVER_FIRES."""
    now = datetime.now(UTC)
    try:
        # croniter gives up quickly on impossible dates (it bounds its own search).
        after = croniter(text, now).get_next(datetime)
    except (ValueError, KeyError, OverflowError) as err:  # CroniterError is a ValueError
        raise ValueError(f"{text!r} never fires: no such date comes within 5 years") from err
    if after - now > NEVER_FIRES:
        raise ValueError(f"{text!r} does not fire within 5 years (next: {after:%Y-%m-%d})")


def _options(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError("options must be a mapping of names to values")
    out: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not re.match(r"^[a-z_][a-z0-9_]{0,49}$", key):
            raise ValueError(f"option name {str(key)[:40]!r} is not valid")
        if not isinstance(item, str | int | float | bool) and item is not None:
            raise ValueError(f"option {key} must be a plain value")
        if isinstance(item, str) and ("\x00" in item or len(item) > MAX_PATH):
            raise ValueError(f"option {key} is not usable")
        out[key] = item
    return out


@dataclass(frozen=True)
class JobSpec:
    """What a job backs up, where, with which engine, when and for how long."""

    name: str
    engine: str
    sources: tuple[str, ...]
    destination: str
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    schedule: str | None = None
    retention: Retention = field(default_factory=Retention)
    options: dict[str, Any] = field(default_factory=dict)
    enabled: bool = True
    webhook_url: str | None = None

    @classmethod
    def from_input(cls, data: Mapping[str, Any], allow_link_local_webhooks: bool = False,
                   engines: Mapping[str, DestinationRules] | None = None) -> JobSpec:
        """Validate raw input (JSON or a form) into a spec, or raise JobInvalid per field.

        `engines` maps each engine's name to its destination rules (callers that take
        input from people pass engines.registry.catalog()). Without it, any plain engine
        name passes and the destination must be a local folder: for tests and benchmarks.
        """
        errors: dict[str, str] = {}
        values: dict[str, Any] = {}

        def check(name: str, fn: Any) -> None:
            try:
                values[name] = fn()
            except (ValueError, TypeError) as err:
                errors[name] = str(err)

        def name_() -> str:
            raw = data.get("name")
            if not isinstance(raw, str) or not raw.strip():
                raise ValueError("a name is required")
            if len(raw) > MAX_NAME:
                raise ValueError(f"the name must be at most {MAX_NAME} printable characters")
            if (char := control_char(raw)) is not None:
                raise ValueError(f"the name must not contain the invisible character "
                                 f"{describe(char)}")
            return raw.strip()

        def engine_() -> str:
            raw = data.get("engine")
            if engines is not None:
                if not isinstance(raw, str) or raw not in engines:
                    raise ValueError(f"choose an engine: {', '.join(engines)}")
            elif not isinstance(raw, str) or not _ENGINE_NAME_RE.match(raw):
                raise ValueError("choose an engine (a plain name such as mirror)")
            return raw

        def destination_() -> str:
            # Each engine says what it takes; before the engine is known, a local folder.
            rules = engines.get(values["engine"]) if engines is not None and \
                "engine" in values else None
            return (rules or _LocalFolder()).clean(data.get("destination"))

        def sources_() -> tuple[str, ...]:
            raw = data.get("sources")
            if isinstance(raw, str):
                raw = [line for line in raw.splitlines() if line.strip()]
            if not isinstance(raw, list | tuple) or not raw:
                raise ValueError("at least one source folder is required")
            if len(raw) > MAX_SOURCES:
                raise ValueError(f"at most {MAX_SOURCES} sources")
            paths = tuple(clean_path(s, "source") for s in raw)
            if len(set(paths)) != len(paths):
                raise ValueError("a source is listed twice")
            return paths

        def retention_() -> Retention:
            raw = data.get("retention") or {}
            if not isinstance(raw, Mapping):
                raise ValueError("retention must be a mapping such as {keep_last: 7}")
            try:
                return Retention.from_dict(raw)
            except TypeError as err:
                raise InvalidRetention(str(err)) from err

        def enabled_() -> bool:
            raw = data.get("enabled", True)
            if not isinstance(raw, bool):
                raise ValueError("enabled must be true or false")
            return raw

        def webhook_() -> str | None:
            raw = data.get("webhook_url")
            if raw in (None, ""):
                return None
            if not isinstance(raw, str):
                raise ValueError("the webhook must be an http:// or https:// URL")
            try:
                return check_webhook_url(raw, allow_link_local_webhooks)
            except ValueError as err:
                raise ValueError(f"the webhook URL {err}") from err

        check("name", name_)
        check("engine", engine_)
        check("sources", sources_)
        check("destination", destination_)
        check("include", lambda: _patterns(data.get("include"), "include"))
        check("exclude", lambda: _patterns(data.get("exclude"), "exclude"))
        check("schedule", lambda: _schedule(data.get("schedule")))
        check("retention", retention_)
        check("options", lambda: _options(data.get("options")))
        check("enabled", enabled_)
        check("webhook_url", webhook_)
        local = None
        if "destination" in values:
            rules = (engines or {}).get(values.get("engine", "")) or _LocalFolder()
            local = rules.local_path(values["destination"])  # None: remote, nothing inside
        if local is not None and "sources" in values:
            for src in values["sources"]:
                if _inside(str(local), src):
                    errors["destination"] = (f"Destination {values['destination']} is inside "
                                             f"source {src}")
                    break
                if _inside(src, str(local)):
                    errors["sources"] = (f"Source {src} is inside destination "
                                         f"{values['destination']}")
                    break
        unknown = set(data) - {f for f in cls.__dataclass_fields__} - {"id"}
        if unknown:
            errors["_"] = f"unknown field(s): {', '.join(sorted(map(str, unknown)))[:200]}"
        if errors:
            raise JobInvalid(errors)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain JSON-ready values (what JobCreated and JobUpdated store)."""
        return {"name": self.name, "engine": self.engine, "sources": list(self.sources),
                "destination": self.destination, "include": list(self.include),
                "exclude": list(self.exclude), "schedule": self.schedule,
                "retention": {k: getattr(self.retention, k) for k in
                              ("keep_last", "keep_daily", "keep_weekly", "keep_monthly")},
                "options": dict(self.options), "enabled": self.enabled,
                "webhook_url": self.webhook_url}

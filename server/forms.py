"""HTML forms to command input and back: what was typed is kept when a form is refused."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from engines.registry import ENGINES
from models.settings import LOG_LEVELS, THEMES

RETENTION_KEYS = ("keep_last", "keep_daily", "keep_weekly", "keep_monthly")
MAX_FIELD = 20_000  # a form field longer than this is refused before it reaches a command


class FormInvalid(ValueError):
    """A form's raw text could not be read; `errors` maps each field to its message."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _whole_number(raw: str, what: str, errors: dict[str, str], key: str) -> int | None:
    raw = raw.strip()
    if raw == "":
        return 0
    if not re.fullmatch(r"\d{1,6}", raw):
        errors[key] = f"{what} must be a whole number of 0 or more"
        return None
    return int(raw)


def _option_value(raw: str) -> str | int | bool:
    if raw.lower() in ("true", "yes", "on"):
        return True
    if raw.lower() in ("false", "no", "off"):
        return False
    if re.fullmatch(r"-?\d{1,12}", raw):
        return int(raw)
    return raw


def parse_options(text: str) -> dict[str, Any]:
    """Read `name = value` lines into engine options (true/false and numbers typed)."""
    options: dict[str, Any] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"line {number}: write options as name = value")
        options[name.strip()] = _option_value(value.strip())
    return options


def format_options(options: Mapping[str, Any]) -> str:
    """Engine options as the `name = value` lines the form shows."""
    def text(value: Any) -> str:
        return str(value).lower() if isinstance(value, bool) else str(value)
    return "\n".join(f"{k} = {text(v)}" for k, v in options.items())


def job_form_values(spec: Mapping[str, Any]) -> dict[str, str]:
    """A job spec as the raw text of each form field."""
    retention = spec.get("retention") or {}
    values = {
        "name": str(spec.get("name", "")),
        "engine": str(spec.get("engine", "mirror")),
        "sources": "\n".join(spec.get("sources", [])),
        "destination": str(spec.get("destination", "")),
        "include": "\n".join(spec.get("include", [])),
        "exclude": "\n".join(spec.get("exclude", [])),
        "schedule": str(spec.get("schedule") or ""),
        "options": format_options(spec.get("options") or {}),
        "webhook_url": str(spec.get("webhook_url") or ""),
        "enabled": "on" if spec.get("enabled", True) else "",
    }
    for key in RETENTION_KEYS:
        values[key] = str(retention[key]) if retention.get(key) else ""
    return values


def read_fields(form: Mapping[str, Any], names: tuple[str, ...]
                ) -> tuple[dict[str, str], dict[str, str]]:
    """The named text fields of a posted form (missing ones empty), and any too long."""
    values, errors = {}, {}
    for name in names:
        raw = form.get(name, "")
        value = raw if isinstance(raw, str) else ""
        if len(value) > MAX_FIELD:
            errors[name] = f"at most {MAX_FIELD} characters"
        values[name] = value
    return values, errors


JOB_FIELDS = ("name", "engine", "sources", "destination", "include", "exclude", "schedule",
              "options", "webhook_url", "enabled", *RETENTION_KEYS)


def job_input(values: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Turn a job form's text into the input a job command takes, and the text errors."""
    errors: dict[str, str] = {}
    retention: dict[str, int] = {}
    for key in RETENTION_KEYS:
        number = _whole_number(values.get(key, ""), key.replace("_", " "), errors, key)
        if number:
            retention[key] = number
    try:
        options = parse_options(values.get("options", ""))
    except ValueError as err:
        errors["options"] = str(err)
        options = {}
    return {
        "name": values.get("name", ""),
        "engine": values.get("engine", ""),
        "sources": _lines(values.get("sources", "")),
        "destination": values.get("destination", "").strip(),
        "include": _lines(values.get("include", "")),
        "exclude": _lines(values.get("exclude", "")),
        "schedule": values.get("schedule", "").strip() or None,
        "retention": retention,
        "options": options,
        "webhook_url": values.get("webhook_url", "").strip() or None,
        "enabled": values.get("enabled") == "on",
    }, errors


SETTINGS_FIELDS = ("max_concurrent_runs", "auto_resume", "webhook_url",
                   "allow_link_local_webhooks", "log_level", "theme", *RETENTION_KEYS)


def settings_form_values(settings: Mapping[str, Any]) -> dict[str, str]:
    """The settings as the raw text of each form field."""
    values = {
        "max_concurrent_runs": str(settings.get("max_concurrent_runs", "")),
        "auto_resume": "yes" if settings.get("auto_resume") else "no",
        "webhook_url": str(settings.get("webhook_url") or ""),
        "allow_link_local_webhooks": "yes" if settings.get("allow_link_local_webhooks") else "no",
        "log_level": str(settings.get("log_level", "INFO")),
        "theme": str(settings.get("theme", "system")),
    }
    retention = settings.get("default_retention") or {}
    for key in RETENTION_KEYS:
        values[key] = str(retention.get(key, 0))
    return values


def settings_input(values: Mapping[str, str]) -> dict[str, Any]:
    """Turn the settings form's text into the changes a settings command takes."""
    errors: dict[str, str] = {}
    raw_max = values.get("max_concurrent_runs", "").strip()
    max_runs: Any = int(raw_max) if re.fullmatch(r"\d{1,4}", raw_max) else raw_max
    if not isinstance(max_runs, int):
        errors["max_concurrent_runs"] = "must be a whole number from 1 to 32"
    auto_resume = values.get("auto_resume")
    if auto_resume not in ("yes", "no"):
        errors["auto_resume"] = "choose yes or no"
    # An older form without the field leaves the setting as it is.
    link_local = values.get("allow_link_local_webhooks") or None
    if link_local not in (None, "yes", "no"):
        errors["allow_link_local_webhooks"] = "choose yes or no"
    retention: dict[str, int] = {}
    for key in RETENTION_KEYS:
        number = _whole_number(values.get(key, ""), key.replace("_", " "), errors, key)
        retention[key] = number or 0
    if errors:
        raise FormInvalid(errors)
    changes = {"max_concurrent_runs": max_runs, "auto_resume": auto_resume == "yes",
               "default_retention": retention,
               "webhook_url": values.get("webhook_url", "").strip() or None,
               "log_level": values.get("log_level", ""), "theme": values.get("theme", "")}
    if link_local is not None:
        changes["allow_link_local_webhooks"] = link_local == "yes"
    return changes


def _option_help() -> str:
    """Every engine's options, one sentence each, for the job form's options field."""
    return " ".join(f"{info.name}: {'; '.join(o.describe() for o in info.options)}."
                    for info in ENGINES)


# The allowed values of each select field, and for the job form (from engines.registry)
# the engine select's labels and the options field's help.
CHOICES: dict[str, Any] = {
    "engine": tuple(info.name for info in ENGINES), "log_level": LOG_LEVELS, "theme": THEMES,
    "engine_labels": tuple((info.name, f"{info.name}: {info.label}") for info in ENGINES),
    "option_help": _option_help(),
}

"""Global settings: their defaults and what a valid value is."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from models.retention import InvalidRetention, Retention
from models.urls import check_webhook_url

# Defaults live here so that settings.yaml, built from the log alone, always shows
# every setting a person can change, even before anyone changed one.
DEFAULT_SETTINGS: dict[str, Any] = {
    "max_concurrent_runs": 2,
    "auto_resume": True,
    "default_retention": {"keep_last": 7, "keep_daily": 7, "keep_weekly": 4, "keep_monthly": 6},
    "webhook_url": None,
    # Link-local addresses (169.254.0.0/16, fe80::/10) hold cloud metadata services.
    "allow_link_local_webhooks": False,
    "log_level": "INFO",
    "theme": "system",
}


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
THEMES = ("system", "light", "dark")


class SettingsInvalid(ValueError):
    """Settings failed validation; `errors` maps each bad setting to its message."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def _check(key: str, value: Any, allow_link_local: bool = False) -> Any:
    if key == "max_concurrent_runs":
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 32:
            raise ValueError("must be a whole number from 1 to 32")
        return value
    if key in ("auto_resume", "allow_link_local_webhooks"):
        if not isinstance(value, bool):
            raise ValueError("must be true or false")
        return value
    if key == "default_retention":
        try:
            policy = Retention.from_dict(value if isinstance(value, Mapping) else {"?": 0})
        except (InvalidRetention, TypeError) as err:
            raise ValueError(str(err)) from err
        return {k: getattr(policy, k) for k in DEFAULT_SETTINGS["default_retention"]}
    if key == "webhook_url":
        if value in (None, ""):
            return None
        if not isinstance(value, str):
            raise ValueError("must be an http:// or https:// URL, or empty")
        return check_webhook_url(value, allow_link_local)
    if key == "log_level":
        if value not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return value
    if key == "theme":
        if value not in THEMES:
            raise ValueError(f"must be one of {', '.join(THEMES)}")
        return value
    raise ValueError("is not a setting")


def validate_settings(changes: Mapping[str, Any],
                      current: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Check changed settings; return them cleaned or raise SettingsInvalid per key.

    `current` is the settings in force: a link-local webhook is allowed only when
    allow_link_local_webhooks is on, as it is now or as this same change sets it.
    """
    if not isinstance(changes, Mapping) or not changes:
        raise SettingsInvalid({"_": "send at least one setting to change"})
    allow = (changes.get("allow_link_local_webhooks")
             if "allow_link_local_webhooks" in changes
             else (current or {}).get("allow_link_local_webhooks"))
    clean: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for key, value in changes.items():
        try:
            clean[str(key)] = _check(str(key), value, allow is True)
        except ValueError as err:
            errors[str(key)[:60]] = str(err)
    if errors:
        raise SettingsInvalid(errors)
    return clean

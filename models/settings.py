"""Global settings: their defaults and what a valid value is."""

from __future__ import annotations

from typing import Any

# Defaults live here so that settings.yaml, built from the log alone, always shows
# every setting a person can change, even before anyone changed one.
DEFAULT_SETTINGS: dict[str, Any] = {
    "max_concurrent_runs": 2,
    "auto_resume": True,
    "default_retention": {"keep_last": 7, "keep_daily": 7, "keep_weekly": 4, "keep_monthly": 6},
    "webhook_url": None,
    "log_level": "INFO",
    "theme": "system",
}


def settings_with_changes(current: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Return a new settings dict with the changes applied over the current values."""
    merged = dict(current)
    for key, value in changes.items():
        merged[key] = value
    return merged

"""Identifiers for jobs, runs and event streams, and how to check them."""

from __future__ import annotations

import re
import secrets
import unicodedata

# The settings stream holds SettingsChanged events; every other stream is a job id.
SETTINGS_STREAM = "settings"

# Job ids name files (jobs/<id>.yaml) and URL parts, so they are a strict slug:
# no dots, no slashes, nothing that could walk out of a directory.
JOB_ID_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")
RUN_ID_RE = re.compile(r"^r-[0-9a-f]{12}$")


class InvalidId(ValueError):
    """An id in a request or a file name is not one this app could have made."""


def new_job_id(name: str) -> str:
    """Make a readable, unique job id from a job name: a slug plus a random suffix."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")[:40].strip("-")
    suffix = secrets.token_hex(3)
    return f"{slug}-{suffix}" if slug else f"job-{suffix}"


def new_run_id() -> str:
    """Make a new random run id."""
    return f"r-{secrets.token_hex(6)}"


def is_job_id(value: str) -> bool:
    """Tell whether a string is a well-formed job id."""
    return bool(JOB_ID_RE.fullmatch(value)) and value != SETTINGS_STREAM


def check_job_id(value: str) -> str:
    """Return the job id unchanged, or raise InvalidId with a clear message."""
    if not is_job_id(value):
        raise InvalidId(f"{value[:80]!r} is not a valid job id")
    return value


def check_run_id(value: str) -> str:
    """Return the run id unchanged, or raise InvalidId with a clear message."""
    if not RUN_ID_RE.fullmatch(value):
        raise InvalidId(f"{value[:80]!r} is not a valid run id")
    return value

"""Which snapshots of a restic repository belong to which job (issue 12, item 1).

Every snapshot a job makes is tagged `bm-job:<job id>`, and listing, retention and restore
only see that job's snapshots, so a second job pointed at the same repository by hand can
neither list nor forget the first one's. Snapshots without any bm-job tag (made before
jobs were tagged, or by restic run by hand) are seen by every job, as before; a spec
without a job id (a caller outside any job) sees every snapshot.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

PREFIX = "bm-job:"
# restic splits --tag values at commas and trims spaces: a job id made of anything but
# these characters is tagged by a digest of it instead, still one tag per job.
_PLAIN_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


def job_tag(job_id: str) -> str | None:
    """The tag of a job's snapshots; None for a spec outside any job."""
    if not job_id:
        return None
    if _PLAIN_ID.fullmatch(job_id):
        return PREFIX + job_id
    return PREFIX + "sha256-" + hashlib.sha256(job_id.encode("utf-8", "surrogatepass")
                                               ).hexdigest()[:32]


def tags_of(snap: Mapping[str, Any]) -> list[str]:
    """A snapshot's tags (restic leaves the key out when there are none)."""
    tags = snap.get("tags")
    return [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []


def seen_by(snap: Mapping[str, Any], job_id: str) -> bool:
    """Whether the job sees this snapshot: its own, or one no job claims."""
    tag = job_tag(job_id)
    if tag is None:
        return True
    tags = tags_of(snap)
    return tag in tags or not any(t.startswith(PREFIX) for t in tags)


def backup_tags(job_id: str, run_tag: str) -> list[str]:
    """The --tag arguments of a backup: its run's tag and its job's."""
    tag = job_tag(job_id)
    return ["--tag", run_tag] + (["--tag", tag] if tag else [])

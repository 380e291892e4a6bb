"""A stored event as read from the log, and the hash chain that links the rows."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from events.types import AnyEvent, canonical_json, event_from_payload

GENESIS_HASH = "0" * 64

# Stored payloads are canonical JSON (no surrounding space), so the decoder's own scan
# for leading and trailing whitespace, a fair share of a replay's time, is skipped.
_decode = json.JSONDecoder().raw_decode

# How many events were turned into their JSON message (each once, however many read it).
STATS = {"encoded": 0}

# Column order of every SELECT in events/sql.py.
Row = tuple[int, str, int, str, str, str, str]


def utc_now_iso() -> str:
    """Return the current UTC time as ISO 8601 with microseconds and a Z suffix."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def chain_hash(
    prev_hash: str, seq: int, stream: str, version: int, time: str, type_name: str,
    payload_json: str,
) -> str:
    """Hash one event onto the chain: sha256(prev_hash + canonical event)."""
    # The payload is already canonical JSON; embedding it as text keeps the canonical
    # form of the whole event independent of how json orders nested keys on reload.
    canonical = canonical_json(
        {"seq": seq, "stream": stream, "version": version, "time": time, "type": type_name,
         "payload": payload_json}
    )
    return hashlib.sha256((prev_hash + canonical).encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One row of the log: an event with its global seq, stream version and hash."""

    seq: int
    stream: str
    version: int
    time: str
    type: str
    payload_json: str
    hash: str
    _cache: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_row(cls, row: Row) -> StoredEvent:
        """Build a stored event from a database row."""
        return cls(*row)

    @property
    def payload(self) -> dict[str, Any]:
        """The event's fields, parsed once from the stored JSON."""
        parsed = self._cache.get("payload")
        if parsed is None:
            parsed = _decode(self.payload_json)[0]
            self._cache["payload"] = parsed
        return parsed  # type: ignore[no-any-return]

    @property
    def event(self) -> AnyEvent:
        """The event as the class it was written as, decoded once (UnknownEvent if this
        version has no such type)."""
        cache = self._cache
        decoded: AnyEvent | None = cache.get("event")
        if decoded is None:
            payload = cache.get("payload")
            if payload is None:
                payload = cache["payload"] = _decode(self.payload_json)[0]
            decoded = cache["event"] = event_from_payload(self.type, payload)
        return decoded

    def to_json(self) -> str:
        """Return the event as one JSON message (as sent on the WebSocket and exported)."""
        text = self._cache.get("json")
        if text is None:
            # Built by hand around the stored payload text so that fan-out to many
            # clients serialises each event once, not once per client.
            text = (
                f'{{"seq":{self.seq},"stream":{json.dumps(self.stream)},'
                f'"version":{self.version},"time":{json.dumps(self.time)},'
                f'"type":{json.dumps(self.type)},"data":{self.payload_json},'
                f'"hash":"{self.hash}"}}'
            )
            self._cache["json"] = text
            STATS["encoded"] += 1
        return text

    def message(self) -> bytes:
        """The JSON message as UTF-8 bytes, encoded once for every WebSocket it goes to."""
        data: bytes | None = self._cache.get("bytes")
        if data is None:
            data = self._cache["bytes"] = self.to_json().encode()
        return data

    def as_dict(self) -> dict[str, Any]:
        """Return the event as a plain dict (the JSON message, parsed)."""
        return {"seq": self.seq, "stream": self.stream, "version": self.version,
                "time": self.time, "type": self.type, "data": self.payload,
                "hash": self.hash}

    def expected_hash(self, prev_hash: str) -> str:
        """Recompute this row's hash from the previous row's hash."""
        return chain_hash(prev_hash, self.seq, self.stream, self.version, self.time,
                          self.type, self.payload_json)

"""Every SQL statement of the event log, named, in one place."""

# The log is one table. seq is assigned by the writer (not AUTOINCREMENT) because the
# hash chain needs to know it before the row is written.
SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq      INTEGER PRIMARY KEY,
    stream   TEXT    NOT NULL,
    version  INTEGER NOT NULL CHECK (version >= 1),
    time     TEXT    NOT NULL,
    type     TEXT    NOT NULL,
    payload  TEXT    NOT NULL,
    hash     TEXT    NOT NULL,
    UNIQUE (stream, version)
);
CREATE TRIGGER IF NOT EXISTS events_refuse_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'the event log is append-only: UPDATE refused');
END;
CREATE TRIGGER IF NOT EXISTS events_refuse_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'the event log is append-only: DELETE refused');
END;
"""

# The log's format, kept in SQLite's user_version. A release that changes what it
# writes raises it, so an older release refuses the log instead of misreading it.
LOG_FORMAT = 1
READ_FORMAT = "PRAGMA user_version"
WRITE_FORMAT = f"PRAGMA user_version={LOG_FORMAT}"


def format_problem(found: int) -> str | None:
    """Why a log of format `found` cannot be read by this release, or None."""
    if found <= LOG_FORMAT:
        return None
    return (f"the event log was written by a newer backup-manager (log format {found}; this "
            f"one reads up to {LOG_FORMAT}): run that release, or put back the copy "
            "taken before upgrading (`events backup`)")


PRAGMAS_WRITER = (
    "PRAGMA journal_mode=WAL",
    # FULL: the WAL is fsynced on every commit, so an acknowledged append survives
    # a power cut (NORMAL would only survive an application crash).
    "PRAGMA synchronous=FULL",
    "PRAGMA busy_timeout=5000",
)

PRAGMAS_READER = ("PRAGMA busy_timeout=5000",)

INSERT_EVENT = (
    "INSERT INTO events (seq, stream, version, time, type, payload, hash) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)

SELECT_HEAD = "SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1"

SELECT_HASH_AT = "SELECT hash FROM events WHERE seq = ?"

# Each stream's version: a skip-scan of the (stream, version) index, one seek per stream
# (a GROUP BY reads every row of the index: 11 s cold, 0.45 s warm at 1,000,000 events;
# this, 0.02 s).
SELECT_STREAM_VERSIONS = """
WITH RECURSIVE s(stream) AS (
    SELECT MIN(stream) FROM events
    UNION ALL
    SELECT (SELECT MIN(stream) FROM events WHERE stream > s.stream) FROM s
    WHERE s.stream IS NOT NULL
)
SELECT stream, (SELECT MAX(version) FROM events WHERE stream = s.stream) FROM s
WHERE stream IS NOT NULL
"""

SELECT_SINCE = (
    "SELECT seq, stream, version, time, type, payload, hash FROM events "
    "WHERE seq > ? ORDER BY seq LIMIT ?"
)

SELECT_SINCE_UNTIL = (
    "SELECT seq, stream, version, time, type, payload, hash FROM events "
    "WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?"
)

SELECT_STREAM = (
    "SELECT seq, stream, version, time, type, payload, hash FROM events "
    "WHERE stream = ? AND version > ? ORDER BY version"
)

# Each row of a stream with the hash of the row before it in the log (NULL if missing),
# so a stream read alone can still be checked against the chain.
SELECT_STREAM_WITH_PREV = (
    "SELECT e.seq, e.stream, e.version, e.time, e.type, e.payload, e.hash, p.hash "
    "FROM events e LEFT JOIN events p ON p.seq = e.seq - 1 "
    "WHERE e.stream = ? AND e.version > ? ORDER BY e.version"
)

SELECT_STATS = (
    "SELECT type, COUNT(*), MIN(time), MAX(time) FROM events GROUP BY type ORDER BY type"
)

SELECT_ALL_ORDERED = (
    "SELECT seq, stream, version, time, type, payload, hash FROM events ORDER BY seq"
)

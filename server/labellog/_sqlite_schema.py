"""The SQLite label log's tables (``sqlite.SqliteLabelLog``) and its record insert."""

from __future__ import annotations

__all__ = ["SCHEMA", "RECORD_COLUMNS", "INSERT_RECORD"]

# records keeps its rowid: rows may carry large sample blobs, which WITHOUT ROWID tables handle
# badly. The small bookkeeping tables are clustered on their keys instead.
SCHEMA = """
CREATE TABLE IF NOT EXISTS records(
    topic TEXT NOT NULL, offset INTEGER NOT NULL, sample_id TEXT NOT NULL, label INTEGER NOT NULL,
    confidence REAL NOT NULL, weight REAL NOT NULL, threshold REAL NOT NULL,
    teacher_version TEXT NOT NULL, policy TEXT NOT NULL, created_at REAL NOT NULL,
    sample BLOB, shape TEXT, dtype TEXT, metadata TEXT NOT NULL DEFAULT '{}', classes TEXT,
    PRIMARY KEY(topic, offset));
CREATE TABLE IF NOT EXISTS topics(topic TEXT PRIMARY KEY, next_offset INTEGER NOT NULL)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS groups(topic TEXT NOT NULL, grp TEXT NOT NULL, cursor INTEGER NOT NULL,
    PRIMARY KEY(topic, grp)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending(topic TEXT NOT NULL, grp TEXT NOT NULL, offset INTEGER NOT NULL,
    consumer TEXT NOT NULL, deadline REAL NOT NULL, deliveries INTEGER NOT NULL,
    PRIMARY KEY(topic, grp, offset)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pending_by_consumer ON pending(topic, grp, consumer);
CREATE INDEX IF NOT EXISTS pending_by_deadline ON pending(topic, grp, deadline);
CREATE TABLE IF NOT EXISTS state(topic TEXT NOT NULL, key TEXT NOT NULL, blob BLOB NOT NULL,
    PRIMARY KEY(topic, key));
CREATE TABLE IF NOT EXISTS recent(topic TEXT NOT NULL, sample_id TEXT NOT NULL, blob BLOB NOT NULL,
    expires REAL NOT NULL, PRIMARY KEY(topic, sample_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS recent_by_expiry ON recent(topic, expires);
"""

RECORD_COLUMNS = (
    "offset, sample_id, label, confidence, weight, threshold, teacher_version, policy, "
    "created_at, sample, shape, dtype, metadata, classes"
)

INSERT_RECORD = (f"INSERT INTO records(topic, {RECORD_COLUMNS}) "
                 "VALUES (" + ", ".join("?" * (2 + RECORD_COLUMNS.count(","))) + ")")

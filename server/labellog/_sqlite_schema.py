"""The SQLite label log's tables (``sqlite.SqliteLabelLog``) and its multi-row inserts."""

from __future__ import annotations

import functools
import sqlite3

__all__ = ["SCHEMA", "RECORD_COLUMNS", "INSERT_RECORD", "INSERT_RECENT", "insert_rows"]

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

INSERT_RECORD = f"INSERT INTO records(topic, {RECORD_COLUMNS}) VALUES"
INSERT_RECENT = "INSERT OR REPLACE INTO recent(topic, sample_id, blob, expires) VALUES"

# Rows per statement: powers of two up to this, so a handful of statements (each prepared once,
# in the connection's statement cache) cover any batch size.
_MOST_ROWS = 256


def insert_rows(conn: sqlite3.Connection, head: str, columns: list[list]) -> None:
    """``head`` (``INSERT ... VALUES``) with the rows that ``columns`` (one list per field) hold,
    as few multi-row statements as powers of two allow (115 rows: 64+32+16+2+1). Not
    ``executemany``: it steps once per row, and every step gives up the GIL and waits to take it
    back from the event loop's thread. Parameters are laid out column by column, by slices."""
    width, total, k = len(columns), len(columns[0]) if columns else 0, 0
    while k < total:
        n = min(_MOST_ROWS, 1 << ((total - k).bit_length() - 1))
        params: list = [None] * (n * width)
        for j, column in enumerate(columns):
            params[j::width] = column[k:k + n]
        conn.execute(_values(head, width, n), params)
        k += n


@functools.lru_cache(maxsize=None)
def _values(head: str, width: int, n: int) -> str:
    return head + ",".join(["(" + ",".join("?" * width) + ")"] * n)

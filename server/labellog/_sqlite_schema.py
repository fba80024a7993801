"""The SQLite label log's layout (``sqlite.SqliteLabelLog``): its tables, reading records (or
columns) out of segments, and the move of earlier releases' per-record rows into segments (and
of their per-id idempotency entries into ``_recent``'s rows). Functions here run on the log's
worker thread, on its connection."""

from __future__ import annotations

import bisect
import sqlite3
from typing import Iterator, Sequence

import numpy as np

from pseudostream.server.labellog._recent import DECIDED_SCHEMA, move_recent
from pseudostream.server.labellog._segments import SEGMENT_COLUMNS, pack_rows, runs, unpack, unpack_columns
from pseudostream.server.labellog.base import LabelRecord
from pseudostream.server.labellog.columns import LabelColumns, column_runs, concat_columns

__all__ = ["SCHEMA", "INSERT_SEGMENT", "fetch_records", "fetch_columns", "migrate"]

# segments (one row per appended batch, ``_segments``) keeps its rowid: rows carry the batch's
# sample blobs, which WITHOUT ROWID tables handle badly. The small bookkeeping tables are
# clustered on their keys instead. topics.low is the first offset retention kept.
SCHEMA = """
CREATE TABLE IF NOT EXISTS segments(
    topic TEXT NOT NULL, first INTEGER NOT NULL, n INTEGER NOT NULL, created_at REAL NOT NULL,
    teacher_version TEXT NOT NULL, policy TEXT NOT NULL, ids TEXT NOT NULL, numbers BLOB NOT NULL,
    samples BLOB, shape TEXT, dtype TEXT, metadata TEXT, classes TEXT, PRIMARY KEY(topic, first));
CREATE TABLE IF NOT EXISTS topics(topic TEXT PRIMARY KEY, next_offset INTEGER NOT NULL,
    low INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS groups(topic TEXT NOT NULL, grp TEXT NOT NULL, cursor INTEGER NOT NULL,
    PRIMARY KEY(topic, grp)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending(topic TEXT NOT NULL, grp TEXT NOT NULL, offset INTEGER NOT NULL,
    consumer TEXT NOT NULL, deadline REAL NOT NULL, deliveries INTEGER NOT NULL,
    PRIMARY KEY(topic, grp, offset)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pending_by_consumer ON pending(topic, grp, consumer);
CREATE INDEX IF NOT EXISTS pending_by_deadline ON pending(topic, grp, deadline);
CREATE TABLE IF NOT EXISTS state(topic TEXT NOT NULL, key TEXT NOT NULL, blob BLOB NOT NULL,
    PRIMARY KEY(topic, key));
""" + DECIDED_SCHEMA

INSERT_SEGMENT = (f"INSERT INTO segments(topic, first, {', '.join(SEGMENT_COLUMNS)}) "
                  f"VALUES ({', '.join('?' * (2 + len(SEGMENT_COLUMNS)))})")
# The segment holding the record at an offset: its first offset and size.
_FIND_SEGMENT = "SELECT first, n FROM segments WHERE topic = ? AND first <= ? ORDER BY first DESC LIMIT 1"
# A segment's columns with only rows lo..hi of its samples (``substr`` counts bytes of a blob
# from 1), so a read of a few records does not load a whole batch of samples.
_SAMPLE_ROWS = "substr(samples, 1 + :lo * (length(samples) / n), (:hi - :lo + 1) * (length(samples) / n))"
_SEGMENT_ROWS = (f"SELECT {', '.join(SEGMENT_COLUMNS).replace('samples', _SAMPLE_ROWS)} "
                "FROM segments WHERE topic = :topic AND first = :first")
# The same without the samples (NULL for them, their shape and dtype): 0.75 to 1.0 ms a segment of
# 256 3x32x32 records against 3.0 to 4.4 ms with them (read, then cut per record).
_NO_SAMPLES = {"samples": "NULL", "shape": "NULL", "dtype": "NULL"}
_SEGMENT_ROWS_NO_SAMPLES = (f"SELECT {', '.join(_NO_SAMPLES.get(c, c) for c in SEGMENT_COLUMNS)} "
                            "FROM segments WHERE topic = :topic AND first = :first")

# Records per segment when ``migrate`` moves an earlier release's per-record rows.
_MOST_ROWS = 256


def _segments_of(conn: sqlite3.Connection, topic: str, offsets: Sequence[int],
                 samples: bool) -> Iterator[tuple[int, tuple, list[int], int]]:
    """(first, segment row, its offsets of ``offsets``, samples_from) for each segment holding
    some of ``offsets`` (ascending, at or above the topic's low): one lookup per segment touched;
    only the samples of the rows asked for are read, and none without ``samples``."""
    query = _SEGMENT_ROWS if samples else _SEGMENT_ROWS_NO_SAMPLES
    i = 0
    while i < len(offsets):
        hit = conn.execute(_FIND_SEGMENT, (topic, offsets[i])).fetchone()
        if hit is None or offsets[i] >= hit[0] + hit[1]:
            i += 1
            continue
        first, n = hit
        j = bisect.bisect_left(offsets, first + n, i)
        lo, hi = offsets[i] - first, offsets[j - 1] - first
        yield first, conn.execute(query, {"topic": topic, "first": first, "lo": lo, "hi": hi}).fetchone(), \
            list(offsets[i:j]), lo
        i = j


def _kept(conn: sqlite3.Connection, topic: str, order: list[tuple[int, int]]) -> list[int]:
    """The offsets of ``order`` that retention kept, ascending."""
    low = conn.execute("SELECT COALESCE((SELECT low FROM topics WHERE topic = ?), 0)", (topic,)).fetchone()[0]
    return sorted(off for off, _ in order if off >= low)


def fetch_records(conn: sqlite3.Connection, topic: str, order: list[tuple[int, int]],
                  samples: bool = True) -> list[LabelRecord]:
    """The records for (offset, deliveries) pairs, in the order given; offsets that retention
    dropped or that were never appended are skipped."""
    deliveries = dict(order)
    found: dict[int, LabelRecord] = {}
    for first, segment, offsets, lo in _segments_of(conn, topic, _kept(conn, topic, order), samples):
        found.update(unpack(first, segment, [(off, deliveries[off]) for off in offsets], lo))
    return [found[off] for off, _ in order if off in found]


def fetch_columns(conn: sqlite3.Connection, topic: str, order: list[tuple[int, int]],
                  samples: bool = True) -> list[LabelColumns]:
    """``fetch_records`` as columns: one LabelColumns of numpy slices of the segments, in the
    order given ([] when none is found). Segments whose samples differ in shape or dtype go the
    per-record way and come back cut into runs that stack (``column_runs``)."""
    deliveries = dict(order)
    parts = [unpack_columns(first, segment, offsets, [deliveries[off] for off in offsets], lo)
             for first, segment, offsets, lo in _segments_of(conn, topic, _kept(conn, topic, order), samples)]
    if not parts:
        return []
    if len({None if p.samples is None else (p.samples.shape[1:], p.samples.dtype) for p in parts}) > 1:
        return column_runs(fetch_records(conn, topic, order, samples), samples)
    joined = concat_columns(parts)  # ascending offsets
    wanted = [off for off, _ in order]
    if wanted != joined.offset.tolist():  # redeliveries first, or offsets retention dropped
        at = np.searchsorted(joined.offset, wanted)
        joined = joined.take(at[(at < len(joined)) & (joined.offset[np.minimum(at, len(joined) - 1)] == wanted)])
    return [joined]


# The per-record table of earlier releases, which ``migrate`` moves into segments.
_RECORDS = ("sample_id, label, confidence, weight, threshold, teacher_version, policy, created_at, sample, shape, "
            "dtype, metadata, classes")


def migrate(conn: sqlite3.Connection, now: float, most: int = _MOST_ROWS) -> tuple[int, int]:
    """Brings a file written by an earlier release up to this schema, in one transaction: adds
    ``topics.low``, moves the rows of the per-record ``records`` table into segments of up to
    ``most`` records, and the idempotency entries still unexpired at ``now`` from the per-id
    ``recent`` table into ``decided`` rows (``_recent``). Returns how many records and entries
    moved ((0, 0) for a current file)."""
    moved = 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        if "low" not in [row[1] for row in conn.execute("PRAGMA table_info(topics)")]:
            conn.execute("ALTER TABLE topics ADD COLUMN low INTEGER NOT NULL DEFAULT 0")
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'records'").fetchone():
            conn.execute("UPDATE topics SET low = COALESCE((SELECT MIN(offset) FROM records "
                         "WHERE records.topic = topics.topic), next_offset)")
            for (topic,) in conn.execute("SELECT DISTINCT topic FROM records").fetchall():
                rows = conn.execute(f"SELECT offset, {_RECORDS} FROM records WHERE topic = ? ORDER BY offset",
                                    (topic,))
                for first, run in runs(rows, most):
                    conn.execute(INSERT_SEGMENT, (topic, first, *pack_rows(run)))
                    moved += len(run)
            conn.execute("DROP TABLE records")
        entries = move_recent(conn, now)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return moved, entries

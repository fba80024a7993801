"""The SQLite label log's idempotency window (``remember`` / ``recall``): one ``decided`` row per
remembered batch in the file, and an in-memory index of which row holds each sample id.

Earlier releases kept one ``recent`` row per sample id, clustered on the id, with a second index
on its expiry: every labeled batch inserted 128 random keys into two B-trees, most of the
append's time, and every batch's recall probed the primary key 128 times on the log's only
thread, where it queued behind the appends. Now a batch's entries are one row (the ids as a
JSON list, the blobs end to end with their end positions) appended at the end of a rowid table;
the expiry index holds one entry per batch. Which row holds an id is kept in memory per topic
(``RecentIndex``: dicts by id hash), rebuilt from the unexpired rows when the file is opened, so
a recall of ids nobody remembers (the common case: fresh samples) is answered without touching
the file, and only hits read their row's blobs.

Memory: the index holds the id strings and a dict entry per remembered id: about 125 bytes per
36-character id, 31 of them beyond the string (tracemalloc over 256k uuid4 ids), the same order
as the scale-out path's one Redis key per id. The file is what survives a restart.
"""

from __future__ import annotations

import heapq
import itertools
import json
import sqlite3
from typing import Collection, Iterable, Mapping

import numpy as np

from pseudostream.server.labellog.entries import DecisionEntries

__all__ = ["DECIDED_SCHEMA", "RecentIndex", "expire_decided", "write_decided", "read_decided", "load_decided",
           "move_recent"]

# AUTOINCREMENT: a row number is never given twice, so the index never confuses a new row with
# an expired one it still names.
DECIDED_SCHEMA = """
CREATE TABLE IF NOT EXISTS decided(row INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,
    expires REAL NOT NULL, ids TEXT NOT NULL, blobs BLOB NOT NULL, ends BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS decided_by_expiry ON decided(expires);
"""
_INSERT = "INSERT INTO decided(topic, expires, ids, blobs, ends) VALUES (?, ?, ?, ?, ?)"


# The index is split by id hash into this many dicts per topic. A dict that outgrows its table
# copies every entry into one twice the size, holding the GIL: one dict of 1.4M ids stalled the
# event loop 60 ms, 4M ids 140 ms (benchmarks/recent_index.py), and the default 600 s window at
# 40k samples/s remembers 24M. Each shard holds a 64th and grows on its own; more shards cost
# the event loop more per id (1024 of them: about 2 ms more CPU per 1,000 samples in the light
# service_load, within noise at 64).
SHARDS = 64
_MASK = SHARDS - 1


class RecentIndex:
    """Per topic, the ``decided`` row that holds each unexpired sample id (the newest, when an id
    was remembered twice). Used from one thread (the log's event loop); rows are added once
    their transaction has committed, so every row it names is in the file. The ids of a topic
    are spread over ``SHARDS`` dicts by hash, so that growing the index never copies more than
    a shard's share of it at once."""

    def __init__(self) -> None:
        self._where: dict[str, list[dict[str, int]]] = {}
        self._expiry: list[tuple[float, int, str, tuple[str, ...]]] = []  # a heap: (expires, row, topic, ids)

    def add(self, topic: str, row: int, ids: list[str], expires: float) -> None:
        """``ids`` are in ``row`` until ``expires`` (unix seconds)."""
        shards = self._where.get(topic)
        if shards is None:
            shards = self._where[topic] = [{} for _ in range(SHARDS)]
        for sid in ids:
            shards[hash(sid) & _MASK][sid] = row
        # A tuple of strings: the collector stops tracking it (and the entry) after one pass,
        # so the heap's entries (one per remembered batch) do not lengthen its full passes.
        heapq.heappush(self._expiry, (expires, row, topic, tuple(ids)))

    def purge(self, now: float) -> None:
        """Forget the rows that expired by ``now``."""
        heap = self._expiry
        while heap and heap[0][0] <= now:
            _, row, topic, ids = heapq.heappop(heap)
            shards = self._where[topic]
            for sid in ids:
                shard = shards[hash(sid) & _MASK]
                if shard.get(sid) == row:  # not remembered again in a later row
                    del shard[sid]

    def find(self, topic: str, ids: Iterable[str], now: float) -> dict[int, set[str]]:
        """The rows holding any of ``ids``, with the ids each one holds; {} when none does."""
        self.purge(now)
        shards = self._where.get(topic)
        if shards is None:
            return {}
        rows: dict[int, set[str]] = {}
        for sid in ids:
            row = shards[hash(sid) & _MASK].get(sid)
            if row is not None:
                rows.setdefault(row, set()).add(sid)
        return rows

    def largest_shard(self) -> int:
        """Ids in the fullest shard of any topic: the most one growth step may copy."""
        return max((len(d) for shards in self._where.values() for d in shards), default=0)

    def __len__(self) -> int:
        return sum(len(d) for shards in self._where.values() for d in shards)


def expire_decided(conn: sqlite3.Connection, now: float) -> None:
    """Inside a transaction: drop the rows expired by ``now``."""
    conn.execute("DELETE FROM decided WHERE expires <= ?", (now,))


def write_decided(conn: sqlite3.Connection, topic: str, entries: Mapping[str, bytes],
                  expires: float) -> tuple[int, list[str]]:
    """Inside a transaction: add ``entries`` as one row; returns (its row number, its ids).
    ``DecisionEntries`` go in as they are: their ids, their blobs end to end, the ends."""
    packed = DecisionEntries.of(entries)
    row = conn.execute(_INSERT, (topic, expires, json.dumps(packed.ids), packed.data,
                                 packed.ends.tobytes())).lastrowid
    assert row is not None
    return row, packed.ids


def read_decided(conn: sqlite3.Connection, rows: Mapping[int, Collection[str]]) -> dict[str, bytes]:
    """The blobs of the wanted ids of each row; rows gone meanwhile (expired) give nothing."""
    found: dict[str, bytes] = {}
    for row, wanted in rows.items():
        hit = conn.execute("SELECT ids, blobs, ends FROM decided WHERE row = ?", (row,)).fetchone()
        if hit is None:
            continue
        blobs, ends = hit[1], np.frombuffer(hit[2], "<i8").tolist()
        for k, sid in enumerate(json.loads(hit[0])):
            if sid in wanted:
                found[sid] = bytes(blobs[ends[k - 1] if k else 0:ends[k]])
    return found


def load_decided(conn: sqlite3.Connection, now: float) -> RecentIndex:
    """The index of the rows unexpired at ``now`` (opening the file)."""
    index = RecentIndex()
    sql = "SELECT row, topic, expires, ids FROM decided WHERE expires > ? ORDER BY row"
    for row, topic, expires, ids in conn.execute(sql, (now,)):
        index.add(topic, row, json.loads(ids), expires)
    return index


def move_recent(conn: sqlite3.Connection, now: float) -> int:
    """Inside a transaction: move the unexpired entries of an earlier release's per-id
    ``recent`` table into ``decided`` rows (one per topic and expiry time, which is one per
    remembered batch) and drop it. Returns how many entries moved (0 for a current file)."""
    if not conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'recent'").fetchone():
        return 0
    rows = conn.execute("SELECT topic, expires, sample_id, blob FROM recent WHERE expires > ? "
                        "ORDER BY topic, expires", (now,))
    moved = 0
    for (topic, expires), group in itertools.groupby(rows, key=lambda r: (r[0], r[1])):
        entries = {sid: bytes(blob) for _, _, sid, blob in group}
        write_decided(conn, topic, entries, expires)
        moved += len(entries)
    conn.execute("DROP TABLE recent")  # and its expiry index
    return moved

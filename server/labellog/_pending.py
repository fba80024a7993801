"""The SQLite label log's pending deliveries (table ``pending``: one row per record delivered to
a group and not acked yet), written a run of consecutive offsets per statement: a trainer reads
and acks whole batches, and binding one row per record from Python was most of a read's and an
ack's time (6.8 us a record, both together, for 256-record batches of digits). Functions here
run on the log's worker thread, inside its transactions."""

from __future__ import annotations

import sqlite3
from typing import Sequence

import numpy as np

__all__ = ["offset_runs", "add_pending", "ack_pending"]

_ADD = """WITH RECURSIVE run(offset) AS (SELECT :lo UNION ALL SELECT offset + 1 FROM run WHERE offset < :hi)
INSERT INTO pending SELECT :topic, :grp, offset, :consumer, :deadline, 1 FROM run"""
_ACK = "DELETE FROM pending WHERE topic = ? AND grp = ? AND offset BETWEEN ? AND ?"


def offset_runs(offsets: Sequence[int] | np.ndarray) -> list[tuple[int, int]]:
    """The distinct ``offsets`` as (first, last) runs of consecutive offsets, ascending."""
    a = np.unique(np.asarray(offsets, dtype=np.int64))
    if not len(a):
        return []
    cut = np.flatnonzero(np.diff(a) != 1) + 1
    return list(zip(a[np.r_[0, cut]].tolist(), a[np.r_[cut - 1, len(a) - 1]].tolist()))


def add_pending(conn: sqlite3.Connection, topic: str, group: str, fresh: range, consumer: str,
                deadline: float) -> None:
    """Pending rows (first delivery, to ``consumer`` until ``deadline``) for the offsets of
    ``fresh``, in one statement."""
    if fresh:
        conn.execute(_ADD, {"lo": fresh.start, "hi": fresh.stop - 1, "topic": topic, "grp": group,
                            "consumer": consumer, "deadline": deadline})


def ack_pending(conn: sqlite3.Connection, topic: str, group: str, offsets: Sequence[int] | np.ndarray) -> int:
    """Delete the group's pending rows at ``offsets`` (a statement per run of consecutive
    offsets); returns how many there were."""
    return conn.executemany(_ACK, [(topic, group, lo, hi) for lo, hi in offset_runs(offsets)]).rowcount

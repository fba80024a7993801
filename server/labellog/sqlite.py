"""The embedded label log: one SQLite file in WAL mode, driven from one worker thread."""

from __future__ import annotations

import asyncio
import math
import sqlite3
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from pseudostream.server.config import SQLITE_PAGE_SIZES
from pseudostream.server.errors import ConfigError, InvalidInput, PseudostreamError
from pseudostream.server.labellog._checkpoint import Checkpointer
from pseudostream.server.labellog._pending import ack_pending, add_pending
from pseudostream.server.labellog._recent import RecentIndex, expire_decided, read_decided, write_decided
from pseudostream.server.labellog._segments import nbytes, pack
from pseudostream.server.labellog._sqlite_open import open_file
from pseudostream.server.labellog._sqlite_schema import INSERT_SEGMENT, fetch_columns, fetch_records
from pseudostream.server.labellog.base import LabelBatch, LabelLog, LabelRecord
from pseudostream.server.labellog.columns import LabelColumns
from pseudostream.server.labellog.entries import DecisionEntries

__all__ = ["SqliteLabelLog"]

_SYNC_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")


class SqliteLabelLog(LabelLog):
    """A :class:`LabelLog` in one SQLite file, for a single service process.

    Durability: the file is in WAL mode and every ``append``/``read``/``ack`` is one
    transaction. With ``synchronous="NORMAL"`` (the default) a commit reaches the OS before the
    call returns, so nothing is lost when the process crashes or is killed; a power loss may
    drop the last commits. ``synchronous="FULL"`` also survives power loss, at the cost of one
    fsync per commit.

    Redelivery: a pending record becomes *claimable* when its deadline (delivery time +
    ``visibility_timeout_s``) has passed. ``read`` hands out claimable records, the caller's own
    first, then records the group never received. A consumer's own pending records whose
    deadline has not passed are not sent again, so reading in a loop never repeats a record.
    ``release`` (a disconnect) makes a consumer's pending records claimable at once, and so
    does opening the file (the restart rule): this log is embedded in one process, so every
    delivery still pending when the file is opened belonged to a stream of a previous process
    and is handed out again immediately, preferably to the same consumer name.

    Retention (``max_len`` records per topic, ``max_age_s`` seconds) is applied at each append:
    older records go, with their pending deliveries, and offsets keep counting.

    Idempotency entries (``remember``) are one row per remembered batch, and an in-memory index
    says which row holds each id (``_recent``; rebuilt from the file on open): a ``recall`` of
    ids nobody remembered, the common case, never touches the file or waits for its thread.

    Waiting reads wake on an append or release in this process, at the next pending deadline,
    and otherwise poll every ``poll_interval_s`` (which also notices other writers). All SQLite
    work but WAL checkpoints (own thread and connection, ``_checkpoint``) runs on one worker
    thread; opening blocks the caller while the schema is created. Samples are little-endian.

    Pages: a new file gets ``page_size`` bytes per page (SQLite's own 4 KiB by default; the
    service's config picks 64 KiB for large samples: ``factory.page_size_for``). A batch's samples
    are one blob spread over overflow pages, written to the WAL and again by the checkpoint, page
    by page, so large samples go faster on large pages, while every small write (a pending row, an
    idempotency entry) writes whole pages too. A file keeps the page size it was created with.
    """

    def __init__(
        self,
        path: str | Path,
        visibility_timeout_s: float = 30.0,
        synchronous: str = "NORMAL",
        poll_interval_s: float = 0.05,
        max_len: int | None = None,
        max_age_s: float | None = None,
        page_size: int = 4096,
    ) -> None:
        if not visibility_timeout_s > 0 or not poll_interval_s > 0:
            raise ConfigError("visibility_timeout_s and poll_interval_s must be > 0 seconds")
        if synchronous.upper() not in _SYNC_MODES:
            raise ConfigError(f"synchronous must be one of {_SYNC_MODES}, got {synchronous!r}")
        if page_size not in SQLITE_PAGE_SIZES:
            raise ConfigError(f"page_size must be one of {SQLITE_PAGE_SIZES}, got {page_size!r}")
        self.path = str(path)
        self.visibility_timeout_s = float(visibility_timeout_s)
        self.poll_interval_s = float(poll_interval_s)
        if (max_len is not None and max_len < 1) or (max_age_s is not None and max_age_s <= 0):
            raise ConfigError("max_len must be >= 1 and max_age_s > 0 (or None: keep everything)")
        self.max_len, self.max_age_s = max_len, max_age_s
        self._closed = False
        self._waiters: dict[str, set[asyncio.Future]] = {}  # readers waiting for an append
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-labellog")
        try:
            fut = self._executor.submit(self._guarded, "open", open_file, (self.path, synchronous.upper(), page_size))
            self._conn: sqlite3.Connection
            self._recent: RecentIndex  # which idempotency row holds each remembered id (``_recent``)
            self._conn, wal, self._recent = fut.result()
        except BaseException:
            self._executor.shutdown(wait=True)
            raise
        # WAL checkpoints run on their own thread, not inside an append (``_checkpoint``); it
        # ends with close(), or when a log that was never closed is collected.
        self._checkpointer = Checkpointer(self.path) if wal else None
        if self._checkpointer is not None:
            weakref.finalize(self, self._checkpointer.stop)

    # ----------------------------------------------------------------- LabelLog interface

    async def append(self, topic: str, batch: LabelBatch) -> np.ndarray:
        """Append ``batch`` in one transaction; returns the offsets given to its rows."""
        return await self.append_and_remember(topic, batch, None, 0.0)

    async def read(
        self, topic: str, group: str, consumer: str, max_records: int, wait_s: float = 0.0,
        samples: bool = True,
    ) -> list[LabelRecord]:
        """Deliver up to ``max_records``: own claimable pending, others' claimable pending,
        then new records; waits up to ``wait_s`` for at least one (see the class docstring).
        Without ``samples`` the segments' sample blobs are not read."""
        return await self._deliver(topic, group, consumer, max_records, wait_s, samples, fetch_records)

    async def read_columns(
        self, topic: str, group: str, consumer: str, max_records: int, wait_s: float = 0.0,
        samples: bool = True,
    ) -> list[LabelColumns]:
        """``read`` as columns cut straight from the segments: no object per record."""
        return await self._deliver(topic, group, consumer, max_records, wait_s, samples, fetch_columns)

    async def _deliver(self, topic: str, group: str, consumer: str, max_records: int, wait_s: float,
                       samples: bool, fetch: Callable[..., list]) -> list:
        if max_records < 1:
            raise InvalidInput(f"max_records must be at least 1, got {max_records}")
        loop = asyncio.get_running_loop()
        give_up = loop.time() + max(wait_s, 0.0)
        waiters = self._waiters.setdefault(topic, set())
        while True:
            appended = loop.create_future()
            waiters.add(appended)  # registered before reading, so no append goes unnoticed
            try:
                records, next_due = await self._call(
                    "read", self._read_tx, topic, group, consumer, max_records, samples, fetch
                )
                remaining = give_up - loop.time()
                if records or remaining <= 0:
                    return records
                due_in = math.inf if next_due is None else max(next_due - time.time(), 0.0)
                await asyncio.wait([appended], timeout=min(remaining, self.poll_interval_s, due_in))
            finally:
                waiters.discard(appended)

    async def ack(self, topic: str, group: str, offsets: Sequence[int]) -> int:
        """Delete the group's pending entries for ``offsets``; returns how many there were."""
        return await self._call("ack", self._ack_tx, topic, group, offsets) if len(offsets) else 0

    async def release(self, topic: str, group: str, consumer: str) -> int:
        """Make ``consumer``'s pending records claimable now; returns how many."""
        sql = "UPDATE pending SET deadline = 0 WHERE topic = ? AND grp = ? AND consumer = ?"
        released = await self._call("release", self._write, sql, (topic, group, consumer))
        if released:
            self._wake(topic)
        return released

    async def committed(self, topic: str, group: str) -> int:
        """Lowest pending offset of the group, else its cursor (0 for an unknown group)."""
        sql = """SELECT COALESCE((SELECT MIN(offset) FROM pending WHERE topic = :t AND grp = :g),
                 (SELECT cursor FROM groups WHERE topic = :t AND grp = :g), 0)"""
        return await self._call("committed", self._scalar, sql, {"t": topic, "g": group})

    async def end_offset(self, topic: str) -> int:
        """Records ever appended to ``topic`` (0 for an unknown topic)."""
        sql = "SELECT COALESCE((SELECT next_offset FROM topics WHERE topic = ?), 0)"
        return await self._call("end_offset", self._scalar, sql, (topic,))

    async def lag(self, topic: str, group: str) -> int:
        """Records not acked by the group: never delivered plus pending."""
        sql = """SELECT COALESCE((SELECT next_offset FROM topics WHERE topic = :t), 0)
                 - COALESCE((SELECT cursor FROM groups WHERE topic = :t AND grp = :g), 0)
                 + (SELECT COUNT(*) FROM pending WHERE topic = :t AND grp = :g)"""
        return await self._call("lag", self._scalar, sql, {"t": topic, "g": group})

    async def get(self, topic: str, offsets: Sequence[int]) -> list[LabelRecord]:
        """The records at ``offsets`` in the order given; missing ones are skipped."""
        order = [(int(o), 0) for o in offsets]
        return await self._call("get", fetch_records, self._conn, topic, order)

    async def remember(self, topic: str, entries: Mapping[str, bytes], ttl_s: float) -> None:
        """Keep ``entries`` (sample id -> blob) for ``ttl_s`` seconds; expired ones are purged."""
        await self.append_and_remember(topic, None, lambda _: entries, ttl_s)

    async def recall(self, topic: str, ids: Sequence[str]) -> dict[str, bytes]:
        """The unexpired blobs remembered for ``ids``: the in-memory index says which rows hold
        them, and only those rows are read (no trip to the file when none does)."""
        if self._closed:
            raise RuntimeError("label log is closed")
        rows = self._recent.find(topic, ids, time.time())
        return await self._call("recall", read_decided, self._conn, rows) if rows else {}

    async def append_and_remember(
        self, topic: str, batch: LabelBatch | None,
        entries: Callable[[np.ndarray], Mapping[str, bytes]] | None, ttl_s: float,
    ) -> np.ndarray:
        """Records and idempotency entries in one transaction: one trip to the worker thread."""
        n = 0 if batch is None else len(batch)
        if not n and entries is None:
            return np.empty(0, dtype=np.int64)
        op, now = "append" if n else "remember", time.time()
        self._recent.purge(now)  # before the rows expired by now leave the file
        first, remembered = await self._call(op, self._append_remember_tx, topic, batch if n else None,
                                             entries, now, ttl_s)
        if remembered is not None:
            self._recent.add(topic, *remembered, now + ttl_s)
        if n:
            self._wake(topic)
        return np.arange(first, first + n, dtype=np.int64)

    async def save_state(self, topic: str, key: str, blob: bytes) -> None:
        """Store ``blob`` under (topic, key), replacing any earlier one."""
        sql = "INSERT OR REPLACE INTO state(topic, key, blob) VALUES (?, ?, ?)"
        await self._call("save_state", self._write, sql, (topic, key, bytes(blob)))

    async def load_state(self, topic: str, key: str) -> bytes | None:
        """The blob stored under (topic, key), or None."""
        sql = "SELECT (SELECT blob FROM state WHERE topic = ? AND key = ?)"
        blob = await self._call("load_state", self._scalar, sql, (topic, key))
        return None if blob is None else bytes(blob)

    async def list_state(self, topic: str, prefix: str) -> dict[str, bytes]:
        """Blobs of ``topic`` whose key starts with ``prefix``."""
        sql = "SELECT key, blob FROM state WHERE topic = ? AND substr(key, 1, ?) = ?"
        rows = await self._call("list_state", self._rows, sql, (topic, len(prefix), prefix))
        return {key: bytes(blob) for key, blob in rows}

    async def delete_state(self, topic: str, keys: Sequence[str]) -> None:
        """Remove these keys of ``topic``."""
        for key in keys:
            await self._call("delete_state", self._write, "DELETE FROM state WHERE topic = ? AND key = ?",
                             (topic, key))

    async def close(self) -> None:
        """Run the work already queued, close the connection, stop the worker thread."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        try:
            if self._checkpointer is not None:
                await loop.run_in_executor(None, self._checkpointer.close)
            await loop.run_in_executor(self._executor, self._guarded, "close", self._conn.close, ())
        finally:
            self._executor.shutdown(wait=True)

    def _wake(self, topic: str) -> None:
        """Wake the readers waiting on ``topic``, on whichever event loop each one runs."""
        for appended in list(self._waiters.get(topic, ())):
            if not appended.get_loop().is_closed():
                appended.get_loop().call_soon_threadsafe(_resolve, appended)

    # ---------------------------------------------------------------- worker-thread side

    async def _call(self, op: str, fn: Callable[..., Any], *args: Any) -> Any:
        if self._closed:
            raise RuntimeError("label log is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._guarded, op, fn, args)

    def _guarded(self, op: str, fn: Callable[..., Any], args: tuple) -> Any:
        try:
            return fn(*args)
        except sqlite3.Error as exc:
            raise PseudostreamError(f"label log {op} failed on {self.path!r}: {exc}") from exc

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:  # SQLite may already have rolled back (e.g. disk full)
                self._conn.execute("ROLLBACK")
            raise

    def _rows(self, sql: str, params: Any) -> list[tuple]:
        return self._conn.execute(sql, params).fetchall()

    def _scalar(self, sql: str, params: Any) -> Any:
        return self._conn.execute(sql, params).fetchone()[0]

    def _write(self, sql: str, params: Any) -> int:
        with self._transaction() as conn:
            return conn.execute(sql, params).rowcount

    def _append_segment(self, topic: str, segment: tuple) -> int:
        """Inside a transaction: the segment (``_segments.pack``) at the topic's next offsets;
        returns the first."""
        conn = self._conn
        first = self._scalar(
            "SELECT COALESCE((SELECT next_offset FROM topics WHERE topic = ?), 0)", (topic,)
        )
        end = first + segment[0]
        conn.execute(INSERT_SEGMENT, (topic, first, *segment))
        conn.execute("INSERT INTO topics(topic, next_offset) VALUES (?, ?) "
                     "ON CONFLICT(topic) DO UPDATE SET next_offset = excluded.next_offset", (topic, end))
        if self.max_len is not None or self.max_age_s is not None:
            self._trim(conn, topic, end)
        return first

    def _trim(self, conn: sqlite3.Connection, topic: str, end: int) -> None:
        """Retention: raise the topic's first kept offset, drop the segments wholly below it and
        the pending deliveries below it; move cursors past them."""
        low = 0 if self.max_len is None else end - self.max_len
        if self.max_age_s is not None:  # a segment's records share its creation time
            young = self._scalar("SELECT (SELECT first FROM segments WHERE topic = ? AND created_at >= ? "
                                 "ORDER BY first LIMIT 1)", (topic, time.time() - self.max_age_s))
            low = max(low, end if young is None else young)
        if low <= self._scalar("SELECT low FROM topics WHERE topic = ?", (topic,)):
            return
        conn.execute("UPDATE topics SET low = ? WHERE topic = ?", (low, topic))
        conn.execute("DELETE FROM segments WHERE topic = ? AND first < ? AND first + n <= ?", (topic, low, low))
        conn.execute("DELETE FROM pending WHERE topic = ? AND offset < ?", (topic, low))
        conn.execute("UPDATE groups SET cursor = ? WHERE topic = ? AND cursor < ?", (low, topic, low))

    def _ack_tx(self, topic: str, group: str, offsets: Sequence[int]) -> int:
        with self._transaction() as conn:
            return ack_pending(conn, topic, group, offsets)

    def _read_tx(
        self, topic: str, group: str, consumer: str, limit: int, samples: bool = True,
        fetch: Callable[..., list] = fetch_records,
    ) -> tuple[list, float | None]:
        """Claim and deliver in one transaction; also returns the next pending deadline."""
        now = time.time()
        deadline = now + self.visibility_timeout_s
        with self._transaction() as conn:
            conn.execute(  # a new group starts at the oldest record retention kept
                "INSERT OR IGNORE INTO groups VALUES (?, ?, COALESCE((SELECT low FROM topics WHERE topic = ?), 0))",
                (topic, group, topic))
            claimed = conn.execute(
                "SELECT offset, deliveries + 1 FROM pending "
                "WHERE topic = ? AND grp = ? AND deadline <= ? "
                "ORDER BY consumer != ?, offset LIMIT ?",
                (topic, group, now, consumer, limit),
            ).fetchall()
            conn.executemany(
                "UPDATE pending SET consumer = ?, deadline = ?, deliveries = ? "
                "WHERE topic = ? AND grp = ? AND offset = ?",
                [(consumer, deadline, n, topic, group, off) for off, n in claimed],
            )
            cursor = self._scalar("SELECT cursor FROM groups WHERE topic = ? AND grp = ?",
                                  (topic, group))
            end = self._scalar(
                "SELECT COALESCE((SELECT next_offset FROM topics WHERE topic = ?), 0)", (topic,)
            )
            fresh = range(cursor, min(end, cursor + limit - len(claimed)))
            add_pending(conn, topic, group, fresh, consumer, deadline)
            conn.execute(
                "UPDATE groups SET cursor = ? WHERE topic = ? AND grp = ?",
                (fresh.stop if fresh else cursor, topic, group),
            )
            order = claimed + [(off, 1) for off in fresh]
            records = fetch(conn, topic, order, samples)
            next_due = None
            if not records:
                next_due = self._scalar(
                    "SELECT MIN(deadline) FROM pending WHERE topic = ? AND grp = ?", (topic, group)
                )
        return records, next_due

    def _append_remember_tx(self, topic: str, batch: LabelBatch | None,
                            entries: Callable[[np.ndarray], Mapping[str, bytes]] | None,
                            now: float, ttl_s: float) -> tuple[int, tuple[int, list[str]] | None]:
        """The records' first offset, and the (row, ids) the idempotency entries went to."""
        segment = pack(batch, now) if batch is not None else None  # built here, off the event loop
        n = 0 if segment is None else segment[0]
        remembered, written = None, nbytes(segment)
        with self._transaction():
            first = self._append_segment(topic, segment) if n else 0
            if entries is not None:  # expired entries go, then this batch's are kept
                kept = DecisionEntries.of(entries(np.arange(first, first + n, dtype=np.int64)))
                expire_decided(self._conn, now)
                remembered = write_decided(self._conn, topic, kept, now + ttl_s)
                written += kept.nbytes
        if self._checkpointer is not None:
            self._checkpointer.wrote(written)
            self._checkpointer.backstop(self._conn)
        return first, remembered


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)

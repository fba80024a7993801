"""Opening the SQLite label log's file (``sqlite.SqliteLabelLog``): page size, WAL mode and its
backstop checkpoint, durability, the schema and the move of an earlier release's rows, the
restart rule, and the idempotency index read back. Runs on the log's worker thread."""

from __future__ import annotations

import logging
import sqlite3
import time

from pseudostream.server.labellog._checkpoint import BACKSTOP_BYTES, WAL_KEPT_BYTES
from pseudostream.server.labellog._recent import RecentIndex, load_decided
from pseudostream.server.labellog._sqlite_schema import SCHEMA, migrate

__all__ = ["open_file"]

logger = logging.getLogger("pseudostream.server.labellog.sqlite")  # the log's own name, as before the split


def open_file(path: str, synchronous: str, page_size: int) -> tuple[sqlite3.Connection, bool, RecentIndex]:
    """The connection (transactions explicit), whether the file runs in WAL mode, and which
    idempotency row holds each remembered id. ``page_size`` applies to a new file only."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(f"PRAGMA page_size={page_size}")  # set before WAL, which creates the file
        wal = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() == "wal"
        kept = conn.execute("PRAGMA page_size").fetchone()[0]
        if kept != page_size:
            logger.info("label log %s keeps the page size of %d bytes it was created with "
                        "(page_size %d applies to new files)", path, kept, page_size)
        if wal:
            conn.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_BYTES // kept}")
            conn.execute(f"PRAGMA journal_size_limit={WAL_KEPT_BYTES}")  # see _checkpoint
        else:
            logger.warning("label log %s does not run in WAL mode", path)
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.executescript(SCHEMA)
        now = time.time()
        moved, entries = migrate(conn, now)
        if moved or entries:
            logger.info("label log %s: moved %d records and %d idempotency entries of an earlier release",
                        path, moved, entries)
        released = conn.execute("UPDATE pending SET deadline = 0").rowcount  # restart rule
        if released:
            logger.info("label log %s: released %d pending deliveries", path, released)
        recent = load_decided(conn, now)
    except BaseException:
        conn.close()
        raise
    return conn, wal, recent

"""WAL checkpoints of the SQLite label log, on their own thread and connection.

SQLite's automatic checkpoint runs inside the commit that crosses ``wal_autocheckpoint`` pages
(1000 by default): every ~50th append of a batch of 128 digits with its samples copied about
4 MB of WAL into the database and waited for its fsyncs, 6-8 ms against a 0.14 ms median
append, about 45% of the log thread's time. SQLite's WAL documentation (sqlite.org/wal.html,
"Automatic Checkpoint") lets applications "turn off the automatic checkpoints and run
checkpoints during idle moments or in a separate thread or process"; a PASSIVE checkpoint
never blocks the writer.

``Checkpointer.wrote(n)`` is told the bytes each append added; past ``every_bytes`` it wakes
its thread, which runs ``PRAGMA wal_checkpoint(PASSIVE)`` on its own connection. It also runs
every ``interval_s`` (the pending rows of reads and acks are not counted). The writer keeps an
automatic checkpoint at ``BACKSTOP_PAGES``, so the WAL stays bounded should this thread lag.
The WAL starts over from its beginning only when a write begins after a checkpoint copied all
of it; a writer that never pauses (a loop of appends) grows it to the backstop, where one
append pays for a checkpoint (measured: one append of 28 ms per ~15000 pages).
"""

from __future__ import annotations

import logging
import sqlite3
import threading

__all__ = ["Checkpointer", "BACKSTOP_PAGES", "EVERY_BYTES"]

logger = logging.getLogger(__name__)

EVERY_BYTES = 4 << 20  # about SQLite's own default of 1000 pages of 4 KiB
BACKSTOP_PAGES = 16000  # the writer's own checkpoint, only when this thread lags far behind


class Checkpointer:
    """Runs PASSIVE WAL checkpoints of ``path`` on a daemon thread when ``every_bytes`` have
    been written since the last one, and every ``interval_s``."""

    def __init__(self, path: str, every_bytes: int = EVERY_BYTES, interval_s: float = 1.0) -> None:
        if every_bytes < 1 or not interval_s > 0:
            raise ValueError(f"every_bytes must be >= 1 and interval_s > 0, got {every_bytes}, {interval_s}")
        self.path = path
        self.every_bytes = every_bytes
        self.interval_s = interval_s
        self.runs = 0  # checkpoints run (for tests and logs)
        self._written = 0
        self._due = threading.Event()
        self._closing = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"sqlite-checkpoint {path}", daemon=True)
        self._thread.start()

    def wrote(self, nbytes: int) -> None:
        """A commit added about ``nbytes`` to the WAL (called on the writer's thread)."""
        with self._lock:
            self._written += nbytes
            if self._written < self.every_bytes:
                return
            self._written = 0
        self._due.set()

    def stop(self) -> None:
        """Ask the thread to end after the checkpoint it runs, if any (does not wait)."""
        self._closing = True
        self._due.set()

    def close(self) -> None:
        """Stop the thread and wait for it; its connection is closed."""
        self.stop()
        self._thread.join()

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout=5000")
            while True:
                self._due.wait(self.interval_s)
                self._due.clear()
                if self._closing:
                    return
                try:
                    busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    self.runs += 1
                    logger.debug("label log %s: checkpoint copied %d of %d WAL frames (busy %d)",
                                 self.path, copied, frames, busy)
                except sqlite3.Error as exc:  # the writer's backstop checkpoint still bounds the WAL
                    logger.warning("label log %s: background checkpoint failed: %s", self.path, exc)
        finally:
            conn.close()

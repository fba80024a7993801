"""WAL checkpoints of the SQLite label log, on their own thread and connection.

SQLite's automatic checkpoint runs inside the commit that crosses ``wal_autocheckpoint`` pages
(1000 by default): every ~50th append of a batch of 128 digits with its samples copied about
4 MB of WAL into the database and waited for its fsyncs, 6-8 ms against a 0.14 ms median
append on one machine (about 45% of the log thread's time), 13-15 ms on another. SQLite's WAL
documentation (sqlite.org/wal.html, "Automatic Checkpoint") lets applications "turn off the
automatic checkpoints and run checkpoints during idle moments or in a separate thread or
process"; a PASSIVE checkpoint never blocks the writer.

``Checkpointer.wrote(n)`` is told the bytes each append added; past ``every_bytes`` it wakes
its thread, which runs ``PRAGMA wal_checkpoint(PASSIVE)`` on its own connection. It also runs
every ``interval_s`` (the pending rows of reads and acks are not counted). The writer keeps an
automatic checkpoint at ``BACKSTOP_BYTES`` of WAL, so the WAL stays bounded should this thread lag.
The WAL starts over from its beginning only when a write begins after a checkpoint copied all
of it. Under steady appends a checkpoint of 4 MB rarely ends between two commits, so each one
leaves the frames committed while it ran, and the WAL grew to the backstop (64 MB, where one
append pays for a checkpoint). A checkpoint is therefore run again at once until a pass finds
no frame beyond those the pass before copied (``CATCH_UP`` passes at most): the frames left
after the first pass are a commit or two, copied in well under a commit's interval, so the next
write starts the WAL over.

That backstop alone did not hold when appends outran checkpoints (appends of 3.7 MB every
millisecond or so, as a service on a GPU makes them): SQLite lets one checkpoint run at a time,
this thread's passes ran back to back, and the writer's automatic checkpoint, finding the
checkpoint lock taken, gave up at once (SQLite's busy handler is not called for it), so the WAL
grew to a gigabyte and more in seconds. ``Checkpointer.backstop`` therefore runs on the writer's
thread after each append: once the WAL file is past ``BACKSTOP_BYTES`` the writer waits for this
thread's pass to end and copies the rest itself, which holds the writer back until the
database has caught up. The writer's connection cuts the WAL file back to
``WAL_KEPT_BYTES`` when the WAL starts over (``PRAGMA journal_size_limit``), so the file's size
is the WAL's extent since it last started over, and a burst leaves no large file behind.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading

__all__ = ["Checkpointer", "BACKSTOP_BYTES", "CATCH_UP", "EVERY_BYTES", "WAL_KEPT_BYTES"]

logger = logging.getLogger(__name__)

EVERY_BYTES = 4 << 20  # about SQLite's own default of 1000 pages of 4 KiB
BACKSTOP_BYTES = 64 << 20  # the writer's own checkpoint, only when this thread lags far behind
CATCH_UP = 4  # passes of one checkpoint while the writer keeps committing frames
WAL_KEPT_BYTES = 16 << 20  # the WAL file is cut back to this when it starts over


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
        self.passes = 0  # their passes, catch-up passes included
        self.frames = 0  # WAL frames the last pass found
        self.backstops = 0  # checkpoints the writer ran itself, the WAL past BACKSTOP_BYTES
        self._wal = f"{path}-wal"
        self._pass = threading.Lock()  # held by a pass of this thread, or by the writer's backstop
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

    def backstop(self, writer: sqlite3.Connection) -> None:
        """Called on the writer's thread after a commit: if the WAL file is past
        ``BACKSTOP_BYTES``, wait for this thread's pass to end, then copy the rest of the WAL on
        ``writer`` (no transaction open on it), so the next commit starts the WAL over."""
        try:
            size = os.stat(self._wal).st_size
        except OSError:  # no WAL file (yet): nothing to copy
            return
        if size <= BACKSTOP_BYTES:
            return
        with self._pass:
            busy, frames, copied = writer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        self.backstops += 1
        logger.debug("label log %s: the WAL file at %d MiB; the writer copied %d of %d frames (busy %d)",
                     self.path, size >> 20, copied, frames, busy)

    def stop(self) -> None:
        """Ask the thread to end after the checkpoint it runs, if any (does not wait)."""
        self._closing = True
        self._due.set()

    def close(self) -> None:
        """Stop the thread and wait for it; its connection is closed."""
        self.stop()
        self._thread.join()

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None)
            conn.execute("PRAGMA busy_timeout=5000")
        except sqlite3.Error as exc:  # the writer's backstop checkpoint still bounds the WAL
            logger.warning("label log %s: no background checkpoints (%s); the writer checkpoints "
                           "every %d MiB of WAL itself", self.path, exc, BACKSTOP_BYTES >> 20)
            return
        try:
            while True:
                self._due.wait(self.interval_s)
                self._due.clear()
                if self._closing:
                    return
                try:
                    self._checkpoint(conn)
                except sqlite3.Error as exc:  # the next one may succeed; the backstop bounds the WAL
                    logger.warning("label log %s: background checkpoint failed: %s", self.path, exc)
        finally:
            conn.close()

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        """One PASSIVE checkpoint, run again while the writer commits frames during it.

        A pass copies the WAL as it was when the pass began and reports that many frames; it is
        caught up when a pass finds no frame beyond those the pass before copied."""
        self.runs += 1
        copied_before = -1
        for _ in range(CATCH_UP):
            with self._pass:
                busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            self.passes, self.frames = self.passes + 1, frames
            logger.debug("label log %s: checkpoint copied %d of %d WAL frames (busy %d)",
                         self.path, copied, frames, busy)
            # Caught up (or the WAL started over: fewer frames), blocked by a reader, or not WAL.
            if frames <= copied_before or busy or copied < frames or self._closing:
                return
            copied_before = copied

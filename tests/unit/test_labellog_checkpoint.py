"""WAL checkpoints of the SQLite log run on their own thread (``_checkpoint``), not in appends."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pseudostream.benchmarks.log_append import batch  # a batch of accepted samples, ids k-i
from pseudostream.server.labellog import SqliteLabelLog
from pseudostream.server.labellog import _checkpoint
from pseudostream.server.labellog._checkpoint import BACKSTOP_BYTES, EVERY_BYTES, WAL_KEPT_BYTES, Checkpointer


def wal_file(tmp_path: Path) -> Path:
    """A WAL-mode database with one table, its connection closed (the WAL stays)."""
    path = tmp_path / "wal.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t(x)")
    conn.close()
    return path


@pytest.fixture
def quiet(tmp_path: Path):
    """(path, writer, checkpointer): a WAL file, a writer whose own checkpoints are off (usable
    from any thread), and a Checkpointer that runs no pass by itself."""
    path = str(wal_file(tmp_path))
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("PRAGMA wal_autocheckpoint=0")
    cp = Checkpointer(path, every_bytes=1 << 40, interval_s=3600)
    yield path, writer, cp
    writer.close()
    cp.close()


def until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_checkpoint_runs_once_enough_bytes_were_written(tmp_path: Path):
    path = str(wal_file(tmp_path))
    cp = Checkpointer(path, every_bytes=100, interval_s=3600)
    try:
        cp.wrote(60)
        time.sleep(0.2)
        assert cp.runs == 0  # under every_bytes, and the interval is an hour away
        cp.wrote(60)
        until(lambda: cp.runs == 1)
        cp.wrote(99)
        time.sleep(0.2)
        assert cp.runs == 1  # the count started again after the checkpoint
    finally:
        cp.close()
    assert not [t for t in threading.enumerate() if t.name == f"sqlite-checkpoint {path}"]


def test_a_checkpoint_also_runs_every_interval(tmp_path: Path):
    cp = Checkpointer(str(wal_file(tmp_path)), interval_s=0.05)
    try:
        until(lambda: cp.runs >= 3)
    finally:
        cp.close()


async def test_the_logs_appends_are_checkpointed_by_the_background_thread(tmp_path: Path):
    """Two appends of 3 MB of samples: the writer's own checkpoint is far off (BACKSTOP_BYTES),
    yet the pages reach the database file, copied there by the checkpoint thread."""
    db = tmp_path / "labels.db"
    n = 256
    samples = np.random.default_rng(0).random((n, 3, 32, 32), dtype=np.float32)
    async with SqliteLabelLog(db) as log:
        assert await log._call("pragma", log._scalar, "PRAGMA wal_autocheckpoint", ()) == BACKSTOP_BYTES // 4096
        for k in range(2):
            await log.append("t", batch(k, samples))
        assert 2 * samples.nbytes > EVERY_BYTES and 2 * samples.nbytes < BACKSTOP_BYTES
        checkpointer = log._checkpointer
        assert checkpointer is not None
        for _ in range(1000):
            if checkpointer.runs and db.stat().st_size > 2 * samples.nbytes:
                break
            await asyncio.sleep(0.01)
        assert checkpointer.runs >= 1 and db.stat().st_size > 2 * samples.nbytes
    assert not [t for t in threading.enumerate() if t.name == f"sqlite-checkpoint {db}"]
    async with SqliteLabelLog(db) as log:
        assert await log.end_offset("t") == 2 * n
        [record] = await log.get("t", [n + 5])
        np.testing.assert_array_equal(record.sample_array(), samples[5])


def test_a_file_it_cannot_open_leaves_a_warning_not_a_dead_thread(tmp_path: Path, caplog):
    path = str(tmp_path / "missing" / "labels.db")
    with caplog.at_level("WARNING", logger="pseudostream.server.labellog._checkpoint"):
        cp = Checkpointer(path)
        cp._thread.join(timeout=10)
    assert not cp._thread.is_alive() and cp.runs == 0
    assert "no background checkpoints" in caplog.text and f"every {BACKSTOP_BYTES >> 20} MiB of WAL" in caplog.text
    cp.close()  # still fine to close


def test_a_checkpoint_passes_again_until_no_frame_is_left_so_the_wal_starts_over(quiet):
    """The pass that copies is followed by one that finds nothing new; the next commit then
    writes from the start of the WAL instead of after every frame written so far."""
    path, writer, cp = quiet
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for _ in range(50):
            writer.execute("INSERT INTO t VALUES (randomblob(8000))")
        cp._checkpoint(conn)
        assert (cp.runs, cp.passes) == (1, 2) and cp.frames > 50
        writer.execute("INSERT INTO t VALUES (randomblob(8000))")
        cp._checkpoint(conn)
        assert cp.frames < 10  # that one commit's frames, at the start of the WAL
    finally:
        conn.close()


async def test_under_steady_appends_the_wal_keeps_starting_over(tmp_path: Path):
    """Appends every few ms, as a busy service makes them: the WAL is copied and started over
    again and again (its frame count drops), far below the writer's backstop. Without the
    catch-up passes it only grows, until the backstop's own checkpoint at 64 MiB of WAL."""
    db = tmp_path / "labels.db"
    n = 256
    samples = np.random.default_rng(0).random((n, 1, 8, 8), dtype=np.float32)
    async with SqliteLabelLog(db) as log:
        checkpointer = log._checkpointer
        assert checkpointer is not None
        frames: list[int] = []
        restarts = k = 0
        while restarts < 3:
            await log.append("t", batch(k, samples))
            frames.append(checkpointer.frames)
            restarts += len(frames) > 1 and frames[-1] < frames[-2]
            k += 1
            assert checkpointer.runs < 30 and k < 5000, (checkpointer.runs, k, max(frames))
            await asyncio.sleep(0.005)
    assert max(frames) < BACKSTOP_BYTES // 4096 // 2, max(frames)  # frames are 4 KiB pages


async def test_appends_that_outrun_the_checkpoints_keep_the_wal_file_under_the_backstop(tmp_path: Path):
    """The background thread stopped and the writer's automatic checkpoint off (as when SQLite
    refuses it because the thread holds the checkpoint lock): 100 MB of appends leave the WAL
    file under the backstop and an append or two, the writer checkpointing itself; the WAL then
    starts over, its file cut back to WAL_KEPT_BYTES, and every record reads back."""
    db = tmp_path / "labels.db"
    n = 256
    samples = np.random.default_rng(0).random((n, 3, 32, 32), dtype=np.float32)
    wal = Path(f"{db}-wal")
    async with SqliteLabelLog(db) as log:
        checkpointer = log._checkpointer
        assert checkpointer is not None
        checkpointer.stop()
        checkpointer._thread.join(timeout=10)
        assert not checkpointer._thread.is_alive()
        await log._call("pragma", log._scalar, "PRAGMA wal_autocheckpoint=0", ())
        sizes = []
        appends = (BACKSTOP_BYTES * 3 // 2) // samples.nbytes + 1
        for k in range(appends):
            await log.append("t", batch(k, samples))
            sizes.append(wal.stat().st_size)
        assert appends * samples.nbytes > BACKSTOP_BYTES * 3 // 2  # unbounded, the file would be this big
        assert max(sizes) <= BACKSTOP_BYTES + 2.2 * samples.nbytes, (max(sizes), checkpointer.backstops)
        assert checkpointer.backstops >= 1
        assert WAL_KEPT_BYTES in sizes  # the commit after a start-over cut the file back
        assert await log.end_offset("t") == appends * n
        [record] = await log.get("t", [(appends - 1) * n + 7])
        np.testing.assert_array_equal(record.sample_array(), samples[7])


def test_the_writers_backstop_waits_for_a_pass_in_progress(quiet, monkeypatch):
    """With the WAL past the backstop (made 1 byte here), the writer does not checkpoint while a
    pass of the thread runs; it does once the pass ends, and its next commit starts the WAL over."""
    monkeypatch.setattr(_checkpoint, "BACKSTOP_BYTES", 1)
    path, writer, cp = quiet
    reader = sqlite3.connect(path, isolation_level=None)
    try:
        for _ in range(20):
            writer.execute("INSERT INTO t VALUES (randomblob(8000))")
        with cp._pass:  # as a pass of the thread holds it
            waiting = threading.Thread(target=cp.backstop, args=(writer,))
            waiting.start()
            time.sleep(0.3)
            assert waiting.is_alive() and cp.backstops == 0
        waiting.join(timeout=10)
        assert not waiting.is_alive() and cp.backstops == 1
        writer.execute("INSERT INTO t VALUES (randomblob(8000))")
        _, frames, _ = reader.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert frames < 10  # the one commit's frames, at the start of the WAL
    finally:
        reader.close()


def test_the_writers_backstop_leaves_a_small_wal_alone(quiet):
    path, writer, cp = quiet
    writer.execute("INSERT INTO t VALUES (randomblob(8000))")
    cp.backstop(writer)
    assert cp.backstops == 0 and 0 < Path(f"{path}-wal").stat().st_size < BACKSTOP_BYTES

"""SqliteLabelLog specifics: durability, the restart rule, WAL, transactions, error mapping."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import sqlite3
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

import pseudostream.server.labellog as labellog
from pseudostream.server.errors import ConfigError, InvalidInput, PseudostreamError
from pseudostream.server.labellog import LabelBatch, SqliteLabelLog


def make_batch(n: int) -> LabelBatch:
    return LabelBatch(
        ids=[f"s{k}" for k in range(n)],
        label=np.arange(n, dtype=np.int64) % 10,
        confidence=np.full(n, 0.99, np.float32),
        weight=np.ones(n, np.float32),
        threshold=np.full(n, 0.95, np.float32),
        teacher_version="v1",
        policy="fixed",
    )


def wal_commits(db: Path) -> int:
    """Commit frames in the current WAL generation (frames whose salts match the header)."""
    wal = Path(f"{db}-wal").read_bytes()
    if len(wal) < 32:
        return 0
    page_size = struct.unpack(">I", wal[8:12])[0]
    salts = wal[16:24]
    commits = 0
    for pos in range(32, len(wal) - 24 + 1, 24 + page_size):
        frame = wal[pos : pos + 24]
        if frame[8:16] != salts:
            break
        commits += struct.unpack(">I", frame[4:8])[0] != 0
    return commits


def worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("sqlite-labellog")]


def checkpoint_threads(db: Path) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"sqlite-checkpoint {db}"]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "labels.db"


def test_public_names_are_exported():
    assert set(labellog.__all__) == {"LabelBatch", "LabelLog", "LabelRecord", "SqliteLabelLog",
                                     "RedisLabelLog"}
    assert all(hasattr(labellog, name) for name in labellog.__all__)


async def test_records_cursor_acks_and_state_survive_reopen(db: Path):
    async with SqliteLabelLog(db, visibility_timeout_s=30) as log:
        await log.append("t", make_batch(6))
        await log.read("t", "g", "c1", max_records=4)
        await log.ack("t", "g", [0, 2])
        await log.save_state("t", "policy", b"checkpoint")
    async with SqliteLabelLog(db, visibility_timeout_s=30) as log:
        assert await log.end_offset("t") == 6
        assert await log.committed("t", "g") == 1
        assert await log.lag("t", "g") == 4
        assert await log.load_state("t", "policy") == b"checkpoint"
        assert (await log.append("t", make_batch(1))).tolist() == [6]


async def test_pending_records_are_deliverable_at_once_after_reopen(db: Path):
    async with SqliteLabelLog(db, visibility_timeout_s=30) as log:
        await log.append("t", make_batch(5))
        await log.read("t", "g", "c1", max_records=3)
        await log.ack("t", "g", [1])
    # The visibility timeout (30 s) has not passed: only the restart rule makes these claimable.
    async with SqliteLabelLog(db, visibility_timeout_s=30) as log:
        got = await log.read("t", "g", "c2", max_records=10)
        assert [r.offset for r in got] == [0, 2, 3, 4]
        assert [r.deliveries for r in got] == [2, 2, 1, 1]
        assert await log.read("t", "g", "c1", max_records=10) == []


async def test_file_is_in_wal_mode(db: Path):
    async with SqliteLabelLog(db, synchronous="FULL") as log:
        await log.append("t", make_batch(1))
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.close()


async def test_one_append_is_one_transaction(db: Path):
    async with SqliteLabelLog(db) as log:
        await log.append("t", make_batch(1))
        before = wal_commits(db)
        offsets = await log.append("t", make_batch(1000))
        assert wal_commits(db) == before + 1
        assert offsets.tolist() == list(range(1, 1001))
        assert await log.end_offset("t") == 1001


async def test_waiting_read_is_woken_by_append_not_by_polling(db: Path):
    async with SqliteLabelLog(db, poll_interval_s=10.0) as log:
        loop = asyncio.get_running_loop()
        reader = asyncio.create_task(log.read("t", "g", "c", max_records=10, wait_s=5.0))
        await asyncio.sleep(0.1)
        start = loop.time()
        await log.append("t", make_batch(3))
        got = await reader
        assert [r.offset for r in got] == [0, 1, 2]
        assert loop.time() - start < 1.0


async def test_waiting_read_wakes_at_the_next_pending_deadline(db: Path):
    async with SqliteLabelLog(db, visibility_timeout_s=0.2, poll_interval_s=10.0) as log:
        await log.append("t", make_batch(1))
        await log.read("t", "g", "c1", max_records=10)
        loop = asyncio.get_running_loop()
        start = loop.time()
        got = await log.read("t", "g", "c2", max_records=10, wait_s=5.0)
        assert [r.offset for r in got] == [0]
        assert loop.time() - start < 1.0


async def test_waiting_read_is_woken_by_release(db: Path):
    async with SqliteLabelLog(db, visibility_timeout_s=30, poll_interval_s=10.0) as log:
        await log.append("t", make_batch(2))
        await log.read("t", "g", "c1", max_records=10)
        loop = asyncio.get_running_loop()
        reader = asyncio.create_task(log.read("t", "g", "c2", max_records=10, wait_s=5.0))
        await asyncio.sleep(0.1)
        start = loop.time()
        assert await log.release("t", "g", "c1") == 2
        assert [r.offset for r in await reader] == [0, 1]
        assert loop.time() - start < 1.0


def test_sqlite_errors_on_open_become_pseudostream_errors(tmp_path: Path):
    for bad in (tmp_path / "missing" / "labels.db", tmp_path):
        with pytest.raises(PseudostreamError, match="open") as info:
            SqliteLabelLog(bad)
        assert isinstance(info.value.__cause__, sqlite3.Error)
    assert worker_threads() == []


async def test_sqlite_errors_in_operations_name_the_operation(db: Path):
    async with SqliteLabelLog(db) as log:
        with sqlite3.connect(db) as conn:
            conn.execute("DROP TABLE state")
        conn.close()
        with pytest.raises(PseudostreamError, match="save_state") as info:
            await log.save_state("t", "k", b"x")
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
        assert (await log.append("t", make_batch(2))).tolist() == [0, 1]  # still usable


async def test_closed_log_refuses_work_and_stops_its_thread(db: Path):
    log = SqliteLabelLog(db)
    await log.close()
    await log.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        await log.append("t", make_batch(1))
    assert worker_threads() == [] and checkpoint_threads(db) == []


def test_a_log_never_closed_stops_its_checkpoint_thread_when_collected(db: Path):
    log = SqliteLabelLog(db)
    [thread] = checkpoint_threads(db)
    del log
    gc.collect()
    thread.join(timeout=10)
    assert not thread.is_alive()


async def test_bad_input_is_rejected_before_touching_the_file(db: Path):
    async with SqliteLabelLog(db) as log:
        bad = make_batch(3)
        bad.weight = np.ones(2, np.float32)
        with pytest.raises(InvalidInput, match="weight"):
            await log.append("t", bad)
        with pytest.raises(InvalidInput, match="max_records"):
            await log.read("t", "g", "c", max_records=0)
        assert await log.end_offset("t") == 0
        assert (await log.append("t", make_batch(0))).tolist() == []


@pytest.mark.parametrize(
    "kwargs", [{"synchronous": "SOMETIMES"}, {"visibility_timeout_s": 0}, {"poll_interval_s": -1}]
)
def test_invalid_settings_raise_config_error(db: Path, kwargs: dict):
    with pytest.raises(ConfigError):
        SqliteLabelLog(db, **kwargs)
    assert not db.exists()


def test_one_log_serves_successive_event_loops(db: Path):
    log = SqliteLabelLog(db, poll_interval_s=0.05)

    async def wait_then_append() -> list[int]:
        reader = asyncio.create_task(log.read("t", "g", "c", max_records=10, wait_s=2.0))
        await asyncio.sleep(0.1)
        await log.append("t", make_batch(1))
        return [r.offset for r in await reader]

    assert asyncio.run(wait_then_append()) == [0]
    assert asyncio.run(wait_then_append()) == [1]
    asyncio.run(log.close())


async def test_a_new_file_gets_sqlites_4_kib_pages_or_the_size_asked_for(tmp_path: Path, sqlite_page_size):
    async with SqliteLabelLog(tmp_path / "default.db") as log:
        await log.append("t", make_batch(3))
    assert sqlite_page_size(tmp_path / "default.db") == 4096
    async with SqliteLabelLog(tmp_path / "large.db", page_size=65536) as log:
        await log.append("t", make_batch(3))
    assert sqlite_page_size(tmp_path / "large.db") == 65536


async def test_an_existing_file_keeps_its_page_size_and_its_records(db: Path, caplog, sqlite_page_size):
    async with SqliteLabelLog(db, page_size=4096) as log:
        await log.append("t", make_batch(5))
    with caplog.at_level("INFO", logger="pseudostream.server.labellog.sqlite"):
        async with SqliteLabelLog(db, page_size=65536) as log:
            assert [r.sample_id for r in await log.read("t", "g", "c", max_records=10)] == [f"s{k}" for k in range(5)]
            await log.append("t", make_batch(1))
    assert sqlite_page_size(db) == 4096
    assert "keeps the page size of 4096 bytes" in caplog.text


@pytest.mark.parametrize("size", [1000, 2048, 131072])
def test_a_page_size_sqlite_would_not_take_is_refused(db: Path, size: int):
    with pytest.raises(ConfigError, match="page_size must be one of"):
        SqliteLabelLog(db, page_size=size)
    assert not db.exists()


async def test_a_read_without_samples_does_not_select_the_sample_blobs(db: Path):
    """The SQL a read runs, traced on the log's own connection: with samples it cuts the rows it
    delivers out of the segment's blob; without, it selects no blob and the records carry none."""
    samples = np.arange(4 * 3 * 2, dtype=np.float32).reshape(4, 3, 2)
    async with SqliteLabelLog(db) as log:
        await log.append("t", dataclasses.replace(make_batch(4), samples=samples))
        statements: list[str] = []
        await log._call("trace", log._conn.set_trace_callback, statements.append)
        lean = await log.read("t", "ids", "c", max_records=10, samples=False)
        traced_lean, statements[:] = list(statements), []
        full = await log.read("t", "all", "c", max_records=10)
        await log._call("trace", log._conn.set_trace_callback, None)
    assert not any("samples" in sql for sql in traced_lean), traced_lean
    assert any("substr(samples" in sql for sql in statements), statements
    assert all(r.sample is None and r.shape is None and r.dtype is None for r in lean)
    assert [r.sample_id for r in lean] == [r.sample_id for r in full] == ["s0", "s1", "s2", "s3"]
    np.testing.assert_array_equal(full[2].sample_array(), samples[2])

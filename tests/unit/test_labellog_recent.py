"""SqliteLabelLog's idempotency window (``_recent``): one ``decided`` row per remembered batch,
an in-memory index of its ids that survives a restart by being rebuilt from the file, recalls of
unknown ids that never wait for the log's thread, and the move of an earlier release's per-id
``recent`` table."""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from pseudostream.server.labellog import LabelBatch, SqliteLabelLog
from pseudostream.server.labellog._recent import SHARDS, RecentIndex


def make_batch(n: int, prefix: str = "s") -> LabelBatch:
    return LabelBatch(ids=[f"{prefix}{k}" for k in range(n)], label=np.zeros(n, np.int64),
                      confidence=np.ones(n, np.float32), weight=np.ones(n, np.float32),
                      threshold=np.zeros(n, np.float32), teacher_version="v1", policy="fixed")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "labels.db"


def decided_rows(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT topic, ids FROM decided ORDER BY row").fetchall()
    conn.close()
    return rows


def test_index_finds_the_newest_row_of_an_id_and_forgets_rows_as_they_expire():
    index = RecentIndex()
    index.add("t", 1, ["a", "b"], expires=10.0)
    index.add("t", 2, ["b", "c"], expires=30.0)  # b remembered again: row 2 answers for it
    index.add("t", 3, ["z"], expires=5.0)  # a shorter window, added later: expiry is not insertion order
    index.add("u", 4, ["a"], expires=30.0)
    assert index.find("t", ["a", "b", "c", "z", "nope"], now=0.0) == {1: {"a"}, 2: {"b", "c"}, 3: {"z"}}
    assert index.find("t", ["nope"], now=0.0) == {} and len(index) == 5
    assert index.find("t", ["a", "b", "z"], now=10.0) == {2: {"b"}}  # rows 1 and 3 expired, b kept by row 2
    assert index.find("u", ["a"], now=10.0) == {4: {"a"}}
    assert index.find("t", ["b", "c"], now=30.0) == {} and len(index) == 0


def test_index_spreads_a_topic_over_its_shards_so_no_growth_copies_more_than_a_share():
    index = RecentIndex()
    for row in range(256):  # 32768 ids in batches of 128, as the service remembers them
        index.add("t", row, [f"b{row}-{j}" for j in range(128)], expires=60.0)
    assert len(index) == 32768
    # Uniform by hash: about 512 per shard; one dict would hold (and copy) all 32768.
    assert index.largest_shard() < 2 * 32768 // SHARDS
    found = index.find("t", ["b7-3", "b200-127", "b255-0", "nope"], now=0.0)
    assert found == {7: {"b7-3"}, 200: {"b200-127"}, 255: {"b255-0"}}
    assert index.find("t", ["b1-1"], now=60.0) == {} and len(index) == 0 and index.largest_shard() == 0


def test_index_entries_drop_out_of_the_collectors_full_passes():
    """A service keeps one heap entry per remembered batch for the whole window (48k of them at
    80 batches/s over 600 s); as tuples of strings the collector stops tracking them, so they do
    not lengthen its full passes (lists of ids stayed tracked: 2 objects per batch)."""
    index = RecentIndex()
    for row in range(1000):
        index.add("t", row, [f"b{row}-{j}" for j in range(4)], expires=60.0)
    gc.collect()
    gc.collect()  # an entry is untracked once the ids tuple inside it is
    assert len(index) == 4000 and len(index._expiry) == 1000
    assert not any(gc.is_tracked(entry) for entry in index._expiry)


async def test_a_remembered_batch_is_one_row_and_its_entries_survive_a_restart(db: Path):
    entries = {f"s{k}": bytes([k]) * (k + 1) for k in range(5)}  # blobs of different lengths
    async with SqliteLabelLog(db) as log:
        await log.append_and_remember("t", make_batch(3), lambda offsets: entries, ttl_s=60)
        await log.remember("t", {"late": b"L"}, ttl_s=0.2)
        await log.remember("u", {"s1": b"other topic"}, ttl_s=60)
        assert [topic for topic, _ in decided_rows(db)] == ["t", "t", "u"]
    await asyncio.sleep(0.3)  # "late" expires while the service is down
    async with SqliteLabelLog(db) as log:
        assert await log.recall("t", ["s4", "s0", "late", "nope"]) == {"s4": entries["s4"], "s0": b"\x00"}
        assert await log.recall("u", ["s1", "s2"]) == {"s1": b"other topic"}
        await log.remember("t", {"s0": b"again"}, ttl_s=60)  # the newest entry answers
        assert await log.recall("t", ["s0", "s1"]) == {"s0": b"again", "s1": entries["s1"]}
        # The next remember drops the expired row from the file.
        assert [ids for _, ids in decided_rows(db)] == [
            '["s0", "s1", "s2", "s3", "s4"]', '["s1"]', '["s0"]']


async def test_recall_of_unknown_ids_does_not_wait_for_the_log_thread(db: Path):
    async with SqliteLabelLog(db) as log:
        await log.remember("t", {"known": b"k"}, ttl_s=60)
        release = asyncio.Event()
        loop = asyncio.get_running_loop()
        blocked = loop.run_in_executor(log._executor, lambda: asyncio.run_coroutine_threadsafe(
            release.wait(), loop).result())  # the log's only thread is busy until released
        started = time.perf_counter()
        assert await asyncio.wait_for(log.recall("t", ["fresh-1", "fresh-2"]), timeout=1.0) == {}
        assert time.perf_counter() - started < 0.5
        hit = asyncio.ensure_future(log.recall("t", ["known", "fresh-3"]))  # a hit reads the row
        await asyncio.sleep(0.05)
        assert not hit.done()
        release.set()
        await blocked
        assert await hit == {"known": b"k"}


async def test_entries_of_an_earlier_release_move_into_rows_and_expired_ones_are_dropped(db: Path):
    now = time.time()
    with sqlite3.connect(db) as conn:
        conn.executescript("""
            CREATE TABLE recent(topic TEXT NOT NULL, sample_id TEXT NOT NULL, blob BLOB NOT NULL,
                expires REAL NOT NULL, PRIMARY KEY(topic, sample_id)) WITHOUT ROWID;
            CREATE INDEX recent_by_expiry ON recent(topic, expires);""")
        conn.executemany("INSERT INTO recent VALUES (?, ?, ?, ?)", [
            ("t", "a", b"A", now + 60), ("t", "b", b"B", now + 60), ("t", "c", b"C", now + 90),
            ("u", "a", b"uA", now + 60), ("t", "old", b"O", now - 1)])
    conn.close()
    async with SqliteLabelLog(db) as log:
        assert await log.recall("t", ["a", "b", "c", "old"]) == {"a": b"A", "b": b"B", "c": b"C"}
        assert await log.recall("u", ["a"]) == {"a": b"uA"}
    assert sorted(decided_rows(db)) == [("t", '["a", "b"]'), ("t", '["c"]'), ("u", '["a"]')]
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT name FROM sqlite_master WHERE name LIKE 'recent%'").fetchall() == []
    conn.close()

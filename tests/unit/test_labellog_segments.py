"""SqliteLabelLog's segments: one row per appended batch, read back record by record, trimmed
by retention in the middle of a segment, and migrated from the per-record table of earlier
releases."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from pseudostream.server.labellog import LabelBatch, SqliteLabelLog
from pseudostream.server.labellog._rows import batch_rows
from pseudostream.server.labellog._segments import SEGMENT_COLUMNS, nbytes, pack


def make_batch(n: int, prefix: str = "s", samples: np.ndarray | None = None, **extra) -> LabelBatch:
    return LabelBatch(
        ids=[f"{prefix}{k}" for k in range(n)], label=np.arange(n, dtype=np.int64) % 10,
        confidence=np.linspace(0.5, 0.99, n).astype(np.float32), weight=np.ones(n, np.float32),
        threshold=np.full(n, 0.95, np.float32), teacher_version="v1", policy="fixed", samples=samples, **extra)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "labels.db"


def table_rows(db: Path, table: str) -> int:
    with sqlite3.connect(db) as conn:
        count = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    conn.close()
    return count


async def test_one_batch_is_one_row_and_reads_pick_rows_out_of_it(db: Path):
    samples = np.random.default_rng(1).standard_normal((8, 3, 2)).astype(np.float32)
    async with SqliteLabelLog(db) as log:
        await log.append("t", make_batch(8, samples=samples, metadata=[{"k": str(i)} for i in range(8)]))
        await log.append("t", make_batch(3, prefix="b"))
        assert table_rows(db, "segments") == 2
        got = await log.get("t", [5, 2, 9, 40])  # order kept, samples sliced from the middle
        assert [r.offset for r in got] == [5, 2, 9]
        for r in got[:2]:
            np.testing.assert_array_equal(r.sample_array(), samples[r.offset])
            assert r.metadata == {"k": str(r.offset)} and r.sample_id == f"s{r.offset}"
        assert got[2].sample is None and got[2].sample_id == "b1"
        assert got[0].confidence == pytest.approx(float(np.linspace(0.5, 0.99, 8).astype(np.float32)[5]))
        read = await log.read("t", "g", "c", max_records=6)
        assert [r.offset for r in read] == [0, 1, 2, 3, 4, 5]
        np.testing.assert_array_equal(np.stack([r.sample_array() for r in read]), samples[:6])


async def test_length_retention_cuts_inside_a_segment_and_drops_whole_ones(db: Path):
    async with SqliteLabelLog(db, max_len=5) as log:
        await log.append("t", make_batch(4, prefix="a"))  # 0..3
        await log.append("t", make_batch(4, prefix="b"))  # 4..7: keeps 3..7
        assert [r.offset for r in await log.get("t", range(8))] == [3, 4, 5, 6, 7]
        assert [r.sample_id for r in await log.read("t", "g", "c", max_records=10)] == ["a3", "b0", "b1", "b2", "b3"]
        await log.append("t", make_batch(4, prefix="c"))  # 8..11: keeps 7..11, the first segment goes
        assert table_rows(db, "segments") == 2
        late = await log.read("t", "late", "c", max_records=10)
        assert [r.offset for r in late] == [7, 8, 9, 10, 11]
        assert await log.lag("t", "late") == 5


async def test_a_file_of_an_earlier_release_is_moved_into_segments(db: Path):
    """Rows written in the per-record layout (``_rows.batch_rows``, what the earlier release's
    records table held) come back unchanged after opening, and offsets keep counting."""
    samples = np.arange(12, dtype=np.float32).reshape(4, 3)
    first = make_batch(4, prefix="x", samples=samples, metadata=[{"m": "1"}, {}, {}, {"m": "4"}])
    multi = make_batch(3, prefix="y", positive=np.eye(3, dtype=bool), negative=~np.eye(3, dtype=bool))
    with sqlite3.connect(db) as conn:
        conn.executescript("""
            CREATE TABLE records(topic TEXT NOT NULL, offset INTEGER NOT NULL, sample_id TEXT NOT NULL,
                label INTEGER NOT NULL, confidence REAL NOT NULL, weight REAL NOT NULL, threshold REAL NOT NULL,
                teacher_version TEXT NOT NULL, policy TEXT NOT NULL, created_at REAL NOT NULL, sample BLOB,
                shape TEXT, dtype TEXT, metadata TEXT NOT NULL DEFAULT '{}', classes TEXT, PRIMARY KEY(topic, offset));
            CREATE TABLE topics(topic TEXT PRIMARY KEY, next_offset INTEGER NOT NULL) WITHOUT ROWID;""")
        rows = [("t", k + 1, *row) for k, row in enumerate(batch_rows(first, 100.0))][1:]  # offset 1 was trimmed
        rows += [("t", 5 + k, *row) for k, row in enumerate(batch_rows(multi, 200.0))]
        conn.executemany(f"INSERT INTO records VALUES ({', '.join('?' * 15)})", rows)
        conn.execute("INSERT INTO topics VALUES ('t', 8)")
    conn.close()
    async with SqliteLabelLog(db) as log:
        got = await log.read("t", "g", "c", max_records=10)
        assert [r.offset for r in got] == [2, 3, 4, 5, 6, 7]
        assert [r.sample_id for r in got] == ["x1", "x2", "x3", "y0", "y1", "y2"]
        np.testing.assert_array_equal(np.stack([r.sample_array() for r in got[:3]]), samples[1:])
        assert [r.metadata for r in got[:3]] == [{}, {}, {"m": "4"}]
        assert [r.created_at for r in got] == [100.0] * 3 + [200.0] * 3
        assert [(r.positive, r.negative) for r in got[3:]] == [((k,), tuple(j for j in range(3) if j != k))
                                                             for k in range(3)]
        assert (await log.append("t", make_batch(2))).tolist() == [8, 9]
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'records'").fetchone() is None
        assert conn.execute("SELECT first, n FROM segments ORDER BY first").fetchall() == [(2, 3), (5, 3), (8, 2)]
    conn.close()


def test_nbytes_counts_a_segments_blobs_and_texts():
    samples = np.zeros((4, 2, 3), np.float32)
    segment = pack(make_batch(4, samples=samples), 1.0)
    blob = segment[SEGMENT_COLUMNS.index("samples")]
    assert isinstance(blob, memoryview) and np.shares_memory(np.frombuffer(blob, np.uint8), samples)  # no copy
    assert bytes(blob) == samples.tobytes()
    texts = [v for v in segment if isinstance(v, (bytes, str, memoryview))]
    assert nbytes(segment) == sum(map(len, texts)) > samples.nbytes + 4 * 8  # samples, then labels and scores
    assert nbytes(None) == 0

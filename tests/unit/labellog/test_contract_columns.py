"""The LabelLog contract, ``read_columns``: the records ``read`` gives, in the same order, as
LabelColumns (SQLite cuts them from its segments; Redis converts its records)."""

from __future__ import annotations

import asyncio

import numpy as np


async def test_columns_hold_what_read_gives_cut_where_the_samples_change(log, make_batch):
    rng = np.random.default_rng(0)
    await log.append("t", make_batch(3, samples=rng.standard_normal((3, 2, 4)).astype(np.float32),
                                     metadata=[{"camera": "a"}, {}, {"frame": "7"}], positive=np.eye(3, dtype=bool)))
    await log.append("t", make_batch(2, samples=np.arange(6, dtype=">i4").reshape(2, 3)))
    await log.append("t", make_batch(1))
    await log.append("t", make_batch(2, samples=rng.standard_normal((2, 2, 4)).astype(np.float32)))
    await log.append("t", make_batch(2, samples=rng.standard_normal((2, 2, 4)).astype(np.float32)))
    records = await log.read("t", "records", "c", max_records=20)
    runs = await log.read_columns("t", "columns", "c", max_records=20)
    assert [len(c) for c in runs] == [3, 2, 1, 4]
    assert [c.samples.shape if c.samples is not None else None for c in runs] == [
        (3, 2, 4), (2, 3), None, (4, 2, 4)]
    assert [r for c in runs for r in c.records()] == records
    assert runs[0].metadata == [{"camera": "a"}, {}, {"frame": "7"}] and runs[3].metadata is None
    assert runs[0].positive == [(0,), (1,), (2,)] and runs[1].positive is None
    assert runs[3].offset.tolist() == [6, 7, 8, 9] and runs[3].deliveries.tolist() == [1] * 4


async def test_redeliveries_come_first_with_their_delivery_counts(log, make_batch):
    await log.append("t", make_batch(6, samples=np.arange(12, dtype=np.float32).reshape(6, 2)))
    [first] = await log.read_columns("t", "g", "c1", max_records=2)
    [second] = await log.read_columns("t", "g", "c2", max_records=2)
    assert first.offset.tolist() == [0, 1] and second.offset.tolist() == [2, 3]
    await log.release("t", "g", "c1")
    await log.release("t", "g", "c2")
    [got] = await log.read_columns("t", "g", "c2", max_records=10)
    assert got.offset.tolist() == [2, 3, 0, 1, 4, 5]
    assert got.deliveries.tolist() == [2, 2, 2, 2, 1, 1]
    assert got.ids == ["s2", "s3", "s0", "s1", "s4", "s5"]
    np.testing.assert_array_equal(got.samples[:, 0], [4, 6, 0, 2, 8, 10])
    assert await log.ack("t", "g", got.offset) == 6  # an int64 array acks as a list does


async def test_without_samples_every_other_column_is_kept(log, make_batch):
    await log.append("t", make_batch(3, samples=np.ones((3, 2), np.float32), metadata=[{"a": "1"}, {}, {}]))
    [lean] = await log.read_columns("t", "ids", "c", max_records=10, samples=False)
    [full] = await log.read_columns("t", "all", "c", max_records=10)
    assert lean.samples is None and full.samples.shape == (3, 2)
    assert lean.ids == full.ids and lean.metadata == full.metadata == [{"a": "1"}, {}, {}]
    for name in ("offset", "label", "confidence", "weight", "threshold", "deliveries", "created_at"):
        np.testing.assert_array_equal(getattr(lean, name), getattr(full, name))


async def test_columnar_reads_wait_and_leave_out_what_retention_dropped(make_log, make_batch, past_visibility):
    log = await make_log(max_age_s=0.3)
    assert await log.read_columns("t", "early", "c", max_records=5, wait_s=0.05) == []
    await log.append("t", make_batch(5, prefix="old"))
    await log.read_columns("t", "early", "c", max_records=2)  # 2 pending, then they expire
    await asyncio.sleep(past_visibility)
    await log.append("t", make_batch(3, prefix="new"))
    got = await log.read_columns("t", "early", "c", max_records=20, wait_s=0.5)
    assert got and {i for c in got for i in c.ids} <= {"new0", "new1", "new2"}
    assert all(len(c.offset) == len(c.ids) == len(c.deliveries) for c in got)

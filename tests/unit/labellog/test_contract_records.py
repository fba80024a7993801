"""The LabelLog contract, what a record holds: samples, metadata and class lists round-trip,
reads without samples, records by offset, and age retention."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np


async def test_samples_and_metadata_round_trip_exactly(log, make_batch):
    rng = np.random.default_rng(0)
    samples = rng.standard_normal((3, 2, 4)).astype(np.float32)
    metadata = [{"camera": "a"}, {}, {"camera": "b", "frame": "17"}]
    await log.append("t", make_batch(3, samples=samples, metadata=metadata))
    big_endian = np.arange(6, dtype=">i4").reshape(2, 3)
    await log.append("t", make_batch(2, samples=big_endian))
    await log.append("t", make_batch(1))
    got = await log.read("t", "g", "c", max_records=10)
    for i in range(3):
        assert got[i].dtype == "float32" and got[i].shape == (2, 4)
        np.testing.assert_array_equal(got[i].sample_array(), samples[i])
        assert dict(got[i].metadata) == metadata[i]
    for i in range(2):
        assert got[3 + i].dtype == "int32"
        np.testing.assert_array_equal(got[3 + i].sample_array(), big_endian[i])
    assert got[5].sample is None and got[5].sample_array() is None
    assert dict(got[5].metadata) == {}


async def test_a_read_without_samples_keeps_every_other_field(log, make_batch):
    """``samples=False`` may leave the samples out (SQLite does not read them; a Redis entry
    comes whole); everything else is as a read with samples gives it."""
    samples = np.random.default_rng(1).standard_normal((3, 2, 4)).astype(np.float32)
    await log.append("t", make_batch(3, samples=samples, metadata=[{"a": "1"}, {}, {"b": "2"}],
                                     positive=np.eye(3, dtype=bool)))
    await log.append("t", make_batch(2))
    lean = await log.read("t", "ids", "c", max_records=10, samples=False)
    full = await log.read("t", "all", "c", max_records=10)
    assert len(lean) == len(full) == 5
    without = {"sample": None, "shape": None, "dtype": None}
    assert [dataclasses.replace(r, **without) for r in lean] == [dataclasses.replace(r, **without) for r in full]
    for r, f in zip(lean, full):
        assert r.sample is None or (r.sample == f.sample and r.shape == f.shape and r.dtype == f.dtype)
    assert [r.positive for r in lean[:3]] == [(0,), (1,), (2,)]


async def test_class_lists_round_trip(log, make_batch):
    positive = np.array([[True, False, True], [False, False, False]])
    negative = np.array([[False, True, False], [True, False, True]])
    await log.append("t", make_batch(2, positive=positive, negative=negative))
    await log.append("t", make_batch(1, negative=np.array([[False, False, True]])))
    await log.append("t", make_batch(1))
    got = await log.read("t", "g", "c", max_records=10)
    assert [(r.positive, r.negative) for r in got] == [
        ((0, 2), (1,)), ((), (0, 2)), ((), (2,)), ((), ())]


async def test_get_returns_records_by_offset_and_skips_missing(log, make_batch):
    await log.append("t", make_batch(5, samples=np.arange(10, dtype=np.float32).reshape(5, 2)))
    got = await log.get("t", [3, 0, 99])
    assert [r.offset for r in got] == [3, 0] and [r.sample_id for r in got] == ["s3", "s0"]
    assert got[0].deliveries == 0 and got[0].sample_array().tolist() == [6.0, 7.0]
    assert await log.get("t", []) == [] and await log.get("other", [0]) == []


async def test_age_retention_drops_old_records_and_offsets_keep_counting(make_log, make_batch):
    log = await make_log(max_age_s=0.3)
    await log.append("t", make_batch(5, prefix="old"))
    first = await log.read("t", "early", "c", max_records=2)  # 2 pending, then they expire
    await asyncio.sleep(0.4)
    offsets = await log.append("t", make_batch(5, prefix="new"))
    assert offsets.tolist() == [5, 6, 7, 8, 9] and await log.end_offset("t") == 10
    assert [r.offset for r in await log.get("t", [0, 4, 5])] == [5]
    fresh = await log.read("t", "late", "c", max_records=20)
    assert [r.sample_id for r in fresh] == [f"new{k}" for k in range(5)]
    again = await log.read("t", "early", "c", max_records=20, wait_s=0.5)
    assert {r.sample_id for r in again} <= {f"new{k}" for k in range(5)}  # the old ones are gone
    assert len(first) == 2

"""Contract tests every LabelLog implementation passes; they use the LabelLog interface only.

Add an implementation by adding a factory to FACTORIES; a factory gets the fixture request, to
ask for the fixtures it needs. The visibility timeout is short (VISIBILITY seconds) so
redelivery tests stay fast.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import Awaitable, Callable

import numpy as np
import pytest

from pseudostream.server.labellog import LabelBatch, LabelLog, SqliteLabelLog

VISIBILITY = 0.3
PAST_VISIBILITY = VISIBILITY + 0.1


async def _sqlite(request: pytest.FixtureRequest, **options) -> LabelLog:
    db = request.getfixturevalue("tmp_path") / f"labels-{uuid.uuid4().hex}.db"
    return SqliteLabelLog(db, visibility_timeout_s=VISIBILITY, **options)


async def _redis(request: pytest.FixtureRequest, **options) -> LabelLog:
    url = request.getfixturevalue("redis_url")  # skips without redis-server
    from pseudostream.server.labellog.redis import RedisLabelLog

    prefix = f"contract-{uuid.uuid4().hex}"  # a fresh namespace per test
    return RedisLabelLog(url, prefix=prefix, visibility_timeout_s=VISIBILITY, **options)


FACTORIES: dict[str, Callable[..., Awaitable[LabelLog]]] = {
    "redis": _redis, "sqlite": _sqlite}


@pytest.fixture(params=sorted(FACTORIES))
async def log(request: pytest.FixtureRequest):
    instance = await FACTORIES[request.param](request)
    yield instance
    await instance.close()


@pytest.fixture(params=sorted(FACTORIES))
async def make_log(request: pytest.FixtureRequest):
    """``await make_log(**options)``: a log of each kind built with extra options."""
    made: list[LabelLog] = []

    async def make(**options) -> LabelLog:
        made.append(await FACTORIES[request.param](request, **options))
        return made[-1]

    yield make
    for instance in made:
        await instance.close()


def make_batch(n: int, prefix: str = "s", **extra) -> LabelBatch:
    """n rows with distinguishable values: label i % 10, confidence 0.5 + i / 1000."""
    i = np.arange(n)
    return LabelBatch(
        ids=[f"{prefix}{k}" for k in range(n)],
        label=(i % 10).astype(np.int64),
        confidence=(0.5 + i / 1000).astype(np.float32),
        weight=np.ones(n, np.float32),
        threshold=np.full(n, 0.95, np.float32),
        teacher_version="v1",
        policy="fixed",
        **extra,
    )


def offsets(records) -> list[int]:
    return [r.offset for r in records]


async def test_offsets_are_monotonic_per_topic_and_topics_independent(log):
    assert (await log.append("a", make_batch(3))).tolist() == [0, 1, 2]
    second = await log.append("a", make_batch(2))
    assert second.dtype == np.int64 and second.tolist() == [3, 4]
    assert (await log.append("b", make_batch(2))).tolist() == [0, 1]
    assert await log.end_offset("a") == 5
    assert await log.end_offset("b") == 2
    assert await log.end_offset("unknown") == 0


async def test_read_delivers_in_offset_order_once_while_pending(log):
    batch = make_batch(5)
    await log.append("t", batch)
    first = await log.read("t", "g", "c1", max_records=3)
    assert offsets(first) == [0, 1, 2]
    assert [r.sample_id for r in first] == ["s0", "s1", "s2"]
    assert [r.deliveries for r in first] == [1, 1, 1]
    assert first[1].label == 1 and first[1].confidence == float(batch.confidence[1])
    assert first[0].teacher_version == "v1" and first[0].policy == "fixed"
    assert offsets(await log.read("t", "g", "c1", max_records=10)) == [3, 4]
    # Still pending and within the visibility timeout: reading again repeats nothing.
    assert await log.read("t", "g", "c1", max_records=10) == []


async def test_consumers_of_one_group_never_share_a_pending_record(log):
    await log.append("t", make_batch(6))
    c1 = offsets(await log.read("t", "g", "c1", max_records=4))
    c2 = offsets(await log.read("t", "g", "c2", max_records=4))
    assert c1 == [0, 1, 2, 3]
    assert c2 == [4, 5]
    assert await log.read("t", "g", "c3", max_records=4) == []


async def test_groups_read_a_topic_independently(log):
    await log.append("t", make_batch(3))
    assert offsets(await log.read("t", "g1", "c", max_records=10)) == [0, 1, 2]
    assert offsets(await log.read("t", "g2", "c", max_records=10)) == [0, 1, 2]
    await log.ack("t", "g1", [0, 1, 2])
    assert await log.lag("t", "g1") == 0
    assert await log.lag("t", "g2") == 3


async def test_acked_records_are_never_redelivered(log):
    await log.append("t", make_batch(3))
    await log.read("t", "g", "c1", max_records=10)
    assert await log.ack("t", "g", [0, 1, 2]) == 3
    await asyncio.sleep(PAST_VISIBILITY)
    assert await log.read("t", "g", "c1", max_records=10) == []
    assert await log.read("t", "g", "c2", max_records=10) == []
    assert await log.committed("t", "g") == 3


async def test_unacked_records_are_redelivered_after_the_visibility_timeout(log):
    await log.append("t", make_batch(3))
    await log.read("t", "g", "c1", max_records=10)
    await log.ack("t", "g", [1])
    assert await log.read("t", "g", "c2", max_records=10) == []  # not yet past the timeout
    await asyncio.sleep(PAST_VISIBILITY)
    again = await log.read("t", "g", "c2", max_records=10)
    assert offsets(again) == [0, 2]
    assert [r.deliveries for r in again] == [2, 2]
    assert await log.read("t", "g", "c1", max_records=10) == []  # now c2's, not c1's


async def test_release_makes_pending_records_deliverable_at_once(log):
    await log.append("t", make_batch(3))
    await log.read("t", "g", "c1", max_records=10)
    assert await log.release("t", "g", "nobody") == 0
    assert await log.release("t", "g", "c1") == 3
    again = await log.read("t", "g", "c2", max_records=10)
    assert offsets(again) == [0, 1, 2]
    assert [r.deliveries for r in again] == [2, 2, 2]


async def test_released_records_go_back_to_their_consumer_first(log):
    await log.append("t", make_batch(2))
    await log.read("t", "g", "c1", max_records=10)
    await log.release("t", "g", "c1")
    again = await log.read("t", "g", "c1", max_records=10)  # a resubscription of c1
    assert offsets(again) == [0, 1] and [r.deliveries for r in again] == [2, 2]


async def test_read_order_is_own_claimable_then_others_then_new(log):
    await log.append("t", make_batch(6))
    assert offsets(await log.read("t", "g", "c1", max_records=2)) == [0, 1]
    assert offsets(await log.read("t", "g", "c2", max_records=2)) == [2, 3]
    await log.release("t", "g", "c1")
    await log.release("t", "g", "c2")
    got = await log.read("t", "g", "c2", max_records=10)
    assert offsets(got) == [2, 3, 0, 1, 4, 5]
    assert [r.deliveries for r in got] == [2, 2, 2, 2, 1, 1]


async def test_own_claimable_records_fill_a_small_read_first(log):
    await log.append("t", make_batch(4))
    await log.read("t", "g", "c1", max_records=2)
    await log.read("t", "g", "c2", max_records=2)
    await asyncio.sleep(PAST_VISIBILITY)  # both consumers' records are claimable now
    assert offsets(await log.read("t", "g", "c2", max_records=2)) == [2, 3]
    assert offsets(await log.read("t", "g", "c2", max_records=2)) == [0, 1]


async def test_committed_lag_and_end_offset_after_mixed_acks(log):
    assert await log.committed("t", "g") == 0
    await log.append("t", make_batch(5))
    assert await log.lag("t", "g") == 5  # unknown group: nothing acked
    await log.read("t", "g", "c", max_records=10)
    assert await log.ack("t", "g", [0, 1, 3]) == 3
    assert await log.committed("t", "g") == 2
    assert await log.lag("t", "g") == 2
    assert await log.end_offset("t") == 5
    await log.append("t", make_batch(2))
    assert await log.lag("t", "g") == 4  # 2 and 4 pending, 5 and 6 never delivered
    assert await log.ack("t", "g", [2, 4]) == 2
    assert await log.committed("t", "g") == 5
    assert await log.lag("t", "g") == 2
    assert await log.end_offset("t") == 7


async def test_waiting_read_returns_promptly_when_another_task_appends(log):
    loop = asyncio.get_running_loop()

    async def append_later() -> None:
        await asyncio.sleep(0.1)
        await log.append("t", make_batch(2))

    start = loop.time()
    writer = asyncio.create_task(append_later())
    got = await log.read("t", "g", "c", max_records=10, wait_s=5.0)
    elapsed = loop.time() - start
    await writer
    assert offsets(got) == [0, 1]
    assert elapsed < 1.0


async def test_waiting_read_returns_when_a_pending_record_times_out(log):
    await log.append("t", make_batch(1))
    await log.read("t", "g", "c1", max_records=10)
    loop = asyncio.get_running_loop()
    start = loop.time()
    got = await log.read("t", "g", "c2", max_records=10, wait_s=5.0)
    assert offsets(got) == [0] and got[0].deliveries == 2
    assert loop.time() - start < VISIBILITY + 0.7


async def test_waiting_read_times_out_with_nothing(log):
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await log.read("t", "g", "c", max_records=10, wait_s=0.2) == []
    assert 0.15 <= loop.time() - start < 1.0


async def test_samples_and_metadata_round_trip_exactly(log):
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


async def test_a_read_without_samples_keeps_every_other_field(log):
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


async def test_state_round_trips_and_is_none_when_absent(log):
    assert await log.load_state("t", "policy") is None
    await log.save_state("t", "policy", b"\x00one")
    await log.save_state("t", "policy", b"\x00two")
    await log.save_state("u", "policy", b"other topic")
    assert await log.load_state("t", "policy") == b"\x00two"
    assert await log.load_state("u", "policy") == b"other topic"
    assert await log.load_state("t", "adapter") is None


async def test_acking_unknown_or_acked_offsets_is_a_noop(log):
    await log.append("t", make_batch(2))
    assert await log.ack("t", "g", [0, 1]) == 0  # never delivered, so not pending
    await log.read("t", "g", "c", max_records=10)
    assert await log.ack("t", "g", [0, 99]) == 1
    assert await log.ack("t", "g", [0]) == 0
    assert await log.ack("t", "other", [1]) == 0
    assert await log.ack("t", "g", []) == 0
    assert await log.committed("t", "g") == 1


async def test_class_lists_round_trip(log):
    positive = np.array([[True, False, True], [False, False, False]])
    negative = np.array([[False, True, False], [True, False, True]])
    await log.append("t", make_batch(2, positive=positive, negative=negative))
    await log.append("t", make_batch(1, negative=np.array([[False, False, True]])))
    await log.append("t", make_batch(1))
    got = await log.read("t", "g", "c", max_records=10)
    assert [(r.positive, r.negative) for r in got] == [
        ((0, 2), (1,)), ((), (0, 2)), ((), (2,)), ((), ())]


async def test_get_returns_records_by_offset_and_skips_missing(log):
    await log.append("t", make_batch(5, samples=np.arange(10, dtype=np.float32).reshape(5, 2)))
    got = await log.get("t", [3, 0, 99])
    assert [r.offset for r in got] == [3, 0] and [r.sample_id for r in got] == ["s3", "s0"]
    assert got[0].deliveries == 0 and got[0].sample_array().tolist() == [6.0, 7.0]
    assert await log.get("t", []) == [] and await log.get("other", [0]) == []


async def test_remember_and_recall_within_the_window(log):
    await log.remember("t", {"a": b"first", "b": b"x"}, ttl_s=0.4)
    await log.remember("u", {"a": b"other topic"}, ttl_s=10)
    assert await log.recall("t", ["a", "c"]) == {"a": b"first"}
    assert await log.recall("u", ["a"]) == {"a": b"other topic"}
    await asyncio.sleep(0.5)
    assert await log.recall("t", ["a", "b"]) == {}  # expired


async def test_append_and_remember_names_the_offsets_it_gave(log):
    await log.append("t", make_batch(3, prefix="before"))
    seen: list[list[int]] = []

    def entries(offsets: np.ndarray) -> dict[str, bytes]:
        seen.append(offsets.tolist())
        return {f"s{i}": str(o).encode() for i, o in enumerate(offsets.tolist())} | {"rejected": b"-1"}

    got = await log.append_and_remember("t", make_batch(2), entries, ttl_s=10)
    assert got.tolist() == [3, 4] and seen == [[3, 4]]
    assert await log.recall("t", ["s0", "s1", "rejected", "nope"]) == {"s0": b"3", "s1": b"4",
                                                                          "rejected": b"-1"}
    assert [r.sample_id for r in await log.get("t", [3, 4])] == ["s0", "s1"]
    # Nothing accepted: only the entries; no entries (window 0): only the records.
    assert (await log.append_and_remember("t", None, lambda o: {"r2": b"-1"}, ttl_s=10)).size == 0
    assert await log.recall("t", ["r2"]) == {"r2": b"-1"} and await log.end_offset("t") == 5
    assert (await log.append_and_remember("t", make_batch(1, prefix="z"), None, ttl_s=10)).tolist() == [5]


async def test_list_and_delete_state_by_prefix(log):
    await log.save_state("t", "sync/1/a", b"1a")
    await log.save_state("t", "sync/1/b", b"1b")
    await log.save_state("t", "sync/2/a", b"2a")
    await log.save_state("t", "policy", b"p")
    await log.save_state("u", "sync/1/a", b"other topic")
    assert await log.list_state("t", "sync/1/") == {"sync/1/a": b"1a", "sync/1/b": b"1b"}
    assert await log.list_state("t", "sync/*") == {}  # the prefix is literal
    await log.delete_state("t", ["sync/1/a", "missing"])
    assert set(await log.list_state("t", "sync/")) == {"sync/1/b", "sync/2/a"}
    assert await log.load_state("t", "policy") == b"p"


async def test_age_retention_drops_old_records_and_offsets_keep_counting(make_log):
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


# read_columns: the records read gives, in the same order, as LabelColumns (SQLite cuts them
# from its segments; Redis converts its records).

async def test_columns_hold_what_read_gives_cut_where_the_samples_change(log):
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


async def test_redeliveries_come_first_with_their_delivery_counts(log):
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


async def test_without_samples_every_other_column_is_kept(log):
    await log.append("t", make_batch(3, samples=np.ones((3, 2), np.float32), metadata=[{"a": "1"}, {}, {}]))
    [lean] = await log.read_columns("t", "ids", "c", max_records=10, samples=False)
    [full] = await log.read_columns("t", "all", "c", max_records=10)
    assert lean.samples is None and full.samples.shape == (3, 2)
    assert lean.ids == full.ids and lean.metadata == full.metadata == [{"a": "1"}, {}, {}]
    for name in ("offset", "label", "confidence", "weight", "threshold", "deliveries", "created_at"):
        np.testing.assert_array_equal(getattr(lean, name), getattr(full, name))


async def test_columnar_reads_wait_and_leave_out_what_retention_dropped(make_log):
    log = await make_log(max_age_s=0.3)
    assert await log.read_columns("t", "early", "c", max_records=5, wait_s=0.05) == []
    await log.append("t", make_batch(5, prefix="old"))
    await log.read_columns("t", "early", "c", max_records=2)  # 2 pending, then they expire
    await asyncio.sleep(PAST_VISIBILITY)
    await log.append("t", make_batch(3, prefix="new"))
    got = await log.read_columns("t", "early", "c", max_records=20, wait_s=0.5)
    assert got and {i for c in got for i in c.ids} <= {"new0", "new1", "new2"}
    assert all(len(c.offset) == len(c.ids) == len(c.deliveries) for c in got)

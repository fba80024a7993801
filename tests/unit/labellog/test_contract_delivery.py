"""The LabelLog contract, delivery: offsets, consumer groups, pending records, acks,
redelivery after the visibility timeout or a release, and waiting reads."""

from __future__ import annotations

import asyncio

import numpy as np


def offsets(records) -> list[int]:
    return [r.offset for r in records]


async def test_offsets_are_monotonic_per_topic_and_topics_independent(log, make_batch):
    assert (await log.append("a", make_batch(3))).tolist() == [0, 1, 2]
    second = await log.append("a", make_batch(2))
    assert second.dtype == np.int64 and second.tolist() == [3, 4]
    assert (await log.append("b", make_batch(2))).tolist() == [0, 1]
    assert await log.end_offset("a") == 5
    assert await log.end_offset("b") == 2
    assert await log.end_offset("unknown") == 0


async def test_read_delivers_in_offset_order_once_while_pending(log, make_batch):
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


async def test_consumers_of_one_group_never_share_a_pending_record(log, make_batch):
    await log.append("t", make_batch(6))
    c1 = offsets(await log.read("t", "g", "c1", max_records=4))
    c2 = offsets(await log.read("t", "g", "c2", max_records=4))
    assert c1 == [0, 1, 2, 3]
    assert c2 == [4, 5]
    assert await log.read("t", "g", "c3", max_records=4) == []


async def test_groups_read_a_topic_independently(log, make_batch):
    await log.append("t", make_batch(3))
    assert offsets(await log.read("t", "g1", "c", max_records=10)) == [0, 1, 2]
    assert offsets(await log.read("t", "g2", "c", max_records=10)) == [0, 1, 2]
    await log.ack("t", "g1", [0, 1, 2])
    assert await log.lag("t", "g1") == 0
    assert await log.lag("t", "g2") == 3


async def test_acked_records_are_never_redelivered(log, make_batch, past_visibility):
    await log.append("t", make_batch(3))
    await log.read("t", "g", "c1", max_records=10)
    assert await log.ack("t", "g", [0, 1, 2]) == 3
    await asyncio.sleep(past_visibility)
    assert await log.read("t", "g", "c1", max_records=10) == []
    assert await log.read("t", "g", "c2", max_records=10) == []
    assert await log.committed("t", "g") == 3


async def test_unacked_records_are_redelivered_after_the_visibility_timeout(log, make_batch, past_visibility):
    await log.append("t", make_batch(3))
    await log.read("t", "g", "c1", max_records=10)
    await log.ack("t", "g", [1])
    assert await log.read("t", "g", "c2", max_records=10) == []  # not yet past the timeout
    await asyncio.sleep(past_visibility)
    again = await log.read("t", "g", "c2", max_records=10)
    assert offsets(again) == [0, 2]
    assert [r.deliveries for r in again] == [2, 2]
    assert await log.read("t", "g", "c1", max_records=10) == []  # now c2's, not c1's


async def test_release_makes_pending_records_deliverable_at_once(log, make_batch):
    await log.append("t", make_batch(3))
    await log.read("t", "g", "c1", max_records=10)
    assert await log.release("t", "g", "nobody") == 0
    assert await log.release("t", "g", "c1") == 3
    again = await log.read("t", "g", "c2", max_records=10)
    assert offsets(again) == [0, 1, 2]
    assert [r.deliveries for r in again] == [2, 2, 2]


async def test_released_records_go_back_to_their_consumer_first(log, make_batch):
    await log.append("t", make_batch(2))
    await log.read("t", "g", "c1", max_records=10)
    await log.release("t", "g", "c1")
    again = await log.read("t", "g", "c1", max_records=10)  # a resubscription of c1
    assert offsets(again) == [0, 1] and [r.deliveries for r in again] == [2, 2]


async def test_read_order_is_own_claimable_then_others_then_new(log, make_batch):
    await log.append("t", make_batch(6))
    assert offsets(await log.read("t", "g", "c1", max_records=2)) == [0, 1]
    assert offsets(await log.read("t", "g", "c2", max_records=2)) == [2, 3]
    await log.release("t", "g", "c1")
    await log.release("t", "g", "c2")
    got = await log.read("t", "g", "c2", max_records=10)
    assert offsets(got) == [2, 3, 0, 1, 4, 5]
    assert [r.deliveries for r in got] == [2, 2, 2, 2, 1, 1]


async def test_own_claimable_records_fill_a_small_read_first(log, make_batch, past_visibility):
    await log.append("t", make_batch(4))
    await log.read("t", "g", "c1", max_records=2)
    await log.read("t", "g", "c2", max_records=2)
    await asyncio.sleep(past_visibility)  # both consumers' records are claimable now
    assert offsets(await log.read("t", "g", "c2", max_records=2)) == [2, 3]
    assert offsets(await log.read("t", "g", "c2", max_records=2)) == [0, 1]


async def test_committed_lag_and_end_offset_after_mixed_acks(log, make_batch):
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


async def test_waiting_read_returns_promptly_when_another_task_appends(log, make_batch):
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


async def test_waiting_read_returns_when_a_pending_record_times_out(log, make_batch, visibility):
    await log.append("t", make_batch(1))
    await log.read("t", "g", "c1", max_records=10)
    loop = asyncio.get_running_loop()
    start = loop.time()
    got = await log.read("t", "g", "c2", max_records=10, wait_s=5.0)
    assert offsets(got) == [0] and got[0].deliveries == 2
    assert loop.time() - start < visibility + 0.7


async def test_waiting_read_times_out_with_nothing(log):
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await log.read("t", "g", "c", max_records=10, wait_s=0.2) == []
    assert 0.15 <= loop.time() - start < 1.0


async def test_acking_unknown_or_acked_offsets_is_a_noop(log, make_batch):
    await log.append("t", make_batch(2))
    assert await log.ack("t", "g", [0, 1]) == 0  # never delivered, so not pending
    await log.read("t", "g", "c", max_records=10)
    assert await log.ack("t", "g", [0, 99]) == 1
    assert await log.ack("t", "g", [0]) == 0
    assert await log.ack("t", "other", [1]) == 0
    assert await log.ack("t", "g", []) == 0
    assert await log.committed("t", "g") == 1

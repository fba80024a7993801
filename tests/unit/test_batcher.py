"""The batching rules as plain functions, and the batching loop around them."""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque

import numpy as np
import pytest

from pseudostream.server.batcher import ArrivalRate, MicroBatcher, WorkItem, batch_wait, fills_in, take_batch
from pseudostream.server.errors import Overloaded


def item(n: int, topic: str = "t", at: float = 0.0) -> WorkItem:
    return WorkItem(topic, [f"{topic}{i}" for i in range(n)], np.zeros((n, 2), np.float32),
                    enqueued_at=at)


def test_take_batch_coalesces_items_up_to_max_batch_in_order():
    queue = deque([item(3), item(4), item(2), item(5)])
    first = take_batch(queue, max_batch=9)
    assert [i.size for i in first] == [3, 4, 2]
    assert [i.size for i in queue] == [5]


def test_take_batch_never_splits_and_always_takes_one():
    queue = deque([item(12), item(1)])
    assert [i.size for i in take_batch(queue, max_batch=8)] == [12]
    assert [i.size for i in take_batch(queue, max_batch=8)] == [1]
    assert take_batch(queue, max_batch=8) == []


async def test_take_batch_drops_items_whose_caller_left():
    loop = asyncio.get_running_loop()
    gone, live = item(3), item(2)
    gone.future, live.future = loop.create_future(), loop.create_future()
    gone.future.cancel()
    queue = deque([gone, live])
    assert take_batch(queue, max_batch=10) == [live]


@pytest.mark.parametrize(
    "queued, oldest, now, expected",
    [
        (8, 0.0, 0.0, 0.0),  # full: go now
        (3, 0.0, 0.0, 0.005),  # wait the whole delay
        (3, 0.0, 0.002, 0.003),  # part of the delay left
        (3, 0.0, 0.010, 0.0),  # deadline passed
    ],
)
def test_batch_wait_is_the_time_to_the_deadline_unless_full(queued, oldest, now, expected):
    assert batch_wait(queued, oldest, now, max_batch=8, max_delay_s=0.005) == pytest.approx(expected)


async def test_micro_batcher_coalesces_concurrent_submits_and_resolves_each():
    seen: list[list[int]] = []

    async def process(batch: list[WorkItem]) -> None:
        seen.append([i.size for i in batch])
        for i in batch:
            i.future.set_result(i.ids)

    batcher = MicroBatcher(process, max_batch=16, max_delay_s=0.05, max_queue_samples=100)
    batcher.start()
    futures = [batcher.submit(item(4, topic=f"t{k}")) for k in range(4)]
    results = await asyncio.gather(*futures)
    await batcher.stop()
    assert seen == [[4, 4, 4, 4]]  # one full batch, cut as soon as it was full
    assert results[2] == ["t20", "t21", "t22", "t23"]


async def test_micro_batcher_cuts_a_partial_batch_at_the_deadline():
    cut = asyncio.Event()

    async def process(batch: list[WorkItem]) -> None:
        for i in batch:
            i.future.set_result(None)
        cut.set()

    batcher = MicroBatcher(process, max_batch=64, max_delay_s=0.02, max_queue_samples=100)
    batcher.start()
    await asyncio.wait_for(batcher.submit(item(3)), timeout=2.0)
    assert cut.is_set()
    await batcher.stop()


async def test_micro_batcher_refuses_past_its_queue_bound_and_fails_batch_errors():
    async def process(batch: list[WorkItem]) -> None:
        raise RuntimeError("teacher exploded")

    batcher = MicroBatcher(process, max_batch=8, max_delay_s=0.01, max_queue_samples=6)
    first = batcher.submit(item(5))
    with pytest.raises(Overloaded) as info:
        batcher.submit(item(2))
    assert "queue is full" in str(info.value) and info.value.retry_after_s > 0
    batcher.start()
    with pytest.raises(RuntimeError, match="teacher exploded"):
        await first
    await batcher.stop()


async def test_micro_batcher_overlaps_up_to_depth_batches_and_stop_waits_for_them():
    running, most, order = 0, 0, []
    release = asyncio.Event()

    async def process(batch: list[WorkItem]) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        order.append(batch[0].ids[0])
        await release.wait()
        running -= 1
        for i in batch:
            i.future.set_result(len(i.ids))

    batcher = MicroBatcher(process, max_batch=4, max_delay_s=0.0, max_queue_samples=100, depth=2)
    batcher.start()
    futures = [batcher.submit(item(4, topic=f"t{k}")) for k in range(5)]
    await asyncio.sleep(0.05)
    assert most == 2 and order == ["t00", "t10"]  # two stages busy, in submission order
    release.set()
    stopping = asyncio.create_task(batcher.stop())
    assert await asyncio.gather(*futures) == [4] * 5
    await stopping
    assert order == ["t00", "t10", "t20", "t30", "t40"] and most == 2
    with pytest.raises(ValueError):
        MicroBatcher(process, max_batch=4, max_delay_s=0.0, max_queue_samples=100, depth=0)


def test_arrival_rate_is_the_exponentially_weighted_sum_of_arrivals():
    rate = ArrivalRate(tau_s=0.1)
    for size, at in [(4, 10.0), (8, 10.05), (2, 10.2)]:
        rate.add(size, at)
    expected = sum(s * math.exp(-(10.3 - t) / 0.1) for s, t in [(4, 10.0), (8, 10.05), (2, 10.2)]) / 0.1
    assert rate.at(10.3) == pytest.approx(expected)
    assert rate.at(11.3) == pytest.approx(expected * math.exp(-10))


@pytest.mark.parametrize("queued, rate, seconds, fills", [(100, 20000, 0.005, True), (100, 20000, 0.001, False),
                                                          (256, 0, 0.0, True), (0, 0, 1.0, False)])
def test_fills_in_compares_the_expected_queue_with_max_batch(queued, rate, seconds, fills):
    assert fills_in(queued, rate, seconds, max_batch=200) is fills


def _recording_batcher(idle: bool, max_batch: int, inference_s: float = 0.01,
                       overhead_s: float | None = None):
    seen: list[tuple[float, list[int]]] = []

    async def process(batch: list[WorkItem]) -> None:
        seen.append((time.monotonic(), [i.size for i in batch]))
        for i in batch:
            i.future.set_result(None)

    batcher = MicroBatcher(process, max_batch=max_batch, max_delay_s=0.5, max_queue_samples=100,
                           idle=lambda: idle, inference_s=lambda: inference_s,
                           overhead_s=lambda: overhead_s)
    return batcher, seen


def _now_item(n: int) -> WorkItem:
    return WorkItem("t", [f"t{i}" for i in range(n)], np.zeros((n, 2), np.float32))


@pytest.mark.parametrize("idle, inference_s, overhead_s, early", [
    (True, 0.01, None, True), (False, 0.01, None, False), (True, 3.0, None, False),  # fast or not
    (True, 3.0, 0.01, True), (True, 3.0, 1.0, False), (False, 3.0, 0.01, False),  # fixed cost
])
async def test_adaptive_delay_cuts_a_lone_item_at_once_only_where_waiting_costs_more(idle, inference_s,
                                                                                    overhead_s, early):
    """max_delay_s is 0.5. An idle teacher that infers in 10 ms gets the item at once; a busy
    one, or one that takes 3 s (over 4 delays) and is not yet timed, gets it at the deadline. Of
    3 s teachers, an idle one whose fixed cost per batch is 10 ms gets it at once (one more
    overhead costs less than the wait); one whose fixed cost is 1 s (GPU-like), or a busy one,
    waits."""
    batcher, seen = _recording_batcher(idle, max_batch=64, inference_s=inference_s, overhead_s=overhead_s)
    batcher.start()
    started = time.monotonic()
    await asyncio.wait_for(batcher.submit(_now_item(3)), timeout=2.0)
    await batcher.stop()
    waited = seen[0][0] - started
    assert (waited < 0.25) if early else (waited >= 0.45)


async def test_adaptive_delay_still_waits_when_the_arrival_rate_will_fill_the_batch():
    """7 samples in a burst make a rate (70/s over tau 0.1 s) that fills 8 within the 0.5 s delay:
    the batcher waits for the eighth instead of cutting the first alone."""
    batcher, seen = _recording_batcher(True, max_batch=8)
    batcher.start()
    first = [batcher.submit(_now_item(1)) for _ in range(7)]
    await asyncio.sleep(0.05)
    last = batcher.submit(_now_item(1))
    await asyncio.wait_for(asyncio.gather(*first, last), timeout=2.0)
    await batcher.stop()
    assert [sizes for _, sizes in seen] == [[1] * 8]


async def test_adaptive_delay_cuts_as_soon_as_the_teacher_frees_a_worker():
    """An item that arrives while every worker is busy waits; when a worker frees (``wake``,
    which the pipeline calls as an inference ends) it is cut then, not at its 0.5 s deadline.
    Without the wake the same item waits out the deadline."""
    for wake in (True, False):
        busy = {"now": True}
        seen: list[float] = []

        async def process(batch: list[WorkItem]) -> None:
            seen.append(time.monotonic())
            for i in batch:
                i.future.set_result(None)

        batcher = MicroBatcher(process, max_batch=64, max_delay_s=0.5, max_queue_samples=100,
                               idle=lambda: not busy["now"], inference_s=lambda: 0.01)
        batcher.start()
        started = time.monotonic()
        done = batcher.submit(_now_item(3))
        await asyncio.sleep(0.1)
        assert not seen  # busy teacher: the item waits
        busy["now"] = False
        if wake:
            batcher.wake()
        await asyncio.wait_for(done, timeout=2.0)
        await batcher.stop()
        waited = seen[0] - started
        assert (0.1 <= waited < 0.3) if wake else (waited >= 0.45), (wake, waited)

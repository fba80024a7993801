"""Overlapping batches (pipeline depth 2) keep labeling in batch order, even when a later
batch's inference finishes first: log offsets follow submission order. A batch's log append
runs past its labeling turn: the next batch labels meanwhile, and a retry of its ids waits for it."""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import pytest

from pseudostream.server.backends.onnxruntime import OnnxRuntimeBackend
from pseudostream.server.batcher import WorkItem
from pseudostream.server.labellog.sqlite import SqliteLabelLog

pytestmark = pytest.mark.integration

ACCEPT_ALL = {"policy": {"name": "fixed", "params": {"tau": 0.0}}}


class SlowFirstBackend(OnnxRuntimeBackend):
    """The real ONNX Runtime teacher whose first inference returns late."""

    calls = 0

    async def infer(self, batch: np.ndarray):
        SlowFirstBackend.calls += 1
        if SlowFirstBackend.calls == 1:
            await asyncio.sleep(0.3)
        return await super().infer(batch)


class HeldFirstAppendLog(SqliteLabelLog):
    """The real SQLite log whose first ``held`` appends wait for ``release``."""

    held = 1

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.release = asyncio.Event()
        self.appends = 0

    async def append_and_remember(self, *args, **kwargs):
        self.appends += 1
        if self.appends <= self.held:
            await self.release.wait()
        return await super().append_and_remember(*args, **kwargs)


@pytest.fixture
def slow_first_pipeline(tmp_path, teacher_dir, labeling_pipeline):
    """``async with slow_first_pipeline(depth=..) as (batcher, topic, log)``: the shared
    ``labeling_pipeline`` (topic accepting everything) on a SlowFirstBackend (its first inference
    0.3 s late unless not ``slow``) and a ``log_type`` log."""

    @contextlib.asynccontextmanager
    async def build(depth: int, log_type: type = SqliteLabelLog, slow: bool = True):
        SlowFirstBackend.calls = 0 if slow else 1
        backend = SlowFirstBackend(teacher_dir, intra_op_threads=1)
        await backend.start()
        log = log_type(tmp_path / "labels.db")
        try:
            async with labeling_pipeline(backend, log, depth=depth, topic=ACCEPT_ALL) as (batcher, topic):
                try:
                    yield batcher, topic, log
                finally:
                    if isinstance(log, HeldFirstAppendLog):
                        log.release.set()  # a failed assertion must not leave the batcher waiting on it
        finally:
            await backend.close()
            await log.close()

    return build


async def test_labeling_stays_in_batch_order_when_inference_overlaps(slow_first_pipeline, digits):
    async with slow_first_pipeline(depth=2) as (batcher, topic, _):
        x = np.ascontiguousarray(digits.stream_x[:16])
        first = batcher.submit(WorkItem("digits", [f"a{i}" for i in range(8)], x[:8]))
        await asyncio.sleep(0.05)  # the first batch is cut and waiting on its slow inference
        second = batcher.submit(WorkItem("digits", [f"b{i}" for i in range(8)], x[8:]))
        a, b = await asyncio.gather(first, second)
    assert list(a.offsets) == list(range(8)) and list(b.offsets) == list(range(8, 16))
    assert topic.samples == 16


async def test_a_retry_in_flight_beside_its_first_copy_gets_the_first_decision(slow_first_pipeline, digits):
    """The retry's batch asks the log before the first copy's batch is labeled (the recall runs
    beside inference); it still gets the first decision and no second record."""
    async with slow_first_pipeline(depth=3) as (batcher, topic, log):
        x = np.ascontiguousarray(digits.stream_x[:8])
        ids = [f"a{i}" for i in range(8)]
        first = batcher.submit(WorkItem("digits", ids, x))
        await asyncio.sleep(0.05)  # cut, its recall answered (nothing), its inference slow
        retry = batcher.submit(WorkItem("digits", ids, x))
        fresh = batcher.submit(WorkItem("digits", [f"b{i}" for i in range(8)], x))
        a, b, c = await asyncio.gather(first, retry, fresh)
        end = await log.end_offset("digits")
    assert list(a.offsets) == list(range(8)) and list(b.offsets) == list(range(8))
    assert (b.decisions.label == a.decisions.label).all()
    assert (b.decisions.confidence == a.decisions.confidence).all()
    assert list(c.offsets) == list(range(8, 16)) and end == 16
    assert topic.samples == 16  # the retry did not move the policy


async def _until(condition, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_the_next_batch_labels_while_an_append_is_still_running(slow_first_pipeline, digits):
    async with slow_first_pipeline(depth=3, log_type=HeldFirstAppendLog,
                                   slow=False) as (batcher, topic, log):
        x = np.ascontiguousarray(digits.stream_x[:8])
        first = batcher.submit(WorkItem("digits", [f"a{i}" for i in range(8)], x))
        await _until(lambda: log.appends == 1)  # labeled, its append held
        second = batcher.submit(WorkItem("digits", [f"b{i}" for i in range(8)], x))
        await _until(lambda: topic.samples == 16)  # labeled in its turn meanwhile
        assert not first.done() and log.appends == 2
        log.release.set()
        a, b = await asyncio.gather(first, second)
        end = await log.end_offset("digits")
    assert sorted([*a.offsets, *b.offsets]) == list(range(16)) and end == 16


async def test_a_retry_of_a_batch_whose_append_is_running_waits_for_its_decision(slow_first_pipeline, digits):
    """The retry's batch finds nothing in the log (the first copy's append is held) and waits for
    the first copy's append instead of deciding the samples again."""
    async with slow_first_pipeline(depth=3, log_type=HeldFirstAppendLog,
                                   slow=False) as (batcher, topic, log):
        x = np.ascontiguousarray(digits.stream_x[:8])
        ids = [f"a{i}" for i in range(8)]
        first = batcher.submit(WorkItem("digits", ids, x))
        await _until(lambda: log.appends == 1)
        retry = batcher.submit(WorkItem("digits", ids, x))
        await asyncio.sleep(0.2)  # the retry's batch is cut, recalled (nothing) and waiting
        assert not retry.done() and topic.samples == 8
        log.release.set()
        a, b = await asyncio.gather(first, retry)
        end = await log.end_offset("digits")
    assert list(a.offsets) == list(range(8)) and list(b.offsets) == list(range(8))
    assert (b.decisions.label == a.decisions.label).all()
    assert end == 8 and topic.samples == 8


class HeldAppendsLog(HeldFirstAppendLog):
    """The real SQLite log whose appends all wait for ``release`` (they stay in order)."""

    held = 1 << 30


async def test_a_retry_behind_a_full_deep_pipeline_gets_the_first_decision(slow_first_pipeline, digits):
    """At depth 12, eleven batches are labeled with their appends held when the retry of the
    first one's ids arrives: the pipeline still holds the first one's entries (it keeps depth + 2
    batches; a fixed ten would have dropped them) and the retry waits for its decision."""
    async with slow_first_pipeline(depth=12, log_type=HeldAppendsLog, slow=False) as (batcher, topic, log):
        x = np.ascontiguousarray(digits.stream_x[:8])
        ids = [f"a{i}" for i in range(8)]
        first = batcher.submit(WorkItem("digits", ids, x))
        others = [batcher.submit(WorkItem("digits", [f"b{k}-{i}" for i in range(8)], x)) for k in range(10)]
        await _until(lambda: topic.samples == 88 and log.appends == 11)  # all labeled, appends held
        retry = batcher.submit(WorkItem("digits", ids, x))
        await asyncio.sleep(0.2)  # the retry's batch is cut, recalled (nothing yet) and waiting
        assert not retry.done() and topic.samples == 88
        log.release.set()
        a, b, *_ = await asyncio.gather(first, retry, *others)
        end = await log.end_offset("digits")
    assert list(a.offsets) == list(range(8)) and list(b.offsets) == list(range(8))
    assert (b.decisions.label == a.decisions.label).all()
    assert end == 88 and topic.samples == 88

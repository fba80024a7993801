"""The batch cost model: a least-squares line over size buckets, and the startup probe."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from pseudostream.server.backends.base import TeacherOutput
from pseudostream.server.batch_cost import BatchCost, probe_batch_cost


def test_overhead_is_the_intercept_of_the_line_through_the_buckets():
    """t = 0.002 + 0.0005 b at sizes 1, 16, 64: the fit gives back 2 ms."""
    cost = BatchCost()
    for b in (1, 16, 64):
        cost.observe(b, 0.002 + 0.0005 * b)
    assert cost.overhead_s() == pytest.approx(0.002, abs=1e-9)


def test_overhead_is_none_until_two_bucket_sizes_and_never_negative():
    cost = BatchCost()
    assert cost.overhead_s() is None
    cost.observe(64, 0.2)
    cost.observe(64, 0.21)  # the same bucket: still one point
    assert cost.overhead_s() is None
    cost.observe(1, 0.0)  # a line through (1, 0) and (64, ~0.2) crosses below zero at b = 0
    assert cost.overhead_s() == 0.0


def test_a_bucket_is_an_exponentially_weighted_mean_and_other_buckets_are_kept():
    """alpha 0.5: bucket 16 goes 0.016 -> 0.024 -> 0.028 s while the probe's (1, 0.010) stays, so
    the line runs through (1, 0.010) and (16, 0.028): slope 0.0012, intercept 0.0088."""
    cost = BatchCost(alpha=0.5)
    cost.observe(1, 0.010)
    for seconds in (0.016, 0.032, 0.032):
        cost.observe(16, seconds)
    assert cost.overhead_s() == pytest.approx(0.0088, abs=1e-12)
    cost.observe(3, 0.0)  # a third bucket (sizes 2-3): least squares over the three
    expected = np.polyfit([1.0, 16.0, 3.0], [0.010, 0.028, 0.0], 1)[1]
    assert cost.overhead_s() == pytest.approx(max(0.0, expected), abs=1e-12)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
def test_unusable_timings_are_ignored(bad):
    cost = BatchCost()
    cost.observe(1, 0.001)
    cost.observe(16, bad)
    cost.observe(0, 0.5)
    assert cost.overhead_s() is None


async def test_probe_times_each_size_on_zero_batches_of_the_teacher_shape():
    shapes = []

    async def infer(x: np.ndarray) -> None:
        shapes.append((x.shape, x.dtype, float(np.abs(x).sum())))

    cost = BatchCost()
    await probe_batch_cost(cost, infer, (3, 4), np.dtype(np.float32), sizes=(1, 16), repeats=2)
    assert shapes == [((1, 3, 4), np.float32, 0.0)] * 3 + [((16, 3, 4), np.float32, 0.0)] * 2
    assert cost.overhead_s() is not None


async def test_probe_records_a_split_batch_at_the_rows_of_its_parts():
    """A backend that ran the 16 as two parts side by side: the time is that of 8 rows."""
    sizes = []

    class Recording(BatchCost):
        def observe(self, size: int, seconds: float) -> None:
            sizes.append(size)
            super().observe(size, seconds)

    async def infer(x: np.ndarray) -> TeacherOutput:
        return TeacherOutput(np.zeros((len(x), 3), np.float32), None, "1", parts=2 if len(x) >= 16 else 1)

    await probe_batch_cost(Recording(), infer, (2,), np.dtype(np.float32), sizes=(1, 16), repeats=2)
    assert sizes == [1, 8]


async def test_a_failing_probe_leaves_the_model_empty_and_says_so(caplog):
    async def infer(x: np.ndarray) -> None:
        raise RuntimeError("teacher down")

    cost = BatchCost()
    await probe_batch_cost(cost, infer, (2,), np.dtype(np.float32))
    assert cost.overhead_s() is None
    assert "teacher down" in caplog.text


async def test_a_stuck_teacher_does_not_hold_the_start_past_the_timeout(caplog):
    """The warm-up run hangs: the probe gives up after its timeout and leaves the model empty."""
    async def infer(x: np.ndarray) -> None:
        await asyncio.sleep(3600)

    cost = BatchCost()
    await asyncio.wait_for(probe_batch_cost(cost, infer, (2,), np.dtype(np.float32), timeout_s=0.05), 5)
    assert cost.overhead_s() is None
    assert "TimeoutError" in caplog.text

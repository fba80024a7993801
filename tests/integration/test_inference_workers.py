"""The embedded backend with several inference workers: batches run at once through the one
session and give exactly what one worker gives; the batcher's gate cuts a partial batch while
a worker is free."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from pseudostream.server.backends.onnxruntime import OnnxRuntimeBackend
from pseudostream.server.batcher import WorkItem
from pseudostream.server.labellog.sqlite import SqliteLabelLog

pytestmark = pytest.mark.integration


async def test_concurrent_workers_match_one_worker(teacher_dir, digits):
    x = np.ascontiguousarray(digits.stream_x[:96])
    parts = np.split(x, 6)
    async with OnnxRuntimeBackend(teacher_dir, intra_op_threads=1) as one:
        expected = [await one.infer(p) for p in parts]
    async with OnnxRuntimeBackend(teacher_dir, intra_op_threads=1, workers=3) as three:
        assert three.concurrency == 3 and three.providers == ["CPUExecutionProvider"]
        got = await asyncio.gather(*(three.infer(p) for p in parts))
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(e.logits, g.logits)


class CountingBackend(OnnxRuntimeBackend):
    """Records how many inferences ran at once."""

    running = peak = 0

    async def infer(self, batch: np.ndarray):
        CountingBackend.running += 1
        CountingBackend.peak = max(CountingBackend.peak, CountingBackend.running)
        try:
            await asyncio.sleep(0.05)  # long enough for the next batch to arrive
            return await super().infer(batch)
        finally:
            CountingBackend.running -= 1


async def test_the_gate_lets_a_partial_batch_in_while_a_worker_is_free(tmp_path, teacher_dir, digits,
                                                                       labeling_pipeline):
    log = SqliteLabelLog(tmp_path / "labels.db")
    peaks = []
    for workers in (1, 2):
        CountingBackend.running = CountingBackend.peak = 0
        backend = CountingBackend(teacher_dir, intra_op_threads=1, workers=workers)
        await backend.start()
        try:
            async with labeling_pipeline(backend, log, depth=3, gate=True) as (batcher, _):
                x = np.ascontiguousarray(digits.stream_x[:4])
                first = batcher.submit(WorkItem("digits", [f"{workers}a{i}" for i in range(4)], x))
                await asyncio.sleep(0.01)  # the first partial batch is in inference
                second = batcher.submit(WorkItem("digits", [f"{workers}b{i}" for i in range(4)], x))
                await asyncio.gather(first, second)
        finally:
            await backend.close()
        peaks.append(CountingBackend.peak)
    await log.close()
    assert peaks == [1, 2]  # one worker: the second waits; two: it runs beside the first

"""The embedded backend with several inference workers: batches run at once through the one
session and give exactly what one worker gives; a batch that finds workers idle runs split over
them and answers as one run; the batcher's gate cuts a partial batch while a worker is free."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from pseudostream.server.backends.onnxruntime import OnnxRuntimeBackend
from pseudostream.server.batcher import WorkItem
from pseudostream.server.config import ServiceConfig
from pseudostream.server.labellog.sqlite import SqliteLabelLog
from pseudostream.server.metrics import ServiceMetrics
from pseudostream.server.pipeline import TeacherPipeline
from pseudostream.server.topic import TopicRuntime

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


class SlowRuns(OnnxRuntimeBackend):
    """Each run (a batch or a part of one) holds its worker 0.1 s first."""

    @staticmethod
    def _run(loaded, batch):
        time.sleep(0.1)
        return OnnxRuntimeBackend._run(loaded, batch)


async def test_a_batch_runs_split_over_idle_workers_and_answers_as_one_run(teacher_dir, digits):
    x = np.ascontiguousarray(digits.stream_x[:64])
    async with OnnxRuntimeBackend(teacher_dir, intra_op_threads=1) as one:
        whole = await one.infer(x)
    async with OnnxRuntimeBackend(teacher_dir, intra_op_threads=1, workers=3, split_min_rows=16) as three:
        split = await three.infer(x)  # three idle workers, parts of at least 16 rows: 22 + 21 + 21
        small = await three.infer(x[:31])  # one part of 16 fits, not two
    assert (split.parts, small.parts, whole.parts) == (3, 1, 1)
    np.testing.assert_allclose(split.logits, whole.logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(split.features, whole.features, rtol=1e-5, atol=1e-5)
    assert split.teacher_version == whole.teacher_version


async def test_a_batch_splits_only_over_the_workers_left_idle(teacher_dir, digits):
    x = np.ascontiguousarray(digits.stream_x[:32])
    async with SlowRuns(teacher_dir, intra_op_threads=1, workers=3, split_min_rows=1) as backend:
        first = asyncio.create_task(backend.infer(x[:1]))  # one row: one part, one worker
        await asyncio.sleep(0)  # it has taken its worker
        assert backend.workers_busy(1) == 1
        second = await backend.infer(x)
        assert (await first).parts == 1 and second.parts == 2
        assert backend.workers_busy(0) == 0
    async with SlowRuns(teacher_dir, intra_op_threads=1, workers=3, split_min_rows=0) as never:
        assert (await never.infer(x)).parts == 1


async def test_a_split_batch_holds_the_gate_and_work_beside_the_pipeline_does_not(
        tmp_path, teacher_dir, digits):
    """The gate counts the workers a split batch takes. A run the pipeline did not start (the
    start-up cost probe) never notifies the gate, so with no batch of the pipeline's own in
    inference the teacher counts as free: the next batch queues behind that run, not forever."""
    log = SqliteLabelLog(tmp_path / "labels.db")
    x = np.ascontiguousarray(digits.stream_x[:8])
    async with SlowRuns(teacher_dir, intra_op_threads=1, workers=2, split_min_rows=4) as backend:
        config = ServiceConfig(topics={"digits": {"teacher": "t"}}, teachers={"t": {"model_dir": teacher_dir}})
        topic = TopicRuntime("digits", config.topics["digits"], backend.metadata, log, 1000)
        pipeline = TeacherPipeline("t", backend, {"digits": topic}, log, ServiceMetrics())
        probe = asyncio.create_task(backend.infer(x))  # beside the pipeline: both workers
        await asyncio.sleep(0)
        assert backend.workers_busy(0) == 2 and pipeline.teacher_idle()
        await probe
        batch = asyncio.create_task(pipeline.process([WorkItem("digits", [f"s{i}" for i in range(8)], x)]))
        await asyncio.sleep(0.05)  # inferring as two parts of 4
        assert backend.workers_busy(1) == 2 and not pipeline.teacher_idle()
        await batch
        assert pipeline.teacher_idle()
    await log.close()

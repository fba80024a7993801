"""The adaptive delay in the service: the core times the teacher's batch cost at start, and a
lone first request is cut at once for a teacher whose seconds grow with the batch (ONNX Runtime
on CPU), but waits for the delay on one whose batch of 1 costs what a batch of 16 does (a GPU)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from pseudostream.server import core as core_module
from pseudostream.server.backends.onnxruntime import OnnxRuntimeBackend
from pseudostream.server.codec import LabelInput
from pseudostream.server.core import LabelingCore

pytestmark = pytest.mark.integration


class ShapedCostBackend(OnnxRuntimeBackend):
    """The demo teacher, slowed to a chosen cost curve: ``fixed_s + per_sample_s * batch``."""

    fixed_s = per_sample_s = 0.0
    started: list[tuple[float, int]] = []

    async def infer(self, batch: np.ndarray):
        ShapedCostBackend.started.append((time.monotonic(), batch.shape[0]))
        await asyncio.sleep(self.fixed_s + self.per_sample_s * batch.shape[0])
        return await super().infer(batch)


def shape_teacher(monkeypatch, fixed_s: float, per_sample_s: float) -> None:
    """The core's teachers become ShapedCostBackends with this cost curve."""
    monkeypatch.setattr(ShapedCostBackend, "fixed_s", fixed_s)
    monkeypatch.setattr(ShapedCostBackend, "per_sample_s", per_sample_s)
    monkeypatch.setattr(ShapedCostBackend, "started", [])
    monkeypatch.setattr(core_module, "make_backend",
                        lambda t: ShapedCostBackend(t.model_dir, intra_op_threads=t.intra_op_threads))


@pytest.mark.parametrize("fixed_s, per_sample_s, early", [(0.0, 0.01, True), (0.25, 0.0, False)])
async def test_a_lone_first_request_waits_only_where_the_fixed_cost_is_above_the_wait(
        monkeypatch, make_config, digits, fixed_s, per_sample_s, early):
    config = make_config(teachers={"digits-cnn": {"adaptive_delay": True, "max_delay_ms": 200.0,
                                                  "max_batch": 16}})
    tcfg = config.teachers["digits-cnn"]
    shape_teacher(monkeypatch, fixed_s, per_sample_s)
    core = LabelingCore(config)
    await core.start()
    try:
        await core.cost_probes["digits-cnn"]  # runs in the background from start
        assert [size for _, size in ShapedCostBackend.started] == [1, 1, 1, 1, 16, 16, 16]  # the probe
        overhead = core.batchers["digits-cnn"]._overhead_s()
        assert overhead == pytest.approx(fixed_s, abs=0.02)
        x = np.ascontiguousarray(digits.stream_x[:1])
        sent = time.monotonic()
        outcome = await core.label(LabelInput("digits", ["lone"], x, None, "r1"))
        assert len(outcome.decisions.accept) == 1
        waited = ShapedCostBackend.started[-1][0] - sent
        assert (waited < 0.1) if early else (waited >= 0.19), (waited, tcfg.max_delay_ms)
    finally:
        await core.stop()


async def test_start_does_not_wait_for_the_batch_cost_probe(monkeypatch, make_config):
    """A teacher whose every batch takes 0.25 s makes the probe last at least 7 x 0.25 s; the
    core is up at once, the probe finishes behind it, and stop cancels a probe still running."""
    config = make_config(teachers={"digits-cnn": {"adaptive_delay": True, "max_batch": 16}})
    shape_teacher(monkeypatch, 0.25, 0.0)
    core = LabelingCore(config)
    began = time.monotonic()
    await core.start()
    try:
        assert time.monotonic() - began < 1.0 and core.ready
        probe = core.cost_probes["digits-cnn"]
        assert not probe.done() and core.batchers["digits-cnn"]._overhead_s() is None
        await probe
        assert core.batchers["digits-cnn"]._overhead_s() == pytest.approx(0.25, abs=0.02)
    finally:
        await core.stop()
    assert core.cost_probes == {}

    monkeypatch.setattr(ShapedCostBackend, "started", [])
    core = LabelingCore(config)
    await core.start()
    probe = core.cost_probes["digits-cnn"]
    await core.stop()  # the probe has run one batch of 7 at most
    assert probe.cancelled() and len(ShapedCostBackend.started) < 7


async def test_a_request_that_finds_the_teacher_busy_starts_when_it_frees_not_at_its_deadline(
        monkeypatch, make_config, digits):
    """One worker, every batch 0.2 s, max delay 1 s. A lone request is cut at once; a second one
    sent while it infers waits for the worker, and starts as that inference ends (the pipeline
    wakes the batcher), not a second after it arrived."""
    config = make_config(teachers={"digits-cnn": {"adaptive_delay": True, "max_delay_ms": 1000.0,
                                                  "max_batch": 16, "inference_workers": 1}})
    shape_teacher(monkeypatch, 0.2, 0.0)
    core = LabelingCore(config)
    await core.start()
    try:
        await core.cost_probes["digits-cnn"]
        probed = len(ShapedCostBackend.started)
        x = np.ascontiguousarray(digits.stream_x[:1])
        first = asyncio.ensure_future(core.label(LabelInput("digits", ["a"], x, None, "r1")))
        while len(ShapedCostBackend.started) == probed:
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)  # the first batch is inferring
        sent = time.monotonic()
        second = await core.label(LabelInput("digits", ["b"], x, None, "r2"))
        await first
        assert len(second.decisions.accept) == 1
        (a_at, _), (b_at, _) = ShapedCostBackend.started[probed:]
        assert b_at - a_at >= 0.19  # it waited for the worker
        assert b_at - sent < 0.5, b_at - sent  # ... and not for its deadline (1 s)
    finally:
        await core.stop()

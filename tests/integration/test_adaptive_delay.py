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


@pytest.mark.parametrize("fixed_s, per_sample_s, early", [(0.0, 0.01, True), (0.25, 0.0, False)])
async def test_a_lone_first_request_waits_only_where_the_fixed_cost_is_above_the_wait(
        monkeypatch, make_config, digits, fixed_s, per_sample_s, early):
    config = make_config(teachers={"digits-cnn": {"adaptive_delay": True, "max_delay_ms": 200.0,
                                                  "max_batch": 16}})
    tcfg = config.teachers["digits-cnn"]
    monkeypatch.setattr(ShapedCostBackend, "fixed_s", fixed_s)
    monkeypatch.setattr(ShapedCostBackend, "per_sample_s", per_sample_s)
    monkeypatch.setattr(ShapedCostBackend, "started", [])
    monkeypatch.setattr(core_module, "make_backend",
                        lambda t: ShapedCostBackend(t.model_dir, intra_op_threads=t.intra_op_threads))
    core = LabelingCore(config)
    await core.start()
    try:
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

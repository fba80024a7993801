"""The embedded backend on CUDA gives the CPU's logits (skipped where CUDA is absent)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from pseudostream.server.backends.onnxruntime import OnnxRuntimeBackend

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                       reason="onnxruntime here has no CUDAExecutionProvider (no GPU, or "
                              "onnxruntime-gpu not installed: pip install '.[gpu]')"),
]


async def test_cuda_backend_matches_cpu(teacher_dir, digits):
    x = np.ascontiguousarray(digits.test_x[:64])
    async with OnnxRuntimeBackend(teacher_dir, providers=["CPUExecutionProvider"]) as cpu:
        expected = (await cpu.infer(x)).logits
    async with OnnxRuntimeBackend(teacher_dir, providers=["CUDAExecutionProvider"]) as gpu:
        assert gpu.providers[0] == "CUDAExecutionProvider"
        got = (await gpu.infer(x)).logits
    np.testing.assert_allclose(got, expected, atol=1e-3)

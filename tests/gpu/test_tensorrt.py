"""A TensorRT engine built from the demo teacher gives ONNX Runtime's outputs (FP32 within 1e-3,
FP16 within 1e-2), over the whole batch profile. Skipped unless TensorRT and a CUDA torch are
installed and a GPU is present."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from pseudostream.models.tensorrt import build_engine


def _gpu_missing() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "tensorrt not installed (needs an NVIDIA GPU: pip install tensorrt)"
    if importlib.util.find_spec("torch") is None:
        return "torch not installed (the test allocates its CUDA buffers with torch)"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device (or a CPU-only torch)"
    return None


_MISSING = _gpu_missing()


def needs_gpu(test):
    """Mark ``test`` as a GPU test, skipped with the reason when TensorRT or CUDA is missing."""
    return pytest.mark.gpu(pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")(test))


def _run_engine(engine_path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """Run ``x`` through the engine once; every output, as numpy."""
    import tensorrt as trt
    import torch

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
    assert engine is not None, "TensorRT could not deserialize the engine"
    context = engine.create_execution_context()
    assert context.set_input_shape("input", tuple(x.shape)), f"batch {len(x)} is outside the profile"
    device_input = torch.from_numpy(np.ascontiguousarray(x)).cuda()
    context.set_tensor_address("input", device_input.data_ptr())
    outputs: dict[str, torch.Tensor] = {}
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        if engine.get_tensor_mode(name) != trt.TensorIOMode.OUTPUT:
            continue
        dtype = torch.from_numpy(np.empty(0, dtype=trt.nptype(engine.get_tensor_dtype(name)))).dtype
        outputs[name] = torch.empty(tuple(context.get_tensor_shape(name)), dtype=dtype, device="cuda")
        context.set_tensor_address(name, outputs[name].data_ptr())
    stream = torch.cuda.current_stream()
    assert context.execute_async_v3(stream.cuda_stream), "TensorRT execution failed"
    stream.synchronize()
    return {name: tensor.float().cpu().numpy() for name, tensor in outputs.items()}


@pytest.fixture(scope="module")
def engines(tmp_path_factory, teacher_dir) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("engines")
    cache = out / "timing.cache"
    return {
        "fp32": build_engine(teacher_dir / "model.onnx", out / "fp32.plan", timing_cache=cache),
        "fp16": build_engine(teacher_dir / "model.onnx", out / "fp16.plan", fp16=True, timing_cache=cache),
    }


@needs_gpu
@pytest.mark.parametrize(("precision", "atol"), [("fp32", 1e-3), ("fp16", 1e-2)])
@pytest.mark.parametrize("batch", [1, 37, 128])
def test_engine_matches_onnxruntime(engines, teacher_dir, digits, precision, atol, batch):
    x = np.ascontiguousarray(np.resize(digits.test_x, (batch, 1, 8, 8)), dtype=np.float32)
    session = ort.InferenceSession(str(teacher_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    logits, features = session.run(["logits", "features"], {"input": x})
    got = _run_engine(engines[precision], x)
    assert set(got) == {"logits", "features"}
    np.testing.assert_allclose(got["logits"], logits, atol=atol, rtol=atol)
    np.testing.assert_allclose(got["features"], features, atol=atol, rtol=atol)
    assert (got["logits"].argmax(1) == logits.argmax(1)).mean() >= 0.99


@needs_gpu
def test_profile_rejects_batches_beyond_max(engines):
    import tensorrt as trt

    engine = trt.Runtime(trt.Logger(trt.Logger.ERROR)).deserialize_cuda_engine(engines["fp32"].read_bytes())
    context = engine.create_execution_context()
    assert context.set_input_shape("input", (128, 1, 8, 8))
    assert not context.set_input_shape("input", (129, 1, 8, 8))


@needs_gpu
def test_timing_cache_is_written_and_accepted_by_a_rebuild(engines, teacher_dir, tmp_path):
    cache = engines["fp32"].parent / "timing.cache"
    assert cache.stat().st_size > 0
    size = cache.stat().st_size
    engine = build_engine(teacher_dir / "model.onnx", tmp_path / "again.plan", timing_cache=cache)
    assert engine.stat().st_size > 0 and cache.stat().st_size >= size


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed")
def test_without_tensorrt_the_error_says_what_to_install(teacher_dir, tmp_path):
    with pytest.raises(ImportError, match="pip install tensorrt"):
        build_engine(teacher_dir / "model.onnx", tmp_path / "model.plan")


def test_bad_batch_range_is_rejected_before_tensorrt(teacher_dir, tmp_path):
    with pytest.raises(ValueError, match="min_batch <= opt_batch <= max_batch"):
        build_engine(teacher_dir / "model.onnx", tmp_path / "model.plan", opt_batch=256)

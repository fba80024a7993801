"""Build a TensorRT engine from a teacher's ONNX model (for Triton's ``tensorrt_plan`` platform).

``build_engine`` parses the ONNX graph, gives every input with a dynamic batch dimension one
optimization profile covering ``min_batch..max_batch`` (tuned for ``opt_batch``), and writes the
serialized engine. An engine is specific to the GPU model and TensorRT version that built it;
a timing cache file makes rebuilds on the same kind of GPU much faster.

Precision: TensorRT 10 and older build FP16 with the weakly-typed ``BuilderFlag.FP16`` (TensorRT
picks FP16 kernels where it is faster; inputs and outputs stay FP32). TensorRT 11 removed that
flag: networks are strongly typed, so for ``fp16=True`` the ONNX model is first converted to FP16
with FP32 inputs and outputs (``onnxconverter-common``, imported only then).

``tensorrt`` is imported lazily: this module imports without it (and without a GPU).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["TensorRTError", "build_engine"]

logger = logging.getLogger(__name__)


class TensorRTError(RuntimeError):
    """TensorRT could not parse the model or build the engine; the message says why."""


def _import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise ImportError(
            "building a TensorRT engine needs an NVIDIA GPU with its driver and the TensorRT Python "
            "package: pip install tensorrt (or tensorrt-cu12 / tensorrt-cu13 to match the CUDA major)"
        ) from exc
    return trt


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    *,
    fp16: bool = False,
    min_batch: int = 1,
    opt_batch: int = 64,
    max_batch: int = 128,
    timing_cache: str | Path | None = None,
    workspace_gb: float = 2,
) -> Path:
    """Build a TensorRT engine for ``onnx_path`` and write it to ``engine_path``; return that path.

    The profile admits batches of ``min_batch..max_batch`` (give Triton's ``max_batch_size`` no
    more than ``max_batch``). ``timing_cache`` is read if it exists and written back after the
    build. ``workspace_gb`` caps the builder's scratch memory. Raises ImportError without
    TensorRT, ValueError for bad arguments and TensorRTError when parsing or building fails.
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"no ONNX model at {onnx_path}")
    if not all(isinstance(b, int) and not isinstance(b, bool) for b in (min_batch, opt_batch, max_batch)) \
            or not 1 <= min_batch <= opt_batch <= max_batch:
        raise ValueError(f"need integers 1 <= min_batch <= opt_batch <= max_batch, got "
                         f"{min_batch}, {opt_batch}, {max_batch}")
    if not workspace_gb > 0:
        raise ValueError(f"workspace_gb must be positive, got {workspace_gb!r}")
    trt = _import_tensorrt()
    weakly_typed = hasattr(trt.BuilderFlag, "FP16")  # TensorRT <= 10
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(_network_flags(trt, strongly_typed=not weakly_typed))
    parser = trt.OnnxParser(network, trt_logger)
    with tempfile.TemporaryDirectory(prefix="pseudostream-trt-") as scratch:
        source = onnx_path if weakly_typed or not fp16 else _fp16_onnx(onnx_path, Path(scratch))
        if not parser.parse_from_file(str(source)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise TensorRTError(f"TensorRT could not parse {onnx_path}: {errors or 'no details'}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if fp16 and weakly_typed:
        if not getattr(builder, "platform_has_fast_fp16", True):
            logger.warning("this GPU has no fast FP16: the FP16 engine may be no faster than FP32")
        config.set_flag(trt.BuilderFlag.FP16)
    config.add_optimization_profile(_batch_profile(builder, network, min_batch, opt_batch, max_batch))
    cache_path = None if timing_cache is None else Path(timing_cache)
    if cache_path is not None:
        _load_timing_cache(config, cache_path)

    logger.info("building TensorRT %s engine for %s (batch %d..%d, opt %d)", trt.__version__,
                onnx_path, min_batch, max_batch, opt_batch)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTError(f"TensorRT failed to build an engine for {onnx_path} (see the TensorRT "
                            "log above; a larger workspace_gb or a smaller max_batch may help)")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = engine_path.with_name(f".{engine_path.name}.tmp")
    tmp.write_bytes(memoryview(serialized))
    tmp.replace(engine_path)
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        cache_path.write_bytes(memoryview(config.get_timing_cache().serialize()))
    logger.info("wrote TensorRT engine %s (%d bytes)", engine_path, engine_path.stat().st_size)
    return engine_path


def _network_flags(trt: Any, *, strongly_typed: bool) -> int:
    flags = 0
    creation = trt.NetworkDefinitionCreationFlag
    if int(trt.__version__.split(".")[0]) < 10 and hasattr(creation, "EXPLICIT_BATCH"):
        flags |= 1 << int(creation.EXPLICIT_BATCH)  # the default (and deprecated) from 10 on
    if strongly_typed and hasattr(creation, "STRONGLY_TYPED"):
        flags |= 1 << int(creation.STRONGLY_TYPED)
    return flags


def _batch_profile(builder: Any, network: Any, min_batch: int, opt_batch: int, max_batch: int) -> Any:
    """One profile: every input's batch dimension spans min..max; other dims must be static."""
    profile = builder.create_optimization_profile()
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        shape = tuple(tensor.shape)
        if not shape or shape[0] != -1:
            raise ValueError(f"input {tensor.name!r} has shape {shape}: the engine needs a dynamic "
                             "batch dimension first (re-export the ONNX with a dynamic batch axis)")
        if any(d < 0 for d in shape[1:]):
            raise ValueError(f"input {tensor.name!r} has shape {shape}: only the batch dimension "
                             "may be dynamic")
        rest = shape[1:]
        profile.set_shape(tensor.name, (min_batch, *rest), (opt_batch, *rest), (max_batch, *rest))
    return profile


def _load_timing_cache(config: Any, path: Path) -> None:
    cache = config.create_timing_cache(path.read_bytes() if path.exists() else b"")
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        # A cache from another GPU or TensorRT version: start afresh (it is overwritten after).
        logger.warning("timing cache %s does not match this GPU/TensorRT; starting a new one", path)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def _fp16_onnx(onnx_path: Path, scratch: Path) -> Path:
    """An FP16 copy of the model with FP32 inputs and outputs (for strongly typed TensorRT 11)."""
    try:
        import onnx
        from onnxconverter_common import float16
    except ImportError as exc:
        raise ImportError("FP16 engines on TensorRT 11+ need the ONNX model converted to FP16: "
                          "pip install onnxconverter-common") from exc
    model = float16.convert_float_to_float16(onnx.load(str(onnx_path)), keep_io_types=True)
    out = scratch / "model.fp16.onnx"
    onnx.save(model, str(out))
    return out

"""Export a torch teacher to a single self-contained ONNX file, and prove it matches torch.

The model must return ``(logits, features)``. The file has one input (``input`` by default, with a
dynamic batch dimension) and two outputs, ``logits`` and ``features``. After export the file is
checked with ``onnx.checker`` and run with ONNX Runtime (CPU) on several batch sizes; the outputs
must match torch within ``PARITY_ATOL``, otherwise ``ExportError`` is raised and the file removed.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx.checker
import onnx.external_data_helper
import onnx.shape_inference
import onnxruntime as ort
import torch
from torch import nn

__all__ = ["export_onnx", "check_onnx_parity", "ExportError", "OUTPUT_NAMES", "PARITY_ATOL"]

logger = logging.getLogger(__name__)

OUTPUT_NAMES = ("logits", "features")
PARITY_ATOL = 1e-4
PARITY_RTOL = 1e-5  # of the output's largest magnitude: float32 sums grow with it
PARITY_BATCH_SIZES = (1, 7, 64)

# torch 2.13's exporter warns once per process that torchvision ops cannot be registered (we
# use none), onnxscript's optimiser logs every pass at INFO, and torch raises an internal pytree
# FutureWarning; none of it is actionable for our users. Logger -> level while exporting.
_NOISY_LOGGERS = {
    "torch.onnx._internal.exporter._registration": logging.ERROR,
    "onnxscript": logging.WARNING,
    "onnx_ir": logging.WARNING,
}
_INTERNAL_WARNING = r".*isinstance\(treespec, LeafSpec\)"


class ExportError(RuntimeError):
    """The exported ONNX model is invalid or does not reproduce the torch model's outputs."""


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    saved = {name: logging.getLogger(name).level for name in _NOISY_LOGGERS}
    try:
        for name, level in _NOISY_LOGGERS.items():
            logging.getLogger(name).setLevel(max(level, logging.getLogger(name).level))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_INTERNAL_WARNING, category=FutureWarning)
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def export_onnx(
    model: nn.Module,
    example_input: torch.Tensor,
    path: str | Path,
    *,
    opset: int = 18,
    input_name: str = "input",
) -> Path:
    """Export ``model`` (put in eval mode) to ``path`` and verify it; return the path.

    ``example_input`` is one batch [B, ...]; only its per-sample shape and dtype matter, the
    batch dimension is exported as dynamic. Raises ExportError if the checker or the ONNX
    Runtime parity check (batch sizes 1, 7 and 64) fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    if example_input.shape[0] < 2:
        # A batch of one could be specialised to a constant by torch.export.
        example_input = example_input.expand(2, *example_input.shape[1:]).contiguous()
    batch = torch.export.Dim("batch")
    try:
        with _quiet_exporter():
            torch.onnx.export(
                model,
                (example_input,),
                str(path),
                input_names=[input_name],
                output_names=list(OUTPUT_NAMES),
                opset_version=opset,
                dynamic_shapes=({0: batch},),
                external_data=False,
                verbose=False,
                report=False,
            )
    except Exception as exc:  # the exporter's own error types are internal to torch
        raise ExportError(f"torch.onnx.export of {type(model).__name__} failed: {exc}") from exc
    _inline_external_data(path)
    try:
        try:
            onnx.checker.check_model(str(path), full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            raise ExportError(f"exported model {path} failed the ONNX checker: {exc}") from exc
        check_onnx_parity(model, path, example_input, input_name=input_name)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    logger.info("exported %s (opset %d, %d bytes)", path, opset, path.stat().st_size)
    return path


def _inline_external_data(path: Path) -> None:
    """Fold any external-data file the exporter wrote back into ``path``."""
    bare = onnx.load(str(path), load_external_data=False)
    sidecars = {
        entry.value
        for tensor in bare.graph.initializer
        if onnx.external_data_helper.uses_external_data(tensor)
        for entry in tensor.external_data
        if entry.key == "location"
    }
    if not sidecars:
        return
    onnx.save_model(onnx.load(str(path)), str(path), save_as_external_data=False)
    for name in sidecars:
        (path.parent / name).unlink(missing_ok=True)
    logger.debug("folded external data %s into %s", sorted(sidecars), path)


def check_onnx_parity(
    model: nn.Module,
    path: str | Path,
    example_input: torch.Tensor,
    *,
    input_name: str = "input",
    batch_sizes: Sequence[int] = PARITY_BATCH_SIZES,
    atol: float = PARITY_ATOL,
    seed: int = 0,
) -> None:
    """Run the ONNX file with ONNX Runtime (CPU) and ``model`` on random batches of each size;
    raise ExportError unless the input/output names are as expected and every output matches
    within ``atol + PARITY_RTOL * max|torch output|`` (weights far from the training scale, e.g. a
    diverged adapter, give large logits whose float32 rounding grows with them)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    if inputs != [input_name] or outputs != list(OUTPUT_NAMES):
        raise ExportError(
            f"{path}: expected input {[input_name]} and outputs {list(OUTPUT_NAMES)}, "
            f"got {inputs} and {outputs}"
        )
    generator = torch.Generator().manual_seed(seed)
    sample_shape = tuple(example_input.shape[1:])
    model.eval()
    for size in batch_sizes:
        x = torch.rand((size, *sample_shape), generator=generator, dtype=example_input.dtype)
        with torch.no_grad():
            expected = [t.numpy() for t in model(x)]
        got = session.run(list(OUTPUT_NAMES), {input_name: x.numpy()})
        for name, want, have in zip(OUTPUT_NAMES, expected, got):
            if have.shape != want.shape:
                raise ExportError(
                    f"{path}: output {name!r} has shape {have.shape} in ONNX Runtime, "
                    f"{want.shape} in torch (batch {size})"
                )
            err = float(np.max(np.abs(have - want))) if want.size else 0.0
            allowed = atol + PARITY_RTOL * (float(np.max(np.abs(want))) if want.size else 0.0)
            if not err <= allowed:
                raise ExportError(
                    f"{path}: output {name!r} differs from torch by {err:.3g} > {allowed:.3g} "
                    f"(batch {size})"
                )
    logger.debug("ONNX Runtime parity ok for batch sizes %s", list(batch_sizes))

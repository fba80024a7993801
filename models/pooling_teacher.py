"""A teacher that costs almost nothing, for any CHW input: global average pooling, then a fixed
linear layer from the channels to the classes (built with ``onnx.helper``; no torch, no training).

For tests and benchmarks whose subject is the service around the teacher (the label log, delivery,
page sizes) with samples of a realistic size, e.g. 3x32x32 float32 images (12 KiB each).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from onnx import TensorProto, helper, save

from pseudostream.models.card import TeacherCard

__all__ = ["build_pooling_teacher"]


def build_pooling_teacher(out: str | Path, shape: Sequence[int] = (3, 32, 32), num_classes: int = 10,
                          name: str = "pooling") -> Path:
    """Write ``model.onnx`` and its card to ``out``: inputs [n, *shape] float32, outputs logits
    [n, num_classes] and features [n, shape[0]] (the pooled channels). Returns ``out``."""
    if len(shape) < 2 or min(shape) < 1 or num_classes < 2:
        raise ValueError(f"shape must be C, H[, W...] with sizes >= 1 and num_classes >= 2, got {shape}, {num_classes}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    channels = int(shape[0])
    weights = helper.make_tensor("w", TensorProto.FLOAT, [channels, num_classes],
                                 np.linspace(-1, 1, channels * num_classes).tolist())
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["features"]),
         helper.make_node("MatMul", ["features", "w"], ["logits"])],
        name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", *map(int, shape)])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", num_classes]),
         helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", channels])], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save(model, str(out / "model.onnx"))
    TeacherCard(name=name, version="1", classes=[str(i) for i in range(num_classes)], input_name="input",
                input_shape=[int(s) for s in shape], source_prior=[1 / num_classes] * num_classes,
                fingerprint=f"{name}-avgpool-{'x'.join(map(str, shape))}").save(out)
    return out

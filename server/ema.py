"""An EMA teacher over ONNX weights: theta_t <- m theta_t + (1 - m) theta_s.

The mean-teacher update (Tarvainen & Valpola 2017; the training-stage distillation of FuSTAL)
applied to the students trainers propose. It runs on the float initializers of the exported
graphs, so the service needs neither torch nor the student's Python class: every proposal must be
the same architecture exported the same way (same initializer names, shapes and dtypes; checked,
with a message naming the first difference). Integer initializers (shapes, axes) must be equal.

One deliberate difference from averaging a torch ``state_dict``: our exporter folds BatchNorm into
the preceding convolution in eval mode, so the average is over the folded (effective) weights.
For students fine-tuned from the served teacher (the mean-teacher setting) both averages agree to
first order; for unrelated students neither average is meaningful, and the audit gate rejects the
result.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from pseudostream.server.errors import InvalidInput

__all__ = ["OnnxEma"]


class OnnxEma:
    """EMA weights seeded with ``start`` (the served teacher); ``update`` folds in one student."""

    def __init__(self, start: onnx.ModelProto, momentum: float) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"EMA momentum must lie in [0, 1), got {momentum}")
        self.momentum = float(momentum)
        self._model = onnx.ModelProto()
        self._model.CopyFrom(start)
        self._weights = {t.name: numpy_helper.to_array(t).copy() for t in self._model.graph.initializer}
        self.updates = 0

    def update(self, student: onnx.ModelProto) -> None:
        """theta_t <- m theta_t + (1 - m) theta_s for every float initializer of ``student``."""
        theirs = {t.name: numpy_helper.to_array(t) for t in student.graph.initializer}
        if set(theirs) != set(self._weights):
            missing = sorted(set(self._weights) - set(theirs))[:3]
            extra = sorted(set(theirs) - set(self._weights))[:3]
            raise InvalidInput(f"EMA teacher: the candidate's weights are not the served "
                               f"architecture's (missing {missing}, unexpected {extra}); propose "
                               "a student of the teacher's architecture, exported the same way")
        for name, ours in self._weights.items():
            new = theirs[name]
            if new.shape != ours.shape or new.dtype != ours.dtype:
                raise InvalidInput(f"EMA teacher: weight {name!r} is {new.dtype}{list(new.shape)} "
                                   f"in the candidate but {ours.dtype}{list(ours.shape)} served")
            if not np.issubdtype(ours.dtype, np.floating) and not np.array_equal(new, ours):
                raise InvalidInput(f"EMA teacher: constant {name!r} differs from the served graph's")
        m = self.momentum
        for name, ours in self._weights.items():
            if np.issubdtype(ours.dtype, np.floating):
                # In float64, then back: float32 rounding does not drift over many updates.
                mixed = m * ours.astype(np.float64) + (1.0 - m) * theirs[name].astype(np.float64)
                self._weights[name] = mixed.astype(ours.dtype)
        self.updates += 1

    def weights(self) -> dict[str, np.ndarray]:
        """The current EMA weights by initializer name (copies)."""
        return {name: w.copy() for name, w in self._weights.items()}

    def model(self) -> onnx.ModelProto:
        """The served graph with the EMA weights."""
        out = onnx.ModelProto()
        out.CopyFrom(self._model)
        del out.graph.initializer[:]
        out.graph.initializer.extend(numpy_helper.from_array(w, name) for name, w in self._weights.items())
        return out

    def save(self, path: str | Path) -> Path:
        """Write the EMA model (the EMA state itself: reloading seeds a new OnnxEma with it)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save_model(self.model(), str(path))
        return path

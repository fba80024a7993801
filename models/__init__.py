"""pseudostream.models: teachers, their export to ONNX, and their calibration.

Importing this package loads only ``TeacherCard`` (no torch, scikit-learn or scipy: the server
imports it, and those are in the ``train`` extra). Every other name is imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pseudostream.models.card import TeacherCard

__all__ = [
    "TeacherCard",
    "DigitsSplits",
    "load_digits_splits",
    "apply_shift",
    "DigitsCNN",
    "train_classifier",
    "evaluate",
    "predict_logits",
    "fit_temperature",
    "expected_calibration_error",
    "nll",
    "export_onnx",
    "ExportError",
    "build_demo_teacher",
    "load_demo_torch_model",
]

_LAZY = {
    "DigitsSplits": "digits",
    "load_digits_splits": "digits",
    "apply_shift": "shift",
    "DigitsCNN": "cnn",
    "train_classifier": "training",
    "evaluate": "training",
    "predict_logits": "training",
    "fit_temperature": "calibration",
    "expected_calibration_error": "calibration",
    "nll": "calibration",
    "export_onnx": "export",
    "ExportError": "export",
    "build_demo_teacher": "demo_teacher",
    "load_demo_torch_model": "demo_teacher",
}

if TYPE_CHECKING:
    from pseudostream.models.calibration import expected_calibration_error, fit_temperature, nll
    from pseudostream.models.cnn import DigitsCNN
    from pseudostream.models.demo_teacher import build_demo_teacher, load_demo_torch_model
    from pseudostream.models.digits import DigitsSplits, load_digits_splits
    from pseudostream.models.export import ExportError, export_onnx
    from pseudostream.models.shift import apply_shift
    from pseudostream.models.training import evaluate, predict_logits, train_classifier


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
